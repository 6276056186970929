"""OCC against the other MTP regimes, on CPU: a tiny Qwen2 model with an MTP head, trained by GRPO on a
verifiable toy task, the same steps and seeds for every regime.

The task: ``reverse 3714:`` → ``4173`` (four digits, one token each), reward 1 for an exact match of
the decoded completion, else 0. Held fixed across regimes:

- the start: one tiny random Qwen2 (``trainer.tiny_models``) fine-tuned briefly (cross-entropy on
  gold answers at ``--sft-lr``, rounds of 25 steps until the accuracy on 64 training prompts reaches
  ``--sft-target``, at most ``--sft-steps``) to a partial accuracy, and one MTP head (``trainer.mtp``) warmed up
  on the same gold sequences with the trunk frozen (``--warmup-steps``) — built once, every regime
  starts from copies of both;
- the RL: per step ``--prompts`` prompts x G = ``--group`` rollouts (``trainer.rollout``'s
  TransformersEngine, temperature 1, full softmax), group advantages, ``--mini-batches`` AdamW steps
  per rollout batch (dapo loss, clip 0.2 / 0.28, lr ``--lr``, the head's parameters in the same
  optimizer), prompts and sampling seeds drawn from (seed, step) alike for every regime;
- the regimes: ``detach`` (the head learns by CE on a detached trunk), ``ce`` (λ = 0.1),
  ``policy`` with λ = 0.1 and 0.5, ``occ`` (λ₊ = ``--lambda-plus``); the loop is
  ``trainer.mtp.update_with_mtp`` (main-head GRPO loss + ``trainer.occ.mtp_loss``);
- the machine: one process, torch threads pinned (``--threads``), regimes alternated within each
  seed (the order rotates with the seed) so load on the machine falls on each alike.

Reported per regime (median over the seeds' runs where a spread is shown as ±sd across seeds):

    regime=<name> reward=<mean±sd> mtp_acc=<x> step_ms=<y>

``reward``: exact-match accuracy on ``--eval-prompts`` held-out prompts x 4 samples after the last
step (the same eval draws for every regime); ``mtp_acc``: on those eval rollouts, the share of
completion tokens whose MTP top-1 equals the actual token two ahead of the head's input; ``step_ms``:
median CPU time of this process per training step (generation + update; ``time.process_time``, one
torch thread, so that other load on a shared machine does not land on one regime's figure). Then ``occ_vs_detach=<occ reward /
detach reward>``. With ``--out``: reward / acceptance / λ_t PNGs and ``occ_runs.json``.

    python benchmarks/occ.py [--steps 60] [--seeds 2] [--prompts 8] [--group 8] [--mini-batches 4] [--lr 3e-4] [--out DIR]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

from trainer.algorithms import group_advantages  # noqa: E402
from trainer.checkpoint import derive_seed  # noqa: E402
from trainer.grpo import collate  # noqa: E402
from trainer.logprobs import completion_logprobs  # noqa: E402
from trainer.mtp import (  # noqa: E402
    MtpHead,
    UpdateOptions,
    build_mtp_head,
    joint_logprobs,
    update_with_mtp,
    warmup_mtp_head,
)
from trainer.occ import MtpSettings, mtp_acceptance  # noqa: E402
from trainer.rollout import Rollout, SamplingSettings, TransformersEngine  # noqa: E402

DIGITS = 4
MAX_NEW_TOKENS = DIGITS + 2


@dataclass(frozen=True)
class Arm:
    name: str
    settings: MtpSettings


def arms(lambda_plus: float) -> list[Arm]:
    return [Arm("detach", MtpSettings(regime="detach")),
            Arm("ce", MtpSettings.model_validate({"regime": "ce", "lambda": 0.1})),
            Arm("policy_0.1", MtpSettings.model_validate({"regime": "policy", "lambda": 0.1})),
            Arm("policy_0.5", MtpSettings.model_validate({"regime": "policy", "lambda": 0.5})),
            Arm("occ", MtpSettings(regime="occ", lambda_plus=lambda_plus))]


# ---------------------------------------------------------------- the task


@dataclass
class Task:
    tokenizer: Any
    train: list[str]
    held_out: list[str]
    prompt_ids: dict[str, list[int]] = field(default_factory=dict)

    def prompt(self, digits: str) -> list[int]:
        if digits not in self.prompt_ids:
            self.prompt_ids[digits] = list(self.tokenizer(f"reverse {digits}:", add_special_tokens=False)["input_ids"])
        return self.prompt_ids[digits]

    def answer(self, digits: str) -> list[int]:
        ids = list(self.tokenizer(digits[::-1], add_special_tokens=False)["input_ids"])
        return [*ids, int(self.tokenizer.eos_token_id)]

    def reward(self, digits: str, rollout: Rollout) -> float:
        return 1.0 if rollout.text.strip() == digits[::-1] else 0.0


def make_task(tokenizer: Any, *, seed: int, held_out: int) -> Task:
    rng = random.Random(seed)
    every = [f"{n:0{DIGITS}d}" for n in range(10 ** DIGITS)]
    rng.shuffle(every)
    return Task(tokenizer, train=every[held_out:], held_out=every[:held_out])


def gold_batch(task: Task, items: list[str]) -> Any:
    rollouts = [Rollout(prompt_index=i, prompt_ids=task.prompt(d), completion_ids=task.answer(d), text="",
                        truncated=False) for i, d in enumerate(items)]
    return collate(rollouts, int(task.tokenizer.pad_token_id))


def supervised(model: Any, task: Task, *, steps: int, batch_size: int, lr: float, seed: int) -> None:
    """Cross-entropy on gold answers (completion tokens only): the shared partially trained start."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    rng = random.Random(seed)
    for _ in range(steps):
        batch = gold_batch(task, rng.sample(task.train, batch_size))
        logp, _ = completion_logprobs(model, batch, 1.0)
        loss = -(logp * batch.completion_mask).sum() / batch.completion_mask.sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()


