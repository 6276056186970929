"""Code grader: the completion's Python against the item's tests, run by the sandbox service over HTTP.

The verifier runs no untrusted code itself: it reads the tests from the ground truth, sends the
solution and the tests to the sandbox service (``POST /v1/tests``; in the embedded default the
same request goes to the in-process sandbox app), and scores the per-test outcomes the sandbox
decided (see ``services/sandbox/testing.py``: an exit, a kill or a crash of the solution is a
failed test, never a pass). Like the rubric grader it waits rather than computes, so it runs in
the verifier's event loop, not on the process pool.

Ground truth forms (a JSON string of the list/dict forms is accepted too):

- ``"assert f(1) == 2\\nassert f(2) == 3"``: one test, run after the code;
- ``["assert f(1) == 2", "assert f(2) == 3"]``: one test per string;
- ``[{"input": "1 2\\n", "output": "3\\n"}, ...]``: stdin -> stdout cases;
- ``{"inputs": [...], "outputs": [...]}``: the same cases as two parallel lists (APPS style).

score = passed / total (or 1/0 with ``all_or_nothing``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx

from rewardhub.reward_specs import CodeSpec
from services.common.reward_api import ItemResult, RewardItem
from services.common.service_client import service_client
from services.common.settings import get_settings
from services.verifier.completion_order import as_finished
from services.verifier.graders.result import GradeResult, failed, invalid_input, timed_out

_PYTHON_FENCE = re.compile(r"```[ \t]*(?:python3?|py)[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)
_BARE_FENCE = re.compile(r"```[ \t]*\n(.*?)```", re.DOTALL)
MAX_TESTS = 200
BUDGET_TIMEOUTS = 3.0  # an item's tests together get this many times the spec's per-test timeout
HTTP_MARGIN_S = 15.0  # the sandbox's own start-up and kill grace beyond the tests' budget
DETAIL_CHARS = 300
MAX_ITEMS_IN_FLIGHT = 256


@dataclass(frozen=True)
class CodeTest:
    """One test: assert source run after the code, or stdin -> expected stdout."""

    source: str = ""
    stdin: str = ""
    expected_stdout: str | None = None

    def as_request(self) -> dict[str, Any]:
        if self.expected_stdout is None:
            return {"kind": "assert", "source": self.source}
        return {"kind": "stdio", "stdin": self.stdin, "expected_stdout": self.expected_stdout}


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
        return [CodeTest(source=value)]
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
        return CodeTest(source=entry)
    if isinstance(entry, dict) and isinstance(entry.get("input"), str) and isinstance(entry.get("output"), str):
        return CodeTest(stdin=entry["input"], expected_stdout=entry["output"])
    raise GroundTruthError(f"ground_truth[{index}] must be a non-empty assert string or "
                           "{'input': str, 'output': str}")


def summarise(spec: CodeSpec, outcomes: list[dict[str, Any]]) -> GradeResult:
    """Score the sandbox's per-test outcomes; undecided when every test timed out or some never ran."""
    statuses = [o["status"] for o in outcomes]
    sub_scores = {f"test_{i}": 1.0 if s == "passed" else 0.0 for i, s in enumerate(statuses)}
    passed, total = statuses.count("passed"), len(statuses)
    score = float(passed == total) if spec.all_or_nothing else passed / total
    details: dict[str, Any] = {"passed": passed, "total": total,
                               "outcomes": {k: statuses.count(k) for k in sorted(set(statuses))}}
    first = next(((i, o) for i, o in enumerate(outcomes) if o["status"] != "passed"), None)
    if first is not None:
        index, outcome = first
        why = outcome.get("reason") or outcome["status"]
        details["first_failure"] = f"test {index}: {outcome['status']}: {why}"[:DETAIL_CHARS]
    if "not_run" in statuses or all(s in ("timeout", "not_run") for s in statuses):
        reason = "every test timed out" if "not_run" not in statuses else "time budget spent before all tests ran"
        return GradeResult(score=score, status="timeout", sub_scores=sub_scores, details={**details, "reason": reason})
    return GradeResult(score=score, status="ok", sub_scores=sub_scores, details=details)


def _request(spec: CodeSpec, completion: str, tests: list[CodeTest]) -> dict[str, Any]:
    return {"code": extract_code(completion), "tests": [t.as_request() for t in tests], "timeout_s": spec.timeout_s,
            "memory_mb": spec.memory_mb, "budget_s": spec.timeout_s * BUDGET_TIMEOUTS}


