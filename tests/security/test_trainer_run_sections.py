"""A tenant's POST /v1/runs cannot use eval:, rlavr: or multi_turn: to reach past its project.

Each attack is a 422 naming the field, and no run (hence no worker, no minted key) is created:
a ``module:factory`` environment (code imported in the worker), the ``local`` tool backend (code run
in the worker's process), a sandbox URL or token variable of the caller's choice, tool sessions
counted against another project, an eval.data path leaving the project's datasets (absolute, ``..``,
a symlink, another project's upload), and an rlavr annotation URL to another host (SSRF, with the
run's key as its Bearer token).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import Tenant, bearer

RUNS = "/v1/runs"
ROWS = "".join(json.dumps({"prompt": f"Say 7. ({i})", "reward_model": {"ground_truth": "7"}}) + "\n"
               for i in range(2))


def upload(client: TestClient, key: str, project_id: str, name: str) -> None:
    answer = client.post(f"/v1/projects/{project_id}/datasets", params={"name": name}, content=ROWS.encode(),
                         headers={**bearer(key), "Content-Type": "application/jsonl"})
    assert answer.status_code == 201, answer.text


@pytest.fixture
def client(sqlite_tenant: Tenant) -> TestClient:
    from services.trainer.app import create_app

    client = TestClient(create_app())  # no lifespan: no supervisor; nothing here may launch a worker
    upload(client, sqlite_tenant.keys["trainer"], sqlite_tenant.project_a, "digits")
    upload(client, sqlite_tenant.keys["admin_b"], sqlite_tenant.project_b, "theirs")
    return client


def config(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"model": {"tiny": {}}, "dataset": "digits", "group_size": 2, "prompts_per_step": 1,
                            "max_steps": 1, "reward": {"spec": {"type": "regex", "pattern": "7"}}}
    data.update(overrides)
    return data


def refused(client: TestClient, tenant: Tenant, body_config: dict[str, Any], field: str) -> dict[str, Any]:
    key = bearer(tenant.keys["trainer"])
    answer = client.post(RUNS, json={"config": body_config}, headers=key)
    assert answer.status_code == 422, answer.text
    error: dict[str, Any] = answer.json()["error"]
    assert error["field"] == field, error
    assert client.get(RUNS, headers=key).json()["data"] == [], "a refused body creates no run"
    return error


@pytest.mark.parametrize("environment", ["os:system", "subprocess:run", "builtins:exec",
                                         "tests.unit.trainer.test_agent:make_env", "pickle:loads"])
def test_a_module_factory_environment_is_refused(client: TestClient, sqlite_tenant: Tenant,
                                                 environment: str) -> None:
    error = refused(client, sqlite_tenant, config(multi_turn={"environment": environment}),
                    "config.multi_turn.environment")
    assert "module:factory" in error["message"]


def test_the_local_tool_backend_is_refused(client: TestClient, sqlite_tenant: Tenant) -> None:
    error = refused(client, sqlite_tenant, config(multi_turn={"tools": {"backend": "local"}}),
                    "config.multi_turn.tools.backend")
    assert "only sandbox" in error["message"]


@pytest.mark.parametrize(("tools", "field"), [
    ({"api_key_env": "REWARDHUB_SECRET_KEY"}, "config.multi_turn.tools.api_key_env"),
    ({"api_key_env": "DATABASE_URL"}, "config.multi_turn.tools.api_key_env"),
    ({"url": "http://169.254.169.254/latest/meta-data"}, "config.multi_turn.tools.url"),
    ({"url": "http://attacker.example:8000"}, "config.multi_turn.tools.url"),
])
def test_the_sandbox_url_and_token_are_never_the_callers(client: TestClient, sqlite_tenant: Tenant,
                                                         tools: dict[str, Any], field: str) -> None:
    refused(client, sqlite_tenant, config(multi_turn={"tools": tools}), field)


def test_tool_sessions_cannot_count_against_another_project(client: TestClient, sqlite_tenant: Tenant) -> None:
    refused(client, sqlite_tenant, config(multi_turn={"tools": {"project": sqlite_tenant.project_b}}),
            "config.multi_turn.tools.project")


def test_eval_data_cannot_leave_the_projects_datasets(client: TestClient, sqlite_tenant: Tenant,
                                                      isolated_env: Path) -> None:
    projects = isolated_env / "data" / "projects"
    theirs = projects / sqlite_tenant.project_b / "datasets" / "theirs.jsonl"
    assert theirs.is_file()
    mine = projects / sqlite_tenant.project_a / "datasets"
    (mine / "link.jsonl").symlink_to(theirs)
    (mine / "etc.jsonl").symlink_to("/etc/passwd")
    for data in ["/etc/passwd", str(theirs), "../digits.jsonl", f"../../{sqlite_tenant.project_b}/datasets/theirs.jsonl",
                 "theirs", "link.jsonl", "etc.jsonl", "sub/../../x.jsonl", "digits.jsonl\x00.txt", ""]:
        refused(client, sqlite_tenant, config(eval={"data": data}), "config.eval.data")


@pytest.mark.parametrize("url", [
    "http://169.254.169.254/latest/meta-data", "http://127.0.0.1:5432", "http://localhost:6379",
    "http://annotation.attacker.example", "http://user:pw@annotation:8000", "file:///etc/passwd",
    "gopher://127.0.0.1:6379/_FLUSHALL", "http://[::1]:8000/services/annotation",
])
def test_an_rlavr_url_to_another_host_is_refused(client: TestClient, sqlite_tenant: Tenant, url: str) -> None:
    refused(client, sqlite_tenant, config(rlavr={"annotation_project_id": "ap1", "url": url}), "config.rlavr.url")
