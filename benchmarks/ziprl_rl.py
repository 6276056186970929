"""ZipRL part (b): RL on a tiny policy on the synthetic multi-hop task, one line per arm.

Arms, all in the same engine (``trainer.agent`` with ``multi_turn.ziprl``; only the memory and HRR
differ): ``full`` (every observation kept verbatim), ``uniform`` (uniform truncation to
``--budget`` tokens), ``ziprl_no_hrr`` (graded five-level memory at the same budget, outcome
advantage on every turn), ``ziprl`` (graded memory + Hindsight Response Replay, β = 0.5).

Per arm and seed, from the same tiny random model (``trainer.tiny_models``, tokenizer trained on the
world's documents and the scripted actions):

1. **warm-up** — supervised next-token training on the scripted agent's actions
   (``trainer.ziprl.episode.ScriptedAgent``) under that arm's own contexts: the traces come from the
   very engine and memory the arm trains with (a scripted test-double engine plays the policy), so
   the policy learns the action format and to copy names out of its context;
2. **RL** — ``--steps`` GRPO steps (``--prompts`` × ``--group`` episodes a step, dapo loss) on the
   training questions, the reward 1 for a correct final ``answer:``;
3. **evaluation** — ``--eval-questions`` held-out questions of the same world, ``--eval-samples``
   episodes each at temperature ``--eval-temperature``: accuracy, and tokens per episode = the
   context tokens the policy read over all its turns plus the tokens it wrote (the memory's cost).

Printed: ``arm=<name> acc=<mean±sd> tokens_per_episode=<y>`` (mean ± sd over seeds; the arms run in a
rotating order per seed), plus the warm-up-only accuracy (``acc_warmup``), the scripted teacher's own
accuracy under that arm's memory on the training questions (``acc_scripted_teacher``: the ceiling of
imitation) and the mean peak context.

Run: ``python -m benchmarks.ziprl_rl [--seeds 2] [--steps 8]`` (CPU; minutes at the defaults).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torch

from trainer.agent import AgentRolloutEngine, AgentSettings
from trainer.data import PromptRow
from trainer.rollout import Rollout, SamplingSettings
from trainer.ziprl.config import ZipRLConfig
from trainer.ziprl.env import InProcessSearch, MultiHopSearchEnv, normalise_answer
from trainer.ziprl.episode import ScriptedAgent
from trainer.ziprl.multihop import Question, generate_questions, generate_world

WORLD_SEED = 0
K = 2  # passages per search
MAX_TURNS = 5


def arms(budget: int) -> dict[str, dict[str, Any]]:
    return {"full": {"memory": "full"},
            "uniform": {"memory": "uniform", "budget_tokens": budget},
            "ziprl_no_hrr": {"memory": "graded", "budget_tokens": budget, "hrr": {"enabled": False}},
            "ziprl": {"memory": "graded", "budget_tokens": budget, "hrr": {"beta": 0.5}}}


_SEARCH: dict[int, InProcessSearch] = {}


def bench_env(row: Any) -> Any:  # a MultiHopSearchEnv (its StepResult carries passages)
    """``multi_turn.environment: benchmarks.ziprl_rl:bench_env``: the world's search with k = 2."""
    if WORLD_SEED not in _SEARCH:
        _SEARCH[WORLD_SEED] = InProcessSearch(generate_world(seed=WORLD_SEED).documents)
    return MultiHopSearchEnv(_SEARCH[WORLD_SEED], k=K, max_turns=MAX_TURNS)


def row_of(question: Question) -> dict[str, Any]:
    row = question.prompt_row()
    row["prompt"] = question.question  # plain text: the tiny tokenizer's prompt is the question itself
    return row


def prompt_row(index: int, question: Question) -> PromptRow:
    row = row_of(question)
    return PromptRow(index, row["prompt"], row["reward_model"]["ground_truth"], extra_info=row["extra_info"])


_ANSWER = re.compile(r"answer:\s*([^\n]*)")


def score(text: str, truth: Any, _item: Any = None) -> float:
    """1.0 when the last ``answer:`` of the episode's actions is the ground truth (case, spaces ignored)."""
    found = _ANSWER.findall(text)
    return float(bool(found) and normalise_answer(found[-1]) == normalise_answer(str(truth)))


