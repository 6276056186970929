"""Our GRPO-family loss equals TRL's ``GRPOTrainer._compute_loss`` on identical tensors.

The harness: a plain object carrying the attributes ``_compute_loss`` reads (set from a real
``GRPOConfig`` the way ``GRPOTrainer.__init__`` sets them), a real single-process ``Accelerator``,
and ``_get_per_token_logps_and_entropies`` replaced by a function returning fixed log-probs. TRL's
own loss code then runs unchanged on the same tensors as ours; losses, gradients and the logged
KL / clip metrics must agree.
"""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from tests.conftest import require_module
from trainer.algorithms import grpo_policy_loss, rollout_is_weights

trl = require_module("trl", "TRL, the reference these losses are checked against (dev extra)")
accelerate = require_module("accelerate", "accelerate, which TRL's trainer needs (dev extra)")

B, T, MAX_COMPLETION = 4, 6, 8
ATOL = 1e-6


def make_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    logp = -torch.rand(B, T, generator=gen, dtype=torch.float64) * 3
    old_logp = logp + 0.4 * torch.randn(B, T, generator=gen, dtype=torch.float64)  # ratios well outside the clip
    ref_logp = logp + 0.5 * torch.randn(B, T, generator=gen, dtype=torch.float64)
    lengths = torch.tensor([6, 3, 5, 1])
    mask = (torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)).long()
    advantages = torch.tensor([1.3, -0.7, -1.1, 0.5], dtype=torch.float64)
    return {"logp": logp, "old_logp": old_logp, "ref_logp": ref_logp, "mask": mask, "advantages": advantages}


def trl_loss(batch: dict[str, torch.Tensor], logp: torch.Tensor, *, grad_accum: int = 1,
             num_items_in_batch: int | None = None, entropies: torch.Tensor | None = None,
             is_ratio: torch.Tensor | None = None, **config: Any) -> tuple[torch.Tensor, dict[str, list[float]]]:
    """TRL's loss on the batch; ``entropies``: what its forward returns as entropies (zeros by default);
    ``is_ratio``: the vLLM importance-sampling ratio (turns TRL's use_vllm correction on)."""
    from accelerate import Accelerator
    from trl import GRPOConfig, GRPOTrainer

    args = GRPOConfig(output_dir="unused", report_to=[], use_cpu=True, max_completion_length=MAX_COMPLETION,
                      gradient_accumulation_steps=grad_accum, **config)
    metrics: dict[str, dict[str, list[float]]] = {"train": defaultdict(list), "eval": defaultdict(list)}
    entropies = torch.zeros_like(logp) if entropies is None else entropies
    harness = SimpleNamespace(
        args=args, loss_type=args.loss_type, beta=args.beta, epsilon_low=args.epsilon,
        epsilon_high=args.epsilon_high if args.epsilon_high is not None else args.epsilon,
        importance_sampling_level=args.importance_sampling_level, max_completion_length=args.max_completion_length,
        top_entropy_quantile=args.top_entropy_quantile, off_policy_mask_threshold=args.off_policy_mask_threshold,
        use_vllm=is_ratio is not None, vllm_importance_sampling_correction=is_ratio is not None,
        aux_loss_enabled=False, _entropy_bonus_enabled=args.entropy_coef != 0.0 or args.use_adaptive_entropy,
        entropy_coef=args.entropy_coef, use_adaptive_entropy=args.use_adaptive_entropy,
        current_gradient_accumulation_steps=grad_accum, accelerator=Accelerator(cpu=True),
        model=torch.nn.Linear(1, 1), _metrics=metrics,
        _get_per_token_logps_and_entropies=lambda *a, **k: (logp, entropies, None),
    )
    mask = batch["mask"]
    inputs = {
        "prompt_ids": torch.ones(B, 2, dtype=torch.long), "prompt_mask": torch.ones(B, 2, dtype=torch.long),
        "completion_ids": torch.ones(B, T, dtype=torch.long), "completion_mask": mask,
        "advantages": batch["advantages"], "old_per_token_logps": batch["old_logp"],
        "ref_per_token_logps": batch["ref_logp"],
        "num_items_in_batch": torch.tensor(num_items_in_batch if num_items_in_batch is not None else int(mask.sum())),
    }
    if is_ratio is not None:
        inputs["importance_sampling_ratio"] = is_ratio
    loss = GRPOTrainer._compute_loss(harness, harness.model, inputs)
    return loss, dict(metrics["train"])


