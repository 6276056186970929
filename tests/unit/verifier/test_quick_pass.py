"""Which specs get a 1 s first try (math, and math parts of a multi) and which are graded once."""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter

from rewardhub.reward_specs import RewardSpec
from services.verifier.grading import QUICK_PASS_S, _quick_pass, _ran_out
from services.verifier.pool import PoolOutcome

SPECS: TypeAdapter[Any] = TypeAdapter(RewardSpec)


def spec(data: dict[str, Any]) -> Any:
    return SPECS.validate_python(data)


def test_math_first_tries_with_one_second() -> None:
    quick = _quick_pass(spec({"type": "math", "timeout_s": 3}))
    assert quick is not None and quick.timeout_s == QUICK_PASS_S == 1.0
    assert _quick_pass(spec({"type": "math", "timeout_s": 1})) is None  # nothing cheaper to try


def test_multi_shortens_only_its_math_parts() -> None:
    multi = spec({"type": "multi", "graders": {"answer": {"type": "math"}, "format": {"type": "regex", "pattern": "x"}},
                  "gates": {"format": 1}})
    quick = _quick_pass(multi)
    assert quick.graders["answer"].timeout_s == 1.0 and multi.graders["answer"].timeout_s == 3.0
    assert quick.graders["format"] == multi.graders["format"] and quick.gates == multi.gates


def test_other_graders_are_graded_once() -> None:
    assert _quick_pass(spec({"type": "regex", "pattern": "x"})) is None
    assert _quick_pass(spec({"type": "multi", "graders": {"a": {"type": "exact"}}})) is None


def graded(status: str, undecided: list[str] | None = None) -> PoolOutcome:
    details = {"undecided": undecided} if undecided is not None else {}
    return PoolOutcome("ok", {"score": 0.0, "status": status, "sub_scores": {}, "details": details,
                              "elapsed_ms": 1000.0})


def test_only_a_shortened_budget_that_ran_out_is_tried_again() -> None:
    math = spec({"type": "math"})
    assert _ran_out(graded("timeout"), math, _quick_pass(math))
    assert not _ran_out(graded("ok"), math, _quick_pass(math))
    assert not _ran_out(PoolOutcome("timeout", detail="killed at the hard limit"), math, _quick_pass(math))
    multi = spec({"type": "multi", "graders": {"answer": {"type": "math"},
                                               "tests": {"type": "code"}}})
    quick = _quick_pass(multi)
    assert _ran_out(graded("timeout", ["answer"]), multi, quick)
    assert _ran_out(graded("timeout", ["answer", "tests"]), multi, quick)
    assert not _ran_out(graded("timeout", ["tests"]), multi, quick)  # the code used its own full budget
