"""CARE's two probes: small MLPs over frozen policy features, trained online on bought labels.

Stage 1 predicts P(majority vote is correct) (2 classes) with an auxiliary per-response
correctness head; stage 2 predicts p(c | i) over c = 0..n, masked to the valid values of c.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from services.annotation.care import features as feat
from services.annotation.care.features import GroupView


class Probe(nn.Module):
    """Prompt MLP (BN → Linear → h_p) ‖ mean-pooled response MLP (BN → h_r → h_o) → h_h → classes.

    ``aux`` scores each response's correctness from its own response embedding.
    """

    def __init__(self, prompt_dim: int, response_dim: int, n_classes: int, *, prompt_hidden: int = 128,
                 response_hidden: int = 64, response_out: int = 512, head_hidden: int = 256) -> None:
        super().__init__()
        self.prompt = nn.Sequential(nn.BatchNorm1d(prompt_dim), nn.Linear(prompt_dim, prompt_hidden), nn.ReLU())
        self.response = nn.Sequential(nn.BatchNorm1d(response_dim), nn.Linear(response_dim, response_hidden),
                                      nn.ReLU(), nn.Linear(response_hidden, response_out), nn.ReLU())
        self.head = nn.Sequential(nn.Linear(prompt_hidden + response_out, head_hidden), nn.ReLU(),
                                  nn.Linear(head_hidden, n_classes))
        self.aux = nn.Linear(response_out, 1)

    def forward(self, prompt_x: torch.Tensor, rollout_x: torch.Tensor,
                pool_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, dp), (B, n, dr), (B, n) bool → class logits (B, C), per-response logits (B, n)."""
        batch, n, width = rollout_x.shape
        h_prompt = self.prompt(prompt_x)
        h_resp = self.response(rollout_x.reshape(batch * n, width)).reshape(batch, n, -1)
        weights = pool_mask.to(h_resp.dtype).unsqueeze(-1)
        # Masked mean; an empty pool (nothing outside the majority) gives the zero vector.
        pooled = (h_resp * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        return self.head(torch.cat([h_prompt, pooled], dim=-1)), self.aux(h_resp).squeeze(-1)


@dataclass
class Batch:
    """Probe inputs for B groups (and labels when known)."""

    prompt_x: torch.Tensor  # (B, dp)
    rollout_x: torch.Tensor  # (B, n, dr)
    valid: torch.Tensor  # (B, n) bool
    pool2: torch.Tensor  # (B, n) bool: stage-2 pooling mask
    class2: torch.Tensor  # (B, n + 1) bool: valid values of c
    majority: torch.Tensor  # (B,) long: majority size x
    y1: torch.Tensor | None = None  # (B,) long
    y2: torch.Tensor | None = None  # (B,) long
    yr: torch.Tensor | None = None  # (B, n) float: per-response correctness


def make_batch(views: list[GroupView], dim: int, length_scale: float,
               correct: list[list[bool]] | None = None) -> Batch:
    """Stack views into tensors; with ``correct`` also the labels (stage-2 mask then admits y₂)."""
    class2 = np.stack([feat.stage2_class_mask(v) for v in views])
    batch = Batch(
        prompt_x=torch.from_numpy(np.stack([feat.prompt_input(v, dim, length_scale) for v in views])),
        rollout_x=torch.from_numpy(np.stack([feat.rollout_input(v, dim, length_scale) for v in views])),
        valid=torch.from_numpy(np.stack([feat.valid_mask(v) for v in views])),
        pool2=torch.from_numpy(np.stack([feat.stage2_pool_mask(v) for v in views])),
        class2=torch.from_numpy(class2),
        majority=torch.tensor([v.majority_size for v in views], dtype=torch.long))
    if correct is not None:
        ys = [feat.labels(v, c) for v, c in zip(views, correct, strict=True)]
        batch.y1 = torch.tensor([y for y, _ in ys], dtype=torch.long)
        batch.y2 = torch.tensor([y for _, y in ys], dtype=torch.long)
        batch.class2[torch.arange(len(views)), batch.y2] = True  # a label outside the usual set still counts
        batch.yr = torch.tensor(np.asarray(correct, dtype=np.float32))
    return batch


def class_weights(counts: np.ndarray, low: float = 0.25, high: float = 4.0) -> np.ndarray:
    """w_k ∝ count_k^−0.5 over the classes present, normalised to mean 1, clipped to [low, high].

    Absent classes (count 0) get weight 1; they never occur as a target.
    """
    counts = np.asarray(counts, dtype=np.float64)
    present = counts > 0
    out = np.ones_like(counts)
    if present.any():
        raw = counts[present] ** -0.5
        out[present] = np.clip(raw / raw.mean(), low, high)
    return out


def masked_logits(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return logits.masked_fill(~mask, float("-inf"))


def stage1_loss(probe: Probe, batch: Batch, weights: torch.Tensor, aux_weight: float) -> torch.Tensor:
    """CE_w(logits, y₁) + aux_weight · BCE(per-response logits, r_j) over parseable responses."""
    assert batch.y1 is not None and batch.yr is not None
    logits, aux = probe(batch.prompt_x, batch.rollout_x, torch.ones_like(batch.valid))
    loss = F.cross_entropy(logits, batch.y1, weight=weights)
    if aux_weight > 0 and bool(batch.valid.any()):
        loss = loss + aux_weight * F.binary_cross_entropy_with_logits(aux[batch.valid], batch.yr[batch.valid])
    return loss


def stage2_loss(probe: Probe, batch: Batch, weights: torch.Tensor) -> torch.Tensor:
    """CE_w over c with invalid classes masked to −∞ (pooling only outside the majority)."""
    assert batch.y2 is not None
    logits, _ = probe(batch.prompt_x, batch.rollout_x, batch.pool2)
    return F.cross_entropy(masked_logits(logits, batch.class2), batch.y2, weight=weights)


@torch.no_grad()
def predict(stage1: Probe, stage2: Probe, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
    """(P(majority correct) per group, p(c | i) as (B, n + 1)); probes in eval mode."""
    stage1.eval()
    stage2.eval()
    logits1, _ = stage1(batch.prompt_x, batch.rollout_x, torch.ones_like(batch.valid))
    logits2, _ = stage2(batch.prompt_x, batch.rollout_x, batch.pool2)
    p1 = torch.softmax(logits1, dim=-1)[:, 1]
    p2 = torch.softmax(masked_logits(logits2, batch.class2), dim=-1)
    return p1.double().numpy(), p2.double().numpy()


def train_step(probe: Probe, optimizer: torch.optim.Optimizer, loss: torch.Tensor, grad_clip: float) -> float:
    """One AdamW step with the global gradient norm clipped to ``grad_clip``."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()  # type: ignore[no-untyped-call]
    nn.utils.clip_grad_norm_(probe.parameters(), grad_clip)
    optimizer.step()
    return float(loss.detach())
