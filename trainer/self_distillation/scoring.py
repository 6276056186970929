"""Token log-probs of given continuation ids under a given context, and the top-k per position.

The forward is the trainer's own: the items are laid out as a rollout batch by
``trainer.grpo.collate`` (left-padded contexts, right-padded continuations), the model is called
with ``logits_to_keep = T + 1``, and log π(y_t) comes from ``trainer.logprobs.chunked_token_logprobs``.
Top-k: the k most likely ids per continuation position, their log-probs, and log(1 − Σ top-k p),
the lumped tail. The teacher service's ``/v1/score`` computes with this function
(``services.teacher.scoring.score_batch``) and the in-process teacher too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from trainer.logprobs import chunked_token_logprobs
from trainer.rollout import Rollout


@dataclass(frozen=True)
class ScoreInput:
    context_ids: list[int]
    continuation_ids: list[int]


@dataclass
class ScoreOutput:
    logprobs: list[float]
    top_ids: list[list[int]] = field(default_factory=list)
    top_logprobs: list[list[float]] = field(default_factory=list)
    tail_logprobs: list[float] = field(default_factory=list)


def batch_for(inputs: list[ScoreInput], pad_id: int) -> Any:
    """The items as the trainer's rollout batch (``trainer.grpo.Batch``)."""
    from trainer.grpo import collate  # grpo imports this package: imported where used

    rollouts = [Rollout(prompt_index=i, prompt_ids=list(item.context_ids), completion_ids=list(item.continuation_ids),
                        text="", truncated=False) for i, item in enumerate(inputs)]
    return collate(rollouts, pad_id)


@torch.no_grad()
def score_tokens(model: Any, inputs: list[ScoreInput], pad_id: int, *, top_k: int, temperature: float = 1.0,
                 device: Any = None) -> list[ScoreOutput]:
    """One forward of ``model`` over ``inputs``: per-token log-probs, and top-k (k > 0) with the lumped tail."""
    batch = batch_for(inputs, pad_id)
    t_max = batch.completion_ids.shape[1]
    device = device if device is not None else next(model.parameters()).device
    logits = model(input_ids=batch.input_ids.to(device), attention_mask=batch.attention_mask.to(device),
                   position_ids=batch.position_ids.to(device), logits_to_keep=t_max + 1).logits
    logps = chunked_token_logprobs(logits, batch.completion_ids.to(device), temperature)
    outputs: list[ScoreOutput] = []
    for row, item in enumerate(inputs):
        n = len(item.continuation_ids)
        out = ScoreOutput(logprobs=[float(v) for v in logps[row, :n].tolist()])
        if top_k > 0:
            # One row's (n, V) float temporary at a time.
            row_logps = torch.log_softmax(logits[row, :n].to(torch.promote_types(logits.dtype, torch.float32))
                                          / temperature, dim=-1)
            k = min(top_k, row_logps.shape[-1])
            values, ids = row_logps.topk(k, dim=-1)
            out.top_ids = [[int(i) for i in r] for r in ids.tolist()]
            out.top_logprobs = [[float(v) for v in r] for r in values.tolist()]
            covered = values.exp().sum(-1).to(torch.float64)
            out.tail_logprobs = [float(v) for v in torch.log1p(-covered.clamp(max=1.0 - 1e-12)).tolist()]
        outputs.append(out)
    del logits
    return outputs
