"""Small tensor statistics the losses and the run logs share: masked means, log-probs, entropy, clipping."""

from __future__ import annotations

import torch


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Σ(values · mask) / max(Σ mask, 1), over ``dim`` or over everything.

    ``values`` may be ``(B, 1)`` (one value per sequence) and is broadcast onto ``mask``.
    """
    mask = mask.to(values.dtype) if values.is_floating_point() else mask.float()
    weighted = values * mask
    if dim is None:
        return weighted.sum() / mask.sum().clamp(min=1.0)
    return weighted.sum(dim) / mask.sum(dim).clamp(min=1.0)


def token_logprobs(logits: torch.Tensor, token_ids: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log π(y_t | y_<t) = log_softmax(logits_t / τ)[y_t], shape ``(B, T)`` from logits ``(B, T, V)``.

    The logits must already be aligned with ``token_ids`` (position t predicts token t).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    log_probs = torch.log_softmax(logits.float() / temperature, dim=-1)
    return log_probs.gather(-1, token_ids.unsqueeze(-1)).squeeze(-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Per-position entropy H = −Σ_v p_v log p_v = logsumexp(l) − Σ_v p_v l_v, shape ``logits.shape[:-1]``."""
    logits = logits.float()
    probs = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(dim=-1)


def clip_fractions(ratio: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, *, eps_low: float,
                   eps_high: float) -> dict[str, float]:
    """Fraction of (masked) tokens whose gradient the clip removes.

    low:  ρ < 1 − ε_low  and A < 0;   high: ρ > 1 + ε_high and A > 0;   region: either.
    ``ratio`` is ``(B, T)`` or ``(B, 1)``; ``advantages`` is ``(B,)``, ``(B, 1)`` or ``(B, T)``.
    """
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(1)
    low = (ratio < 1 - eps_low) & (advantages < 0)
    high = (ratio > 1 + eps_high) & (advantages > 0)
    return {
        "clip_fraction_low": float(masked_mean(low.float(), mask)),
        "clip_fraction_high": float(masked_mean(high.float(), mask)),
        "clip_fraction": float(masked_mean((low | high).float(), mask)),
    }
