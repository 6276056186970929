"""SandboxFusion-compatible /run_code: models, status mapping, and the HTTP route."""

from __future__ import annotations

import asyncio
import base64
import threading

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from services.verifier import sandbox
from services.verifier.run_code import RunCodeRequest, RunCodeResponse, run_code
from tests.conftest import Tenant, bearer


def execute(**fields: object) -> RunCodeResponse:
    return asyncio.run(run_code(RunCodeRequest.model_validate({"language": "python", "run_timeout": 2, **fields})))


def test_success_returns_stdout() -> None:
    response = execute(code="print(input() * 2)", stdin="ab\n")
    assert response.status == "Success" and response.message == ""
    assert response.run_result is not None
    assert response.run_result.status == "Finished" and response.run_result.return_code == 0
    assert response.run_result.stdout == "abab\n" and response.compile_result is None
    assert response.executor_pod_name


def test_non_zero_exit_is_failed_not_sandbox_error() -> None:
    response = execute(code="import sys\nprint('partial')\nsys.exit(3)", language="python3")
    assert response.status == "Failed" and response.message == "program exited with code 3"
    assert response.run_result is not None
    assert (response.run_result.status, response.run_result.return_code) == ("Finished", 3)
    assert response.run_result.stdout == "partial\n"


def test_time_limit_is_failed_time_limit_exceeded() -> None:
    response = execute(code="while True:\n    pass", run_timeout=1)
    assert response.status == "Failed"
    assert response.run_result is not None and response.run_result.status == "TimeLimitExceeded"
    assert response.run_result.return_code is None


def test_files_in_and_fetch_files_out() -> None:
    files = {"data.txt": base64.b64encode(b"21").decode()}
    response = execute(code="n = int(open('data.txt').read())\nopen('out.txt', 'w').write(str(n * 2))",
                       files=files, fetch_files=["out.txt", "absent.txt"])
    assert response.status == "Success"
    assert response.files == {"out.txt": base64.b64encode(b"42").decode()}


def test_platform_fault_is_sandbox_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox, "_plan", lambda: sandbox._Plan(interpreter=None, drop_to_nobody=False,
                                                                 isolate_network=False))
    response = execute(code="print(1)")
    assert response.status == "SandboxError" and "no Python interpreter" in response.message


def test_unsupported_language_names_the_field_and_the_options() -> None:
    with pytest.raises(ValidationError) as caught:
        RunCodeRequest.model_validate({"code": "int main() {}", "language": "cpp"})
    error = caught.value.errors()[0]
    assert error["loc"] == ("language",)
    assert "'python'" in error["msg"] and "'python3'" in error["msg"]


@pytest.mark.parametrize(("fields", "field"), [
    ({"files": {"a.txt": "not base64!"}}, "files"),
    ({"memory_limit_MB": 5}, "memory_limit_MB"),
    ({"run_timeout": 0}, "run_timeout"),
])
def test_bad_fields_are_named(fields: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        RunCodeRequest.model_validate({"code": "print(1)", "language": "python", **fields})
    assert caught.value.errors()[0]["loc"][0] == field


def test_http_route_times_out_while_health_keeps_answering(sqlite_tenant: Tenant) -> None:
    from services.verifier.app import create_app

    headers = bearer(sqlite_tenant.keys["root"])
    answers: list[dict[str, object]] = []
    with TestClient(create_app()) as client:
        def loop_request() -> None:
            response = client.post("/run_code", headers=headers,
                                   json={"code": "while True:\n    pass", "language": "python", "run_timeout": 3})
            answers.append({"http": response.status_code, **response.json()})

        worker = threading.Thread(target=loop_request)
        worker.start()
        health_codes = [client.get("/healthz").status_code for _ in range(3)]
        answered_during_run = worker.is_alive()
        worker.join(timeout=30)
        bad_language = client.post("/run_code", headers=headers, json={"code": "x", "language": "go"})
        unauthenticated = client.post("/run_code", json={"code": "print(1)", "language": "python"})
    assert health_codes == [200, 200, 200] and answered_during_run
    assert answers[0]["http"] == 200 and answers[0]["status"] == "Failed"
    assert answers[0]["run_result"]["status"] == "TimeLimitExceeded"  # type: ignore[index]
    assert bad_language.status_code == 422 and "language" in bad_language.text
    assert unauthenticated.status_code == 401
