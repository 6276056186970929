"""Time per optimizer step: our GRPO trainer vs TRL's GRPOTrainer, like for like, on CPU.

What is held equal on both sides:

- the model: one tiny random Qwen2-architecture folder (built locally, nothing downloaded) that
  both load with ``from_pretrained``;
- the batch: ``--prompts`` prompts x G completions, one optimizer step per rollout batch (TRL:
  ``per_device_train_batch_size = prompts x G``, ``num_generations = G``);
- sampling: temperature 1, top_p 1, top_k 0 (TRL's ``top_k``; ours as ``top_k`` when the run
  config accepts it), min_p off, repetition penalty 1, and a fixed completion length: ``min_new_tokens =
  max_new_tokens = --length`` on both (TRL through ``generation_kwargs``; ours has no such setting,
  so this benchmark passes ``min_new_tokens`` to the policy's ``generate``), so every completion
  has the same number of tokens;
- the loss and optimizer: dapo, no KL (beta 0), clip 0.2 / 0.28, AdamW at a constant learning
  rate (no warm-up, no decay), weight decay 0, gradient clipping at 1.0;
- gradient checkpointing: the same on both (``--gradient-checkpointing``; TRL's own default is on);
- the reward: the verifier's regex grader (``\\d``: 1 if the completion has a digit), called
  in-process on both, and over HTTP through a real ``rewardhub up`` server for the HTTP line;
- the machine: every side runs in a fresh process, torch's threads pinned to ``--threads`` (and
  ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS``), sides alternated over ``--rounds`` rounds so load
  on the machine falls on each side alike.

A round's ratio is our median step time (after the first step, which pays one-off warm-up) over
TRL's in the same round; the line printed is the median ratio over the rounds with its range:

    trainer_vs_trl=<median> (<min>..<max>)        ratio below 1.0: ours is faster
    trainer_http_vs_trl=<median> (<min>..<max>)

``--scaling`` adds one line per G in {4, 8, 16} x L in {16, 64, 128} (one round each).
Peak memory is each side's whole-process peak RSS (imports included).

    python benchmarks/trainer_vs_trl.py [--rounds 5] [--steps 4] [--prompts 2] [--group 4] [--length 16]
                                        [--threads 1] [--gradient-checkpointing] [--scaling]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

PATTERN = r"\d"  # the reward on every side: the regex grader with this pattern
SIDES = ("trl", "ours", "ours-http")
LEARNING_RATE = 1e-3


def regex_reward(completion: str) -> float:
    """The verifier's own regex grader, the one the HTTP side's server runs."""
    from rewardhub.reward_specs import RegexSpec
    from services.verifier.graders.text import grade_regex

    return float(grade_regex(RegexSpec(pattern=PATTERN), completion, None).score)


def prompts(n: int) -> list[str]:
    return [f"Write a number, please ({i}):" for i in range(n)]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


# ---------------------------------------------------------------- one side, in its own process


def run_trl(args: argparse.Namespace, work: Path) -> tuple[list[float], list[float]]:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl.trainer.grpo_config import GRPOConfig
    from trl.trainer.grpo_trainer import GRPOTrainer

    def reward(completions: list[Any], **_: Any) -> list[float | None]:
        return [regex_reward(c if isinstance(c, str) else c[-1]["content"]) for c in completions]

    stamps: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *_: Any, **__: Any) -> None:
            stamps.append(time.perf_counter())

        def on_step_end(self, *_: Any, **__: Any) -> None:
            stamps.append(time.perf_counter())

    rows = [{"prompt": p} for p in prompts(args.prompts * (args.steps + 1))]
    config = GRPOConfig(
        output_dir=str(work / "trl"), per_device_train_batch_size=args.prompts * args.group,
        num_generations=args.group, max_completion_length=args.length, max_steps=args.steps,
        learning_rate=LEARNING_RATE, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        max_grad_norm=1.0, beta=0.0, loss_type="dapo", epsilon=0.2, epsilon_high=0.28, scale_rewards="group",
        temperature=1.0, top_p=1.0, top_k=0, min_p=None, repetition_penalty=1.0,
        generation_kwargs={"min_new_tokens": args.length}, gradient_checkpointing=args.gradient_checkpointing,
        logging_steps=1, report_to=[], save_strategy="no", use_cpu=True, bf16=False, seed=0,
        dataloader_num_workers=0, disable_tqdm=True, shuffle_dataset=False)
    trainer = GRPOTrainer(model=str(args.model_dir), reward_funcs=[reward], args=config,
                          train_dataset=Dataset.from_list(rows), callbacks=[StepTimer()])
    trainer.train()
    lengths = [float(m["completions/mean_length"]) for m in trainer.state.log_history
               if "completions/mean_length" in m]
    return [end - start for start, end in zip(stamps[::2], stamps[1::2], strict=True)], lengths


def run_ours(args: argparse.Namespace, work: Path, *, http: bool) -> tuple[list[float], list[float]]:
    import functools

    from trainer.config import RunConfig, parse_config
    from trainer.grpo import GRPOTrainer
    from trainer.rewards import CallableRewards

    data = work / "data.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "reward_model": {"ground_truth": ""}}) + "\n"
                            for p in prompts(args.prompts * (args.steps + 1))))
    config: dict[str, Any] = {
        "model": {"path": str(args.model_dir), "gradient_checkpointing": args.gradient_checkpointing},
        "dataset": str(data), "group_size": args.group, "prompts_per_step": args.prompts,
        "max_steps": args.steps, "learning_rate": LEARNING_RATE, "lr_schedule": "constant", "warmup_steps": 0,
        "weight_decay": 0.0, "max_grad_norm": 1.0, "beta": 0.0, "loss_type": "dapo", "epsilon_low": 0.2,
        "epsilon_high": 0.28, "scale_rewards": "group", "temperature": 1.0, "top_p": 1.0,
        "max_completion_length": args.length, "seed": 0, "export_hf": "none",
        "output_dir": str(work / ("ours-http" if http else "ours")),
    }
    # Sampling settings TRL sets that our config may not have yet: pass each one it accepts.
    for key, value in (("top_k", 0), ("min_p", 0.0), ("repetition_penalty", 1.0)):
        if key in RunConfig.model_fields:
            config[key] = value

    def fixed_length(trainer: GRPOTrainer) -> GRPOTrainer:
        # Our config has no min_new_tokens: give the policy's generate one, as TRL's generation_kwargs do.
        model = trainer.model
        model.generate = functools.partial(model.generate, min_new_tokens=args.length)
        return trainer

    if not http:
        rewards = CallableRewards(lambda completion, _truth, _item: regex_reward(completion))
        outcome = fixed_length(GRPOTrainer(parse_config(config), rewards=rewards)).train()
        return step_times(outcome.history)
    from rewardhub.demo import embedded_server

    os.environ["REWARDHUB_DATA_DIR"] = str(work / "server-data")
    with embedded_server() as server:
        os.environ["REWARDHUB_BENCH_KEY"] = server.trainer_key
        config["reward"] = {"spec": {"type": "regex", "pattern": PATTERN}, "url": server.url,
                            "project_id": server.project_id, "api_key_env": "REWARDHUB_BENCH_KEY"}
        outcome = fixed_length(GRPOTrainer(parse_config(config, local=True))).train()
    return step_times(outcome.history)


def step_times(history: list[dict[str, Any]]) -> tuple[list[float], list[float]]:
    return ([float(m["step_time_s"]) for m in history], [float(m["completion_length_mean"]) for m in history])


def side_main(args: argparse.Namespace) -> None:
    """One side's run in this (fresh) process; prints its step times and peak memory as one JSON line."""
    import torch

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        times, lengths = (run_trl(args, work) if args.side == "trl" else
                          run_ours(args, work, http=args.side == "ours-http"))
    if any(length != args.length for length in lengths):  # the comparison holds only at equal lengths
        raise SystemExit(f"{args.side}: completion lengths {lengths} are not all {args.length}")
    print("SIDE " + json.dumps({"side": args.side, "times": times, "peak_rss_mb": peak_rss_mb()}), flush=True)


