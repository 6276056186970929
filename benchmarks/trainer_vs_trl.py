"""Time per optimizer step: our GRPO trainer vs TRL's GRPOTrainer, same model, task and batch, on CPU.

Both train the same tiny random Qwen2-architecture model (built locally, nothing downloaded) on
the same prompts with the same batch (prompts x G completions), completion length and loss
(dapo, no KL, one optimizer step per rollout batch). Both score with the same in-process reward
function; ours is also timed with rewards over HTTP from a real `rewardhub up` server in this
process. TRL's time is the anchor: a ratio below 1.0 means ours is faster.

    python benchmarks/trainer_vs_trl.py [--steps 8] [--prompts 4] [--group 8] [--length 32]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def digit_share(text: str) -> float:
    chars = [c for c in text if not c.isspace()]
    return sum(c.isdigit() for c in chars) / len(chars) if chars else 0.0


def write_dataset(path: Path, rows: int) -> Path:
    path.write_text("\n".join(json.dumps({"prompt": f"Write a number, please ({i}):",
                                          "reward_model": {"ground_truth": "7"}}) for i in range(rows)) + "\n")
    return path


def time_trl(model_dir: Path, args: argparse.Namespace, work: Path) -> list[float]:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    def reward(completions: list[Any], **_: Any) -> list[float]:
        return [digit_share(c if isinstance(c, str) else c[-1]["content"]) for c in completions]

    stamps: list[float] = []

    class StepTimer(TrainerCallback):  # type: ignore[misc]
        def on_step_end(self, *_: Any, **__: Any) -> None:
            stamps.append(time.perf_counter())

    rows = [{"prompt": f"Write a number, please ({i}):"} for i in range(args.prompts * (args.steps + 1))]
    config = GRPOConfig(output_dir=str(work / "trl"), per_device_train_batch_size=args.prompts * args.group,
                        num_generations=args.group, max_completion_length=args.length, max_steps=args.steps,
                        learning_rate=1e-3, beta=0.0, loss_type="dapo", logging_steps=1, report_to=[],
                        save_strategy="no", use_cpu=True, bf16=False, seed=0, dataloader_num_workers=0,
                        temperature=1.0, top_p=1.0, disable_tqdm=True)
    trainer = GRPOTrainer(model=str(model_dir), reward_funcs=[reward], args=config,
                          train_dataset=Dataset.from_list(rows), callbacks=[StepTimer()])
    stamps.append(time.perf_counter())
    trainer.train()
    return [b - a for a, b in itertools.pairwise(stamps)]


def time_ours(args: argparse.Namespace, work: Path, *, http: bool) -> list[float]:
    from trainer.config import parse_config
    from trainer.grpo import GRPOTrainer
    from trainer.rewards import CallableRewards

    config: dict[str, Any] = {
        "model": {"tiny": {"seed": 0, "hidden_size": args.hidden, "num_layers": args.layers}},
        "dataset": str(write_dataset(work / "data.jsonl", args.prompts * (args.steps + 1))),
        "group_size": args.group, "prompts_per_step": args.prompts, "max_steps": args.steps,
        "learning_rate": 1e-3, "max_completion_length": args.length, "loss_type": "dapo", "seed": 0,
        "output_dir": str(work / ("ours-http" if http else "ours")),
    }
    if http:
        from rewardhub.demo import embedded_server

        os.environ["REWARDHUB_DATA_DIR"] = str(work / "server-data")
        with embedded_server() as server:
            os.environ["REWARDHUB_BENCH_KEY"] = server.trainer_key
            config["reward"] = {"spec": {"type": "regex", "pattern": r"\d"}, "url": server.url,
                                "project_id": server.project_id, "api_key_env": "REWARDHUB_BENCH_KEY"}
            outcome = GRPOTrainer(parse_config(config, local=True)).train()
    else:
        rewards = CallableRewards(lambda completion, _truth, _item: digit_share(completion))
        outcome = GRPOTrainer(parse_config(config), rewards=rewards).train()
    return [float(m["step_time_s"]) for m in outcome.history]


def steady(times: list[float]) -> float:
    """Median step time after the first step (which pays one-off warm-up costs)."""
    return statistics.median(times[1:] if len(times) > 1 else times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--length", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    args = parser.parse_args()

    import torch

    from trainer.tiny_models import build_tiny_causal_lm

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model_dir = build_tiny_causal_lm(work / "model", seed=0, hidden_size=args.hidden, num_layers=args.layers)
        trl_times = time_trl(model_dir, args, work)
        ours = time_ours(args, work, http=False)
        ours_http = time_ours(args, work, http=True)
    anchor = steady(trl_times)
    print(f"GRPO step on CPU: {args.prompts} prompts x G={args.group}, completions <= {args.length} tokens, "
          f"Qwen2 {args.layers}x{args.hidden}, {args.steps} steps (median after the first)")
    print(f"    TRL GRPOTrainer, in-process reward : {anchor:8.3f} s/step  [anchor]")
    print(f"    rewardhub, in-process reward       : {steady(ours):8.3f} s/step  ratio {steady(ours) / anchor:.2f}x "
          "(goal <= 1.0x)")
    print(f"    rewardhub, rewards over HTTP       : {steady(ours_http):8.3f} s/step  ratio "
          f"{steady(ours_http) / anchor:.2f}x")


if __name__ == "__main__":
    main()
