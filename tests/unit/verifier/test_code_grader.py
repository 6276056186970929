"""The `code` grader: tests from ground truth, run by the real sandbox service (in-process, real bwrap runs)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rewardhub.reward_specs import CodeSpec
from services.common.reward_api import RewardItem
from services.sandbox.testing import outputs_match
from services.verifier.graders.code import extract_code, grade_code_batch, parse_tests
from services.verifier.graders.registry import grade
from services.verifier.graders.result import GradeResult
from tests.unit.sandbox.conftest import require_namespaces

SPEC = CodeSpec(timeout_s=2.0, memory_mb=256)
ADD = "Here you go:\n```python\ndef add(a, b):\n    return a + b\n```\n"
ECHO_SUM = "```python\na, b = map(int, input().split())\nprint(a + b)\n```"


@pytest.fixture(autouse=True)
def sandbox_app(isolated_env: Path) -> Iterator[None]:
    """The sandbox mounted in-process, as the embedded default has it."""
    require_namespaces()
    from services.common.service_client import register_local_app
    from services.sandbox.app import create_app

    register_local_app("sandbox", create_app())
    yield


def grade_code(spec: CodeSpec, completion: str, ground_truth: Any) -> GradeResult:
    [result] = asyncio.run(grade_code_batch(spec, [RewardItem(id="x", completion=completion,
                                                              ground_truth=ground_truth)], None))
    return GradeResult(score=result.score if result.score is not None else 0.0, status=result.status,
                       sub_scores=result.sub_scores, details=result.details)


def test_extracts_the_last_python_block() -> None:
    text = "```python\nfirst = 1\n```\nthen\n```py\nsecond = 2\n```\n```text\nnot code\n```"
    assert extract_code(text) == "second = 2\n"
    assert extract_code("x = 1\nprint(x)") == "x = 1\nprint(x)"
    assert extract_code("```\nbare = 3\n```") == "bare = 3\n"


def test_output_comparison_ignores_trailing_whitespace_only() -> None:
    assert outputs_match("1  \n2\n\n", "1\n2")
    assert not outputs_match("1\n 2", "1\n2")
    assert not outputs_match("1\n2\n3", "1\n2")


def test_assert_string_passes() -> None:
    result = grade_code(SPEC, ADD, "assert add(1, 2) == 3\nassert add(-1, 1) == 0")
    assert (result.score, result.status) == (1.0, "ok")
    assert result.sub_scores == {"test_0": 1.0}


def test_assert_list_gives_partial_credit() -> None:
    tests = ["assert add(1, 2) == 3", "assert add(2, 2) == 5", "assert add('a', 'b') == 'ab'"]
    result = grade_code(SPEC, ADD, tests)
    assert result.status == "ok"
    assert result.score == pytest.approx(2 / 3)
    assert result.sub_scores == {"test_0": 1.0, "test_1": 0.0, "test_2": 1.0}
    assert result.details["passed"] == 2 and "test 1: failed: assert at line 1 failed" in result.details["first_failure"]


def test_all_or_nothing() -> None:
    tests = ["assert add(1, 2) == 3", "assert add(2, 2) == 5"]
    result = grade_code(CodeSpec(timeout_s=2.0, all_or_nothing=True), ADD, tests)
    assert (result.score, result.status) == (0.0, "ok")
    assert result.sub_scores == {"test_0": 1.0, "test_1": 0.0}


def test_stdin_cases_compare_stdout() -> None:
    cases = [{"input": "1 2\n", "output": "3\n"}, {"input": "5 5", "output": "10   \n\n"},
             {"input": "2 2\n", "output": "5\n"}]
    result = grade_code(SPEC, ECHO_SUM, cases)
    assert result.sub_scores == {"test_0": 1.0, "test_1": 1.0, "test_2": 0.0}
    assert result.score == pytest.approx(2 / 3) and result.status == "ok"
    assert "wrong output '4', expected '5'" in result.details["first_failure"]


def test_ground_truth_as_json_string_and_parallel_lists() -> None:
    cases = json.dumps({"inputs": ["1 2\n", "3 4\n"], "outputs": ["3\n", "7\n"]})
    assert grade_code(SPEC, ECHO_SUM, cases).score == 1.0
    assert grade_code(SPEC, ADD, json.dumps(["assert add(1, 1) == 2"])).score == 1.0


def test_every_test_timing_out_is_status_timeout() -> None:
    spin = "```python\nwhile True:\n    pass\n```"
    result = grade_code(CodeSpec(timeout_s=0.5), spin, [{"input": "", "output": "1"}] * 2)
    assert (result.score, result.status) == (0.0, "timeout")
    assert result.details["reason"] == "every test timed out"


def test_some_timeouts_are_just_failures() -> None:
    code = "```python\nimport sys\nn = int(input())\nwhile n < 0:\n    pass\nprint(n)\n```"
    result = grade_code(CodeSpec(timeout_s=0.5), code, [{"input": "1", "output": "1"}, {"input": "-1", "output": "-1"}])
    assert (result.score, result.status) == (0.5, "ok")
    assert result.details["outcomes"] == {"passed": 1, "timeout": 1}


def test_syntax_error_scores_zero_with_status_ok() -> None:
    result = grade_code(SPEC, "```python\ndef broken(:\n```", ["assert True"])
    assert (result.score, result.status) == (0.0, "ok")
    assert "SyntaxError" in result.details["first_failure"]


@pytest.mark.parametrize("ground_truth", [None, 42, "", "  ", [], [1], [{"input": "1"}], {"inputs": ["1"]},
                                          {"inputs": ["1"], "outputs": []}])
def test_malformed_ground_truth_is_invalid_input(ground_truth: object) -> None:
    result = grade_code(SPEC, ADD, ground_truth)
    assert (result.score, result.status) == (0.0, "invalid_input")
    assert "ground_truth" in result.details["reason"]


def test_parse_tests_keeps_bracketed_code_strings() -> None:
    assert parse_tests("[x for x in []] or None\nassert True")[0].source.startswith("[x for")


def test_sandbox_unreachable_is_status_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from services.common.service_client import unregister_local_apps

    unregister_local_apps()
    result = grade_code(SPEC, ADD, ["assert add(1, 2) == 3"])
    assert result.status == "error" and "sandbox" in result.details["reason"]


def test_a_test_that_is_not_python_is_invalid_input() -> None:
    result = grade_code(SPEC, ADD, ["assert add(1, 2) == 3", "assert ("])
    assert result.status == "invalid_input" and "tests[1]" in result.details["reason"]


def test_the_pool_path_refuses_code_specs() -> None:
    result = grade(SPEC, ADD, ["assert add(1, 2) == 3"])
    assert result.status == "error" and "sandbox service" in result.details["reason"]