# ---------------------------------------------------------------- the driver


def run_side(side: str, args: argparse.Namespace, model_dir: Path, *, group: int, length: int,
             steps: int) -> dict[str, Any]:
    threads = str(args.threads)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled"}
    command = [sys.executable, str(Path(__file__).resolve()), "--side", side, "--model-dir", str(model_dir),
               "--steps", str(steps), "--prompts", str(args.prompts), "--group", str(group),
               "--length", str(length), "--threads", threads]
    if args.gradient_checkpointing:
        command.append("--gradient-checkpointing")
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=3600, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("SIDE ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"side {side} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(lines[-1].removeprefix("SIDE "))
    return result


def steady(times: list[float]) -> float:
    """Median step time after the first step (which pays one-off warm-up costs)."""
    return statistics.median(times[1:] if len(times) > 1 else times)


def ratio_line(name: str, ratios: list[float]) -> str:
    return f"{name}={statistics.median(ratios):.2f} ({min(ratios):.2f}..{max(ratios):.2f})"


def like_for_like(args: argparse.Namespace, model_dir: Path) -> None:
    per_side: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
    for round_index in range(args.rounds):
        # Rotate the order each round: no side always runs first (or right after another's warm caches).
        order = SIDES[round_index % len(SIDES):] + SIDES[: round_index % len(SIDES)]
        for side in order:
            per_side[side].append(run_side(side, args, model_dir, group=args.group, length=args.length,
                                           steps=args.steps))
        print(f"  round {round_index + 1} ({', '.join(order)}): " + ", ".join(
            f"{side} {steady(per_side[side][-1]['times']):.3f} s/step" for side in SIDES), flush=True)
    trl = [steady(r["times"]) for r in per_side["trl"]]
    ours = [steady(r["times"]) for r in per_side["ours"]]
    http = [steady(r["times"]) for r in per_side["ours-http"]]
    print(f"GRPO step on CPU, like for like: {args.prompts} prompts x G={args.group}, completions of exactly "
          f"{args.length} tokens, {args.steps} steps per run (median after the first), {args.rounds} rounds, "
          f"{args.threads} torch thread(s), gradient checkpointing {'on' if args.gradient_checkpointing else 'off'}")
    print(f"    TRL GRPOTrainer, in-process reward : {statistics.median(trl):8.3f} s/step  [anchor]")
    print(f"    rewardhub, in-process reward       : {statistics.median(ours):8.3f} s/step")
    print(f"    rewardhub, rewards over HTTP       : {statistics.median(http):8.3f} s/step")
    print(ratio_line("trainer_vs_trl", [o / t for o, t in zip(ours, trl, strict=True)]) + "   (goal <= 0.8)")
    print(ratio_line("trainer_http_vs_trl", [h / t for h, t in zip(http, trl, strict=True)]) + "   (goal <= 1.0)")
    memory = {side: statistics.median(r["peak_rss_mb"] for r in per_side[side]) for side in SIDES}
    print("peak_rss_mb " + " ".join(f"{side}={value:.0f}" for side, value in memory.items())
          + "   (whole process, imports included)")


def scaling(args: argparse.Namespace, model_dir: Path) -> None:
    print(f"scaling ({args.prompts} prompts per step, {args.scaling_steps} steps, one round per cell):")
    cells = [(g, length) for g in (4, 8, 16) for length in (16, 64, 128)]
    for n, (group, length) in enumerate(cells):
        sides = ("trl", "ours") if n % 2 == 0 else ("ours", "trl")
        result = {side: run_side(side, args, model_dir, group=group, length=length, steps=args.scaling_steps)
                  for side in sides}
        trl, ours = steady(result["trl"]["times"]), steady(result["ours"]["times"])
        print(f"  scaling G={group:<2} L={length:<3}: ours {ours:7.3f} s/step  trl {trl:7.3f} s/step  "
              f"ratio {ours / trl:.2f}  peak_rss_mb ours={result['ours']['peak_rss_mb']:.0f} "
              f"trl={result['trl']['peak_rss_mb']:.0f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--length", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--scaling", action="store_true", help="Also the G x L scaling lines.")
    parser.add_argument("--scaling-steps", type=int, default=3)
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)  # internal: run one side
    parser.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side is not None:
        side_main(args)
        return
    if args.rounds < 1 or args.steps < 2:
        parser.error("--rounds must be >= 1 and --steps >= 2 (the first step is not timed)")

    from trainer.tiny_models import build_tiny_causal_lm

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_tiny_causal_lm(Path(tmp) / "model", seed=0, hidden_size=args.hidden,
                                         num_layers=args.layers)
        like_for_like(args, model_dir)
        if args.scaling:
            scaling(args, model_dir)


if __name__ == "__main__":
    main()
