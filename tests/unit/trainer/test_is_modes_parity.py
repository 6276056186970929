"""Our rollout IS weights equal TRL's vLLM importance-sampling ratio in all four modes, float64, to 1e-12.

TRL 1.16 forms the ratio inline in ``GRPOTrainer._generate_and_score_completions`` (not a function we
can call). The harness takes that method's source with ``inspect.getsource``, parses it, picks the one
``if self.use_vllm and self.vllm_importance_sampling_correction:`` block that assigns
``vllm_importance_sampling_ratio``, and executes TRL's own statements unchanged on our tensors, with
``self`` a plain object carrying the four attributes that block reads (set from a real ``GRPOConfig`` as
``GRPOTrainer.__init__`` sets them). Nothing is copied into this file: a TRL change to those lines
changes what runs here.
"""

from __future__ import annotations

import ast
import inspect
import math
import textwrap
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from tests.conftest import require_module
from trainer.algorithms import ROLLOUT_IS_MODES, rollout_correction_weights

trl = require_module("trl", "TRL, the reference these weights are checked against (dev extra)")

B, T = 6, 7
TOL = 1e-12


def trl_if_block(test: str, assigns: str, lines: tuple[str, ...]) -> Any:
    """The one ``if <test>:`` block of TRL's ``GRPOTrainer._generate_and_score_completions`` that assigns
    ``assigns``, compiled from TRL's own source (see the module docstring); ``lines``: source lines it
    must contain (the ones the parity rests on)."""
    from trl.trainer.grpo_trainer import GRPOTrainer

    source = textwrap.dedent(inspect.getsource(GRPOTrainer._generate_and_score_completions))
    tree = ast.parse(source)

    def assigns_name(node: ast.If) -> bool:
        return any(isinstance(sub, ast.Assign) and any(isinstance(t, ast.Name) and t.id == assigns
                                                       for t in sub.targets)
                   for stmt in node.body for sub in ast.walk(stmt))

    blocks = [node for node in ast.walk(tree)
              if isinstance(node, ast.If) and ast.unparse(node.test) == test and assigns_name(node)]
    assert len(blocks) == 1, f"TRL's `if {test}:` block moved: update this harness"
    text = ast.get_source_segment(source, blocks[0]) or ""
    for line in lines:
        assert line in text
    module = ast.Module(body=[blocks[0]], type_ignores=[])
    return compile(ast.fix_missing_locations(module), inspect.getsourcefile(GRPOTrainer) or "trl", "exec")


TRL_BLOCK = trl_if_block(
    "self.use_vllm and self.vllm_importance_sampling_correction", "vllm_importance_sampling_ratio",
    ("per_token_logps_diff = (old_per_token_logps - sampling_per_token_logps) * mask",
     "per_token_logps_diff = torch.nan_to_num(per_token_logps_diff, nan=0.0)",
     "per_sequence_logps_diff = per_token_logps_diff.sum(dim=-1, keepdim=True)",
     "vllm_importance_sampling_ratio = torch.exp(logps_diff)"))


def trl_ratio(old_logp: torch.Tensor, rollout_logp: torch.Tensor, completion_mask: torch.Tensor,
              tool_mask: torch.Tensor | None, *, mode: str, clip_max: float | None,
              clip_min: float | None) -> torch.Tensor:
    """TRL's ``vllm_importance_sampling_ratio`` for these tensors and settings, from its own code."""
    from trl.trainer.grpo_config import GRPOConfig

    args = GRPOConfig(output_dir="unused", report_to=[], use_cpu=True, vllm_importance_sampling_mode=mode,
                      vllm_importance_sampling_clip_max=clip_max, vllm_importance_sampling_clip_min=clip_min)
    harness = SimpleNamespace(use_vllm=True, vllm_importance_sampling_correction=True,
                              vllm_importance_sampling_mode=args.vllm_importance_sampling_mode,
                              vllm_importance_sampling_clip_max=args.vllm_importance_sampling_clip_max,
                              vllm_importance_sampling_clip_min=args.vllm_importance_sampling_clip_min)
    scope: dict[str, Any] = {"self": harness, "torch": torch, "math": math, "old_per_token_logps": old_logp,
                             "sampling_per_token_logps": rollout_logp, "completion_mask": completion_mask,
                             "tool_mask": tool_mask}
    exec(TRL_BLOCK, scope)  # TRL's own statements, see the module docstring
    ratio: torch.Tensor = scope["vllm_importance_sampling_ratio"]
    return ratio