class ScriptedPolicyEngine:
    """TEST DOUBLE of a rollout engine that plays the scripted agent: it decodes each context, reads the
    question out of it, and writes ``ScriptedAgent``'s action and a newline, the turn's stop marker (an EOS
    would end the episode); the warm-up's teacher."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.agent = ScriptedAgent()

    def eos_ids(self) -> list[int]:
        return [int(self.tokenizer.eos_token_id)]

    def generate(self, prompts: list[list[int]], sampling: SamplingSettings, seed: int) -> list[Rollout]:
        out = []
        for index, prompt in enumerate(prompts):
            context = self.tokenizer.decode(prompt, skip_special_tokens=True)
            found = re.search(r"Question: ([^\n]*\?)", context)
            action = self.agent.act(found.group(1) if found else "", context, 0)
            ids = list(self.tokenizer(action + "\n", add_special_tokens=False)["input_ids"])
            out.append(Rollout(index, list(prompt), ids[:sampling.max_new_tokens], action, False))
        return out

    def sync_weights(self, model: torch.nn.Module) -> None:
        del model


def settings() -> AgentSettings:
    return AgentSettings(stop_markers=("\n",), max_turns=MAX_TURNS, max_episode_tokens=96, max_turn_tokens=24,
                         max_observation_tokens=320)


def build_model(out: Path, questions: list[Question], seed: int) -> Path:
    from trainer.tiny_models import build_tiny_causal_lm

    world = generate_world(seed=WORLD_SEED)
    corpus = [d.title + ": " + d.text for d in world.documents] + [q.question for q in questions]
    corpus += [f"search: {r} of {s}\nanswer: {o}" for q in questions for s, r, o in q.chain]
    return build_tiny_causal_lm(out, seed=seed, hidden_size=64, num_layers=2, corpus=corpus, vocab_size=768,
                                max_position_embeddings=2048)


def traces(model_dir: Path, arm: dict[str, Any],
           questions: list[Question]) -> tuple[list[tuple[list[int], list[int]]], float]:
    """(turn prompt, action tokens) of the scripted agent's episodes under the arm's memory, and the
    scripted agent's accuracy there (what a perfect imitator of it would reach with this memory)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    agent = AgentRolloutEngine(ScriptedPolicyEngine(tokenizer), tokenizer, bench_env, settings(),
                               ziprl=ZipRLConfig.from_dict(arm))
    rows = [prompt_row(i, q) for i, q in enumerate(questions)]
    prompts = [list(tokenizer(r.prompt, add_special_tokens=False)["input_ids"]) for r in rows]
    pairs, correct = [], []
    for rollout in agent.generate(prompts, SamplingSettings(group_size=1, max_new_tokens=24), seed=0, rows=rows):
        correct.append(score(rollout.text, rows[rollout.prompt_index].ground_truth))
        for (start, end), context in zip(rollout.turn_bounds or [], rollout.turn_prompts or [], strict=True):
            pairs.append((context, rollout.completion_ids[start:end]))
    return pairs, statistics.fmean(correct)


def warm_up(model_dir: Path, pairs: list[tuple[list[int], list[int]]], *, steps: int, seed: int,
            batch_size: int = 8, learning_rate: float = 3e-3) -> float:
    """Next-token cross-entropy on the action tokens of ``pairs``, in place; the last loss."""
    from transformers import AutoModelForCausalLM

    rng = random.Random(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), local_files_only=True)
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
        loss_value = float("nan")
        for _ in range(steps):
            chosen = [rng.choice(pairs) for _ in range(batch_size)]
            width = max(len(p) + len(a) for p, a in chosen)
            ids = torch.zeros((batch_size, width), dtype=torch.long)
            weights = torch.zeros((batch_size, width))
            attention = torch.zeros((batch_size, width), dtype=torch.long)
            for row, (prompt, action) in enumerate(chosen):
                sequence = prompt + action
                ids[row, :len(sequence)] = torch.tensor(sequence)
                weights[row, len(prompt):len(sequence)] = 1.0
                attention[row, :len(sequence)] = 1
            logits = model(input_ids=ids, attention_mask=attention).logits[:, :-1]
            nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                                                    reduction="none").view(batch_size, width - 1)
            loss = (nll * weights[:, 1:]).sum() / weights[:, 1:].sum()
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            loss_value = float(loss.detach())
    model.save_pretrained(model_dir)
    return loss_value


def evaluate(trainer: Any, questions: list[Question], samples: int, temperature: float) -> dict[str, float]:
    rows = [prompt_row(i, q) for i, q in enumerate(questions)]
    prompts = [list(trainer.tokenizer(r.prompt, add_special_tokens=False)["input_ids"]) for r in rows]
    rollouts = trainer.agent.generate(prompts, SamplingSettings(group_size=samples, max_new_tokens=96,
                                                                temperature=temperature), seed=12_345, rows=rows)
    correct = [score(r.text, rows[r.prompt_index].ground_truth) for r in rollouts]
    tokens = [(r.episode_stats or {}).get("context_tokens", 0.0) + len(r.completion_ids) for r in rollouts]
    peaks = [(r.episode_stats or {}).get("peak_context_tokens", 0.0) for r in rollouts]
    return {"acc": statistics.fmean(correct), "tokens": statistics.fmean(tokens), "peak": statistics.fmean(peaks)}