def both_losses(batch: dict[str, torch.Tensor], *, ours: dict[str, Any], theirs: dict[str, Any],
                grad_accum: int = 1, num_items_in_batch: int | None = None,
                entropies: torch.Tensor | None = None, is_ratio: torch.Tensor | None = None) -> None:
    logp_trl = batch["logp"].clone().requires_grad_(True)
    entropy_trl = entropies.clone().requires_grad_(True) if entropies is not None else None
    loss_trl, trl_metrics = trl_loss(batch, logp_trl, grad_accum=grad_accum, num_items_in_batch=num_items_in_batch,
                                     entropies=entropy_trl, is_ratio=is_ratio, **theirs)
    loss_trl.backward()

    logp_ours = batch["logp"].clone().requires_grad_(True)
    entropy_ours = entropies.clone().requires_grad_(True) if entropies is not None else None
    out = grpo_policy_loss(logp_ours, batch["old_logp"], batch["advantages"], batch["mask"],
                           ref_logp=batch["ref_logp"], max_completion_length=MAX_COMPLETION,
                           num_items_in_batch=num_items_in_batch, entropy=entropy_ours, is_weights=is_ratio, **ours)
    # TRL folds the gradient-accumulation division into grpo/bnpo/dr_grpo; ours leaves it to the run loop.
    ours_loss = out.loss if ours.get("loss_type") in ("dapo", "cispo") else out.loss / grad_accum
    ours_loss.backward()

    assert ours_loss.item() == pytest.approx(loss_trl.item(), abs=ATOL)
    assert torch.allclose(logp_ours.grad, logp_trl.grad, atol=ATOL)
    if entropy_ours is not None and entropy_trl is not None:
        assert torch.allclose(entropy_ours.grad, entropy_trl.grad, atol=ATOL)
    if ours.get("beta", 0.0):
        assert out.metrics["kl"] == pytest.approx(trl_metrics["kl"][0], abs=ATOL)
    # TRL logs clip ratios for the clipped losses only (not cispo).
    if ours.get("importance_sampling_level", "token") == "token" and "clip_ratio/low_mean" in trl_metrics:
        assert out.metrics["clip_fraction_low"] == pytest.approx(trl_metrics["clip_ratio/low_mean"][0], abs=ATOL)
        assert out.metrics["clip_fraction_high"] == pytest.approx(trl_metrics["clip_ratio/high_mean"][0], abs=ATOL)
        assert out.metrics["clip_fraction"] == pytest.approx(trl_metrics["clip_ratio/region_mean"][0], abs=ATOL)


@pytest.mark.parametrize("seed", [1, 2, 5])
def test_batches_exercise_both_clip_regions(seed: int) -> None:
    batch = make_batch(seed)
    out = grpo_policy_loss(batch["logp"], batch["old_logp"], batch["advantages"], batch["mask"])
    assert out.metrics["clip_fraction_low"] > 0 and out.metrics["clip_fraction_high"] > 0


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo", "bnpo"])
@pytest.mark.parametrize(("beta", "kl_times_ratio"), [(0.0, True), (0.04, True), (0.04, False)])
def test_matches_trl(loss_type: str, beta: float, kl_times_ratio: bool) -> None:
    both_losses(make_batch(1),
                ours={"loss_type": loss_type, "beta": beta, "kl_times_ratio": kl_times_ratio,
                      "eps_low": 0.2, "eps_high": 0.28},
                theirs={"loss_type": loss_type, "beta": beta, "use_bias_correction_kl": kl_times_ratio,
                        "epsilon": 0.2, "epsilon_high": 0.28})


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo", "bnpo"])
def test_matches_trl_sequence_level_ratio(loss_type: str) -> None:
    both_losses(make_batch(2),
                ours={"loss_type": loss_type, "beta": 0.1, "importance_sampling_level": "sequence"},
                theirs={"loss_type": loss_type, "beta": 0.1, "importance_sampling_level": "sequence",
                        "epsilon": 0.2, "epsilon_high": 0.28})


@pytest.mark.parametrize("loss_type", ["grpo", "dapo"])
def test_dual_clip_matches_trl_delta(loss_type: str) -> None:
    # TRL's `delta` caps ρ from above on every token; with δ ≥ 1 + ε_high that only bites where A < 0,
    # which is exactly the dual clip.
    batch = make_batch(3)
    batch["old_logp"] = batch["logp"] - 1.0  # ρ = e ≈ 2.72 everywhere, above c = 2
    both_losses(batch, ours={"loss_type": loss_type, "dual_clip_c": 2.0},
                theirs={"loss_type": loss_type, "delta": 2.0, "epsilon": 0.2, "epsilon_high": 0.28})


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo", "bnpo"])
def test_matches_trl_with_gradient_accumulation(loss_type: str) -> None:
    # One micro-batch of a rollout batch of 2 × B rows holding 2 × its token count.
    batch = make_batch(5)
    both_losses(batch, ours={"loss_type": loss_type, "beta": 0.04},
                theirs={"loss_type": loss_type, "beta": 0.04, "epsilon": 0.2, "epsilon_high": 0.28,
                        "steps_per_generation": 2},
                grad_accum=2, num_items_in_batch=2 * int(batch["mask"].sum()))


