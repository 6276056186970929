"""ZipRL without RL on the synthetic multi-hop task: (a) evidence recall vs token budget, (c) the stress test.

(a) **Evidence recall vs budget** — the claim of ZipRL's theorem without any training: at the same
token budget, relevance-graded compression keeps more of what the answer needs than uniform
compression. Every arm sees the *same* trajectory per question: ``--turns`` searches (k = 3), the
hops' searches (``<relation> of <subject>``) spread evenly over it, the other turns exploration
searches (hobby and place words) whose passages are distractors. After the last turn, evidence
recall = the share of the chain's facts (subject, relation, object together in one memory item)
still in the memory; ``mean h`` is the same share averaged over the turns after each fact arrived
(HRR's h_t, ``trainer.ziprl.hrr``). Arms: ``uniform`` (every item cut by the same ratio),
``recency`` (oldest items dropped), ``graded`` (ZipRL's five levels by chain relevance, rule
rewriter); ``full`` (no budget) is the reference. One line per budget and arm: the median over
``--seeds`` seeds (world and questions of each seed; arms in a rotating order per seed) with its
spread [min-max], the memory's mean final tokens, and the ratio to ``uniform``'s recall.

(c) **Stress at inference** — the scripted (non-learned) agent of ``trainer.ziprl.episode`` on
episodes of ``--lengths`` turns (it resolves the chain, then explores until the last turn, then
answers from its memory alone), with the ``graded`` memory at ``--stress-budget`` tokens and the
``recency`` and ``uniform`` baselines at the same budget (``full`` too, for its context size). One
line per length and arm: accuracy, peak context tokens (question + memory), the raw history's
tokens, and the process' resident memory (VmRSS, MiB) after the length's episodes.

Run: ``python benchmarks/ziprl.py [--seeds 3] [--questions 12] [--out plots/]`` (PNGs under --out).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from trainer.ziprl.env import InProcessSearch, MultiHopSearchEnv
from trainer.ziprl.episode import ScriptedAgent, run_episode
from trainer.ziprl.hrr import hindsight_scores
from trainer.ziprl.memory import CompressionMemory, FullHistory, Memory, RecencyWindow, UniformTruncation
from trainer.ziprl.multihop import EXPLORATION_WORDS, Question, generate_questions, generate_world
from trainer.ziprl.text import count_tokens

Factory = Callable[[str], Memory]
ARMS: dict[str, Callable[[int], Factory]] = {
    "uniform": lambda budget: lambda q: UniformTruncation(q, budget),
    "recency": lambda budget: lambda q: RecencyWindow(q, budget),
    "graded": lambda budget: lambda q: CompressionMemory(q, budget),
}


def rss_mib() -> float:
    """The process' resident set now (VmRSS), in MiB; 0 where /proc is missing."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def trajectory(question: Question, turns: int) -> list[str]:
    """The fixed queries of (a): the hops spread evenly over ``turns``, exploration searches elsewhere."""
    turns = max(turns, question.hops)
    at = {round(j * turns / question.hops): j for j in range(question.hops)}
    queries = []
    for t in range(turns):
        if t in at:
            subject, relation, _ = question.chain[at[t]]
            queries.append(f"{relation} of {subject}")
        else:
            queries.append(EXPLORATION_WORDS[(t * 7 + question.hops) % len(EXPLORATION_WORDS)])
    return queries


def replay(question: Question, queries: list[str], search: InProcessSearch, factory: Factory) -> tuple[float, float, int]:
    """Feed the trajectory into a memory: (final evidence recall, mean h after arrival, final tokens)."""
    memory = factory(question.question)
    renders = []
    for turn, query in enumerate(queries):
        for hit in search.search(query, 3):
            memory.observe(turn, hit.text, item_id=hit.id, title=hit.title)
        memory.compress(turn)
        renders.append(memory.render())
    h = hindsight_scores(renders, question.needed)
    first_hop = next(t for t, q in enumerate(queries) if q.startswith(question.chain[0][1] + " of "))
    return h[-1], statistics.fmean(h[first_hop:]), memory.tokens()


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} [{min(values):.3f}-{max(values):.3f}]"


