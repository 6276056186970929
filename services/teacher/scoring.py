"""Per-token log-probs of given continuation ids under a given context, and top-k log-probs per position.

The forward is the trainer's own (``trainer.logprobs``): the items are laid out as a rollout batch by
``trainer.grpo.collate`` (left-padded contexts, right-padded continuations, position ids counted from
each row's first real token), the model is called with ``logits_to_keep = T + 1``, and log π(y_t) comes
from ``trainer.logprobs.chunked_token_logprobs`` on those logits. On the same model, dtype and batch
the numbers are the trainer's, bit for bit (``tests/unit/teacher/test_scoring.py``).

Top-k: the k most likely ids at each continuation position with their log-probs (at the same
temperature), and the log of the mass outside them. Those support the lumped top-k KL
(:func:`trainer.self_distillation.formulas.lumped_topk_kl`): the student's log-probs of the teacher's top-k ids
plus one tail bucket — a lower bound of the full-vocabulary KL, exact when the tail is empty.
The per-token log-probs alone support only sampled-token estimates (k1: log π_S − log π_T on y_t).
"""

from __future__ import annotations

import importlib.util
from typing import Any

import torch

from services.teacher.model_cache import LoadedTeacher
from trainer.self_distillation import scoring as shared
from trainer.self_distillation.scoring import ScoreInput, ScoreOutput

__all__ = ["ScoreInput", "ScoreOutput", "VllmScorer", "batch_for", "pad_id_of", "score_batch", "vllm_usable"]


def batch_for(inputs: list[ScoreInput], pad_id: int) -> Any:
    """The items as the trainer's rollout batch (``trainer.grpo.Batch``)."""
    return shared.batch_for(inputs, pad_id)


def pad_id_of(teacher: LoadedTeacher) -> int:
    tok = teacher.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    return int(pad if pad is not None else 0)


def score_batch(teacher: LoadedTeacher, inputs: list[ScoreInput], *, top_k: int,
                temperature: float = 1.0) -> list[ScoreOutput]:
    """One forward over ``inputs`` (the caller holds ``teacher.lock``): the trainer's own
    (:func:`trainer.self_distillation.scoring.score_tokens`, which the in-process teacher uses too)."""
    return shared.score_tokens(teacher.model, inputs, pad_id_of(teacher), top_k=top_k, temperature=temperature,
                               device=teacher.device)


def vllm_usable() -> bool:
    """vLLM is installed and a CUDA device is present (the only case the vllm backend is used)."""
    return importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()


class VllmScorer:  # pragma: no cover - needs vllm and a GPU; never used on CPU
    """Scoring with vLLM's ``prompt_logprobs`` for a ``local`` teacher model (its folder's weights).

    The prompt is context + continuation; vLLM returns, for every prompt position, the log-prob of
    the actual token and the top ``prompt_logprobs`` alternatives. The tail mass is computed from the
    top-k as in the transformers path. An ``ema`` model (pushed weights) always scores with
    transformers.
    """

    def __init__(self, model_path: str, dtype: str) -> None:
        from vllm import LLM

        self.llm = LLM(model=model_path, dtype=dtype, enable_prefix_caching=True)

    def score(self, inputs: list[ScoreInput], *, top_k: int, temperature: float = 1.0) -> list[ScoreOutput]:
        import math

        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if temperature != 1.0:
            raise ValueError("temperature: the vllm backend scores at temperature 1 only")
        params = SamplingParams(max_tokens=1, prompt_logprobs=max(1, top_k))
        prompts = [TokensPrompt(prompt_token_ids=[*i.context_ids, *i.continuation_ids]) for i in inputs]
        results = self.llm.generate(prompts, params, use_tqdm=False)
        outputs = []
        for item, result in zip(inputs, results, strict=True):
            start = len(item.context_ids)
            out = ScoreOutput(logprobs=[])
            for t, token in enumerate(item.continuation_ids):
                entry = result.prompt_logprobs[start + t]
                out.logprobs.append(float(entry[token].logprob))
                if top_k > 0:
                    ranked = sorted(entry.items(), key=lambda kv: kv[1].logprob, reverse=True)[:top_k]
                    out.top_ids.append([int(k) for k, _ in ranked])
                    out.top_logprobs.append([float(v.logprob) for _, v in ranked])
                    covered = sum(math.exp(v.logprob) for _, v in ranked)
                    out.tail_logprobs.append(math.log(max(1e-12, 1.0 - covered)))
            outputs.append(out)
        return outputs
