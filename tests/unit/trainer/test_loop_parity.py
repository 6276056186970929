"""``num_iterations`` (μ) and ``mask_truncated_completions`` in our loop, against TRL 1.16's own code.

Both live inside TRL's trainer, not in a function: μ is TRL reusing one generation's buffered inputs
(its ``old_per_token_logps``, computed once before the first update) for μ optimizer passes, and
``mask_truncated_completions`` is a block of ``_generate_and_score_completions``. So:

- our loop runs for real (tiny CPU model, the scripted engine of test_loss_options_loop), and every
  call it makes to ``grpo_policy_loss`` is recorded (tensors and keyword arguments);
- TRL's ``_compute_loss`` then runs on each recorded call's tensors in float64, with the inputs TRL
  would buffer — the loss-mask, the advantages, and the π_old log-probs from before the first update,
  the same in every pass — and must equal our loss replayed in float64 with the loop's own arguments
  (≤ 1e-12), gradients included;
- TRL's ``if self.mask_truncated_completions:`` block, taken from its source with ``inspect`` / ``ast``
  (as in test_is_modes_parity) and executed unchanged on the batch's completions, must give the loss
  mask our loop computed.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

import trainer.grpo as grpo_module
from tests.conftest import require_module
from tests.unit.trainer.test_is_modes_parity import trl_if_block
from tests.unit.trainer.test_loss_options_loop import trainer_for
from trainer.algorithms import grpo_policy_loss
from trainer.algorithms import mask_truncated as real_mask_truncated
from trainer.grpo import Batch, GRPOTrainer
from trainer.rollout import eos_token_ids

trl = require_module("trl", "TRL, the reference these losses are checked against (dev extra)")
accelerate = require_module("accelerate", "accelerate, which TRL's trainer needs (dev extra)")

TOL = 1e-12
MASK_BLOCK = trl_if_block("self.mask_truncated_completions", "completion_mask",
                          ("eos_and_pad = [*self.eos_token_ids, self._tokenizer.pad_token_id]",
                           "completion_mask = completion_mask * (~is_truncated).unsqueeze(1).int()"))


def f64(tensor: torch.Tensor | None) -> torch.Tensor | None:
    return tensor.detach().to(torch.float64).clone() if tensor is not None else None


def record_loop(monkeypatch: pytest.MonkeyPatch, trainer: GRPOTrainer) -> tuple[list[dict[str, Any]],
                                                                                 list[Batch], list[torch.Tensor]]:
    """Run one train step, recording every grpo_policy_loss call, the rollout batch and the loss mask
    the loop formed after mask_truncated."""
    calls: list[dict[str, Any]] = []
    batches: list[Batch] = []
    masks: list[torch.Tensor] = []

    def recording_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                       **kwargs: Any) -> Any:
        out = grpo_policy_loss(logp, old_logp, advantages, mask, **kwargs)
        calls.append({"logp": f64(logp), "old_logp": f64(old_logp), "advantages": f64(advantages),
                      "mask": mask.detach().clone(), "loss": float(out.loss.detach()), "kwargs": {
                          k: (f64(v) if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
                          for k, v in kwargs.items()}})
        return out

    def recording_mask(mask: torch.Tensor, truncated: torch.Tensor) -> torch.Tensor:
        out = real_mask_truncated(mask, truncated)
        masks.append(out.detach().clone())
        return out

    real_update = trainer._update

    def recording_update(batch: Batch, advantages: torch.Tensor, seed: int) -> dict[str, float]:
        batches.append(batch)
        return real_update(batch, advantages, seed)

    monkeypatch.setattr(grpo_module, "grpo_policy_loss", recording_loss)
    monkeypatch.setattr(grpo_module, "mask_truncated", recording_mask)
    monkeypatch.setattr(trainer, "_update", recording_update)
    trainer.train_step()
    return calls, batches, masks


def trl_loss(call: dict[str, Any], logp: torch.Tensor, old_logp: torch.Tensor | None,
             num_items_in_batch: int, **config: Any) -> torch.Tensor:
    """TRL's ``_compute_loss`` on one recorded micro-batch (the harness of test_loss_parity, sized to it)."""
    from accelerate import Accelerator
    from trl.trainer.grpo_config import GRPOConfig
    from trl.trainer.grpo_trainer import GRPOTrainer as TRLTrainer

    args = GRPOConfig(output_dir="unused", report_to=[], use_cpu=True, **config)
    metrics: dict[str, dict[str, list[float]]] = {"train": defaultdict(list), "eval": defaultdict(list)}
    rows, width = call["mask"].shape
    harness = SimpleNamespace(
        args=args, loss_type=args.loss_type, beta=args.beta, epsilon_low=args.epsilon,
        epsilon_high=args.epsilon_high if args.epsilon_high is not None else args.epsilon,
        importance_sampling_level=args.importance_sampling_level, max_completion_length=args.max_completion_length,
        top_entropy_quantile=args.top_entropy_quantile, off_policy_mask_threshold=args.off_policy_mask_threshold,
        use_vllm=False, vllm_importance_sampling_correction=False, aux_loss_enabled=False,
        _entropy_bonus_enabled=False, entropy_coef=0.0, use_adaptive_entropy=False,
        current_gradient_accumulation_steps=args.gradient_accumulation_steps, accelerator=Accelerator(cpu=True),
        model=torch.nn.Linear(1, 1), _metrics=metrics,
        _get_per_token_logps_and_entropies=lambda *a, **k: (logp, torch.zeros_like(logp), None),
    )
    inputs = {
        "prompt_ids": torch.ones(rows, 2, dtype=torch.long), "prompt_mask": torch.ones(rows, 2, dtype=torch.long),
        "completion_ids": torch.ones(rows, width, dtype=torch.long), "completion_mask": call["mask"].long(),
        "advantages": call["advantages"], "old_per_token_logps": old_logp,
        "ref_per_token_logps": call["kwargs"]["ref_logp"], "num_items_in_batch": torch.tensor(num_items_in_batch),
    }
    loss: torch.Tensor = TRLTrainer._compute_loss(harness, harness.model, inputs)  # type: ignore[no-untyped-call, arg-type]
    return loss


