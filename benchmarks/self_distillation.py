"""Self-distillation on CPU (issue 17, item 4): π-Play's privileged-context ablation and AMR-SD against
GRPO and a raw-reference teacher, through the trainer's own ``self_distillation:`` section.

The task (a synthetic 2-hop lookup, deterministic from ``--seed``): ten entities 0…9 and two hidden
permutations f and g; the question ``q x ?`` asks for g(f(x)), one digit; reward 1 for an exact match
of the stripped completion, else 0. The row's question-construction path (QCP) is the reverse trace
``x f f(x) g g(f(x))``; its reference solution spells the same (``f(x) = …, g(…) = …, so the answer is …``).

Held fixed across arms: one tiny random Qwen2 (``trainer.tiny_models``) fine-tuned briefly by
cross-entropy (``--sft-steps``) on (a) questions with a privileged context in the teacher's format
(``trainer.self_distillation.loop.PRIVILEGED_HEADER``; half QCP-shaped, half bare answer, with *random*
targets, so what it learns is to read the answer off a context, not the task's answers) and (b) the
bare question for ``--known`` of the ten entities only, so the student starts partly right and the
teacher, shown the context, can be right everywhere. Every arm starts from that
folder and runs ``GRPOTrainer`` with the same seed, steps and sampling; only ``self_distillation``
differs. The teacher is in process (``teacher.backend: in_process``).

(a) π-Play — ``qcp`` (teacher sees the QCP), ``answer`` (the bare answer), ``none`` (GRPO only); EMA
    teacher τ = 0.05, λ₀ = ``--lam`` decaying linearly over rounds of ``--round`` steps.
(b) AMR-SD — ``grpo``, ``raw_reference`` (AMR-SD's gates with the raw reference as the context, no
    reflection bottleneck), ``amr_sd`` (hints). A tiny random model writes no usable hint, so the
    reflector is a SCRIPTED STAND-IN: it names the first hop of the path (``Start from f(x) = …``),
    and the leak filter rejects that hint when it happens to spell the answer; over ``--steps-b``
    steps (a longer run) with α₀ = ``--alpha`` annealed linearly.

One line per arm (mean±sd across ``--seeds`` seeds, each with its own task and start):

    part=<a|b> arm=<name> acc=<greedy accuracy on the 10 questions> reward_last=<mean training reward,
    last quarter> reward_min_late=<lowest 5-step mean, second half> entropy_last=<mean, last quarter>
    <arm metrics> step_ms=<median>

after a first line with the start's greedy accuracy without and with the QCP in its context, and
then ``qcp_vs_answer``, ``qcp_vs_none`` (accuracy ratios) and ``amr_vs_raw_late`` (late reward ratio).
With ``--out``: reward and entropy PNGs per part, ``self_distillation_runs.json`` and ``table.md``.

    python benchmarks/self_distillation.py [--steps 30] [--steps-b 40] [--seeds 1] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

from trainer.config import parse_config  # noqa: E402
from trainer.grpo import GRPOTrainer, collate  # noqa: E402
from trainer.logprobs import completion_logprobs  # noqa: E402
from trainer.rewards import CallableRewards, RewardItem  # noqa: E402
from trainer.rollout import Rollout  # noqa: E402
from trainer.self_distillation.loop import PRIVILEGED_HEADER, SelfDistillation  # noqa: E402

ENTITIES = 10


@dataclass(frozen=True)
class Task:
    f: list[int]
    g: list[int]

    def answer(self, x: int) -> int:
        return self.g[self.f[x]]

    def question(self, x: int) -> str:
        return f"q {x} ?"

    def qcp(self, x: int) -> str:
        return f"{x} f {self.f[x]} g {self.answer(x)}"

    def reference(self, x: int) -> str:
        return f"f({x}) = {self.f[x]}, g({self.f[x]}) = {self.answer(x)}, so the answer is {self.answer(x)}"

    def rows(self) -> list[dict[str, Any]]:
        return [{"prompt": self.question(x), "reward_model": {"ground_truth": str(self.answer(x))}, "data_source": "2hop",
                 "extra_info": {"qcp": self.qcp(x), "hops": 2, "reference": self.reference(x)}}
                for x in range(ENTITIES)]


def make_task(seed: int) -> Task:
    rng = random.Random(seed)
    f, g = list(range(ENTITIES)), list(range(ENTITIES))
    rng.shuffle(f)
    rng.shuffle(g)
    return Task(f, g)


def exact(completion: str, truth: Any, _item: RewardItem) -> float:
    return 1.0 if completion.strip() == str(truth) else 0.0


def first_hop_hints(task: Task) -> Any:
    """SCRIPTED STAND-IN for the reflector: the first hop of the question's path, as a Socratic hint."""
    def write(prompt: str) -> str:
        marker = "Question:\nq "
        start = prompt.find(marker)
        x = int(prompt[start + len(marker)]) if start >= 0 else 0
        return f"Start from f({x}) = {task.f[x]}, then apply g."
    return write


