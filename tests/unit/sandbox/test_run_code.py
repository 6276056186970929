"""SandboxFusion-compatible /run_code: per-language runners, statuses, limits, files — real sandboxes."""

from __future__ import annotations

import base64

import pytest
from fastapi.testclient import TestClient

from tests.conftest import require
from tests.unit.sandbox.conftest import run_code


def test_python_success_with_stdin_numpy_and_sympy(sandbox: TestClient) -> None:
    body = run_code(sandbox, code="import numpy, sympy\nprint(input() * 2, int(numpy.arange(4).sum()), sympy.Integer(7))",
                    stdin="ab\n")
    assert body["status"] == "Success" and body["message"] == ""
    assert body["run_result"]["stdout"] == "abab 6 7\n" and body["run_result"]["return_code"] == 0
    assert body["compile_result"] is None and body["executor_pod_name"]


def test_non_zero_exit_is_failed_and_keeps_partial_output(sandbox: TestClient) -> None:
    body = run_code(sandbox, code="import sys\nprint('partial')\nsys.exit(3)", language="python3")
    assert body["status"] == "Failed" and body["message"] == "program exited with code 3"
    assert (body["run_result"]["status"], body["run_result"]["return_code"]) == ("Finished", 3)
    assert body["run_result"]["stdout"] == "partial\n"


def test_wall_clock_limit_is_time_limit_exceeded(sandbox: TestClient) -> None:
    body = run_code(sandbox, code="import time\ntime.sleep(30)", run_timeout=1)
    assert body["status"] == "Failed" and body["run_result"]["status"] == "TimeLimitExceeded"
    # Cut at the 1 s limit: never before it, and well before the program's own 30 s (how soon after
    # the limit depends on the machine's load, so that is not asserted).
    assert body["run_result"]["return_code"] is None and 1 <= body["run_result"]["execution_time"] < 30


def test_self_sigkill_is_a_signal_not_a_time_limit(sandbox: TestClient) -> None:
    body = run_code(sandbox, code="import os, signal\nos.kill(os.getpid(), signal.SIGKILL)")
    assert body["status"] == "Failed" and body["message"] == "program was killed by signal 9 (SIGKILL)"
    assert (body["run_result"]["status"], body["run_result"]["return_code"]) == ("Finished", -9)


def test_sigxcpu_from_the_cpu_rlimit_is_a_time_limit(sandbox: TestClient) -> None:
    # Busy threads use CPU seconds faster than wall seconds and meet RLIMIT_CPU's SIGXCPU first;
    # SandboxFusion (wall clock only) reports those TimeLimitExceeded, so this does too.
    body = run_code(sandbox, code="import os, signal\nos.kill(os.getpid(), signal.SIGXCPU)")
    assert body["status"] == "Failed" and body["message"] == "time limit exceeded"
    assert (body["run_result"]["status"], body["run_result"]["return_code"]) == ("TimeLimitExceeded", None)


def test_cpp_compiles_and_runs(sandbox: TestClient) -> None:
    body = run_code(sandbox, language="cpp", stdin="20 22",
                    code="#include <iostream>\nint main(){int a,b;std::cin>>a>>b;std::cout<<a+b<<std::endl;}")
    assert body["status"] == "Success", body
    assert body["compile_result"]["status"] == "Finished" and body["compile_result"]["return_code"] == 0
    assert body["run_result"]["stdout"] == "42\n"


def test_cpp_compile_error_is_in_compile_result(sandbox: TestClient) -> None:
    body = run_code(sandbox, language="cpp", code="int main() { return undeclared; }")
    assert body["status"] == "Failed" and body["run_result"] is None
    assert body["compile_result"]["return_code"] != 0 and "undeclared" in body["compile_result"]["stderr"]


