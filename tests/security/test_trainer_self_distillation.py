"""A tenant's POST /v1/runs cannot use self_distillation: to reach past its project.

The teacher gets the run's minted key with every score, hint and weights push (the policy's parameters),
so each attack is a 422 naming the field, and no run (hence no worker, no minted key) is created: a
teacher URL to another host (SSRF: cloud metadata, the database, Redis, loopback, credentials in the
URL, a path escaping the teacher's mount, a non-http scheme), an environment variable of the server's
sent as the Bearer key, a teacher model path of the caller's choosing (the section has none: teacher
models are registered in the teacher service, which confines their paths), and another project's teacher.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import Tenant, bearer

RUNS = "/v1/runs"
ROWS = "".join(json.dumps({"prompt": f"Say 7. ({i})", "reward_model": {"ground_truth": "7"}}) + "\n"
               for i in range(2))


@pytest.fixture
def client(sqlite_tenant: Tenant, monkeypatch: pytest.MonkeyPatch) -> TestClient:
    from services.common.settings import reset_settings_cache
    from services.trainer.app import create_app

    # The platform has a gateway URL: its /services/teacher mount is the one teacher URL a body may name.
    monkeypatch.setenv("REWARDHUB_GATEWAY_URL", "http://gateway.platform:8000")
    reset_settings_cache()
    client = TestClient(create_app())  # no lifespan: no supervisor; nothing here may launch a worker
    answer = client.post(f"/v1/projects/{sqlite_tenant.project_a}/datasets", params={"name": "digits"},
                         content=ROWS.encode(),
                         headers={**bearer(sqlite_tenant.keys["trainer"]), "Content-Type": "application/jsonl"})
    assert answer.status_code == 201, answer.text
    return client


def config(**teacher: Any) -> dict[str, Any]:
    return {"model": {"tiny": {}}, "dataset": "digits", "group_size": 2, "prompts_per_step": 1, "max_steps": 1,
            "reward": {"spec": {"type": "regex", "pattern": "7"}},
            "self_distillation": {"method": "amr_sd", "teacher": {"model": "student-ema", **teacher},
                                  "amr_sd": {"context": "reference"}}}


def refused(client: TestClient, tenant: Tenant, body_config: dict[str, Any], field: str) -> dict[str, Any]:
    key = bearer(tenant.keys["trainer"])
    answer = client.post(RUNS, json={"config": body_config}, headers=key)
    assert answer.status_code == 422, answer.text
    error: dict[str, Any] = answer.json()["error"]
    assert error["field"] == field, error
    assert client.get(RUNS, headers=key).json()["data"] == [], "a refused body creates no run"
    return error


@pytest.mark.parametrize("url", [
    "http://169.254.169.254/latest/meta-data", "http://metadata.google.internal/computeMetadata/v1",
    "http://127.0.0.1:5432", "http://localhost:6379", "http://[::1]:8000/services/teacher",
    "http://teacher.attacker.example", "http://gateway.platform:8000.attacker.example/services/teacher",
    "http://user:pw@gateway.platform:8000/services/teacher", "http://gateway.platform:8001/services/teacher",
    "http://gateway.platform:8000/services/teacher/../annotation", "http://gateway.platform:8000/services/annotation",
    "file:///etc/passwd", "gopher://127.0.0.1:6379/_FLUSHALL", "ftp://gateway.platform/services/teacher",
])
def test_a_teacher_url_to_another_host_is_refused(client: TestClient, sqlite_tenant: Tenant, url: str) -> None:
    refused(client, sqlite_tenant, config(url=url), "config.self_distillation.teacher.url")


@pytest.mark.parametrize("variable", ["REWARDHUB_SECRET_KEY", "DATABASE_URL", "REDIS_URL", "REWARDHUB_API_KEY",
                                      "REWARDHUB_SANDBOX_TOKEN", "AWS_SECRET_ACCESS_KEY"])
def test_a_tenant_named_key_variable_is_refused(client: TestClient, sqlite_tenant: Tenant, variable: str) -> None:
    error = refused(client, sqlite_tenant, config(api_key_env=variable), "config.self_distillation.teacher.api_key_env")
    assert "minted" in error["message"]


@pytest.mark.parametrize(("teacher", "field"), [
    ({"path": "/etc"}, "config.self_distillation.teacher.path"),
    ({"model_path": "/root/.cache/huggingface"}, "config.self_distillation.teacher.model_path"),
    ({"token": "rh_x"}, "config.self_distillation.teacher.token"),
    ({"backend": "local"}, "config.self_distillation.teacher.backend"),
])
def test_a_teacher_path_credential_or_backend_of_the_callers_choice_is_refused(
        client: TestClient, sqlite_tenant: Tenant, teacher: dict[str, Any], field: str) -> None:
    refused(client, sqlite_tenant, config(**teacher), field)


def test_another_projects_teacher_is_refused(client: TestClient, sqlite_tenant: Tenant) -> None:
    refused(client, sqlite_tenant, config(project_id=sqlite_tenant.project_b),
            "config.self_distillation.teacher.project_id")



def test_the_platforms_teacher_mount_passes_the_services_checks(sqlite_tenant: Tenant,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The control: the same section with the platform's own teacher URL (or none) passes the checks a
    body goes through (the schema, then confinement), so the refusals above are the URLs' and fields'."""
    from services.common.settings import reset_settings_cache
    from services.trainer import confine
    from services.trainer.schemas import RunCreate

    monkeypatch.setenv("REWARDHUB_GATEWAY_URL", "http://gateway.platform:8000")
    reset_settings_cache()
    for url in ("http://gateway.platform:8000/services/teacher", None):
        body = RunCreate.model_validate({"config": config(**({"url": url} if url else {}))})
        confine.check_api_config(body.config, sqlite_tenant.project_a)
