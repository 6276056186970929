"""Reflection control flow on ScriptedFakeBackend (a TEST DOUBLE): hints pass, leak and are re-asked, fail."""

from __future__ import annotations

import asyncio

from services.common.llm.types import LLMBackendError
from services.teacher.reflection import reflect
from services.teacher.schemas import ReflectRequest
from tests.unit.teacher.fakes import ScriptedFakeBackend


def _request(**kw: object) -> ReflectRequest:
    item = {"id": "a", "question": "Tom has 5 apples and buys 7. How many?", "response": "5 + 7 = 11, \\boxed{11}",
            "signal": {"kind": "reference", "text": "5 + 7 = 12, \\boxed{12}"}}
    return ReflectRequest.model_validate({"items": [item], **kw})


def test_a_clean_hint_passes_first_time() -> None:
    backend = ScriptedFakeBackend(["Re-check the last addition."])
    out = asyncio.run(reflect(backend, _request(), 200))
    assert out.results[0].status == "ok" and out.results[0].hint == "Re-check the last addition."
    assert out.summary.hints == 1 and out.summary.rejected_hints == 0
    assert "Reference solution" in backend.calls[0][1]["content"]


def test_a_leaking_hint_is_asked_again_with_the_reason() -> None:
    # The reference signal's \boxed{12} is guarded even though the request has no answer field.
    backend = ScriptedFakeBackend(["It should be twelve.", "Count the second group again."])
    out = asyncio.run(reflect(backend, _request(), 200))
    result = out.results[0]
    assert (result.status, result.attempts, result.hint) == ("ok", 2, "Count the second group again.")
    assert [r.reason for r in result.rejections] == ["answer_in_words"]
    assert "rejected (answer_in_words" in backend.calls[1][-1]["content"]
    assert out.summary.rejected_hints == 1 and out.summary.rejections_by_reason == {"answer_in_words": 1}


def test_every_attempt_leaking_is_status_rejected() -> None:
    backend = ScriptedFakeBackend(["\\boxed{12}", "the answer is 1 2", "x" * 300])
    out = asyncio.run(reflect(backend, _request(max_attempts=3), 200))
    result = out.results[0]
    assert result.status == "rejected" and result.hint is None
    assert [r.reason for r in result.rejections] == ["boxed", "numeric_answer", "length"]
    assert out.summary.items_rejected == 1 and out.summary.rejected_hints == 3


def test_backend_failures_are_the_items_status() -> None:
    backend = ScriptedFakeBackend([LLMBackendError("slow", kind="timeout")])
    assert asyncio.run(reflect(backend, _request(), 200)).results[0].status == "timeout"
    backend = ScriptedFakeBackend([LLMBackendError("down", kind="connect")])
    result = asyncio.run(reflect(backend, _request(), 200)).results[0]
    assert result.status == "error" and "down" in (result.error or "")