def ours_replayed(call: dict[str, Any], logp: torch.Tensor) -> torch.Tensor:
    """Our loss on the recorded call in float64, with the loop's own keyword arguments."""
    kwargs = {**call["kwargs"], "entropy": None}
    loss: torch.Tensor = grpo_policy_loss(logp, call["old_logp"], call["advantages"], call["mask"], **kwargs).loss
    return loss


@pytest.mark.parametrize(("loss_type", "beta"), [("dapo", 0.0), ("grpo", 0.04), ("bnpo", 0.04)])
def test_num_iterations_matches_trl_reusing_one_generation(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                           loss_type: str, beta: float) -> None:
    mu = 3
    trainer = trainer_for(tmp_path, num_iterations=mu, loss_type=loss_type, beta=beta)
    calls, _, _ = record_loop(monkeypatch, trainer)
    assert len(calls) == mu  # one mini-batch, one micro-batch: one loss call per pass
    first = calls[0]
    # π_old: computed once before the first update (TRL buffers it at generation) and kept for every pass.
    assert all(torch.equal(call["old_logp"], first["old_logp"]) for call in calls)
    assert torch.allclose(first["logp"], first["old_logp"], rtol=0, atol=1e-6)  # pass 1: θ = θ_old
    assert not torch.allclose(calls[-1]["logp"], first["old_logp"], atol=1e-4)  # later passes: θ moved
    tokens = int(first["mask"].sum())
    for call in calls:
        items = call["kwargs"]["num_items_in_batch"]  # dapo's normaliser: the rollout batch's loss tokens, as TRL's
        assert (items is None) == (loss_type != "dapo") and (items is None or float(items) == tokens)
        logp_trl = call["logp"].clone().requires_grad_(True)
        theirs = trl_loss(call, logp_trl, first["old_logp"], tokens, loss_type=loss_type, beta=beta,
                          epsilon=0.2, epsilon_high=0.28, num_iterations=mu, use_bias_correction_kl=True,
                          max_completion_length=trainer.config.max_completion_length)
        logp_ours = call["logp"].clone().requires_grad_(True)
        ours = ours_replayed(call, logp_ours)
        assert ours.item() == pytest.approx(theirs.item(), rel=0, abs=TOL)
        (grad_trl,), (grad_ours,) = torch.autograd.grad(theirs, [logp_trl]), torch.autograd.grad(ours, [logp_ours])
        assert torch.allclose(grad_ours, grad_trl, rtol=0, atol=TOL)
        assert call["loss"] == pytest.approx(ours.item(), rel=1e-5, abs=1e-7)  # the float32 loss the loop took
    # The test can fail: TRL without the buffered π_old (its on-policy shortcut, old = logp.detach()) gives
    # a different loss once θ has moved.
    last = calls[-1]
    on_policy = trl_loss(last, last["logp"].clone(), None, tokens, loss_type=loss_type, beta=beta, epsilon=0.2,
                         epsilon_high=0.28, max_completion_length=trainer.config.max_completion_length)
    assert not math.isclose(on_policy.item(), ours_replayed(last, last["logp"]).item(), rel_tol=0, abs_tol=1e-9)


