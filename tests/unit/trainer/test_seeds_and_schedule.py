"""Seeds: validated, and every seed derived from them stays in range (a step runs at any valid seed).
Learning-rate schedules: the same multipliers as transformers' ``get_*_schedule_with_warmup``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from tests.integration.test_trainer_loop import letter_share, make_config
from trainer.checkpoint import derive_seed, splitmix64
from trainer.config import ConfigError, parse_config
from trainer.grpo import GRPOTrainer
from trainer.policy import lr_lambda
from trainer.rewards import CallableRewards

BASE: dict[str, Any] = {"model": {"tiny": {}}, "dataset": "rows.jsonl"}


def test_splitmix64_reference_outputs() -> None:
    # SplitMix64 seeded with 0 (Vigna's reference): e220a8397b1dcdaf, 6e789e6aa1b965f4, 06c45d188009454f.
    gamma = 0x9E3779B97F4A7C15
    assert splitmix64(0) == 0xE220A8397B1DCDAF
    assert splitmix64(gamma) == 0x6E789E6AA1B965F4
    assert splitmix64(2 * gamma % 2**64) == 0x06C45D188009454F
    assert derive_seed(0) == 0xE220A8397B1DCDAF >> 1  # h_1 = splitmix64(0 XOR 0), then >> 1


def test_derived_seeds_stay_in_range_and_differ() -> None:
    seeds = {derive_seed(seed, step, rank) for seed in (0, 1, 2**31 - 1, 2**63 - 1)
             for step in (0, 1, 10**9) for rank in (0, 7)}
    assert len(seeds) == 24 and all(0 <= s < 2**63 for s in seeds)
    for seed in seeds:  # every one is accepted where the loop uses it
        torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("seed, problem", [(-1, "greater than or equal to 0"), (2**63, "less than")])
def test_out_of_range_seeds_are_refused(seed: int, problem: str) -> None:
    with pytest.raises(ConfigError, match=f"seed: Input should be {problem}"):
        parse_config({**BASE, "seed": seed})


@pytest.mark.parametrize("seed", [2**31 - 1, 2**63 - 1])
def test_a_step_runs_at_a_large_seed(tmp_path: Path, seed: int) -> None:
    config = make_config(tmp_path, f"seed-{seed}", seed=seed, max_steps=1)
    metrics = GRPOTrainer(config, rewards=CallableRewards(letter_share)).train_step()
    assert metrics["step"] == 1


def _ours(schedule: str, steps: int, warmup: int, mini_batches: int) -> list[float]:
    config = parse_config({**BASE, "lr_schedule": schedule, "max_steps": steps, "warmup_steps": warmup,
                           "mini_batches": mini_batches, "prompts_per_step": 3, "group_size": 4})
    factor = lr_lambda(config)
    return [factor(n) for n in range(steps * mini_batches + 1)]


def _transformers(schedule: str, steps: int, warmup: int, mini_batches: int) -> list[float]:
    from transformers import (
        get_constant_schedule_with_warmup,
        get_cosine_schedule_with_warmup,
        get_linear_schedule_with_warmup,
    )

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    total, w = steps * mini_batches, warmup * mini_batches
    if schedule == "constant":
        scheduler = get_constant_schedule_with_warmup(optimizer, w)
    elif schedule == "linear":
        scheduler = get_linear_schedule_with_warmup(optimizer, w, total)  # type: ignore[no-untyped-call]
    else:
        scheduler = get_cosine_schedule_with_warmup(optimizer, w, total)
    factors = []
    for _ in range(total + 1):
        factors.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    return factors


@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine"])
@pytest.mark.parametrize("steps, warmup, mini_batches", [(10, 0, 1), (10, 3, 1), (7, 2, 3), (5, 4, 2)])
def test_schedules_match_transformers(schedule: str, steps: int, warmup: int, mini_batches: int) -> None:
    assert _ours(schedule, steps, warmup, mini_batches) == pytest.approx(
        _transformers(schedule, steps, warmup, mini_batches), abs=1e-15)


def test_hand_computed_warmup_then_linear_decay() -> None:
    # W = 2, N = 4: warm-up n / W = 0, ½; then (N − n) / (N − W) = 1, ½, 0.
    assert _ours("linear", 4, 2, 1) == [0.0, 0.5, 1.0, 0.5, 0.0]
    # Cosine, W = 1, N = 3: 0; then ½(1 + cos(π (n − 1) / 2)) = 1, ½, 0.
    assert _ours("cosine", 3, 1, 1) == pytest.approx([0.0, 1.0, 0.5, 0.0], abs=1e-15)