def make_inputs(seed: int, *, spread: float = 0.6) -> dict[str, torch.Tensor]:
    """Log-probs whose ratios fall on both sides of both bounds, NaNs inside and past completions,
    ragged lengths (one empty row), and a tool mask with observation tokens."""
    gen = torch.Generator().manual_seed(seed)
    old = -torch.rand(B, T, generator=gen, dtype=torch.float64) * 4
    # A per-row drift in log π_old − log π_rollout, so that whole sequences also land above, inside and
    # below the bounds: +0.4 per token over row 0's 6 counted tokens, −0.5 over row 1's 3, …
    drift = torch.tensor([0.4, -0.5, -0.1, 0.9, 0.0, -0.2], dtype=torch.float64).unsqueeze(-1)
    rollout = old - drift + spread * torch.randn(B, T, generator=gen, dtype=torch.float64)
    lengths = torch.tensor([7, 5, 3, 1, 0, 6])
    completion_mask = (torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)).long()
    rollout = torch.where(completion_mask.bool(), rollout, torch.full_like(rollout, math.nan))  # NaN-padded, as ours
    rollout[0, 2] = math.nan  # vLLM gave no log-prob for counted tokens
    rollout[5, 0] = math.nan
    tool_mask = torch.ones(B, T, dtype=torch.long)
    tool_mask[1, 1:3] = 0  # observation tokens
    return {"old": old, "rollout": rollout, "completion_mask": completion_mask, "tool_mask": tool_mask}


BOUNDS = [(3.0, None), (3.0, 0.5), (2.0, 0.8), (None, 0.5), (2.5, 0.9)]


@pytest.mark.parametrize("mode", ROLLOUT_IS_MODES)
@pytest.mark.parametrize(("cap", "low"), BOUNDS)
@pytest.mark.parametrize("seed", [0, 1])
def test_weights_match_trl(mode: str, cap: float | None, low: float | None, seed: int) -> None:
    inputs = make_inputs(seed, spread=0.3 if mode.startswith("sequence") else 0.6)
    mask = inputs["completion_mask"] * inputs["tool_mask"]  # what our loop passes: counted tokens
    theirs = trl_ratio(inputs["old"], inputs["rollout"], inputs["completion_mask"], inputs["tool_mask"],
                       mode=mode, clip_max=cap, clip_min=low)
    ours = rollout_correction_weights(inputs["old"], inputs["rollout"], mask, mode=mode, cap=cap, min_weight=low)
    assert theirs.shape == ((B, 1) if mode.startswith("sequence") else (B, T))
    expected = theirs.expand(B, T)
    assert ours.dtype == expected.dtype == torch.float64
    assert torch.isfinite(expected).all()
    assert torch.allclose(ours, expected, rtol=0, atol=TOL), (ours - expected).abs().max()
    # Ours without veRL's log-ratio clamp is TRL's expression: bitwise-close here as well.
    free = rollout_correction_weights(inputs["old"], inputs["rollout"], mask, mode=mode, cap=cap, min_weight=low,
                                      log_ratio_clamp=None)
    assert torch.allclose(free, expected, rtol=0, atol=TOL)


@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize(("cap", "low"), BOUNDS)
@pytest.mark.parametrize("seed", [0, 1])
def test_the_batches_exercise_every_branch(level: str, cap: float | None, low: float | None, seed: int) -> None:
    # Guards the parity test above: for every pair of bounds some ratios lie above the cap, some below
    # the lower bound, and some strictly inside (and ≠ 1), so truncate and mask give different weights.
    inputs = make_inputs(seed, spread=0.3 if level == "sequence" else 0.6)
    mask = inputs["completion_mask"] * inputs["tool_mask"]
    delta = torch.nan_to_num((inputs["old"] - inputs["rollout"]) * mask, nan=0.0)
    raw = torch.exp(delta.sum(-1) if level == "sequence" else delta[mask.bool()])
    high = cap if cap is not None else math.inf
    floor = low if low is not None else 0.0
    assert cap is None or (raw > cap).any()
    assert low is None or (raw < low).any()
    assert ((raw > floor) & (raw < high) & (raw != 1.0)).any()


def test_without_a_tool_mask_trl_and_ours_agree() -> None:
    inputs = make_inputs(3)
    for mode in ROLLOUT_IS_MODES:
        theirs = trl_ratio(inputs["old"], inputs["rollout"], inputs["completion_mask"], None,
                           mode=mode, clip_max=3.0, clip_min=0.5).expand(B, T)
        ours = rollout_correction_weights(inputs["old"], inputs["rollout"], inputs["completion_mask"], mode=mode,
                                          cap=3.0, min_weight=0.5)
        assert torch.allclose(ours, theirs, rtol=0, atol=TOL)


def test_trl_rejects_an_unknown_mode_as_ours_does() -> None:
    inputs = make_inputs(0)
    with pytest.raises(ValueError, match="Unknown vLLM importance sampling level"):
        scope: dict[str, Any] = {
            "self": SimpleNamespace(use_vllm=True, vllm_importance_sampling_correction=True,
                                    vllm_importance_sampling_mode="token_clip", vllm_importance_sampling_clip_max=3.0,
                                    vllm_importance_sampling_clip_min=None),
            "torch": torch, "math": math, "old_per_token_logps": inputs["old"],
            "sampling_per_token_logps": inputs["rollout"], "completion_mask": inputs["completion_mask"],
            "tool_mask": None}
        exec(TRL_BLOCK, scope)
    with pytest.raises(ValueError, match="rollout_is_mode must be one of"):
        rollout_correction_weights(inputs["old"], inputs["rollout"], inputs["completion_mask"], mode="token_clip",
                                   cap=3.0)