def trl_completion_mask(batch: Batch, eos: list[int], pad: int) -> torch.Tensor:
    """TRL's completion mask after its mask_truncated_completions block, on this batch's completions."""
    completion_mask = batch.completion_mask.long()
    lengths = completion_mask.sum(-1).tolist()
    completion_ids_list = [batch.completion_ids[i, :n].tolist() for i, n in enumerate(lengths)]
    scope: dict[str, Any] = {
        "self": SimpleNamespace(mask_truncated_completions=True, eos_token_ids=eos,
                                _tokenizer=SimpleNamespace(pad_token_id=pad)),
        "torch": torch, "device": "cpu", "completion_ids_list": completion_ids_list,
        "completion_mask": completion_mask, "tool_mask": None}
    exec(MASK_BLOCK, scope)  # TRL's own statements
    out: torch.Tensor = scope["completion_mask"]
    return out


def test_mask_truncated_completions_matches_trl(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    trainer = trainer_for(tmp_path, mask_truncated_completions=True, num_iterations=2, loss_type="grpo")
    calls, batches, masks = record_loop(monkeypatch, trainer)
    (batch,), (ours,) = batches, masks
    eos = eos_token_ids(trainer.tokenizer, getattr(trainer.model.generation_config, "eos_token_id", None))
    pad = int(trainer.tokenizer.pad_token_id)
    # The scripted completions never end on the pad id, where TRL's rule (EOS ids + pad) and ours (EOS ids:
    # a completion cut on a sampled pad token was still cut) would differ.
    assert not any(int(batch.completion_ids[i, n - 1]) == pad and pad not in eos
                   for i, n in enumerate(batch.completion_mask.long().sum(-1).tolist()) if n)
    theirs = trl_completion_mask(batch, eos, pad)
    assert torch.equal(ours.long(), theirs)
    assert 0 < int((theirs.sum(-1) == 0).sum()) < len(theirs)  # some rows masked, some kept
    # The loss calls saw exactly those rows masked, and TRL's loss on them equals ours.
    tokens = int(ours.sum())
    for call in calls:
        assert int(call["mask"].sum()) == tokens
        logp_trl = call["logp"].clone().requires_grad_(True)
        loss_trl = trl_loss(call, logp_trl, calls[0]["old_logp"], tokens, loss_type="grpo", beta=0.0, epsilon=0.2,
                            epsilon_high=0.28, mask_truncated_completions=True, num_iterations=2,
                            max_completion_length=trainer.config.max_completion_length)
        logp_ours = call["logp"].clone().requires_grad_(True)
        loss_ours = ours_replayed(call, logp_ours)
        assert loss_ours.item() == pytest.approx(loss_trl.item(), rel=0, abs=TOL)
        grad_trl = torch.autograd.grad(loss_trl, [logp_trl], allow_unused=True)[0]
        grad_ours = torch.autograd.grad(loss_ours, [logp_ours], allow_unused=True)[0]
        assert grad_trl is not None and grad_ours is not None
        assert torch.allclose(grad_ours, grad_trl, rtol=0, atol=TOL)