def evaluate(model: Any, head: MtpHead, task: Task, engine: TransformersEngine, seed: int) -> tuple[float, float]:
    """(exact-match accuracy, MTP acceptance) on the held-out prompts, 4 samples each, fixed seed."""
    sampling = SamplingSettings(group_size=4, max_new_tokens=MAX_NEW_TOKENS)
    rollouts = engine.generate([task.prompt(d) for d in task.held_out], sampling, seed)
    rewards = [task.reward(task.held_out[r.prompt_index], r) for r in rollouts]
    batch = collate(rollouts, int(task.tokenizer.pad_token_id))
    with torch.no_grad():
        joint = joint_logprobs(model, head, batch)
    accepted = mtp_acceptance(joint.mtp_top1, batch.completion_ids, batch.completion_mask * joint.mtp_mask)
    return sum(rewards) / len(rewards), accepted


# ---------------------------------------------------------------- one run


@dataclass
class Run:
    arm: str
    seed: int
    rewards: list[float] = field(default_factory=list)  # training reward per step
    acceptance: list[float] = field(default_factory=list)  # mean MTP acceptance on the step's rollouts
    lambdas: list[float] = field(default_factory=list)  # λ used per micro-batch
    lambda_occ: list[float] = field(default_factory=list)  # the occ estimate per micro-batch (any regime)
    step_ms: list[float] = field(default_factory=list)
    final_reward: float = 0.0
    final_acceptance: float = 0.0


def run_arm(arm: Arm, start: Any, start_head: MtpHead, task: Task, args: argparse.Namespace, seed: int) -> Run:
    model, head = copy.deepcopy(start), copy.deepcopy(start_head)
    model.train()
    parameters = [p for p in list(model.parameters()) + list(head.parameters()) if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=args.lr, weight_decay=0.0)
    engine = TransformersEngine(model, task.tokenizer)
    sampling = SamplingSettings(group_size=args.group, max_new_tokens=MAX_NEW_TOKENS)
    options = UpdateOptions(mini_batches=args.mini_batches, gradient_accumulation=1, loss_type="dapo",
                            max_completion_length=MAX_NEW_TOKENS)
    run = Run(arm.name, seed)
    for step in range(args.steps):
        started = time.process_time()
        step_seed = derive_seed(seed, step)
        picks = random.Random(step_seed).sample(task.train, args.prompts)
        rollouts = engine.generate([task.prompt(d) for d in picks], sampling, step_seed)
        rewards = torch.tensor([task.reward(picks[r.prompt_index], r) for r in rollouts])
        advantages = group_advantages(rewards, args.group)
        batch = collate(rollouts, int(task.tokenizer.pad_token_id))
        history = update_with_mtp(model, head, optimizer, batch, advantages, arm.settings, options, seed=step_seed)
        run.step_ms.append((time.process_time() - started) * 1000)
        run.rewards.append(float(rewards.mean()))
        run.acceptance.append(statistics.fmean(m["mtp_acceptance"] for m in history))
        run.lambdas.extend(m["mtp_lambda"] for m in history)
        run.lambda_occ.extend(m["mtp_lambda_occ"] for m in history)
    model.eval()
    run.final_reward, run.final_acceptance = evaluate(model, head, task, engine, derive_seed(seed, 10 ** 6))
    return run


# ---------------------------------------------------------------- report


def _mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f}±{sd:.3f}"


