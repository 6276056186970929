"""Completion log-probs and entropies with bounded memory: micro-batched forwards, chunked log-softmax.

The naive path, ``log_softmax(logits.float() / τ).gather(y)`` plus a softmax for the entropy,
holds several float32 copies of the B x T x V logits at once (the upcast, the scaled copy, the
log-softmax, the probabilities); at 128 rollouts x 1,024 tokens x a 152k vocabulary each copy is
about 80 GB. Here:

- the rollouts go through the model ``micro_batch_size`` at a time, so the logits of at most one
  micro-batch exist at once (the old and reference passes need no gradient, so each micro-batch's
  logits are freed before the next forward);
- log π(y_t) = l_y/τ − logsumexp_v(l_v/τ) is computed over chunks of positions, so the only
  float32 temporary is one chunk's (≤ ``CHUNK_ELEMENTS`` values), and the backward recomputes
  the softmax chunk by chunk from the saved logits instead of keeping a float32 copy of them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

import torch

# Positions x vocabulary per float32 temporary: 8 Mi values = 32 MiB (about 55 positions of a
# 152k vocabulary, 16k positions of a 512-token one): small next to a micro-batch's logits, large
# enough that the per-chunk kernel launches stay negligible.
CHUNK_ELEMENTS = 1 << 23


class CompletionBatch(Protocol):
    """What the forward needs of a rollout batch (``trainer.grpo.Batch``): left-padded prompts
    followed by right-padded completions, every completion starting at the same column."""

    input_ids: torch.Tensor  # (B, P + T)
    attention_mask: torch.Tensor  # (B, P + T)
    position_ids: torch.Tensor  # (B, P + T)
    completion_ids: torch.Tensor  # (B, T)


def _chunks(rows: int, positions: int, vocab: int, budget: int) -> Iterator[tuple[slice, slice]]:
    """(row slice, position slice) blocks covering rows x positions, each ≤ ``budget`` / vocab cells
    (at least one position)."""
    cells = max(1, budget // max(1, vocab))
    if cells >= positions:
        per_block = max(1, cells // positions)
        for start in range(0, rows, per_block):
            yield slice(start, min(rows, start + per_block)), slice(0, positions)
        return
    for row in range(rows):
        for start in range(0, positions, cells):
            yield slice(row, row + 1), slice(start, min(positions, start + cells))


def _compute_dtype(logits: torch.Tensor) -> torch.dtype:
    """float32 for 16-bit or float32 logits; float64 stays float64 (exact parity checks)."""
    return torch.promote_types(logits.dtype, torch.float32)


class _TokenLogprobs(torch.autograd.Function):
    """log softmax(l / τ)[y] over chunks; backward: ∂/∂l_v = g · (1[v = y] − p_v) / τ, recomputed per chunk."""

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, token_ids: torch.Tensor, temperature: float,
                budget: int) -> torch.Tensor:
        rows, positions = token_ids.shape
        out = torch.empty((rows, positions), dtype=_compute_dtype(logits), device=logits.device)
        for r, t in _chunks(rows, positions, logits.shape[-1], budget):
            # One float temporary per chunk: shifted by its max in place, then exponentiated in place.
            shifted = logits[r, t].to(out.dtype) / temperature
            shifted.sub_(shifted.amax(dim=-1, keepdim=True))
            picked = shifted.gather(-1, token_ids[r, t].unsqueeze(-1)).squeeze(-1)
            out[r, t] = picked - shifted.exp_().sum(dim=-1).log_()
        ctx.save_for_backward(logits, token_ids)
        ctx.temperature, ctx.budget = temperature, budget
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None]:
        logits, token_ids = ctx.saved_tensors
        temperature: float = ctx.temperature
        grad = torch.zeros_like(logits)  # positions past T (the extra logits_to_keep column) get none
        rows, positions = token_ids.shape
        for r, t in _chunks(rows, positions, logits.shape[-1], ctx.budget):
            probs = torch.softmax(logits[r, t].to(_compute_dtype(logits)) / temperature, dim=-1).neg_()
            probs.scatter_add_(-1, token_ids[r, t].unsqueeze(-1), torch.ones_like(probs[..., :1]))
            grad[r, t] = (probs * (grad_out[r, t].unsqueeze(-1) / temperature)).to(grad.dtype)
        return grad, None, None, None


class _Entropy(torch.autograd.Function):
    """H = logsumexp(x) − Σ_v p_v x_v with x = l / τ, over chunks; backward: ∂H/∂l_v = −p_v (x_v − E_p[x]) / τ."""

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, positions: int, temperature: float, budget: int) -> torch.Tensor:
        rows = logits.shape[0]
        out = torch.empty((rows, positions), dtype=_compute_dtype(logits), device=logits.device)
        for r, t in _chunks(rows, positions, logits.shape[-1], budget):
            # With s = x − max x and Z = Σ e^s: H = log Z − Σ e^s s / Z (two float temporaries per chunk).
            shifted = logits[r, t].to(out.dtype) / temperature
            shifted.sub_(shifted.amax(dim=-1, keepdim=True))
            weights = torch.exp(shifted)
            normaliser = weights.sum(dim=-1)
            out[r, t] = normaliser.log() - weights.mul_(shifted).sum(dim=-1) / normaliser
        ctx.save_for_backward(logits)
        ctx.positions, ctx.temperature, ctx.budget = positions, temperature, budget
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None]:
        (logits,) = ctx.saved_tensors
        temperature: float = ctx.temperature
        grad = torch.zeros_like(logits)
        for r, t in _chunks(logits.shape[0], ctx.positions, logits.shape[-1], ctx.budget):
            scaled = logits[r, t].to(_compute_dtype(logits)) / temperature
            probs = torch.softmax(scaled, dim=-1)
            centred = scaled - (probs * scaled).sum(-1, keepdim=True)
            grad[r, t] = (-probs * centred * (grad_out[r, t].unsqueeze(-1) / temperature)).to(grad.dtype)
        return grad, None, None, None


def chunked_token_logprobs(logits: torch.Tensor, token_ids: torch.Tensor, temperature: float = 1.0, *,
                           budget: int = CHUNK_ELEMENTS) -> torch.Tensor:
    """log π(y_t) = l_{t,y_t}/τ − logsumexp_v(l_{t,v}/τ), ``(B, T)``, differentiable; float32 (float64
    for float64 logits).

    ``logits`` is ``(B, L, V)`` with L ≥ T, position t predicting ``token_ids[:, t]``; columns
    past T (the last ``logits_to_keep`` column) are ignored, so the model's output can be passed
    as it is, without a sliced (copied) view. Any dtype: each chunk is upcast on its own.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if logits.shape[:1] != token_ids.shape[:1] or logits.shape[1] < token_ids.shape[1]:
        raise ValueError(f"logits {tuple(logits.shape)} do not cover token_ids {tuple(token_ids.shape)}")
    result: torch.Tensor = _TokenLogprobs.apply(logits, token_ids, temperature, budget)  # type: ignore[no-untyped-call]
    return result