# ---------------------------------------------------------------- the shared start


def sft_start(task: Task, folder: Path, args: argparse.Namespace, seed: int) -> Path:
    """The tiny model after brief cross-entropy on the context-reading and partly known questions."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.tiny_models import build_tiny_causal_lm

    base = build_tiny_causal_lm(folder / "base", seed=seed, hidden_size=args.hidden)
    tokenizer = AutoTokenizer.from_pretrained(str(base), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(base), local_files_only=True)
    eos = int(tokenizer.eos_token_id)

    def ids(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    examples: list[tuple[list[int], list[int]]] = []
    rng = random.Random(seed)
    for x in range(ENTITIES):
        # Reading the context: paths of random permutations (never the task's), so the only way to the
        # target is to read it off the context, not to learn the task's answer for x.
        for _ in range(4):
            hop, target = rng.randrange(ENTITIES), rng.randrange(ENTITIES)
            answer = [*ids(str(target)), eos]
            for context in (f"{x} f {hop} g {target}", f"The answer is {target}."):
                examples.append((ids(PRIVILEGED_HEADER.format(context=context) + task.question(x)), answer))
        if x < args.known:
            examples.extend([(ids(task.question(x)), [*ids(str(task.answer(x))), eos])] * 4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.sft_lr)
    pad = int(tokenizer.pad_token_id)
    model.train()
    for _ in range(args.sft_steps):
        chosen = rng.sample(examples, min(16, len(examples)))
        batch = collate([Rollout(prompt_index=i, prompt_ids=p, completion_ids=c, text="", truncated=False)
                         for i, (p, c) in enumerate(chosen)], pad)
        logp, _ = completion_logprobs(model, batch, 1.0)
        loss = -(logp * batch.completion_mask).sum() / batch.completion_mask.sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
    out = folder / "start"
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    return out


def greedy_accuracy(model: Any, tokenizer: Any, task: Task, *, context: str | None = None) -> float:
    """Greedy exact match over the ten questions (the student; with ``context="qcp"`` the teacher's view)."""
    model.eval()
    right = 0
    with torch.no_grad():
        for x in range(ENTITIES):
            text = task.question(x)
            if context == "qcp":
                text = PRIVILEGED_HEADER.format(context=task.qcp(x)) + text
            ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=2, do_sample=False,
                                 pad_token_id=int(tokenizer.pad_token_id))
            right += tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip() == str(task.answer(x))
    model.train()
    return right / ENTITIES


# ---------------------------------------------------------------- one arm


@dataclass
class Run:
    part: str
    arm: str
    seed: int
    rewards: list[float] = field(default_factory=list)
    entropy: list[float] = field(default_factory=list)
    extra: dict[str, list[float]] = field(default_factory=dict)
    step_ms: list[float] = field(default_factory=list)
    accuracy: float = 0.0