def report(runs: list[Run], names: list[str]) -> dict[str, float]:
    finals: dict[str, float] = {}
    for name in names:
        mine = [r for r in runs if r.arm == name]
        rewards = [r.final_reward for r in mine]
        finals[name] = statistics.fmean(rewards)
        acc = statistics.median(r.final_acceptance for r in mine)
        step = statistics.median(ms for r in mine for ms in r.step_ms[1:] or r.step_ms)
        print(f"regime={name} reward={_mean_sd(rewards)} mtp_acc={acc:.3f} step_ms={step:.1f}", flush=True)
    detach = finals.get("detach", 0.0)
    ratio = finals.get("occ", 0.0) / detach if detach > 0 else float("nan")
    print(f"occ_vs_detach={ratio:.3f}", flush=True)
    return finals


def plots(runs: list[Run], names: list[str], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    for key, label, filename in (("rewards", "training reward (mean over seeds)", "occ_reward.png"),
                                 ("acceptance", "MTP acceptance on rollouts", "occ_mtp_acceptance.png")):
        figure, axis = plt.subplots(figsize=(7, 4), dpi=110)
        for name in names:
            series = [getattr(r, key) for r in runs if r.arm == name]
            mean = [statistics.fmean(values) for values in zip(*series, strict=True)]
            axis.plot(range(1, len(mean) + 1), mean, label=name)
        axis.set_xlabel("step")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        axis.legend(loc="best")
        figure.tight_layout()
        figure.savefig(out / filename)
        plt.close(figure)
    figure, axis = plt.subplots(figsize=(7, 4), dpi=110)
    for run in runs:
        if run.arm == "occ":
            axis.plot(run.lambdas, label=f"occ λ_t (seed {run.seed})", linewidth=0.8)
        if run.arm == "policy_0.1":
            axis.plot(run.lambda_occ, label=f"policy_0.1: OCC's estimate (seed {run.seed})", linewidth=0.6,
                      alpha=0.6)
    axis.set_xlabel("micro-batch")
    axis.set_ylabel("λ")
    axis.grid(alpha=0.3)
    axis.legend(loc="best", fontsize=7)
    figure.tight_layout()
    figure.savefig(out / "occ_lambda_t.png")
    plt.close(figure)


WIRED_ARMS: list[tuple[str, dict[str, Any] | None]] = [
    ("none", None), ("detach", {"regime": "detach"}), ("ce", {"regime": "ce", "lambda": 0.1}),
    ("policy_0.1", {"regime": "policy", "lambda": 0.1}), ("occ", {"regime": "occ"})]


def wired(args: argparse.Namespace) -> None:
    """``--wired``: the MTP regimes inside the real trainer (``GRPOTrainer`` with an ``mtp`` section, the
    tiny model from ``model.tiny``, an in-process reward), against the same run without one (``none``):
    CPU time per training step (median over the steps after the first, which holds the warm-up), the arms
    alternated over ``--seeds`` rounds (order rotated per round). Prints
    ``wired regime=<name> step_ms=<median> spread=<min..max of the rounds' medians>``, then
    ``wired occ_vs_detach_step_time=<ratio>`` and ``wired detach_vs_none_step_time=<ratio>``."""
    from trainer.config import parse_config
    from trainer.grpo import GRPOTrainer
    from trainer.rewards import CallableRewards

    def letters(completion: str, _truth: Any, _item: Any) -> float:  # dense: almost every group has a spread
        chars = [c for c in completion if not c.isspace()]
        return sum(c.isalpha() for c in chars) / len(chars) if chars else 0.0

    medians: dict[str, list[float]] = {name: [] for name, _ in WIRED_ARMS}
    with tempfile.TemporaryDirectory() as work:
        data = Path(work) / "prompts.jsonl"
        data.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": f"Say something ({i})."}],
                                            "reward_model": {"ground_truth": "x"}}) + "\n" for i in range(64)))
        for index in range(args.seeds):
            order = WIRED_ARMS[index % len(WIRED_ARMS):] + WIRED_ARMS[: index % len(WIRED_ARMS)]
            for name, section in order:
                config = parse_config({
                    "model": {"tiny": {"seed": args.seed, "hidden_size": args.hidden}}, "dataset": str(data),
                    "group_size": args.group, "prompts_per_step": args.prompts, "max_steps": args.steps,
                    "mini_batches": args.mini_batches, "learning_rate": args.lr, "max_completion_length": 8,
                    "seed": args.seed + index, "export_hf": "none", "output_dir": str(Path(work) / f"{name}-{index}"),
                    **({"mtp": {**section, "warmup_steps": 20, "warmup_prompts": 8}} if section else {})})
                run = GRPOTrainer(config, rewards=CallableRewards(letters))
                times = []
                for _ in range(args.steps):
                    started = time.process_time()
                    run.train_step()
                    times.append(time.process_time() - started)
                medians[name].append(1000 * statistics.median(times[1:] or times))
    for name, values in medians.items():
        print(f"wired regime={name} step_ms={statistics.median(values):.1f} "
              f"spread={min(values):.1f}..{max(values):.1f}", flush=True)
    print(f"wired occ_vs_detach_step_time={statistics.median(medians['occ']) / statistics.median(medians['detach']):.3f}")
    print(f"wired detach_vs_none_step_time={statistics.median(medians['detach']) / statistics.median(medians['none']):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--mini-batches", type=int, default=4)
    parser.add_argument("--lr", type=float, default=3e-4, help="RL learning rate (1e-3 collapses this toy)")
    parser.add_argument("--lambda-plus", type=float, default=1.0)
    parser.add_argument("--sft-steps", type=int, default=400, help="at most this many SFT steps")
    parser.add_argument("--sft-target", type=float, default=0.35, help="stop SFT at this accuracy (training prompts)")
    parser.add_argument("--sft-lr", type=float, default=1e-3)
    parser.add_argument("--warmup-steps", type=int, default=300)
    parser.add_argument("--warmup-lr", type=float, default=1e-2)
    parser.add_argument("--eval-prompts", type=int, default=96)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="folder for the PNGs and occ_runs.json")
    parser.add_argument("--wired", action="store_true", help="step time of each regime inside GRPOTrainer "
                        "(the mtp run setting) against no MTP head, instead of the toy comparison")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.wired:
        wired(args)
        return
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.tiny_models import build_tiny_causal_lm

    with tempfile.TemporaryDirectory() as work:
        path = build_tiny_causal_lm(Path(work) / "base", seed=args.seed, hidden_size=args.hidden, num_layers=2)
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True)
    task = make_task(tokenizer, seed=args.seed, held_out=args.eval_prompts)
    engine = TransformersEngine(model, tokenizer)
    check = Task(tokenizer, train=[], held_out=task.train[:64])  # training prompts: the eval set stays unseen
    sft_steps = 0
    while sft_steps < args.sft_steps:  # in rounds of 25 steps, until the start is partially trained
        supervised(model, task, steps=25, batch_size=32, lr=args.sft_lr, seed=derive_seed(args.seed, sft_steps))
        sft_steps += 25
        if evaluate(model, build_mtp_head(model), check, engine, args.seed)[0] >= args.sft_target:
            break
    head = build_mtp_head(model, seed=args.seed)
    warm_rng = random.Random(args.seed + 1)
    warm = [gold_batch(task, warm_rng.sample(task.train, 32)) for _ in range(16)]
    warmup = warmup_mtp_head(model, head, [(b.input_ids, b.attention_mask) for b in warm],
                             steps=args.warmup_steps, learning_rate=args.warmup_lr)
    start_reward, start_acc = evaluate(model, head, task, engine, derive_seed(args.seed, 10 ** 6))
    print(f"# start: reward={start_reward:.3f} mtp_acc={start_acc:.3f} (after {sft_steps} SFT steps; "
          f"MTP warm-up {args.warmup_steps} steps, last CE {warmup[-1]['mtp_loss'] if warmup else float('nan'):.3f})",
          flush=True)
    every = arms(args.lambda_plus)
    names = [arm.name for arm in every]
    runs: list[Run] = []
    for index in range(args.seeds):
        seed = args.seed + 1000 * (index + 1)
        order = every[index % len(every):] + every[: index % len(every)]  # rotate the arms per seed
        for arm in order:
            runs.append(run_arm(arm, model, head, task, args, seed))
    report(runs, names)
    window = max(1, args.steps // 6)
    for name in names:  # the curves behind the claims (rises then falls?), mean over seeds per window
        series = [statistics.fmean(values) for values in zip(*(r.rewards for r in runs if r.arm == name), strict=True)]
        windows = [f"{statistics.fmean(series[i:i + window]):.2f}" for i in range(0, len(series), window)]
        print(f"# {name}: training reward per {window}-step window: {' '.join(windows)}", flush=True)
    occ_lambdas = [value for run in runs if run.arm == "occ" for value in run.lambdas]
    if occ_lambdas:
        later = [v for i, v in enumerate(occ_lambdas) if i % args.mini_batches]
        print(f"# occ lambda_t: median {statistics.median(later):.4f} over later mini-batches "
              f"(range {min(later):.4f}..{max(later):.4f}); first mini-batch of each step: "
              f"{'all 0' if all(v == 0.0 for i, v in enumerate(occ_lambdas) if i % args.mini_batches == 0) else 'not 0'}",
              flush=True)
    if args.out is not None:
        plots(runs, names, args.out)
        (args.out / "occ_runs.json").write_text(json.dumps([run.__dict__ for run in runs]))


if __name__ == "__main__":
    main()