def run_arm(name: str, arm: dict[str, Any], seed: int, args: argparse.Namespace, work: Path,
            train: list[Question], held_out: list[Question], base: Path) -> dict[str, float]:
    from trainer.config import parse_config
    from trainer.grpo import GRPOTrainer
    from trainer.rewards import CallableRewards

    model_dir = work / f"{name}-{seed}" / "model"
    shutil.copytree(base, model_dir)
    pairs, scripted = traces(model_dir, arm, train)
    warm_up(model_dir, pairs, steps=args.warmup_steps, seed=seed)
    dataset = work / f"{name}-{seed}" / "train.jsonl"
    dataset.write_text("".join(json.dumps(row_of(q)) + "\n" for q in train))
    config = parse_config({
        "model": {"path": str(model_dir)}, "dataset": str(dataset), "seed": seed, "group_size": args.group,
        "prompts_per_step": args.prompts, "max_steps": max(1, args.steps), "max_completion_length": 96,
        "learning_rate": args.learning_rate, "loss_type": "dapo", "temperature": 1.0,
        "output_dir": str(work / f"{name}-{seed}" / "run"), "export_hf": "none",
        "multi_turn": {"environment": "benchmarks.ziprl_rl:bench_env", "max_turns": MAX_TURNS, "max_turn_tokens": 24,
                       "max_observation_tokens": 320, "stop_markers": ["\n"], "ziprl": arm}}, local=True)
    trainer = GRPOTrainer(config, rewards=CallableRewards(score))
    before = evaluate(trainer, held_out, args.eval_samples, args.eval_temperature)
    history = [trainer.train_step() for _ in range(args.steps)]
    after = evaluate(trainer, held_out, args.eval_samples, args.eval_temperature)
    trainer.rewards.close()
    return {"acc": after["acc"], "tokens": after["tokens"], "peak": after["peak"], "acc_warmup": before["acc"],
            "acc_scripted": scripted,
            "train_reward": statistics.fmean(m["reward_mean"] for m in history) if history else 0.0,
            "updates": float(sum("skipped_update" not in m for m in history))}


def main(argv: list[str] | None = None) -> dict[str, list[dict[str, float]]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup-steps", type=int, default=150)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--budget", type=int, default=120)
    parser.add_argument("--questions", type=int, default=24, help="training questions (2-3 hops)")
    parser.add_argument("--eval-questions", type=int, default=12)
    parser.add_argument("--eval-samples", type=int, default=2)
    parser.add_argument("--eval-temperature", type=float, default=0.5)
    parser.add_argument("--learning-rate", type=float, default=2e-4)
    parser.add_argument("--arms", default="full,uniform,ziprl_no_hrr,ziprl")
    parser.add_argument("--seed-list", default=None, help="these seeds instead of 0..seeds-1 (e.g. 3,4)")
    parser.add_argument("--json", type=Path, default=None, help="also write the per-seed results here")
    parser.add_argument("--merge", type=Path, nargs="*", default=None,
                        help="print the lines of earlier --json files (runs split over processes) and stop")
    args = parser.parse_args(argv)
    if args.merge is not None:
        merged: dict[str, list[dict[str, float]]] = {}
        for path in args.merge:
            for name, runs in json.loads(path.read_text()).items():
                merged.setdefault(name, []).extend(runs)
        order = [n for n in arms(args.budget) if n in merged]
        report({n: merged[n] for n in order})
        return merged
    world = generate_world(seed=WORLD_SEED)
    every = generate_questions(world, args.questions + args.eval_questions, seed=1, hops=(2, 3))
    train, held_out = every[:args.questions], every[args.questions:]
    chosen = {name: arm for name, arm in arms(args.budget).items() if name in args.arms.split(",")}
    results: dict[str, list[dict[str, float]]] = {name: [] for name in chosen}
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        seeds = [int(s) for s in args.seed_list.split(",")] if args.seed_list else list(range(args.seeds))
        for seed in seeds:
            base = build_model(work / f"base-{seed}", every, seed)
            names = list(chosen)
            names = names[seed % len(names):] + names[:seed % len(names)]  # rotate the order per seed
            for name in names:
                results[name].append(run_arm(name, chosen[name], seed, args, work, train, held_out, base))
    if args.json is not None:
        args.json.write_text(json.dumps(results))
    report(results)
    return results


def report(results: dict[str, list[dict[str, float]]]) -> None:
    for name, runs in results.items():
        accs = [r["acc"] for r in runs]
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        warm = statistics.fmean(r["acc_warmup"] for r in runs)
        print(f"arm={name} acc={statistics.fmean(accs):.3f}±{sd:.3f} "
              f"tokens_per_episode={statistics.fmean(r['tokens'] for r in runs):.1f} "
              f"acc_warmup={warm:.3f} acc_scripted_teacher={statistics.fmean(r['acc_scripted'] for r in runs):.3f} "
              f"peak_context_tokens={statistics.fmean(r['peak'] for r in runs):.1f} "
              f"train_reward={statistics.fmean(r.get('train_reward', 0.0) for r in runs):.3f} "
              f"updates={statistics.fmean(r.get('updates', 0.0) for r in runs):.1f}", flush=True)


if __name__ == "__main__":
    main()
