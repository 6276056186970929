"""STS end to end on a model: shifted dimensions of a fine-tuning set, target-domain scores, validation.

``shifted_dimensions`` runs the fine-tuning examples through the base model plainly and after two
demonstrations (the in-context stand-in for the fine-tuned model, aligned token by token, see
``trainer.sts.activations``), encodes both with the SAE and accumulates
``shift_d = Σ_t (f_icl[t,d] − f_base[t,d])²`` batch by batch (it is a sum over rows), keeping the top
``k``. ``target_scores`` encodes each target domain's inputs and applies ``domain_score`` over all
their tokens (padding excluded; every real token, the prefix such as a BOS token included, as the
authors' rows are every token the model saw). Nothing of size ``tokens × d_sae`` is held for the
shift; the scores keep only the ``k`` selected columns. ``validate`` is Pearson's r (``pearson``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from trainer.sts.activations import AlignedPair, iter_aligned, iter_residual
from trainer.sts.sae import encode
from trainer.sts.scores import Correlation, domain_score, feature_shift, pearson, top_shifted_dimensions


@dataclass(frozen=True)
class ShiftedDimensions:
    """The top-``k`` shifted SAE features (largest first), the whole shift vector and its token count."""

    dims: torch.Tensor
    shift: torch.Tensor
    tokens: int


def shifted_dimensions(model: Any, sae: Any, layer: int, pairs: Sequence[AlignedPair], *, top_k: int = 100,
                       batch_size: int = 16, pad_id: int = 0) -> ShiftedDimensions:
    """Step 2 of STS over the aligned pairs of a fine-tuning set (``in_context_pairs``)."""
    if not pairs:
        raise ValueError("pairs: need at least one fine-tuning example")
    total: torch.Tensor | None = None
    tokens = 0
    for base_rows, icl_rows in iter_aligned(model, pairs, layer, batch_size=batch_size, pad_id=pad_id):
        part = feature_shift(encode(sae, icl_rows), encode(sae, base_rows))
        total = part if total is None else total + part
        tokens += base_rows.shape[0]
    assert total is not None  # pairs is not empty
    return ShiftedDimensions(top_shifted_dimensions(total, top_k), total, tokens)


def target_features(model: Any, sae: Any, layer: int, sequences: Sequence[Sequence[int]], dims: torch.Tensor, *,
                    batch_size: int = 32, pad_id: int = 0) -> torch.Tensor:
    """The ``[tokens, len(dims)]`` SAE features, columns ``dims`` only, of every real token of ``sequences``."""
    if not sequences:
        raise ValueError("sequences: a target domain needs at least one input")
    parts = [encode(sae, torch.cat(acts))[:, dims]
             for _, acts in iter_residual(model, sequences, layer, batch_size=batch_size, pad_id=pad_id)]
    return torch.cat(parts)


def target_scores(model: Any, sae: Any, layer: int, domains: Mapping[str, Sequence[Sequence[int]]],
                  dims: torch.Tensor, *, batch_size: int = 32, pad_id: int = 0) -> dict[str, float]:
    """Step 3 of STS: ``domain_score`` of each target domain's inputs on the shifted dimensions."""
    out = {}
    for name, sequences in domains.items():
        features = target_features(model, sae, layer, sequences, dims, batch_size=batch_size, pad_id=pad_id)
        out[name] = domain_score(features, torch.arange(features.shape[1]))
    return out


def validate(scores: Mapping[Any, float], deltas: Mapping[Any, float]) -> Correlation:
    """Step 4 of STS: Pearson's r of the scores against the measured accuracy changes, matched by key."""
    missing = sorted(map(str, set(scores) ^ set(deltas)))
    if missing:
        raise ValueError(f"deltas: scores and accuracy changes must name the same domains; unmatched: {missing}")
    keys = list(scores)
    return pearson([scores[k] for k in keys], [deltas[k] for k in keys])