def run_arm(part: str, arm: str, sd: dict[str, Any] | None, start: Path, data: Path, task: Task, steps: int,
            args: argparse.Namespace, work: Path, seed: int) -> Run:
    settings: dict[str, Any] = {"model": {"path": str(start)}, "dataset": str(data), "group_size": args.group,
                                "prompts_per_step": args.prompts, "max_steps": steps, "learning_rate": args.lr,
                                "max_completion_length": 2, "seed": seed, "output_dir": str(work / f"{part}-{arm}"),
                                "export_hf": "none", "entropy_coef": 0.0}
    if sd is not None:
        settings["self_distillation"] = sd
    trainer = GRPOTrainer(parse_config(settings, local=True), rewards=CallableRewards(exact))
    if sd is not None and sd["method"] == "amr_sd" and sd.get("amr_sd", {}).get("context", "hint") == "hint":
        trainer.self_distill = SelfDistillation.build(trainer, hint_writer=first_hop_hints(task))
    run = Run(part, arm, seed)
    keys = ("sd/distill_kl", "sd/modulated_share", "sd/mean_abs_cig", "sd/leak_rejections", "sd/hints")
    for metrics in trainer.train().history:
        run.rewards.append(float(metrics["reward_mean"]))
        run.entropy.append(float(metrics.get("entropy", 0.0)))
        run.step_ms.append(1000 * float(metrics["step_time_s"]))
        for key in keys:
            if key in metrics:
                run.extra.setdefault(key, []).append(float(metrics[key]))
    run.accuracy = greedy_accuracy(trainer.model, trainer.tokenizer, task)
    return run


