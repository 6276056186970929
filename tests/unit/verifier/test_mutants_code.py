"""The code grader's ground-truth reading, scoring and sandbox answers (issue 23, item 1).

Written against the mutants mutmut left alive in services/verifier/graders/code.py; expected values
are typed in. The runs through the real sandbox are in test_code_grader.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from rewardhub.reward_specs import CodeSpec
from services.common.reward_api import RewardItem
from services.verifier.graders.code import (
    GroundTruthError,
    _from_response,
    grade_code_stream,
    parse_tests,
    summarise,
)
from services.verifier.graders.result import GradeResult

SPEC = CodeSpec()
ALL_OR_NOTHING = CodeSpec(all_or_nothing=True)
CASES_MESSAGE = ("ground_truth dict must hold 'inputs' and 'outputs' lists of equal length "
                 "(or one 'input'/'output' case)")


def stdio(tests: list[Any]) -> list[tuple[str | None, str | None]]:
    return [(t.stdin, t.expected_stdout) for t in tests]


def test_one_input_output_case_needs_both_keys() -> None:
    assert stdio(parse_tests({"input": "1 2", "output": "3"})) == [("1 2", "3")]
    for half in ({"input": "1 2"}, {"output": "3"}, {"input": "1", "outputs": ["3"]}):
        with pytest.raises(GroundTruthError) as caught:
            parse_tests(half)
        assert str(caught.value) == CASES_MESSAGE


def test_parallel_lists_of_cases() -> None:
    assert stdio(parse_tests({"inputs": ["1", "2"], "outputs": ["a", "b"]})) == [("1", "a"), ("2", "b")]
    with pytest.raises(GroundTruthError) as caught:
        parse_tests({"inputs": ["1", "2"], "outputs": ["a"]})
    assert str(caught.value) == CASES_MESSAGE


def test_a_malformed_case_is_named_by_its_index() -> None:
    with pytest.raises(GroundTruthError) as caught:
        parse_tests(["assert True", {"input": 1, "output": "x"}])
    assert str(caught.value) == "ground_truth[1] must be a non-empty assert string or {'input': str, 'output': str}"


def outcomes(*statuses: str, reason: str | None = None) -> list[dict[str, Any]]:
    return [{"status": s, **({"reason": reason} if reason and s != "passed" else {})} for s in statuses]


def test_summarise_a_partial_pass() -> None:
    assert summarise(SPEC, outcomes("passed", "failed", "passed", "error", reason="AssertionError")) == GradeResult(
        score=0.5, status="ok", sub_scores={"test_0": 1.0, "test_1": 0.0, "test_2": 1.0, "test_3": 0.0},
        details={"passed": 2, "total": 4, "outcomes": {"error": 1, "failed": 1, "passed": 2},
                 "first_failure": "test 1: failed: AssertionError"})
    assert summarise(ALL_OR_NOTHING, outcomes("passed", "failed")).score == 0.0
    assert summarise(ALL_OR_NOTHING, outcomes("passed", "passed")) == GradeResult(
        score=1.0, status="ok", sub_scores={"test_0": 1.0, "test_1": 1.0},
        details={"passed": 2, "total": 2, "outcomes": {"passed": 2}})


def test_every_test_timing_out_is_a_timeout_with_its_reason() -> None:
    assert summarise(SPEC, outcomes("timeout", "timeout")) == GradeResult(
        score=0.0, status="timeout", sub_scores={"test_0": 0.0, "test_1": 0.0},
        details={"passed": 0, "total": 2, "outcomes": {"timeout": 2}, "first_failure": "test 0: timeout: timeout",
                 "reason": "every test timed out"})


def test_a_test_that_never_ran_makes_the_result_a_timeout_keeping_the_partial_score() -> None:
    assert summarise(SPEC, outcomes("passed", "not_run")) == GradeResult(
        score=0.5, status="timeout", sub_scores={"test_0": 1.0, "test_1": 0.0},
        details={"passed": 1, "total": 2, "outcomes": {"not_run": 1, "passed": 1},
                 "first_failure": "test 1: not_run: not_run", "reason": "time budget spent before all tests ran"})
    only_not_run = summarise(SPEC, outcomes("not_run"))
    assert only_not_run.status == "timeout"
    assert only_not_run.details["reason"] == "time budget spent before all tests ran"
    mixed = summarise(SPEC, outcomes("timeout", "not_run"))
    assert mixed.details["reason"] == "time budget spent before all tests ran"


def test_some_timeouts_among_failures_are_just_failures() -> None:
    result = summarise(SPEC, outcomes("timeout", "failed"))
    assert (result.status, result.score) == ("ok", 0.0)
    assert "reason" not in result.details


def test_sandbox_answers() -> None:
    not_json = httpx.Response(502, text="<html>")
    assert _from_response(SPEC, not_json) == GradeResult(
        score=0.0, status="error", details={"reason": "sandbox answered 502 with a body that is not JSON"})
    rejected = httpx.Response(422, json={"error": {"message": "too many tests"}})
    assert _from_response(SPEC, rejected) == GradeResult(score=0.0, status="invalid_input",
                                                         details={"reason": "too many tests"})
    rejected_bare = httpx.Response(422, json=["x"])
    assert _from_response(SPEC, rejected_bare).details == {"reason": "the sandbox rejected the tests"}
    busy = httpx.Response(503, json={"detail": "busy"})
    assert _from_response(SPEC, busy) == GradeResult(score=0.0, status="error",
                                                     details={"reason": "sandbox answered 503: {'detail': 'busy'}"})
    fault = httpx.Response(200, json={"fault": "bwrap failed", "tests": []})
    assert _from_response(SPEC, fault) == GradeResult(score=0.0, status="error",
                                                      details={"reason": "sandbox error: bwrap failed"})
    fine = httpx.Response(200, json={"tests": [{"status": "passed"}]})
    assert _from_response(SPEC, fine) == GradeResult(score=1.0, status="ok", sub_scores={"test_0": 1.0},
                                                     details={"passed": 1, "total": 1, "outcomes": {"passed": 1}})


@pytest.fixture
def sandbox_app(isolated_env: Path) -> Iterator[None]:
    from services.common.service_client import register_local_app
    from services.sandbox.app import create_app
    from tests.unit.sandbox.conftest import require_namespaces

    require_namespaces()
    register_local_app("sandbox", create_app())
    yield


def test_the_stream_yields_each_items_result(sandbox_app: None) -> None:
    add = "```python\ndef add(a, b):\n    return a + b\n```"
    items = [RewardItem(id="good", completion=add, ground_truth=["assert add(1, 2) == 3"]),
             RewardItem(id="bad", completion=add, ground_truth=["assert add(1, 2) == 4"])]

    async def collect() -> dict[str, tuple[str, float | None]]:
        return {r.id: (r.status, r.score) async for r in grade_code_stream(CodeSpec(timeout_s=5.0), items, 30.0)}

    assert asyncio.run(collect()) == {"good": ("ok", 1.0), "bad": ("ok", 0.0)}


def test_more_sandbox_answers() -> None:
    assert _from_response(SPEC, httpx.Response(422, json={"detail": "x"})).details == {
        "reason": "the sandbox rejected the tests"}
    long_body = {"detail": "y" * 300}
    assert _from_response(SPEC, httpx.Response(500, json=long_body)).details == {
        "reason": "sandbox answered 500: " + str(long_body)[:200]}


@pytest.mark.parametrize(("truth", "message"), [
    ("  ", "ground_truth is an empty string; expected asserts or test cases"),
    ([], "ground_truth must be a string of asserts, a non-empty list of assert strings, "
         "or a list of {'input', 'output'} cases"),
    (7, "ground_truth must be a string of asserts, a non-empty list of assert strings, "
        "or a list of {'input', 'output'} cases"),
])
def test_ground_truth_errors(truth: Any, message: str) -> None:
    with pytest.raises(GroundTruthError) as caught:
        parse_tests(truth)
    assert str(caught.value) == message


def test_an_undecided_item_has_no_score() -> None:
    from services.verifier.graders.code import _item_result

    item = RewardItem(id="x", completion="c")
    assert _item_result(item, GradeResult(score=0.5, status="timeout"), 0.0).score is None
    assert _item_result(item, GradeResult(score=0.5, status="ok"), 0.0).score == 0.5


def test_a_spent_deadline_times_every_item_out_before_it_runs(sandbox_app: None) -> None:
    from services.verifier.graders.code import grade_code_batch

    items = [RewardItem(id="a", completion="x = 1", ground_truth=["assert x == 1"])]

    async def stream() -> list[Any]:
        return [(r.status, r.details) async for r in grade_code_stream(CodeSpec(), items, 1e-9)]

    expected = [("timeout", {"reason": "the batch deadline passed before this item ran"})]
    assert asyncio.run(stream()) == expected
    batch = asyncio.run(grade_code_batch(CodeSpec(), items, 1e-9))
    assert [(r.status, r.details) for r in batch] == expected


def test_ground_truths_given_apart_override_the_items_own(sandbox_app: None) -> None:
    from services.verifier.graders.code import grade_code_results

    add = "```python\ndef add(a, b):\n    return a + b\n```"
    items = [RewardItem(id="a", completion=add, ground_truth=["assert add(1, 2) == 4"])]

    async def collect() -> list[tuple[str, float]]:
        return [(result.status, result.score)
                async for _, result, _ in grade_code_results(CodeSpec(), items, 30.0, ["assert add(1, 2) == 3"])]

    assert asyncio.run(collect()) == [("ok", 1.0)]


def test_elapsed_ms_counts_from_started_in_milliseconds() -> None:
    import time

    from services.verifier.graders.code import _item_result

    # started one second ago: at least 1000 ms have passed (and far less than a minute)
    result = _item_result(RewardItem(id="x", completion="c"), GradeResult(score=1.0), time.perf_counter() - 1.0)
    assert 1000.0 <= result.elapsed_ms < 61_000.0