def chunked_entropy(logits: torch.Tensor, positions: int, temperature: float = 1.0, *,
                    budget: int = CHUNK_ELEMENTS) -> torch.Tensor:
    """Entropy of softmax(l_t / τ) for the first ``positions`` columns of ``logits`` ``(B, L, V)``:
    H_t = logsumexp(x_t) − Σ_v p_{t,v} x_{t,v}, ``(B, positions)`` (dtype as above), differentiable."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    result: torch.Tensor = _Entropy.apply(logits, positions, temperature, budget)  # type: ignore[no-untyped-call]
    return result


def _rows(batch: CompletionBatch, rows: slice, device: torch.device | str) -> dict[str, torch.Tensor]:
    return {"input_ids": batch.input_ids[rows].to(device), "attention_mask": batch.attention_mask[rows].to(device),
            "position_ids": batch.position_ids[rows].to(device)}


def completion_logprobs(model: Any, batch: CompletionBatch, temperature: float, *, with_entropy: bool = False,
                        device: torch.device | str | None = None, micro_batch_size: int | None = None,
                        entropy_grad: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log π(y_t | x, y_<t) on completion tokens ``(B, T)``, and optionally their entropies.

    The rollouts go through ``model`` ``micro_batch_size`` at a time (unset: all at once); under
    ``torch.no_grad`` that bounds the logits held to one micro-batch's. The entropy carries no
    gradient unless ``entropy_grad`` (an entropy bonus). ``device`` is where the forward runs; by
    default the parameters' device (with ZeRO-3 parameter offload the parameters rest in CPU
    memory while the forward runs on the GPU).
    """
    device = device or next(model.parameters()).device
    total, t_max = batch.completion_ids.shape
    size = micro_batch_size or max(1, total)
    logps: list[torch.Tensor] = []
    entropies: list[torch.Tensor] = []
    for start in range(0, total, size):
        rows = slice(start, min(total, start + size))
        # The logit at column c predicts the token at c + 1: the last T + 1 columns cover the completion.
        logits = model(**_rows(batch, rows, device), logits_to_keep=t_max + 1).logits
        logps.append(chunked_token_logprobs(logits, batch.completion_ids[rows].to(device), temperature))
        if with_entropy:
            entropies.append(chunked_entropy(logits if entropy_grad else logits.detach(), t_max, temperature))
        del logits  # no_grad: this micro-batch's logits go before the next forward
    entropy = torch.cat(entropies) if with_entropy else None
    return torch.cat(logps), entropy