@pytest.mark.parametrize(("language", "code"), [("nodejs", "console.log(6 * 7)"), ("bash", "echo $((6 * 7))")])
def test_nodejs_and_bash(sandbox: TestClient, language: str, code: str) -> None:
    body = run_code(sandbox, language=language, code=code)
    assert body["status"] == "Success", body
    assert body["run_result"]["stdout"] == "42\n"


def test_unsupported_language_is_a_failed_request_naming_the_supported_ones(sandbox: TestClient) -> None:
    body = run_code(sandbox, language="cobol", code="DISPLAY 'HI'.")
    assert body["status"] == "Failed" and "python, cpp, nodejs, bash" in body["message"]


def test_files_in_and_fetch_files_out_relative_and_absolute(sandbox: TestClient) -> None:
    files = {"data/n.txt": base64.b64encode(b"21").decode()}
    body = run_code(sandbox, files=files, fetch_files=["out.txt", "/tmp/abs.txt", "missing.txt"],
                    code="n = int(open('data/n.txt').read())\nopen('out.txt', 'w').write(str(n * 2))\n"
                         "open('/tmp/abs.txt', 'w').write('abs')")
    assert body["status"] == "Success"
    assert base64.b64decode(body["files"]["out.txt"]) == b"42"
    assert base64.b64decode(body["files"]["/tmp/abs.txt"]) == b"abs"
    assert "missing.txt" not in body["files"] and "not fetched: missing.txt" in body["message"]


def test_null_content_and_ignore_this_file_entries_are_not_written(sandbox: TestClient) -> None:
    # SandboxFusion's restore_files writes only string contents and skips names with IGNORE_THIS_FILE
    # (so their names are not checked either).
    body = run_code(sandbox, files={"none.txt": None, "/abs/none": None, "a_IGNORE_THIS_FILE": "eA==",
                                    "kept.txt": "eA=="},
                    code="import os\nprint(sorted(n for n in os.listdir('.') if n != 'main.py'))")
    assert body["status"] == "Success", body
    assert body["run_result"]["stdout"] == "['kept.txt']\n"


def test_cpp_links_the_optional_libraries_sandbox_fusion_links(sandbox: TestClient) -> None:
    from services.sandbox import languages

    gxx = languages.tool_path(languages.LANGUAGES["cpp"])
    require(gxx is not None and "-lcrypto" in languages.cpp_link_flags(gxx),
            "g++ or libssl-dev (libcrypto) is not installed (`make system-deps`)")
    body = run_code(sandbox, language="cpp", compile_timeout=60, code=(
        "#include <openssl/sha.h>\n#include <cstdio>\nint main() { unsigned char d[SHA256_DIGEST_LENGTH];\n"
        "  SHA256(reinterpret_cast<const unsigned char*>(\"abc\"), 3, d); std::printf(\"%02x%02x\\n\", d[0], d[1]); }"))
    assert body["status"] == "Success", body
    assert body["run_result"]["stdout"] == "ba78\n"  # sha256("abc") = ba7816bf...


@pytest.mark.parametrize("name", ["/etc/x", "../x", "a/../../x", ""])
def test_file_names_leaving_the_work_dir_are_a_failed_request(sandbox: TestClient, name: str) -> None:
    body = run_code(sandbox, files={name: ""}, code="print(1)")
    assert body["status"] == "Failed" and "files[" in body["message"]


def test_large_output_is_truncated_and_said_so(sandbox: TestClient) -> None:
    body = run_code(sandbox, code="import sys\nsys.stdout.write('x' * 5_000_000)")
    assert body["status"] == "Success" and body["run_result"]["truncated"] is True
    assert len(body["run_result"]["stdout"]) == 1_000_000 and "output truncated" in body["message"]


@pytest.mark.parametrize(("fields", "field"), [({"memory_limit_MB": 8}, "memory_limit_MB"),
                                               ({"run_timeout": 0}, "run_timeout"),
                                               ({"files": {"a": "not base64!"}}, "files")])
