"""IH-GRPO vs immediate execution vs no tools on a CPU toy, in the same multi-turn engine and loop.

Task (trainer/agent/toy.py): ``Compute A * B + C.`` with a 2-digit A and B and a 1-digit C by
default — out of a tiny random model's head, two lines of Python with a tool. Policy: a tiny Qwen2
(trainer/tiny_models.py) whose tokenizer has ``<tool_call>`` as one token, built from a config.

Each arm starts from its own short supervised warm-up on templated traces (the same number of steps,
problems and seed): ``--tool-share`` of them in the arm's tool format (delayed: two blocks then
``<tool_call>``; immediate: each block runs at its fence), the rest direct answers; the no-tools arm
warms up on direct answers only. A tiny policy from scratch would not find tool calls by itself in a
CPU budget, so RL starts from a policy that calls tools some of the time. Then the same GRPO loop
(trainer.grpo.GRPOTrainer, multi_turn config, local Python test-double tool) takes the same number
of steps per arm; arms alternate within each seed. Accuracy is measured on held-out problems after
the warm-up and after RL, with the arm's own engine.

Prints one line per arm::

    arm=<name> acc=<mean±sd> delay_rate=<x> tokens_per_episode=<y>

(mean ± sd over seeds of the final accuracy; delay_rate = tool calls that delayed at least one
block / tool calls, at the final evaluation), the warm-up accuracy per arm, a throughput line
(episodes/s of RL rollouts, share of RL wall time spent in tool execution vs generation), and writes
``<out>/ih_grpo_curves.png`` and ``<out>/ih_grpo_results.json``.

Run small (two cores, a few minutes): ``python -m benchmarks.ih_grpo --seeds 2``; a smoke run:
``python -m benchmarks.ih_grpo --seeds 1 --steps 2 --sft-steps 20 --eval 8``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

ARMS = {"no_tools": ("none", 0.0), "immediate": ("immediate", 0.0), "ih_grpo": ("delayed", 0.001),
        "delayed_no_c": ("delayed", 0.0)}
"""arm → (execution, c coefficient); ``delayed_no_c`` is an ablation (delayed execution without the c term)."""


def _write_dataset(path: Path, problems: list[Any]) -> None:
    path.write_text("".join(json.dumps({"prompt": p.prompt, "reward_model": {"ground_truth": str(p.value)}}) + "\n"
                            for p in problems))


def _evaluate(trainer: Any, problems: list[Any], samples: int, seed: int) -> dict[str, float]:
    from trainer.agent.toy import score
    from trainer.data import PromptRow
    from trainer.rollout import SamplingSettings

    rows = [PromptRow(i, p.prompt, str(p.value)) for i, p in enumerate(problems)]
    prompts = [trainer.tokenizer(p.prompt, add_special_tokens=False)["input_ids"] for p in problems]
    sampling = SamplingSettings(group_size=samples, max_new_tokens=trainer.config.max_completion_length,
                                temperature=trainer.config.temperature)
    rollouts = trainer.agent.generate(prompts, sampling, seed=seed, rows=rows)
    stats = [r.episode_stats or {} for r in rollouts]
    calls = sum(s.get("tool_calls", 0.0) for s in stats)
    return {"acc": sum(score(r.text, rows[r.prompt_index].ground_truth) for r in rollouts) / len(rollouts),
            "delay_rate": sum(s.get("delayed_call_turns", 0.0) for s in stats) / calls if calls else 0.0,
            "tool_calls": calls / len(rollouts),
            "tokens_per_episode": sum(len(r.completion_ids) for r in rollouts) / len(rollouts)}


def run_arm(arm: str, seed: int, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    import shutil

    from trainer.agent.toy import build_tool_model, problems, score, warm_up
    from trainer.config import parse_config
    from trainer.grpo import GRPOTrainer
    from trainer.rewards import CallableRewards

    execution, coefficient = ARMS[arm]
    base = out / f"seed{seed}" / "base"
    if not base.exists():  # one initial model per seed, shared by the arms
        build_tool_model(base, seed=seed, hidden_size=args.hidden, num_layers=args.layers)
    model_dir = out / f"seed{seed}" / arm / "model"
    shutil.rmtree(model_dir.parent, ignore_errors=True)
    shutil.copytree(base, model_dir)
    sft = warm_up(model_dir, execution, steps=args.sft_steps, seed=seed, tool_share=args.tool_share)
    dataset = out / f"seed{seed}" / "train.jsonl"
    _write_dataset(dataset, problems(512, seed=1000 + seed))
    multi: dict[str, Any] = {"execution": execution, "max_turns": args.max_turns if execution != "none" else 1,
                             "tools": {"backend": "local", "timeout_s": 5.0}}
    if execution == "delayed":
        multi["ih_grpo"] = {"coefficient": coefficient}
    config = parse_config({
        "model": {"path": str(model_dir)}, "dataset": str(dataset), "group_size": args.group,
        "prompts_per_step": args.prompts, "max_steps": args.steps, "learning_rate": args.lr,
        "max_completion_length": args.budget, "seed": seed, "temperature": args.temperature, "output_dir": str(model_dir.parent / "run"),
        "export_hf": "none", "multi_turn": multi}, local=True)
    trainer = GRPOTrainer(config, rewards=CallableRewards(score))
    held_out = problems(args.eval, seed=5000)
    before = _evaluate(trainer, held_out, args.eval_samples, seed=7)
    trainer.agent.timings = {"generation_s": 0.0, "environment_s": 0.0}
    started = time.perf_counter()
    outcome = trainer.train()
    wall = time.perf_counter() - started
    timings = dict(trainer.agent.timings)
    after = _evaluate(trainer, held_out, args.eval_samples, seed=7)
    episodes = args.steps * args.prompts * args.group
    return {"arm": arm, "seed": seed, "sft_loss": sft["sft_loss"], "before": before, "after": after,
            "curve": [float(m.get("reward_mean", math.nan)) for m in outcome.history],
            "c_loss": [float(m.get("c_loss", math.nan)) for m in outcome.history],
            "wall_s": wall, "episodes": episodes, **timings}


def _mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f}±{sd:.3f}"


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4), dpi=110)
    for n, arm in enumerate(ARMS):
        curves = [r["curve"] for r in results if r["arm"] == arm]
        if not curves:
            continue
        steps = range(1, len(curves[0]) + 1)
        mean = [statistics.fmean(c[i] for c in curves) for i in range(len(curves[0]))]
        axis.plot(steps, mean, color=f"C{n}", label=f"{arm} (mean of {len(curves)} seeds)")
        for curve in curves:
            axis.plot(steps, curve, color=f"C{n}", alpha=0.25, linewidth=0.8)
    axis.set_xlabel("GRPO step")
    axis.set_ylabel("training reward (accuracy)")
    axis.set_title("A * B + C toy: training reward per arm (thin: seeds)")
    axis.grid(alpha=0.3)
    axis.legend(loc="best")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=15, help="GRPO steps per arm (the same budget)")
    parser.add_argument("--sft-steps", type=int, default=800, help="warm-up steps per arm")
    parser.add_argument("--tool-share", type=float, default=0.5)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--budget", type=int, default=96, help="tokens per episode (sampled + observations)")
    parser.add_argument("--max-turns", type=int, default=5)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--temperature", type=float, default=0.5, help="sampling temperature of RL and evaluation "
                        "(the loss scores the same tempered softmax)")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--eval", type=int, default=32, help="held-out problems")
    parser.add_argument("--eval-samples", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-ih-grpo"))
    parser.add_argument("--arms", default="no_tools,immediate,ih_grpo", help="comma-separated, of: " + ", ".join(ARMS))
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    arms = [arm.strip() for arm in args.arms.split(",") if arm.strip()]
    unknown = [arm for arm in arms if arm not in ARMS]
    if unknown:
        parser.error(f"--arms: unknown {', '.join(unknown)} (choose from {', '.join(ARMS)})")
    results = []
    for seed in range(args.seeds):
        order = arms if seed % 2 == 0 else list(reversed(arms))  # the arms' order alternates across seeds
        for arm in order:
            results.append(run_arm(arm, seed, args, args.out))
            r = results[-1]
            print(f"# seed={seed} arm={arm} warmup_acc={r['before']['acc']:.3f} final_acc={r['after']['acc']:.3f} "
                  f"train_reward_first={r['curve'][0]:.3f} last={r['curve'][-1]:.3f} wall_s={r['wall_s']:.1f}",
                  flush=True)
    for arm in arms:
        mine = [r for r in results if r["arm"] == arm]
        print(f"arm={arm} acc={_mean_sd([r['after']['acc'] for r in mine])} "
              f"delay_rate={statistics.fmean(r['after']['delay_rate'] for r in mine):.3f} "
              f"tokens_per_episode={statistics.fmean(r['after']['tokens_per_episode'] for r in mine):.1f}")
    for arm in arms:
        mine = [r for r in results if r["arm"] == arm]
        print(f"warmup arm={arm} acc={_mean_sd([r['before']['acc'] for r in mine])} "
              f"delay_rate={statistics.fmean(r['before']['delay_rate'] for r in mine):.3f} "
              f"tool_calls_per_episode={statistics.fmean(r['before']['tool_calls'] for r in mine):.2f} "
              f"(after RL: {statistics.fmean(r['after']['tool_calls'] for r in mine):.2f})")
    wall = sum(r["wall_s"] for r in results)
    print(f"throughput episodes_per_s={sum(r['episodes'] for r in results) / wall:.2f} "
          f"tool_share={sum(r['environment_s'] for r in results) / wall:.3f} "
          f"generation_share={sum(r['generation_s'] for r in results) / wall:.3f} (of RL wall time; the rest: "
          f"log-probs, updates, rewards)")
    plot(results, args.out / "ih_grpo_curves.png")
    (args.out / "ih_grpo_results.json").write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
