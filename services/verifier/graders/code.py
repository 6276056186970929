"""Code grader: run the completion's Python against the item's tests in the sandbox.

Ground truth forms (a JSON string of the list/dict forms is accepted too):

- ``"assert f(1) == 2\\nassert f(2) == 3"``: one test, appended after the code;
- ``["assert f(1) == 2", "assert f(2) == 3"]``: one test per string;
- ``[{"input": "1 2\\n", "output": "3\\n"}, ...]``: stdin -> stdout cases;
- ``{"inputs": [...], "outputs": [...]}``: the same cases as two parallel lists (APPS style).

Each test is its own sandbox run. score = passed / total (or 1/0 with ``all_or_nothing``).
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from dataclasses import dataclass
from typing import Any

from services.common.reward_specs import CodeSpec
from services.verifier.graders.result import GradeResult, failed, invalid_input
from services.verifier.sandbox import SandboxResult, run_python

_PYTHON_FENCE = re.compile(r"```[ \t]*(?:python3?|py)[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)
_BARE_FENCE = re.compile(r"```[ \t]*\n(.*?)```", re.DOTALL)
MAX_TESTS = 200
# The pool kills an item at timeout_s * 4 + 2 (grading._item_timeout); stop starting tests well before.
BUDGET_TIMEOUTS = 3.0
DETAIL_CHARS = 300


@dataclass(frozen=True)
class CodeTest:
    """One sandbox run: ``program_suffix`` is appended to the code; stdout is compared when ``expected_stdout``."""

    program_suffix: str = ""
    stdin: str = ""
    expected_stdout: str | None = None


class GroundTruthError(ValueError):
    pass


def extract_code(completion: str) -> str:
    """The last ```python fenced block, else the last bare ``` block, else the whole text."""
    for fence in (_PYTHON_FENCE, _BARE_FENCE):
        blocks = fence.findall(completion)
        if blocks:
            return str(blocks[-1])
    return completion


def parse_tests(ground_truth: Any) -> list[CodeTest]:
    """Read the tests from any supported ground-truth form; raise GroundTruthError naming the problem."""
    value = ground_truth
    if isinstance(value, str) and value.strip()[:1] in ("[", "{"):
        with contextlib.suppress(json.JSONDecodeError):  # else: code that happens to start with a bracket
            value = json.loads(value)
    if isinstance(value, str):
        if not value.strip():
            raise GroundTruthError("ground_truth is an empty string; expected asserts or test cases")
        return [CodeTest(program_suffix=value)]
    if isinstance(value, dict):
        value = _parallel_cases(value)
    if not isinstance(value, list) or not value:
        raise GroundTruthError("ground_truth must be a string of asserts, a non-empty list of assert strings, "
                               "or a list of {'input', 'output'} cases")
    if len(value) > MAX_TESTS:
        raise GroundTruthError(f"ground_truth has {len(value)} tests; at most {MAX_TESTS} are allowed")
    return [_one_test(i, entry) for i, entry in enumerate(value)]


def _parallel_cases(value: dict[str, Any]) -> list[Any]:
    if "input" in value and "output" in value:
        return [value]
    inputs, outputs = value.get("inputs"), value.get("outputs")
    if not isinstance(inputs, list) or not isinstance(outputs, list) or len(inputs) != len(outputs):
        raise GroundTruthError("ground_truth dict must hold 'inputs' and 'outputs' lists of equal length "
                               "(or one 'input'/'output' case)")
    return [{"input": i, "output": o} for i, o in zip(inputs, outputs, strict=True)]


def _one_test(index: int, entry: Any) -> CodeTest:
    if isinstance(entry, str) and entry.strip():
        return CodeTest(program_suffix=entry)
    if isinstance(entry, dict) and isinstance(entry.get("input"), str) and isinstance(entry.get("output"), str):
        return CodeTest(stdin=entry["input"], expected_stdout=entry["output"])
    raise GroundTruthError(f"ground_truth[{index}] must be a non-empty assert string or "
                           "{'input': str, 'output': str}")


def outputs_match(actual: str, expected: str) -> bool:
    """Stripped stdout compared line by line, trailing whitespace of each line ignored."""
    def lines(text: str) -> list[str]:
        return [line.rstrip() for line in text.strip().splitlines()]

    return lines(actual) == lines(expected)


def grade_code(spec: CodeSpec, completion: str, ground_truth: Any) -> GradeResult:
    try:
        tests = parse_tests(ground_truth)
    except GroundTruthError as exc:
        return invalid_input(str(exc))
    code = extract_code(completion)
    budget_ends = time.monotonic() + spec.timeout_s * BUDGET_TIMEOUTS
    sub_scores: dict[str, float] = {}
    outcomes: list[str] = []
    first_failure: str | None = None
    for index, test in enumerate(tests):
        if time.monotonic() >= budget_ends:
            outcomes.append("not_run")
            sub_scores[f"test_{index}"] = 0.0
            continue
        result = _run_test(spec, code, test)
        if result.status == "sandbox_error":
            return failed(f"sandbox error on test {index}: {result.stderr}"[:DETAIL_CHARS])
        passed = _passed(test, result)
        outcomes.append("passed" if passed else result.status)
        sub_scores[f"test_{index}"] = 1.0 if passed else 0.0
        if not passed and first_failure is None:
            first_failure = f"test {index}: {_why_failed(test, result)}"[:DETAIL_CHARS]
    return _summarise(spec, sub_scores, outcomes, first_failure)


def _run_test(spec: CodeSpec, code: str, test: CodeTest) -> SandboxResult:
    program = f"{code}\n\n{test.program_suffix}\n" if test.program_suffix else code
    return run_python(program, stdin=test.stdin, timeout_s=spec.timeout_s, memory_mb=spec.memory_mb)


def _passed(test: CodeTest, result: SandboxResult) -> bool:
    if result.status != "success":
        return False
    return test.expected_stdout is None or outputs_match(result.stdout, test.expected_stdout)


def _why_failed(test: CodeTest, result: SandboxResult) -> str:
    if result.status == "success":
        return f"wrong output {result.stdout.strip()[:120]!r}, expected {str(test.expected_stdout).strip()[:120]!r}"
    last_line = next((line for line in reversed(result.stderr.splitlines()) if line.strip()), "")
    return f"{result.status}: {last_line}" if last_line else result.status


def _summarise(spec: CodeSpec, sub_scores: dict[str, float], outcomes: list[str],
               first_failure: str | None) -> GradeResult:
    total = len(outcomes)
    passed = outcomes.count("passed")
    fraction = passed / total
    score = float(passed == total) if spec.all_or_nothing else fraction
    details: dict[str, Any] = {"passed": passed, "total": total,
                               "outcomes": {k: outcomes.count(k) for k in sorted(set(outcomes))}}
    if first_failure:
        details["first_failure"] = first_failure
    # Undecided: every test timed out, or the time budget ran out before all tests ran.
    if all(o in ("timeout", "not_run") for o in outcomes) or "not_run" in outcomes:
        reason = "every test timed out" if "not_run" not in outcomes else "time budget spent before all tests ran"
        return GradeResult(score=score, status="timeout", sub_scores=sub_scores, details={**details, "reason": reason})
    return GradeResult(score=score, status="ok", sub_scores=sub_scores, details=details)