def part_a(args: argparse.Namespace) -> dict[str, dict[int, float]]:
    print(f"# (a) evidence recall vs token budget: {args.seeds} seeds x {args.questions} questions, "
          f"{args.turns} turns, k=3")
    per: dict[tuple[str, int], list[tuple[float, float, float]]] = {}
    full_tokens: list[float] = []
    for seed in range(args.seed, args.seed + args.seeds):
        world = generate_world(seed)
        search = InProcessSearch(world.documents)
        questions = generate_questions(world, args.questions, seed=seed)
        plans = [trajectory(q, args.turns) for q in questions]
        full = [replay(q, p, search, lambda text: FullHistory(text)) for q, p in zip(questions, plans, strict=True)]
        full_tokens.append(statistics.fmean(t for _, _, t in full))
        names = list(ARMS)
        rotated = names[seed % len(names):] + names[:seed % len(names)]  # arms alternate their order per seed
        for budget in args.budgets:
            for arm in rotated:
                runs = [replay(q, p, search, ARMS[arm](budget)) for q, p in zip(questions, plans, strict=True)]
                per.setdefault((arm, budget), []).append(
                    (statistics.fmean(r for r, _, _ in runs), statistics.fmean(m for _, m, _ in runs),
                     statistics.fmean(t for _, _, t in runs)))
    print(f"full history (no budget): evidence_recall=1.000 mean_tokens={statistics.median(full_tokens):.0f}")
    curves: dict[str, dict[int, float]] = {}
    for budget in args.budgets:
        anchor = statistics.median(r for r, _, _ in per[("uniform", budget)])
        for arm in ARMS:
            rows = per[(arm, budget)]
            recall = [r for r, _, _ in rows]
            ratio = statistics.median(recall) / anchor if anchor > 0 else float("inf")
            curves.setdefault(arm, {})[budget] = statistics.median(recall)
            print(f"budget={budget:<5d} arm={arm:<8s} evidence_recall={spread(recall)} "
                  f"mean_h={spread([m for _, m, _ in rows])} tokens={statistics.median(t for _, _, t in rows):.0f} "
                  f"recall_vs_uniform={ratio:.2f}x")
    return curves


def part_c(args: argparse.Namespace) -> dict[str, dict[int, tuple[float, int, float]]]:
    print(f"# (c) stress at inference: scripted agent, budget {args.stress_budget} tokens, "
          f"{args.stress_questions} questions (seed {args.seed})")
    world = generate_world(args.seed)
    search = InProcessSearch(world.documents)
    questions = generate_questions(world, args.stress_questions, seed=args.seed)
    arms: dict[str, Factory] = {name: make(args.stress_budget) for name, make in ARMS.items()}
    arms["full"] = lambda q: FullHistory(q)
    out: dict[str, dict[int, tuple[float, int, float]]] = {}
    for length in args.lengths:
        for arm, factory in arms.items():
            started = time.perf_counter()
            correct, peak, raw = 0, 0, 0
            for q in questions:
                env = MultiHopSearchEnv(search, k=3, max_turns=length)
                result = run_episode(env, ScriptedAgent(target_turns=length), factory, q.prompt_row())
                correct += result.correct
                peak = max(peak, result.peak_context_tokens)
                raw = max(raw, result.records[-1].raw_tokens if result.records else 0)
            accuracy = correct / len(questions)
            rss = rss_mib()
            out.setdefault(arm, {})[length] = (accuracy, peak, rss)
            print(f"turns={length:<4d} arm={arm:<8s} accuracy={accuracy:.3f} peak_context_tokens={peak} "
                  f"raw_history_tokens={raw} rss_mib={rss:.0f} seconds={time.perf_counter() - started:.1f}")
    bound = args.stress_budget + max(count_tokens(q.question) for q in questions)
    held = all(out["graded"][n][1] <= bound for n in args.lengths)
    print(f"graded peak context within budget + question ({bound} tokens) at every length: {held}")
    return out


def plot(out: Path, curves: dict[str, dict[int, float]], stress: dict[str, dict[int, tuple[float, int, float]]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for arm, curve in curves.items():
        ax.plot(list(curve), list(curve.values()), marker="o", label=arm)
    ax.set_xscale("log")
    ax.set_xlabel("memory budget (tokens)")
    ax.set_ylabel("evidence recall")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "ziprl_recall_vs_budget.png", dpi=120)
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    for arm, points in stress.items():
        lengths = list(points)
        left.plot(lengths, [points[n][0] for n in lengths], marker="o", label=arm)
        right.plot(lengths, [points[n][1] for n in lengths], marker="o", label=arm)
    left.set_xlabel("episode turns")
    left.set_ylabel("accuracy")
    right.set_xlabel("episode turns")
    right.set_ylabel("peak context tokens")
    right.set_yscale("log")
    left.legend()
    fig.tight_layout()
    fig.savefig(out / "ziprl_stress.png", dpi=120)
    print(f"plots: {out / 'ziprl_recall_vs_budget.png'}, {out / 'ziprl_stress.png'}")


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--questions", type=int, default=12)
    parser.add_argument("--turns", type=int, default=24, help="searches per trajectory in (a)")
    parser.add_argument("--budgets", type=_ints, default=[100, 200, 400, 800])
    parser.add_argument("--lengths", type=_ints, default=[32, 64, 128, 256])
    parser.add_argument("--stress-budget", type=int, default=300)
    parser.add_argument("--stress-questions", type=int, default=12)
    parser.add_argument("--skip", choices=["a", "c"], default=None, help="leave one part out")
    parser.add_argument("--out", type=Path, default=None, help="folder for the PNGs (none without it)")
    args = parser.parse_args(argv)
    curves = part_a(args) if args.skip != "a" else {}
    stress = part_c(args) if args.skip != "c" else {}
    if args.out is not None:
        plot(args.out, curves, stress)


if __name__ == "__main__":
    main()
