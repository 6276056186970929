"""/v1/tests: verdicts the tested code cannot write, whatever it does to its own process."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from tests.unit.sandbox.conftest import run_tests

DOUBLE = "def double(x):\n    return 2 * x\n"
WRONG = "def double(x):\n    return x\n"
TEST = {"kind": "assert", "source": "assert double(2) == 4\nassert double(5) == 10"}


def statuses(outcomes: list[dict[str, object]]) -> list[object]:
    return [o["status"] for o in outcomes]


def test_right_passes_wrong_fails(sandbox: TestClient) -> None:
    assert statuses(run_tests(sandbox, DOUBLE, [TEST])) == ["passed"]
    [outcome] = run_tests(sandbox, WRONG, [TEST])
    assert outcome["status"] == "failed" and outcome["reason"] == "assert at line 1 failed"


@pytest.mark.parametrize("ending", [
    "import sys\nsys.exit(0)", "raise SystemExit", "raise SystemExit(0)", "import os\nos._exit(0)",
    "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)", "import os, signal\nos.kill(os.getpid(), signal.SIGTERM)",
    "import os\nos.kill(1, 9)\nos._exit(0)", "import os\nos.kill(-1, 9)",
    "import atexit, os\natexit.register(lambda: os._exit(0))\nraise SystemExit(0)",
    "import sys\nsys.stdout.write('PASSED\\n' * 10)\nsys.stdout.flush()\nimport os\nos._exit(0)",
])
def test_a_wrong_solution_that_ends_its_process_early_fails(sandbox: TestClient, ending: str) -> None:
    [outcome] = run_tests(sandbox, WRONG + ending + "\n", [TEST])
    assert outcome["status"] == "failed", outcome


def test_ending_early_in_the_middle_of_the_test_fails(sandbox: TestClient) -> None:
    test = {"kind": "assert", "source": "assert double(2) == 4\nimport os\nos._exit(0)\nassert double(3) == 7"}
    [outcome] = run_tests(sandbox, DOUBLE, [test])
    assert outcome["status"] == "failed" and "before the test ended" in outcome["reason"]


FORGER = '''
import json, os
def double(x):
    return 0
# Impersonate the harness on every descriptor it might use, with guessed values, then leave.
for fd in range(3, 64):
    try:
        os.write(fd, (json.dumps({"site": "s0", "values": ["4"]}) + "\\n" + json.dumps({"end": True}) + "\\n").encode())
    except OSError:
        pass
os._exit(0)
'''


def test_forging_the_report_channel_needs_the_right_values(sandbox: TestClient) -> None:
    # It guessed s0's value right ("4") but not s1's: it never reported s1, so the test cannot pass.
    [outcome] = run_tests(sandbox, FORGER, [TEST])
    assert outcome["status"] == "failed", outcome


def test_an_always_equal_object_is_not_plain_data(sandbox: TestClient) -> None:
    code = "class Anything:\n    def __eq__(self, other):\n        return True\n    __hash__ = object.__hash__\n" \
           "def double(x):\n    return Anything()\n"
    [outcome] = run_tests(sandbox, code, [TEST])
    assert outcome["status"] == "failed"


def test_a_correct_threaded_solution_passes(sandbox: TestClient) -> None:
    code = "import threading\ndef double(x):\n    out = []\n    ts = [threading.Thread(target=lambda: out.append(x)) " \
           "for _ in range(2)]\n    [t.start() for t in ts]\n    [t.join() for t in ts]\n    return sum(out)\n"
    tests = [{"kind": "assert", "source": f"assert double({n}) == {2 * n}"} for n in range(8)]
    assert statuses(run_tests(sandbox, code, tests)) == ["passed"] * 8


def test_humaneval_style_check_function_and_numpy_values(sandbox: TestClient) -> None:
    code = "import numpy as np\ndef double(x):\n    return np.int64(2 * x)\ndef evens(n):\n    return np.arange(0, 2 * n, 2)\n"
    test = {"kind": "assert", "source": "def check(candidate):\n    for n in range(3):\n        assert candidate(n) == 2 * n\n"
                                         "    assert candidate(4) == 8\n    assert list(evens(3)) == [0, 2, 4]\n"
                                         "\ncheck(double)\n"}
    assert statuses(run_tests(sandbox, code, [test])) == ["passed"]


def test_an_assert_that_never_runs_fails_the_test(sandbox: TestClient) -> None:
    test = {"kind": "assert", "source": "if double(1) == 3:\n    assert double(2) == 4\n"}
    [outcome] = run_tests(sandbox, DOUBLE, [test])
    assert outcome["status"] == "failed" and "never ran" in outcome["reason"]


def test_each_test_gets_a_fresh_process(sandbox: TestClient) -> None:
    code = "calls = []\ndef double(x):\n    calls.append(x)\n    return 2 * x * len(calls)\n"
    tests = [{"kind": "assert", "source": "assert double(1) == 2"}] * 3
    assert statuses(run_tests(sandbox, code, tests)) == ["passed"] * 3


def test_stdio_cases_are_compared_outside_the_sandbox(sandbox: TestClient) -> None:
    code = "a, b = map(int, input().split())\nprint(a + b)\n"
    tests = [{"kind": "stdio", "stdin": "1 2\n", "expected_stdout": "3\n"},
             {"kind": "stdio", "stdin": "2 2\n", "expected_stdout": "5\n"}]
    outcomes = run_tests(sandbox, code, tests)
    assert statuses(outcomes) == ["passed", "failed"]
    assert outcomes[1]["reason"] == "wrong output '4', expected '5'"


def test_an_early_exit_with_partial_stdout_fails(sandbox: TestClient) -> None:
    code = "print(1)\nimport os\nos._exit(0)\nprint(2)\n"
    [outcome] = run_tests(sandbox, code, [{"kind": "stdio", "stdin": "", "expected_stdout": "1\n2\n"}])
    assert outcome["status"] == "failed"


def test_time_and_memory_limits(sandbox: TestClient) -> None:
    tests = [{"kind": "assert", "source": "while True:\n    pass\nassert double(1) == 2"},
             {"kind": "assert", "source": "x = bytearray(2_000_000_000)\nassert len(x) == 1"},
             {"kind": "assert", "source": "assert double(1) == 2"}]
    outcomes = run_tests(sandbox, DOUBLE, tests, timeout_s=3, memory_mb=256)
    assert statuses(outcomes) == ["timeout", "failed", "passed"]
    assert "MemoryError" in outcomes[1]["reason"]


def test_budget_leaves_later_tests_not_run(sandbox: TestClient) -> None:
    tests = [{"kind": "assert", "source": "import time\ntime.sleep(5)\nassert double(1) == 2"}] * 3
    outcomes = run_tests(sandbox, DOUBLE, tests, timeout_s=1, budget_s=1.5)
    assert statuses(outcomes) == ["timeout", "timeout", "not_run"]


def test_a_test_that_is_not_python_is_422_naming_it(sandbox: TestClient) -> None:
    response = sandbox.post("/v1/tests", json={"code": DOUBLE, "tests": [TEST, {"kind": "assert", "source": "assert ("}]})
    assert response.status_code == 422 and response.json()["error"]["field"] == "tests.1.source"


ANYTHING = ("class Anything:\n    def __eq__(self, other):\n        return True\n    def __ne__(self, other):\n"
            "        return False\n    def __sub__(self, other):\n        return 0.0\n    __rsub__ = __sub__\n"
            "    def __bool__(self):\n        return True\n    __hash__ = object.__hash__\n")


@pytest.mark.parametrize("test", [
    "for x, y in [(1, 2), (2, 4), (5, 10)]:\n    assert double(x) == y",
    "assert double(3) == [6][0] * 1",
    "def check(candidate):\n    expected = 14\n    assert candidate(7) == expected\ncheck(double)",
    "assert abs(double(1.0) - 2.0) < 1e-6",
    "import math\nassert math.isclose(double(1.0), 2.0)",
    "assert double(1)",
])
def test_a_rigged_object_never_passes(sandbox: TestClient, test: str) -> None:
    code = ANYTHING + "def double(x):\n    return Anything()\n"
    [outcome] = run_tests(sandbox, code, [{"kind": "assert", "source": test}])
    assert outcome["status"] == "failed", outcome


def test_patched_builtins_take_no_part_in_a_verdict(sandbox: TestClient) -> None:
    code = "import builtins\nbuiltins.bool = lambda v=False: True\nbuiltins.abs = lambda *a: 0\n" \
           "builtins.repr = lambda v: 'None'\ndef is_none(x):\n    return 7\ndef mean(xs):\n    return 99.0\n"
    tests = [{"kind": "assert", "source": "assert is_none(1) is None"},
             {"kind": "assert", "source": "assert abs(mean([1.0, 3.0]) - 2.0) < 1e-6"}]
    assert statuses(run_tests(sandbox, code, tests)) == ["failed", "failed"]


def test_a_right_answer_still_passes_every_shape(sandbox: TestClient) -> None:
    code = "import math\ndef double(x):\n    return 2 * x\ndef mean(xs):\n    return sum(xs) / len(xs)\n" \
           "def nothing():\n    return None\ndef sqrt_pos(x):\n    if x < 0:\n        raise ValueError(x)\n    return math.sqrt(x)\n"
    tests = ["for x, y in [(1, 2), (2, 4)]:\n    assert double(x) == y", "assert abs(mean([1.0, 3.0]) - 2.0) < 1e-6",
             "import math\nassert math.isclose(mean([1.0]), 1.0)", "assert nothing() is None and double(2) == 4",
             "try:\n    sqrt_pos(-1)\n    assert False\nexcept ValueError:\n    pass"]
    assert statuses(run_tests(sandbox, code, [{"kind": "assert", "source": t} for t in tests])) == ["passed"] * 5


def test_signals_and_planted_files_cannot_fault_the_supervisor(sandbox: TestClient) -> None:
    code = "import os, signal\nfor s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGHUP):\n" \
           "    os.kill(1, s)\nfor i in range(3):\n    try:\n        os.mkdir(f'/work/.rh-test-{i}.py')\n" \
           "    except OSError:\n        pass\ndef double(x):\n    return 2 * x\n"
    outcomes = run_tests(sandbox, code, [TEST, TEST, {"kind": "assert", "source": "assert double(2) == 5"}])
    assert statuses(outcomes) == ["passed", "passed", "failed"]
    body = sandbox.post("/run_code", json={"code": "import os, signal\nos.kill(1, signal.SIGINT)\nprint('ok')",
                                           "language": "python"}).json()
    assert body["status"] == "Success" and body["run_result"]["stdout"] == "ok\n"


def test_a_test_without_asserts_is_422(sandbox: TestClient) -> None:
    response = sandbox.post("/v1/tests", json={"code": DOUBLE, "tests": [
        {"kind": "assert", "source": "if double(1) != 2:\n    raise AssertionError"}]})
    assert response.status_code == 422 and "no assert" in response.json()["error"]["message"]