async def grade_one(client: httpx.AsyncClient, spec: CodeSpec, completion: str, ground_truth: Any,
                    deadline: float | None = None) -> GradeResult:
    """Grade one completion through the sandbox; every failure mode is a status, never an exception."""
    try:
        tests = parse_tests(ground_truth)
    except GroundTruthError as exc:
        return invalid_input(str(exc))
    budget = spec.timeout_s * BUDGET_TIMEOUTS + HTTP_MARGIN_S
    if deadline is not None:
        budget = min(budget, deadline - time.monotonic())
        if budget <= 0:
            return timed_out("the batch deadline passed before this item ran")
    try:
        async with asyncio.timeout(budget):
            response = await client.post("/v1/tests", json=_request(spec, completion, tests), timeout=budget)
    except (TimeoutError, httpx.TimeoutException):
        return timed_out(f"the sandbox did not answer within {budget:.3g}s")
    except httpx.HTTPError as exc:
        return failed(f"sandbox unreachable: {type(exc).__name__}: {exc}"[:DETAIL_CHARS])
    return _from_response(spec, response)


def _from_response(spec: CodeSpec, response: httpx.Response) -> GradeResult:
    try:
        body = response.json()
    except ValueError:
        return failed(f"sandbox answered {response.status_code} with a body that is not JSON")
    if response.status_code == 422:
        error = body.get("error", {}) if isinstance(body, dict) else {}
        return invalid_input(str(error.get("message", "the sandbox rejected the tests"))[:DETAIL_CHARS])
    if response.status_code != 200:
        return failed(f"sandbox answered {response.status_code}: {str(body)[:200]}")
    if body.get("fault"):
        return failed(f"sandbox error: {body['fault']}"[:DETAIL_CHARS])
    return summarise(spec, body["tests"])


@contextlib.asynccontextmanager
async def sandbox_client(timeout_s: float) -> AsyncIterator[httpx.AsyncClient | str]:
    """A client for the sandbox service, or why there is none (yielded as a string)."""
    token = get_settings().sandbox_token
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    limits = httpx.Limits(max_connections=MAX_ITEMS_IN_FLIGHT, max_keepalive_connections=32)
    try:
        client = service_client("sandbox", timeout_s=timeout_s, headers=headers, limits=limits)
    except RuntimeError as exc:
        yield str(exc)
        return
    async with client:
        yield client


def _item_result(item: RewardItem, result: GradeResult, started: float) -> ItemResult:
    return ItemResult(id=item.id, score=result.score if result.status == "ok" else None, status=result.status,
                      sub_scores=dict(result.sub_scores), details=dict(result.details),
                      elapsed_ms=round((time.perf_counter() - started) * 1000, 3))


async def grade_code_results(spec: CodeSpec, items: list[RewardItem], deadline_s: float | None,
                             ground_truths: list[Any] | None = None
                             ) -> AsyncIterator[tuple[int, GradeResult, float]]:
    """(position, grade, started) of every item as it finishes; ``ground_truths`` overrides the items' own."""
    deadline = time.monotonic() + deadline_s if deadline_s else None
    truths = ground_truths if ground_truths is not None else [item.ground_truth for item in items]
    async with sandbox_client(spec.timeout_s * BUDGET_TIMEOUTS + HTTP_MARGIN_S) as client:
        if isinstance(client, str):
            for index in range(len(items)):
                yield index, failed(client), time.perf_counter()
            return
        limit = asyncio.Semaphore(MAX_ITEMS_IN_FLIGHT)

        async def one(index: int) -> tuple[int, GradeResult, float]:
            async with limit:
                started = time.perf_counter()
                return index, await grade_one(client, spec, items[index].completion, truths[index], deadline), started

        async for finished in as_finished(one(index) for index in range(len(items))):
            yield finished


async def grade_code_stream(spec: CodeSpec, items: list[RewardItem], deadline_s: float | None) -> AsyncIterator[ItemResult]:
    """Each item's result as soon as the sandbox has decided it (completion order)."""
    async for index, result, started in grade_code_results(spec, items, deadline_s):
        yield _item_result(items[index], result, started)


async def grade_code_batch(spec: CodeSpec, items: list[RewardItem], deadline_s: float | None) -> list[ItemResult]:
    """Every item's result, in item order."""
    results: list[ItemResult | None] = [None] * len(items)
    async for index, result, started in grade_code_results(spec, items, deadline_s):
        results[index] = _item_result(items[index], result, started)
    return [r for r in results if r is not None]