def test_bad_fields_are_422_naming_them(sandbox: TestClient, fields: dict[str, object], field: str) -> None:
    response = sandbox.post("/run_code", json={"code": "print(1)", "language": "python", **fields})
    assert response.status_code == 422 and field in response.text


def test_token_is_required_when_set(isolated_env: object, monkeypatch: pytest.MonkeyPatch) -> None:
    from services.common.settings import reset_settings_cache
    from services.sandbox.app import create_app

    monkeypatch.setenv("REWARDHUB_SANDBOX_TOKEN", "s3cret-token")
    reset_settings_cache()
    client = TestClient(create_app())
    assert client.post("/run_code", json={"code": "print(1)"}).status_code == 401
    assert client.post("/run_code", json={"code": "print(1)"},
                       headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/healthz").status_code == 200


def test_weak_process_isolation_still_runs_under_limits(isolated_env: object, monkeypatch: pytest.MonkeyPatch) -> None:
    from services.common.settings import reset_settings_cache
    from services.sandbox.app import create_app

    monkeypatch.setenv("REWARDHUB_SANDBOX_ISOLATION", "processes")
    reset_settings_cache()
    client = TestClient(create_app())
    assert run_code(client, code="print(6 * 7)")["run_result"]["stdout"] == "42\n"
    assert run_code(client, code="while True:\n    pass", run_timeout=1)["run_result"]["status"] == "TimeLimitExceeded"
    outcomes = client.post("/v1/tests", json={"code": "def f():\n    return 1\n", "tests": [
        {"kind": "assert", "source": "assert f() == 1"}, {"kind": "assert", "source": "assert f() == 2"}]}).json()
    assert [t["status"] for t in outcomes["tests"]] == ["passed", "failed"]


def test_without_namespaces_nothing_runs_and_readiness_says_why(isolated_env: object,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from services.sandbox import isolation
    from services.sandbox.app import create_app

    monkeypatch.setattr(isolation, "find_bwrap", lambda: None)
    isolation.probe.cache_clear()
    try:
        client = TestClient(create_app())
        ready = client.get("/readyz")
        assert ready.status_code == 503 and "bubblewrap" in ready.json()["checks"]["isolation"]
        body = run_code(client, code="print(1)")
        assert body["status"] == "SandboxError" and "not run without its namespaces" in body["message"]
        assert client.get("/healthz").status_code == 200
    finally:
        isolation.probe.cache_clear()


KEY_READER = r'''
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
serial = libc.syscall(250, 10, b"user", b"rh-keyring-canary", -3)  # keyctl(KEYCTL_SEARCH, session keyring)
buf = ctypes.create_string_buffer(256)
print("serial", serial, "read", libc.syscall(250, 11, serial, buf, 256), buf.value)
'''


def test_a_run_cannot_read_the_services_session_keyring(sandbox: TestClient) -> None:
    import ctypes
    import platform

    require(platform.machine() == "x86_64", "the keyring syscalls are numbered for x86_64 here")
    libc = ctypes.CDLL(None, use_errno=True)
    data = b"SECRET-KEYRING-CANARY"
    planted = libc.syscall(248, b"user", b"rh-keyring-canary", data, len(data), -3) >= 0  # add_key(..., session)
    require(planted, "this process has no session keyring to plant a key in")
    body = run_code(sandbox, code=KEY_READER)
    assert "SECRET-KEYRING-CANARY" not in body["run_result"]["stdout"]
    assert body["run_result"]["stdout"].startswith("serial -1")


def test_fetch_files_reads_each_file_once_and_host_configuration_is_masked(sandbox: TestClient) -> None:
    body = run_code(sandbox, code="open('big', 'wb').write(b'x' * 1000)\nimport os\nprint(os.listdir('/usr/local/etc') "
                                  "if os.path.isdir('/usr/local/etc') else [])",
                    fetch_files=["big", "./big", "/work/./big"])
    assert list(body["files"]) == ["big"] and "the same file" in body["message"]
    assert body["run_result"]["stdout"] == "[]\n"
