"""Sandbox start-up overhead per run: the namespaced sandbox service against the sandbox it replaced.

Anchor: ``services/verifier/sandbox.py`` as it was at commit 83b2404 (rlimits, an audit hook,
``nobody`` and a network namespace only as root), loaded from git history into a temp file —
the same program, the same interpreter (/usr/bin/python3), the same limits, run by each side in
turn over several rounds (the order alternates each round). Two programs:

- ``pass``: pure start-up and teardown (what every code-grader test and every /run_code pays);
- a 3-test ``double`` solution graded per test (old: one sandbox per test; new: one sandbox
  whose supervisor starts one interpreter per test).

Both sides are run once untimed first (warm), then timed. Prints the median and spread
(min–max of the rounds' mean ms per run) and the ratio new / old; exits non-zero when the
namespaced sandbox cannot run here. Run: ``python benchmarks/sandbox_bench.py [--rounds 5] [--runs 20]``.

``--busy N`` also runs N concurrent ``while True: pass`` at ``run_timeout=10`` (veRL's load) and
prints where each run's answer time goes: until its supervisor starts, until its program starts
(the supervisor waits for the job on stdin), the program's own wall time, and the teardown until
the service has the result (the supervisor reports its clock readings; CLOCK_MONOTONIC is shared).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
ANCHOR_COMMIT = "83b2404"
REPO = Path(__file__).resolve().parents[1]
TESTS = ["assert double(1) == 2", "assert double(2) == 4", "assert double(5) == 10"]
SOLUTION = "def double(x):\n    return 2 * x\n"


def load_anchor() -> ModuleType:
    source = subprocess.run(["git", "show", f"{ANCHOR_COMMIT}:services/verifier/sandbox.py"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout
    path = Path(tempfile.mkdtemp()) / "old_sandbox.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("old_sandbox", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["old_sandbox"] = module
    spec.loader.exec_module(module)
    module.__dict__["_interpreter"] = lambda for_nobody: "/usr/bin/python3"  # same interpreter on both sides
    return module


def old_pass(old: ModuleType) -> None:
    assert old.run_python("pass", timeout_s=5, memory_mb=512).status == "success"


def old_tests(old: ModuleType) -> None:
    for test in TESTS:
        assert old.run_python(SOLUTION + "\n" + test + "\n", timeout_s=5, memory_mb=512).status == "success"


def new_pass() -> None:
    from services.common.sandbox_api import RunCodeRequest
    from services.sandbox.run_code import run_code

    response = asyncio.run(run_code(RunCodeRequest(code="pass", language="python", run_timeout=5,
                                                   memory_limit_MB=512)))
    assert response.status == "Success", response


def new_tests() -> None:
    from services.common.sandbox_api import SandboxTestsRequest
    from services.sandbox.testing import run_tests

    request = SandboxTestsRequest(code=SOLUTION, tests=[{"kind": "assert", "source": t} for t in TESTS],
                                  timeout_s=5, memory_mb=512)
    response = asyncio.run(run_tests(request))
    assert [t.status for t in response.tests] == ["passed"] * 3, response


def timed(fn: Any, runs: int) -> float:
    started = time.perf_counter()
    for _ in range(runs):
        fn()
    return (time.perf_counter() - started) * 1000 / runs


def compare(label: str, old_fn: Any, new_fn: Any, rounds: int, runs: int) -> None:
    old_ms: list[float] = []
    new_ms: list[float] = []
    old_fn()  # warm both sides (imports, the interpreter's page cache) before anything is timed
    new_fn()
    for index in range(rounds):
        sides = [(old_ms, old_fn), (new_ms, new_fn)]
        for samples, fn in sides if index % 2 == 0 else reversed(sides):
            samples.append(timed(fn, runs))
    old_median, new_median = statistics.median(old_ms), statistics.median(new_ms)
    print(f"{label}: old sandbox {old_median:.1f} ms/run (spread {min(old_ms):.1f}-{max(old_ms):.1f}), "
          f"namespaced sandbox {new_median:.1f} ms/run (spread {min(new_ms):.1f}-{max(new_ms):.1f}); "
          f"ratio new/old {new_median / old_median:.2f}x over {rounds} rounds x {runs} runs")


async def _busy_run(submitted_at: list[float]) -> dict[str, float]:
    from services.common.sandbox_api import RunCodeRequest
    from services.common.settings import get_settings
    from services.sandbox import languages, run_code, runner

    settings = get_settings()
    request = RunCodeRequest(code="while True:\n    pass", language="python", run_timeout=10)
    language = languages.LANGUAGES["python"]
    tool = languages.tool_path(language, settings.sandbox_python)
    assert tool is not None
    job = run_code._job(request, language, tool, settings, memory_mb=settings.sandbox_memory_mb, run_timeout=10)
    submitted = time.monotonic()
    submitted_at.append(submitted)
    result = await runner.execute(job, limit_s=10, settings=settings)
    done = time.monotonic()
    assert result.fault is None, result.fault
    run, supervisor = result.data["run"], result.data["supervisor"]
    assert run["timed_out"], run
    return {"to supervisor": supervisor["started_at"] - submitted, "to program": run["started_at"] - supervisor["started_at"],
            "program wall": run["wall_s"], "teardown": done - run["started_at"] - run["wall_s"],
            "answer": done - submitted}


def busy(count: int) -> None:
    async def scenario() -> tuple[list[dict[str, float]], float]:
        submitted_at: list[float] = []
        started = time.monotonic()
        rows = await asyncio.gather(*(_busy_run(submitted_at) for _ in range(count)))
        return list(rows), time.monotonic() - started

    rows, total = asyncio.run(scenario())
    load = Path("/proc/loadavg").read_text().split()[0]
    print(f"{count} concurrent `while True: pass` at run_timeout=10: all TimeLimitExceeded, last answer after "
          f"{total:.2f}s (load average {load} on {len(os.sched_getaffinity(0))} CPUs)")
    for key in rows[0]:
        values = sorted(row[key] for row in rows)
        print(f"  {key:13s} median {statistics.median(values):6.2f}s  p90 {values[int(len(values) * 0.9) - 1]:6.2f}s  "
              f"max {values[-1]:6.2f}s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--busy", type=int, default=0, help="also time N concurrent busy runs (0: not)")
    args = parser.parse_args()
    from services.sandbox import runner

    capability = runner.capability()
    if not capability.namespaces:
        sys.exit(f"the namespaced sandbox cannot run here: {capability.detail}")
    old = load_anchor()
    compare("start-up (`pass`)", lambda: old_pass(old), new_pass, args.rounds, args.runs)
    compare("3 assert tests", lambda: old_tests(old), new_tests, args.rounds, max(args.runs // 3, 1))
    if args.busy:
        busy(args.busy)


if __name__ == "__main__":
    main()