def late_min(values: list[float], window: int = 5) -> float:
    half = values[len(values) // 2:]
    if len(half) < window:
        return min(half) if half else 0.0
    return min(statistics.fmean(half[i:i + window]) for i in range(len(half) - window + 1))


def last_quarter(values: list[float]) -> float:
    tail = values[-max(1, len(values) // 4):]
    return statistics.fmean(tail) if tail else 0.0


def mean_sd(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.3f}" if values else "nan"
    return f"{statistics.fmean(values):.3f}±{statistics.stdev(values):.3f}"


def line(runs: list[Run]) -> str:
    """One arm over its seeds: mean±sd across seeds (a single value with one seed)."""
    first = runs[0]
    parts = [f"part={first.part}", f"arm={first.arm}", f"acc={mean_sd([r.accuracy for r in runs])}",
             f"reward_last={mean_sd([last_quarter(r.rewards) for r in runs])}",
             f"reward_min_late={mean_sd([late_min(r.rewards) for r in runs])}",
             f"entropy_last={mean_sd([last_quarter(r.entropy) for r in runs])}"]
    for key in sorted(first.extra):
        parts.append(f"{key.removeprefix('sd/')}={statistics.fmean(v for r in runs for v in r.extra.get(key, [])):.3f}")
    parts.append(f"step_ms={statistics.median(ms for r in runs for ms in r.step_ms):.0f}")
    return " ".join(parts)


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else "inf" if a else "nan"


def plots(runs: list[Run], out: Path) -> None:
    """Per part: each arm's training reward and entropy per step, averaged over the seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for part in ("a", "b"):
        chosen = [r for r in runs if r.part == part]
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
        for arm in dict.fromkeys(r.arm for r in chosen):
            mine = [r for r in chosen if r.arm == arm]
            axes[0].plot([statistics.fmean(v) for v in zip(*(r.rewards for r in mine), strict=True)], label=arm)
            axes[1].plot([statistics.fmean(v) for v in zip(*(r.entropy for r in mine), strict=True)], label=arm)
        axes[0].set_title(f"part {part}: training reward")
        axes[1].set_title(f"part {part}: entropy")
        for ax in axes:
            ax.set_xlabel("step")
            ax.legend()
        fig.tight_layout()
        fig.savefig(out / f"self_distillation_{part}.png", dpi=110)
        plt.close(fig)


def main(argv: list[str] | None = None) -> list[Run]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30, help="steps of part (a)")
    parser.add_argument("--steps-b", type=int, default=40, help="steps of part (b), the longer run")
    parser.add_argument("--seed", type=int, default=0, help="first seed")
    parser.add_argument("--seeds", type=int, default=1, help="seeds (each its own task and start)")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--lam", type=float, default=1.0, help="π-Play λ₀")
    parser.add_argument("--round", type=int, default=10, help="π-Play steps per round")
    parser.add_argument("--alpha", type=float, default=1.0, help="AMR-SD α₀")
    parser.add_argument("--known", type=int, default=4, help="questions the start knows without context")
    parser.add_argument("--sft-steps", type=int, default=150)
    parser.add_argument("--sft-lr", type=float, default=3e-3)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="folder for the PNGs, the table and the runs' JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    teacher = {"backend": "in_process"}
    pi = {"steps_per_round": args.round, "lambda0": args.lam, "top_k": 16}
    amr = {"alpha0": args.alpha, "tau_plus": 0.05, "tau_minus": 0.05, "schedule": "linear"}
    arms: list[tuple[str, str, dict[str, Any] | None, int]] = [
        ("a", "qcp", {"method": "pi_play", "teacher": teacher, "pi_play": {**pi, "privileged": "qcp"}}, args.steps),
        ("a", "answer", {"method": "pi_play", "teacher": teacher, "pi_play": {**pi, "privileged": "answer"}},
         args.steps),
        ("a", "none", None, args.steps),
        ("b", "grpo", None, args.steps_b),
        ("b", "raw_reference", {"method": "amr_sd", "teacher": {**teacher, "weights": "policy"},
                                "amr_sd": {**amr, "context": "reference"}}, args.steps_b),
        ("b", "amr_sd", {"method": "amr_sd", "teacher": {**teacher, "weights": "policy"},
                         "amr_sd": {**amr, "context": "hint"}}, args.steps_b),
    ]
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="sd-bench-") as tmp:
        for seed in range(args.seed, args.seed + args.seeds):
            task = make_task(seed)
            work = Path(tmp) / f"seed-{seed}"
            work.mkdir()
            data = work / "2hop.jsonl"
            data.write_text("".join(json.dumps(row) + "\n" for row in task.rows()))
            start = sft_start(task, work, args, seed)
            from transformers import AutoModelForCausalLM, AutoTokenizer

            model = AutoModelForCausalLM.from_pretrained(str(start), local_files_only=True)
            tokenizer = AutoTokenizer.from_pretrained(str(start), local_files_only=True)
            print(f"start seed={seed} acc_student={greedy_accuracy(model, tokenizer, task):.2f} "
                  f"acc_with_qcp={greedy_accuracy(model, tokenizer, task, context='qcp'):.2f}", flush=True)
            del model
            # Arms alternate within each seed (the order rotates with the seed), so load falls on each alike.
            shift = seed % len(arms)
            for part, arm, sd, steps in arms[shift:] + arms[:shift]:
                runs.append(run_arm(part, arm, sd, start, data, task, steps, args, work, seed))
    grouped = {(part, arm): [r for r in runs if (r.part, r.arm) == (part, arm)] for part, arm, _, _ in arms}
    for chosen in grouped.values():
        print(line(chosen), flush=True)

    def acc(part: str, arm: str) -> float:
        return statistics.fmean(r.accuracy for r in grouped[part, arm])

    def late(part: str, arm: str) -> float:
        return statistics.fmean(last_quarter(r.rewards) for r in grouped[part, arm])

    print(f"qcp_vs_answer={ratio(acc('a', 'qcp'), acc('a', 'answer'))} qcp_vs_none={ratio(acc('a', 'qcp'), acc('a', 'none'))} "
          f"amr_vs_raw_late={ratio(late('b', 'amr_sd'), late('b', 'raw_reference'))} "
          f"amr_vs_grpo_late={ratio(late('b', 'amr_sd'), late('b', 'grpo'))}")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "self_distillation_runs.json").write_text(json.dumps([r.__dict__ for r in runs], indent=1))
        table = ["| part | arm | seeds | acc | reward (last ¼) | lowest late 5-step reward | entropy (last ¼) |",
                 "| --- | --- | --- | --- | --- | --- | --- |"]
        for (part, arm), chosen in grouped.items():
            table.append(f"| {part} | {arm} | {len(chosen)} | {mean_sd([r.accuracy for r in chosen])} | "
                         f"{mean_sd([last_quarter(r.rewards) for r in chosen])} | "
                         f"{mean_sd([late_min(r.rewards) for r in chosen])} | "
                         f"{mean_sd([last_quarter(r.entropy) for r in chosen])} |")
        (args.out / "table.md").write_text("\n".join(table) + "\n")
        plots(runs, args.out)
    return runs


if __name__ == "__main__":
    main()
