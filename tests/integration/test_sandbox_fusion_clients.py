"""SandboxFusion's real clients against our sandbox service's ``POST /run_code``, served by
``rewardhub serve sandbox`` in a subprocess on a loopback port (every run a real bubblewrap sandbox).

- the PyPI ``sandbox-fusion`` package (``run_code``, its async twin, ``summary_run_code_result``);
- veRL's sandbox client (``verl.utils.reward_score.sandbox_fusion``: ``call_sandbox_api``,
  ``check_correctness``, ``compute_score``), from the frameworks folder (see ``framework_sources``);
- SandboxFusion's own runner tests for python, cpp, bash and nodejs
  (``sandbox/tests/runners/test_*.py`` in bytedance/SandboxFusion), their cases restated as data.

What still differs from SandboxFusion is listed in the README's Security section.
"""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import require, require_module
from tests.integration.framework_sources import load
from tests.unit.sandbox.conftest import require_namespaces

START_TIMEOUT_S = 90.0  # the host may be busy (two cores, other suites): start-up is generous


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def sandbox_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``rewardhub serve sandbox`` on a free loopback port, with nothing of this shell's REWARDHUB_* settings."""
    require_namespaces()
    cli = shutil.which("rewardhub", path=str(Path(sys.executable).parent))
    require(cli is not None, "the rewardhub command is not installed in this environment (pip install -e .)")
    assert cli is not None
    env = {name: value for name, value in os.environ.items()
           if not (name.startswith("REWARDHUB_") or name in ("DATABASE_URL", "REDIS_URL"))}
    env["REWARDHUB_DATA_DIR"] = str(tmp_path_factory.mktemp("sandbox-data"))
    port = _free_port()
    log = (tmp_path_factory.mktemp("sandbox-log") / "serve.log").open("wb")
    proc = subprocess.Popen([cli, "serve", "sandbox", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the sandbox service exited with {proc.returncode}; see {log.name}")
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the sandbox service did not become ready; see {log.name}")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


# --- the PyPI sandbox-fusion package --------------------------------------------------------------


@pytest.fixture(scope="module")
def sf(sandbox_url: str) -> Any:
    module = require_module("sandbox_fusion", "the sandbox-fusion package (dev extra)")
    module.set_sandbox_endpoint(sandbox_url)
    return module


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


SECRET_FLAG = "ImhlbGxvLCB0aGlzIGlzIGEgdGVzdCI="  # '"hello, this is a test"', their fixture file
CPP_SLEEP = ("#include <chrono>\n#include <thread>\n"
             "int main() { std::this_thread::sleep_for(std::chrono::milliseconds(1000)); return 0; }")
CPP_THREADS = """
#include <condition_variable>
#include <iostream>
#include <mutex>
#include <queue>
#include <thread>
std::mutex m; std::condition_variable cv; std::queue<int> q;
void produce(int id) { for (int i = 0; i < 3; ++i) { std::lock_guard<std::mutex> l(m); q.push(i); cv.notify_one(); } }
void consume(int id) { for (int i = 0; i < 3; ++i) { std::unique_lock<std::mutex> l(m);
    cv.wait(l, [] { return !q.empty(); }); std::cout << "Consumer " << id << " popped " << q.front() << "\\n"; q.pop(); } }
int main() { std::thread p1(produce, 1), p2(produce, 2), c1(consume, 1), c2(consume, 2);
    p1.join(); p2.join(); c1.join(); c2.join(); return 0; }
"""

# SandboxFusion's runner tests, as data: the request, then what their assertions require.
# status: the response's; run/compile: that step's status (None: the step is absent).
RUNNER_CASES: list[dict[str, Any]] = [
    # python (sandbox/tests/runners/test_python.py)
    {"id": "python-print", "language": "python", "code": "print(123)", "run_timeout": 5,
     "status": "Success", "stdout_strip": "123"},
    {"id": "python-timeout", "language": "python", "code": "import time; time.sleep(0.2)", "run_timeout": 0.1,
     "status": "Failed", "run": "TimeLimitExceeded"},
    {"id": "python-assertion-error", "language": "python", "code": "assert 1 == 2", "run_timeout": 5,
     "status": "Failed", "run": "Finished", "stderr_has": "AssertionError"},
    {"id": "python-syntax-error", "language": "python", "code": "int a = 1", "run_timeout": 5,
     "status": "Failed", "run": "Finished", "stderr_has": "SyntaxError: invalid syntax"},
    {"id": "python-file-read", "language": "python", "code": 'print(open("dir1/dir2/dir3/secret_flag").read())',
     "run_timeout": 5, "files": {"dir1/dir2/dir3/secret_flag": SECRET_FLAG},
     "status": "Success", "run": "Finished", "stdout_has": "hello, this is a test"},
    {"id": "python-stdin", "language": "python", "code": "print(int(input()))", "run_timeout": 5, "stdin": "65535",
     "status": "Success", "run": "Finished", "stdout": "65535\n"},
    # Theirs writes "/mnt/b"; /mnt is not writable here (only /work, /tmp, /dev/shm are), so /tmp/b.
    {"id": "python-fetch-files", "language": "python", "run_timeout": 5, "fetch_files": ["a.txt", "/tmp/b"],
     "code": 'open("a.txt", "w").write("secret"); open("/tmp/b", "w").write("sauce");',
     "status": "Success", "run": "Finished", "fetched": {"a.txt": "secret", "/tmp/b": "sauce"}},
    # cpp (test_cpp.py)
    {"id": "cpp-print", "language": "cpp", "run_timeout": 5,
     "code": '#include <iostream>\nint main() { std::cout << "123" << std::endl; return 0; }',
     "status": "Success", "compile": "Finished", "stdout_strip": "123"},
    {"id": "cpp-timeout", "language": "cpp", "code": CPP_SLEEP, "run_timeout": 0.5, "compile_timeout": 30,
     "status": "Failed", "run": "TimeLimitExceeded"},
    {"id": "cpp-assertion-error", "language": "cpp", "compile_timeout": 30,
     "code": "#include <cassert>\nint main() { assert(1 == 2); return 0; }",
     "status": "Failed", "run": "Finished", "stderr_has": "Assertion"},
    {"id": "cpp-compile-error", "language": "cpp", "code": "int main() {\n    object i = ?;\n    return 0;\n}",
     "compile_timeout": 30, "status": "Failed", "compile": "Finished", "compile_failed": True, "run": None},
    {"id": "cpp-stdin", "language": "cpp", "run_timeout": 5, "stdin": "65535", "compile_timeout": 30,
     "code": "#include <iostream>\nint main() { int n; std::cin >> n; std::cout << n << std::endl; return 0; }",
     "status": "Success", "run": "Finished", "stdout": "65535\n"},
    {"id": "cpp-pthread", "language": "cpp", "code": CPP_THREADS, "run_timeout": 5, "compile_timeout": 30,
     "status": "Success", "run": "Finished"},
    # bash (test_bash.py)
    {"id": "bash-echo", "language": "bash", "code": 'echo "Hello World"', "run_timeout": 5,
     "status": "Success", "stdout_strip": "Hello World"},
    {"id": "bash-sleep-timeout", "language": "bash", "code": "sleep 0.2", "run_timeout": 0.1,
     "status": "Failed", "run": "TimeLimitExceeded"},
    {"id": "bash-false-condition", "language": "bash", "code": "test 1 -eq 2", "run_timeout": 5,
     "status": "Failed", "run": "Finished"},
    {"id": "bash-syntax-error", "language": "bash", "code": "if [", "run_timeout": 5,
     "status": "Failed", "run": "Finished", "stderr_has": "syntax error"},
    {"id": "bash-file-read", "language": "bash", "code": "cat dir1/dir2/dir3/secret_flag", "run_timeout": 5,
     "files": {"dir1/dir2/dir3/secret_flag": SECRET_FLAG},
     "status": "Success", "run": "Finished", "stdout_has": "hello, this is a test"},
    {"id": "bash-stdin", "language": "bash", "code": "\n    read input\n    echo $input\n    ", "run_timeout": 5,
     "stdin": "65535", "status": "Success", "run": "Finished", "stdout": "65535\n"},
    # nodejs (test_nodejs.py; their lodash case needs their runtime's node_modules: a README difference)
    {"id": "nodejs-print", "language": "nodejs", "code": "console.log(123)", "run_timeout": 5,
     "status": "Success", "stdout_strip": "123"},
    {"id": "nodejs-timeout", "language": "nodejs", "run_timeout": 0.1,
     "code": "const sleep = require('util').promisify(setTimeout);\n(async () => { await sleep(1000); })();",
     "status": "Failed", "run": "TimeLimitExceeded"},
    {"id": "nodejs-assertion-error", "language": "nodejs",
     "code": "const assert = require('assert');\nassert.strictEqual(1, 2, '1 !== 2');",
     "status": "Failed", "run": "Finished", "stderr_has": "AssertionError"},
    {"id": "nodejs-humanevalx-console-assert", "language": "nodejs", "code": "console.assert(1 === 2);",
     "status": "Success", "run": "Finished", "stderr_has": "Assertion failed"},
    {"id": "nodejs-stdin", "language": "nodejs", "run_timeout": 5, "stdin": "65535",
     "code": "process.stdin.on('data', (input) => {\n  console.log(parseInt(input.toString()));\n  process.exit();\n});",
     "status": "Success", "run": "Finished", "stdout": "65535\n"},
]
REQUEST_KEYS = ("language", "code", "run_timeout", "compile_timeout", "stdin", "files", "fetch_files")


def check_case(case: dict[str, Any], result: dict[str, Any]) -> None:
    """Their assertions for ``case`` on a response (as a plain dict)."""
    assert result["status"] == case["status"], result
    run: dict[str, Any] = result.get("run_result") or {}
    compiled: dict[str, Any] = result.get("compile_result") or {}
    if "run" in case:
        assert run.get("status") == case["run"], result
    if "compile" in case:
        assert compiled.get("status") == case["compile"], result
    if case.get("compile_failed"):
        assert compiled["return_code"] != 0, result
    if "stdout" in case:
        assert run["stdout"] == case["stdout"], result
    if "stdout_strip" in case:
        assert run["stdout"].strip() == case["stdout_strip"], result
    if "stdout_has" in case:
        assert case["stdout_has"] in run["stdout"], result
    if "stderr_has" in case:
        assert case["stderr_has"] in run["stderr"], result
    for name, content in case.get("fetched", {}).items():
        assert base64.b64decode(result["files"][name]).decode() == content, result


@pytest.mark.parametrize("case", RUNNER_CASES, ids=[c["id"] for c in RUNNER_CASES])
def test_sandbox_fusion_runner_cases_through_their_client(sf: Any, case: dict[str, Any]) -> None:
    request = sf.RunCodeRequest(**{key: case[key] for key in REQUEST_KEYS if key in case})
    response = sf.run_code(request, max_attempts=1, client_timeout=120)
    check_case(case, response.dict())


def test_client_summary_maps_every_outcome(sf: Any) -> None:
    mapping = sf.SummaryMapping(CompileFailed="CE", CompileTimeout="CT", RunFailed="RE", RunTimeout="TLE")

    def summary(**fields: Any) -> Any:  # a str, or the str-valued RunStatus member (Success)
        response = sf.run_code(sf.RunCodeRequest(**fields), max_attempts=1, client_timeout=120)
        return sf.summary_run_code_result(response, mapping)

    assert summary(language="python", code="print(1)") == "Success"
    assert summary(language="cpp", code="int main() { return undeclared; }", compile_timeout=30) == "CE"
    assert summary(language="python", code="raise SystemExit(4)") == "RE"
    assert summary(language="python", code="import os, signal\nos.kill(os.getpid(), signal.SIGKILL)") == "RE"
    assert summary(language="bash", code="while :; do :; done", run_timeout=1) == "TLE"


def test_request_errors_are_failed_answers_the_client_does_not_retry(sf: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: a 422 or SandboxError, which the client retries five times with back-off, then raises."""
    import sandbox_fusion.client as sf_client

    posts: list[str] = []
    real_post = sf_client.requests.post

    def counted_post(url: str, **kwargs: Any) -> Any:
        posts.append(url)
        return real_post(url, **kwargs)

    def no_retry(state: Any) -> None:
        raise AssertionError(f"the client retried: {state.outcome.exception()}")

    monkeypatch.setattr(sf_client.requests, "post", counted_post)
    monkeypatch.setattr(sf_client, "before_retry_sleep", no_retry)
    for fields in ({"language": "go", "code": "package main\nfunc main() {}"},
                   {"language": "python", "code": "print(1)", "files": {"/etc/evil": b64("x")}},
                   {"language": "python", "code": "print(1)", "files": {"../up": b64("x")}}):
        response = sf.run_code(sf.RunCodeRequest(**fields), client_timeout=120)  # default: 5 attempts
        assert response.status == sf.RunStatus.Failed and response.message, response
        assert response.run_result is None and response.compile_result is None
    assert len(posts) == 3  # one attempt each: nothing the client would retry


def test_files_and_fetch_files_semantics(sf: Any) -> None:
    response = sf.run_code(sf.RunCodeRequest(
        language="python", files={"in/n.txt": b64("21"), "skipped.txt": None, "x_IGNORE_THIS_FILE": b64("no")},
        fetch_files=["out.txt", "/tmp/abs.txt", "never-written.txt"],
        code="import os\nn = int(open('in/n.txt').read())\nopen('out.txt', 'w').write(str(n * 2))\n"
             "open('/tmp/abs.txt', 'w').write('abs')\n"
             "print(os.path.exists('skipped.txt'), os.path.exists('x_IGNORE_THIS_FILE'))"),
        max_attempts=1, client_timeout=120)
    assert response.status == sf.RunStatus.Success, response
    assert response.run_result.stdout == "False False\n"  # null content and IGNORE_THIS_FILE: not written
    assert base64.b64decode(response.files["out.txt"]) == b"42"
    assert base64.b64decode(response.files["/tmp/abs.txt"]) == b"abs"
    assert "never-written.txt" not in response.files  # theirs leaves it out silently; we also name it
    assert "never-written.txt" in response.message


def test_large_output_is_cut_and_said_so_through_the_client(sf: Any) -> None:
    response = sf.run_code(sf.RunCodeRequest(language="python", code="print('y' * 3_000_000)"),
                           max_attempts=1, client_timeout=120)
    assert response.status == sf.RunStatus.Success
    assert len(response.run_result.stdout) == 1_000_000 and "output truncated" in response.message


def test_async_client(sf: Any) -> None:
    async def both() -> list[Any]:
        requests = [sf.RunCodeRequest(language="python", code="print(input()[::-1])", stdin="abc"),
                    sf.RunCodeRequest(language="bash", code="echo $((6 * 7))")]
        return list(await asyncio.gather(*(sf.run_code_async(r, max_attempts=1, client_timeout=120)
                                           for r in requests)))

    first, second = asyncio.run(both())
    assert (first.status, first.run_result.stdout) == (sf.RunStatus.Success, "cba\n")
    assert (second.status, second.run_result.stdout) == (sf.RunStatus.Success, "42\n")


# --- veRL's sandbox client -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def verl_sandbox(sandbox_url: str) -> Any:
    return load("verl.utils.reward_score.sandbox_fusion.utils")


def test_verl_check_correctness_codes(sandbox_url: str, verl_sandbox: Any) -> None:
    """veRL's result codes: True / False, -2 runtime error, -3 timeout, -4 compile error, never -1 (API error)."""
    url = sandbox_url + "/run_code"
    doubler = "n = int(input())\nprint(n * 2)"
    results, meta = verl_sandbox.check_correctness(url, {"inputs": ["2", "5"], "outputs": ["4", "11"]}, doubler,
                                                   timeout=5)
    assert results == [True, False], meta
    crash, _ = verl_sandbox.check_correctness(url, {"inputs": ["1"], "outputs": ["1"]}, "raise ValueError", timeout=5)
    killed, _ = verl_sandbox.check_correctness(
        url, {"inputs": ["1"], "outputs": ["1"]}, "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)", timeout=5)
    slow, meta = verl_sandbox.check_correctness(url, {"inputs": ["1"], "outputs": ["1"]}, "while True:\n    pass",
                                                timeout=1)
    assert (crash, killed, slow) == ([-2], [-2], [-3]), meta
    compiled, meta = verl_sandbox.check_correctness(url, {"inputs": ["1", "2"], "outputs": ["1", "2"]},
                                                    "int main() { return undeclared; }", timeout=30, language="cpp")
    assert compiled == [-4, -4] and meta[0]["status"] == "compile_error", meta
    cpp, meta = verl_sandbox.check_correctness(
        url, {"inputs": ["20 22"], "outputs": ["42"]}, timeout=30, language="cpp",
        generation="#include <iostream>\nint main() { long a, b; std::cin >> a >> b; std::cout << a + b << '\\n'; }")
    assert cpp == [True], meta


def test_verl_fn_name_wrapper_and_compute_score(sandbox_url: str, verl_sandbox: Any) -> None:
    """The LeetCode-style wrapper (star imports of the standard library, JSON arguments on stdin) and veRL's scorer."""
    url = sandbox_url + "/run_code"
    # (Not ``add``: the wrapper looks the name up in its globals first, where ``operator.add`` is.)
    solution = "class Solution:\n    def add_all(self, a: List[int], b: int) -> int:\n        return sum(a) + b\n"
    results, meta = verl_sandbox.check_correctness(
        url, {"inputs": ["[1, 2]\n3", "[]\n0"], "outputs": ["6", "0"], "fn_name": "add_all"}, solution, timeout=5)
    assert results == [True, True], meta
    scorer = load("verl.utils.reward_score.sandbox_fusion")
    score, meta = scorer.compute_score(url, None, 1024, "```python\nprint(int(input()) + 1)\n```",
                                       {"inputs": ["1", "2"], "outputs": ["2", "4"]}, timeout=5)
    assert score == 0.5, meta


@pytest.mark.slow
def test_verl_hundred_concurrent_runs_all_hit_their_time_limit(sandbox_url: str, verl_sandbox: Any) -> None:
    """100 busy loops at once, each at run_timeout=3: all TimeLimitExceeded, none cut short or made to wait.

    Each run's limit starts when the run starts and the busy loops are niced, so every one reports
    about 3 s whatever the load. veRL's HTTP timeout is ``compile_timeout + run_timeout + 10``; a
    busy two-core host needs longer than 16 s to start 100 sandboxes, so this passes a large
    ``compile_timeout`` (which a Python run does not use) to give the client room.
    """
    url = sandbox_url + "/run_code"

    def one(_: int) -> tuple[dict[str, Any] | None, str | None]:
        response: dict[str, Any] | None
        response, error = verl_sandbox.call_sandbox_api(url, "while True:\n    pass\n", None, 110, 3, 1024, "python")
        return response, error

    with ThreadPoolExecutor(max_workers=100) as pool:
        answers = list(pool.map(one, range(100)))
    errors = [error for _, error in answers if error]
    assert not errors, errors[:3]
    runs = [response["run_result"] for response, _ in answers if response]
    assert [r["status"] for r in runs] == ["TimeLimitExceeded"] * 100
    # None cut short: each limit counts from its own start, so no run reports less than its 3 s, however
    # long it queued. How soon after 3 s each is killed depends on the load (a benchmark's question).
    times = sorted(r["execution_time"] for r in runs)
    assert times[0] >= 3, times[:3]
    print(f"\n100 busy loops: execution_time {times[0]:.2f}..{times[-1]:.2f} s")