def test_clip_higher_band_batch_matches_trl_metrics() -> None:
    # Ratios 1.25 and 1.27 lie in (1 + ε_low, 1 + ε_high] = (1.2, 1.28]: clipped at 1.2, not at 1.28.
    # Ratios 1.3 and 1.5 lie above: clipped high. A > 0 on every row: clip_fraction_high = 2/4 per row.
    batch = make_batch(4)
    ratios = torch.tensor([1.25, 1.27, 1.3, 1.5, 1.0, 1.0], dtype=torch.float64)
    batch["old_logp"] = batch["logp"] - torch.log(ratios)
    batch["advantages"] = torch.tensor([1.3, 0.7, 1.1, 0.5], dtype=torch.float64)
    batch["mask"] = torch.tensor([[1, 1, 1, 1, 0, 0]] * B)
    out = grpo_policy_loss(batch["logp"], batch["old_logp"], batch["advantages"], batch["mask"], loss_type="bnpo")
    assert out.metrics["clip_fraction_high"] == pytest.approx(0.5)
    both_losses(batch, ours={"loss_type": "bnpo", "eps_low": 0.2, "eps_high": 0.28},
                theirs={"loss_type": "bnpo", "epsilon": 0.2, "epsilon_high": 0.28})


@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_cispo_matches_trl(beta: float) -> None:
    # TRL caps the weight at its epsilon_high (5 here) with no lower bound: ours with ε_high = 4, ε_low unset.
    batch = make_batch(6)
    batch["old_logp"] = batch["old_logp"].clone()
    batch["old_logp"][0, :3] = batch["logp"][0, :3] - 2.0  # ρ = e² ≈ 7.4 > 5: these weights are capped
    both_losses(batch, ours={"loss_type": "cispo", "beta": beta, "cispo_eps_high": 4.0},
                theirs={"loss_type": "cispo", "beta": beta, "epsilon_high": 5.0})


@pytest.mark.parametrize("loss_type", ["bnpo", "grpo"])
def test_entropy_bonus_matches_trl_token_mean(loss_type: str) -> None:
    # TRL's bonus is a token mean per micro-batch for every loss type; ours reduces it as the loss
    # does, which is the same for bnpo, and for grpo when every row has the same length.
    batch = make_batch(7)
    if loss_type == "grpo":
        batch["mask"] = torch.ones(B, T, dtype=torch.long)
    entropies = torch.rand(B, T, generator=torch.Generator().manual_seed(7), dtype=torch.float64) * 2
    both_losses(batch, ours={"loss_type": loss_type, "entropy_coef": 0.05},
                theirs={"loss_type": loss_type, "entropy_coef": 0.05, "epsilon": 0.2, "epsilon_high": 0.28},
                entropies=entropies, grad_accum=2)


@pytest.mark.parametrize("loss_type", ["dapo", "grpo"])
def test_rollout_importance_weights_enter_like_trl_vllm_correction(loss_type: str) -> None:
    # TRL multiplies the policy term by importance_sampling_ratio before adding β·KL, as ours does.
    batch = make_batch(8)
    rollout_logp = batch["old_logp"] + 0.7 * torch.randn(B, T, generator=torch.Generator().manual_seed(8),
                                                         dtype=torch.float64)
    weights = rollout_is_weights(batch["old_logp"], rollout_logp, batch["mask"], cap=3.0)
    # TRL's token_truncate ratio, as its _generate_and_score_completions forms it: exp((old − vllm) · m), clamp ≤ C.
    trl_ratio = torch.clamp(torch.exp((batch["old_logp"] - rollout_logp) * batch["mask"]), max=3.0)
    assert torch.allclose(weights, trl_ratio)
    both_losses(batch, ours={"loss_type": loss_type, "beta": 0.04},
                theirs={"loss_type": loss_type, "beta": 0.04, "epsilon": 0.2, "epsilon_high": 0.28},
                is_ratio=weights)


def test_default_clamps_keep_trl_parity_for_gspo_with_kl() -> None:
    # The veRL clamps (log-ratio ±20, KL ±10) change nothing while every value is inside them, so the
    # defaults keep TRL parity for GSPO with k3.
    both_losses(make_batch(9), ours={"loss_type": "grpo", "beta": 0.2, "importance_sampling_level": "sequence",
                                     "log_ratio_clamp": 20.0, "kl_clamp": 10.0},
                theirs={"loss_type": "grpo", "beta": 0.2, "importance_sampling_level": "sequence",
                        "epsilon": 0.2, "epsilon_high": 0.28})
