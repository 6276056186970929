"""What the routes do, without HTTP: tenancy, request-level checks, scoring a batch item by item."""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from services.common.auth import Principal, choose_project, get_accessible_project
from services.common.db import session_scope
from services.common.errors import InvalidInput
from services.common.settings import get_settings
from services.teacher import registry
from services.teacher.model_cache import CACHE, LoadedTeacher
from services.teacher.registry import TeacherRecord
from services.teacher.schemas import (
    ScoreItem,
    ScoreRequest,
    ScoreResponse,
    ScoreResult,
    TeacherModelOut,
    TopK,
)

if TYPE_CHECKING:  # scoring imports torch and the trainer: loaded on the first score, not at app start
    from services.teacher import scoring

KL_APPROXIMATION = ("top-k forward KL with the tail lumped: KL(P‖Q) over the k ids of the teacher's top-k plus one "
                    "bucket for the rest of the vocabulary (a lower bound of the full KL; exact when the tail is "
                    "empty). The per-token log-probs alone support sampled-token estimates only.")


def project_for(principal: Principal, requested: str | None) -> str:
    """The project a request acts on (the named one, or the key's only one), checked against the key."""
    project_id = choose_project(principal, requested)
    with session_scope() as session:
        get_accessible_project(session, principal, project_id)  # 404 naming project_id outside the key's scope
    return project_id


def model_out(record: TeacherRecord) -> TeacherModelOut:
    return TeacherModelOut(project_id=record.project_id, name=record.name, kind=record.kind, path=record.path,
                           dtype=record.dtype, version=record.version, revision=record.revision,
                           created_at=record.created_at, updated_at=record.updated_at, last_tau=record.last_tau,
                           loaded=(record.project_id, record.name) in CACHE.loaded())


def check_batch(ids: list[str], field: str = "items") -> None:
    limit = get_settings().max_batch_items
    if len(ids) > limit:
        raise InvalidInput(f"{field}: {len(ids)} items; the limit is {limit}", field=field)
    duplicates = sorted(i for i, n in Counter(ids).items() if n > 1)
    if duplicates:
        raise InvalidInput(f"{field}: duplicate ids: {', '.join(duplicates[:10])}", field=field)


def load(project_id: str, name: str) -> LoadedTeacher:
    return CACHE.get(registry.read(project_id, name))


def _item_tokens(teacher: LoadedTeacher, item: ScoreItem, max_tokens: int) -> tuple[scoring.ScoreInput | None, str]:
    """The item's token ids, or None and why it cannot be scored."""
    from services.teacher import scoring

    if (item.context_ids is None) == (item.context is None):
        return None, "context: give exactly one of context_ids and context"
    if item.context is not None:
        try:
            context = list(teacher.tokenizer(item.context, add_special_tokens=False)["input_ids"])
        except Exception as exc:  # text the tokenizer cannot take is this item's problem
            return None, f"context: the tokenizer refused it ({type(exc).__name__}: {exc})"
    else:
        context = list(item.context_ids or [])
    if not context:
        return None, "context: needs at least one token (the first continuation token is predicted from it)"
    if not item.continuation_ids:
        return None, "continuation_ids: needs at least one token"
    vocab = teacher.vocab_size
    for name, ids in (("context_ids", context), ("continuation_ids", item.continuation_ids)):
        bad = next((i for i in ids if not 0 <= i < vocab), None)
        if bad is not None:
            return None, f"{name}: token id {bad} is outside the vocabulary (0…{vocab - 1})"
    total = len(context) + len(item.continuation_ids)
    limit = min(max_tokens, teacher.max_positions or max_tokens)
    if total > limit:
        return None, f"context + continuation is {total} tokens; the limit is {limit}"
    return scoring.ScoreInput(context, list(item.continuation_ids)), ""


# The clock deadlines are measured on (a module attribute, so a test can drive it without sleeping).
clock = time.monotonic

_VLLM: dict[tuple[str, str], Any] = {}
_VLLM_LOCK = threading.Lock()


def _vllm_scorer(record: TeacherRecord) -> Any | None:
    """A vLLM scorer for a ``local`` model when the settings ask for it and vLLM and a GPU are present."""
    from services.teacher import scoring

    backend = get_settings().teacher_backend
    if backend == "transformers" or record.kind != "local" or not scoring.vllm_usable():
        return None
    key = (record.path, record.dtype)
    with _VLLM_LOCK:
        if key not in _VLLM:
            _VLLM[key] = scoring.VllmScorer(str(registry.resolve_model_path(record.path, "model")), record.dtype)
        return _VLLM[key]


def score(project_id: str, request: ScoreRequest) -> ScoreResponse:
    settings = get_settings()
    if request.top_k > settings.teacher_max_top_k:
        raise InvalidInput(f"top_k: {request.top_k} is over the limit of {settings.teacher_max_top_k}", field="top_k")
    check_batch([item.id for item in request.items])
    started = clock()
    record = registry.read(project_id, request.model)
    teacher = CACHE.get(record)
    vllm = _vllm_scorer(record)
    results: dict[str, ScoreResult] = {}
    ready: list[tuple[ScoreItem, scoring.ScoreInput]] = []
    for item in request.items:
        tokens, problem = _item_tokens(teacher, item, settings.teacher_max_tokens)
        if tokens is None:
            results[item.id] = ScoreResult(id=item.id, status="invalid_input", error=problem)
        else:
            ready.append((item, tokens))
    size = settings.teacher_score_micro_batch
    # The whole request under the model's lock: a weight push lands between requests, never inside one.
    with teacher.lock if vllm is None else contextlib.nullcontext():
        revision = teacher.record.revision
        _score_chunks(request, teacher, vllm, ready, size, started, results)
    return ScoreResponse(model=record.name, revision=revision,
                         backend="vllm" if vllm is not None else "transformers", kl_approximation=KL_APPROXIMATION,
                         results=[results[item.id] for item in request.items])


def _score_chunks(request: ScoreRequest, teacher: LoadedTeacher, vllm: Any | None,
                  ready: list[tuple[ScoreItem, scoring.ScoreInput]], size: int, started: float,
                  results: dict[str, ScoreResult]) -> None:
    from services.teacher import scoring

    for start in range(0, len(ready), size):
        chunk = ready[start:start + size]
        if request.deadline_s is not None and clock() - started > request.deadline_s:
            for item, _ in chunk:
                results[item.id] = ScoreResult(id=item.id, status="timeout",
                                               error=f"not scored within deadline_s={request.deadline_s:g}")
            continue
        inputs = [tokens for _, tokens in chunk]
        try:
            if vllm is not None:
                outputs = vllm.score(inputs, top_k=request.top_k, temperature=request.temperature)
            else:
                outputs = scoring.score_batch(teacher, inputs, top_k=request.top_k, temperature=request.temperature)
        except Exception as exc:  # a failed forward is these items' error, never the batch's 500
            for item, _ in chunk:
                results[item.id] = ScoreResult(id=item.id, status="error",
                                               error=f"forward failed: {type(exc).__name__}: {exc}")
            continue
        for (item, tokens), out in zip(chunk, outputs, strict=True):
            top = TopK(ids=out.top_ids, logprobs=out.top_logprobs, tail_logprobs=out.tail_logprobs) \
                if request.top_k > 0 else None
            results[item.id] = ScoreResult(id=item.id, status="ok", logprobs=out.logprobs, top_k=top,
                                           context_tokens=len(tokens.context_ids))
