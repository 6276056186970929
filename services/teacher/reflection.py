"""AMR-SD's reflection bottleneck: a short Socratic hint from one diagnostic signal, through the leak filter.

For each item the backend is asked for a hint about the student's attempt given one signal (a
verifier message, a successful peer rollout, or a reference solution). The hint goes through
:func:`services.teacher.leak_filter.check_hint` guarding the item's ``answer``, the ``\\boxed{}``
contents of its ``reference`` and, for a peer or reference signal, of the signal's text too. A
rejected hint is asked for again (up to ``max_attempts``), telling the model why; when every attempt
leaks the item is status ``rejected`` with no hint and each rejection's reason.
"""

from __future__ import annotations

import asyncio
from collections import Counter

from prometheus_client import Counter as PromCounter

from services.common.llm.types import ChatBackend, LLMBackendError
from services.teacher.leak_filter import boxed_contents, check_hint, guarded_answers
from services.teacher.schemas import (
    ReflectItem,
    ReflectRequest,
    ReflectResponse,
    ReflectResult,
    ReflectSummary,
    Rejection,
)

HINTS = PromCounter("rewardhub_teacher_hints_total", "Reflection hints by leak-filter outcome", ["outcome"])

REFLECT_SYSTEM = (
    "You are a Socratic tutor. Read the question, the student's attempt and the diagnostic signal, then write ONE "
    "short hint or critique (at most {max_chars} characters) that helps the student find their mistake. Never state "
    "the final answer, never write any number that is the answer, and never use \\boxed{{}}. Reply with the hint only.")

SIGNAL_TITLES = {"verifier": "Verifier feedback", "peer": "A successful attempt by another student",
                 "reference": "Reference solution"}


def reflect_prompt(item: ReflectItem) -> str:
    return (f"Question:\n{item.question}\n\nStudent's attempt:\n{item.response}\n\n"
            f"{SIGNAL_TITLES[item.signal.kind]}:\n{item.signal.text}\n\nHint:")


def item_answers(item: ReflectItem) -> list[str]:
    answers = guarded_answers(item.answer, item.reference)
    if item.signal.kind in ("peer", "reference"):
        answers += [a.strip() for a in boxed_contents(item.signal.text) if a.strip() and a.strip() not in answers]
    return answers


async def reflect_one(backend: ChatBackend, item: ReflectItem, request: ReflectRequest,
                      max_chars: int) -> ReflectResult:
    answers = item_answers(item)
    messages: list[dict[str, str]] = [
        {"role": "system", "content": REFLECT_SYSTEM.format(max_chars=max_chars)},
        {"role": "user", "content": reflect_prompt(item)}]
    rejections: list[Rejection] = []
    for attempt in range(1, request.max_attempts + 1):
        try:
            reply = await asyncio.wait_for(backend.chat(messages, temperature=request.temperature,
                                                        max_tokens=request.max_tokens, seed=attempt),
                                           request.timeout_s)
        except TimeoutError:
            return ReflectResult(id=item.id, status="timeout", attempts=attempt, rejections=rejections,
                                 error=f"no hint within {request.timeout_s:g}s")
        except LLMBackendError as exc:
            return ReflectResult(id=item.id, status="timeout" if exc.kind == "timeout" else "error", attempts=attempt,
                                 rejections=rejections, error=str(exc))
        hint = reply.text.strip()
        verdict = check_hint(hint, answers, max_chars=max_chars)
        if verdict.ok:
            HINTS.labels("ok").inc()
            return ReflectResult(id=item.id, status="ok", hint=hint, hint_chars=len(hint), attempts=attempt,
                                 rejections=rejections)
        HINTS.labels(verdict.reason or "rejected").inc()
        rejections.append(Rejection(reason=verdict.reason or "rejected", detail=verdict.detail))
        messages = [*messages, {"role": "assistant", "content": hint},
                    {"role": "user", "content": f"That hint was rejected ({verdict.reason}: {verdict.detail}). "
                                                f"Write a new hint that does not reveal the answer."}]
    return ReflectResult(id=item.id, status="rejected", attempts=request.max_attempts, rejections=rejections)


def summarise(results: list[ReflectResult]) -> ReflectSummary:
    reasons: Counter[str] = Counter(r.reason for result in results for r in result.rejections)
    ok = [r for r in results if r.status == "ok"]
    return ReflectSummary(hints=len(ok), items_rejected=sum(r.status == "rejected" for r in results),
                          rejected_hints=sum(reasons.values()), rejections_by_reason=dict(reasons),
                          mean_hint_chars=sum(r.hint_chars or 0 for r in ok) / len(ok) if ok else None)


async def reflect(backend: ChatBackend, request: ReflectRequest, max_chars: int) -> ReflectResponse:
    results = list(await asyncio.gather(*(reflect_one(backend, item, request, max_chars) for item in request.items)))
    return ReflectResponse(results=results, summary=summarise(results))
