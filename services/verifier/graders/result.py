"""The result every grader returns: a score and whether the grader could decide."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

GradeStatus = Literal["ok", "invalid_input", "timeout", "error"]


@dataclass(frozen=True)
class GradeResult:
    score: float
    status: GradeStatus = "ok"
    sub_scores: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)


def ok(score: float, **details: Any) -> GradeResult:
    return GradeResult(score=float(score), status="ok", details=details)


def invalid_input(reason: str, **details: Any) -> GradeResult:
    """The item cannot be graded as given (usually its ground truth): not a wrong answer."""
    return GradeResult(score=0.0, status="invalid_input", details={"reason": reason, **details})


def timed_out(reason: str) -> GradeResult:
    return GradeResult(score=0.0, status="timeout", details={"reason": reason})


def failed(reason: str) -> GradeResult:
    return GradeResult(score=0.0, status="error", details={"reason": reason})
