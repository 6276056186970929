"""eval:, rlavr: and multi_turn: in runs started through the trainer service (POST /v1/runs).

Every run is a tiny model trained by a real worker process, scoring through the live server's own
/v1/rewards: an eval section's held-out dataset (one of the project's uploads) yields ``eval/…`` metrics
in the run's metrics; an rlavr section posts each step to the platform's annotation service with the
run's minted key (here the embedded default, where the worker mounts the platform in-process); a
multi_turn section runs its tool calls in sessions of a live sandbox service (``rewardhub serve
sandbox``) named by the service's REWARDHUB_SANDBOX_URL, never by the body.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import SQLITE_ONLY, LiveServer, bearer
from tests.integration.test_sandbox_fusion_clients import sandbox_url  # noqa: F401  (the module fixture)
from tests.integration.test_trainer_service import (  # noqa: F401  (trainer_client is a fixture)
    RUNS,
    run_config,
    set_env,
    trainer_client,
    upload,
    wait_for,
)

HELDOUT = "".join(json.dumps({"data_source": "sevens", "prompt": f"Say 7 again. ({i})",
                              "reward_model": {"ground_truth": "7"}}) + "\n" for i in range(3))


def metrics_of(client: httpx.Client, run_id: str) -> list[dict[str, Any]]:
    page = client.get(f"{RUNS}/{run_id}/metrics").json()
    return [row["metrics"] for row in page["data"]]


def succeeded(client: httpx.Client, created: httpx.Response) -> dict[str, Any]:
    assert created.status_code == 201, created.text
    run = wait_for(client, created.json()["id"], lambda r: r["status"] in ("succeeded", "failed", "cancelled"),
                   limit_s=240)
    assert run["status"] == "succeeded", (run["error"], Path(run["output_dir"], "worker.log").read_text()[-3000:])
    return run


@pytest.mark.slow
@SQLITE_ONLY
def test_an_eval_section_puts_eval_metrics_in_the_runs_metrics(trainer_client: httpx.Client,  # noqa: F811
                                                               live_server: LiveServer) -> None:
    assert upload(trainer_client, live_server.tenant.project_a, "heldout", HELDOUT).status_code == 201
    config = run_config(max_steps=2, eval={"data": "heldout", "every_n_steps": 1, "k": 2, "max_prompts": 2})
    run = succeeded(trainer_client, trainer_client.post(RUNS, json={"config": config}))
    steps = metrics_of(trainer_client, run["id"])
    assert [m["step"] for m in steps] == [1, 2]
    for metrics in steps:  # every_n_steps 1: an evaluation after each step, graded by the run's reward spec
        assert "eval/sevens/avg@2" in metrics and "eval/all/pass@2" in metrics, sorted(metrics)
        assert 0.0 <= metrics["eval/sevens/avg@2"] <= 1.0
    assert "eval/sevens/avg@2" in run["last_metrics"]
    samples = Path(run["output_dir"]) / "eval" / "step-000002"
    assert samples.is_dir() and any(samples.iterdir()), "the samples are kept in the run's own folder"
    assert run["config"]["eval"]["data"] == "heldout", "stored as the caller named it; resolved by the worker"


@SQLITE_ONLY
def test_eval_data_outside_the_projects_datasets_is_a_422(trainer_client: httpx.Client,  # noqa: F811
                                                          live_server: LiveServer) -> None:
    b = httpx.Client(base_url=live_server.url, headers=bearer(live_server.tenant.keys["admin_b"]), timeout=30)
    assert upload(b, live_server.tenant.project_b, "theirs", HELDOUT).status_code == 201
    for data in ("/etc/passwd", "../digits.jsonl", f"../../{live_server.tenant.project_b}/datasets/theirs.jsonl",
                 "theirs", "missing"):
        response = trainer_client.post(RUNS, json={"config": run_config(eval={"data": data})})
        assert response.status_code == 422, (data, response.text)
        assert response.json()["error"]["field"] == "config.eval.data", (data, response.json())
    assert trainer_client.get(RUNS).json()["data"] == []


def _annotation_project(server: LiveServer) -> str:
    base = f"{server.url}/services/annotation/v1/annotation/projects"
    admin = bearer(server.tenant.keys["admin"])
    created = httpx.post(base, headers=admin, json={
        "project_id": server.tenant.project_a, "name": "rlavr-service", "label_budget": 3,
        "rollouts_per_prompt": 4, "policy": "care", "answer_source": "answer_key",
        "care_params": {"top_p": 1.0, "warmup_steps": 20}})
    assert created.status_code in (200, 201), created.text
    project_id = str(created.json()["id"])
    key = httpx.put(f"{base}/{project_id}/answer-key", headers=admin,
                    json={"entries": [{"prompt_id": str(i), "answer": "7"} for i in range(8)]})
    assert key.status_code == 200, key.text
    return project_id


@pytest.mark.slow
@SQLITE_ONLY
def test_an_rlavr_run_posts_its_steps_with_its_own_key_in_process(trainer_client: httpx.Client,  # noqa: F811
                                                                   live_server: LiveServer,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # The embedded default (no REWARDHUB_GATEWAY_URL, no annotation URL): the worker mounts the platform.
    monkeypatch.delenv("REWARDHUB_GATEWAY_URL")
    monkeypatch.setenv("REWARDHUB_API_KEY", "rh_not_the_runs_key")  # never what a service run sends
    set_env(monkeypatch)
    project_id = _annotation_project(live_server)
    config = run_config(max_steps=2, max_completion_length=1,
                        rlavr={"annotation_project_id": project_id, "extractor": "text"})
    run = succeeded(trainer_client, trainer_client.post(RUNS, json={"config": config}))
    steps = metrics_of(trainer_client, run["id"])
    assert [m["step"] for m in steps] == [1, 2]
    for name in ("rlavr/purchased", "rlavr/budget_left", "rlavr/gt_share", "rlavr/mean_advantage_weight"):
        assert all(name in m for m in steps), name
    ledger = httpx.get(f"{live_server.url}/services/annotation/v1/annotation/projects/{project_id}/ledger",
                       headers=bearer(live_server.tenant.keys["trainer"])).json()
    purchased = sum(m["rlavr/purchased"] for m in steps)
    assert purchased >= 1 and len(ledger["data"]) == purchased == ledger["budget"]["spent"] <= 3
    assert steps[-1]["rlavr/budget_left"] == 3 - purchased


@pytest.mark.parametrize("url", ["http://169.254.169.254/latest", "http://annotation.evil.example/",
                                 "http://127.0.0.1:1/services/annotation"])
@SQLITE_ONLY
def test_an_rlavr_url_to_another_host_is_a_422(trainer_client: httpx.Client, url: str) -> None:  # noqa: F811
    config = run_config(rlavr={"annotation_project_id": "ap1", "url": url})
    response = trainer_client.post(RUNS, json={"config": config})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == "config.rlavr.url", response.json()


# ----------------------------------------------------------------------------- multi-turn, live sandbox

def _tool_model(area: Path) -> str:
    """A tiny tokenizer + policy warmed up to write code and call the tool (trainer.agent.toy), in the area."""
    from trainer.agent.toy import build_tool_model, warm_up

    model_dir = area / "models" / "tool"
    build_tool_model(model_dir, seed=2, hidden_size=32, num_layers=1)
    # 200 steps: about one tool call per episode on the toy's prompts (30 steps: none, measured).
    warm_up(model_dir, "delayed", steps=200, seed=0, tool_share=1.0, batch_size=8)
    return "models/tool"


def _sandbox_counter(url: str, name: str, label: str) -> float:
    text = httpx.get(url + "/metrics", timeout=30).text
    found = re.search(rf'^{name}\{{[^}}]*"{label}"[^}}]*\}} ([0-9.e+]+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


@pytest.mark.slow
@SQLITE_ONLY
def test_a_multi_turn_run_calls_tools_in_the_live_sandbox_service(
        trainer_client: httpx.Client, live_server: LiveServer, isolated_env: Path,  # noqa: F811
        sandbox_url: str, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    set_env(monkeypatch, REWARDHUB_SANDBOX_URL=sandbox_url)
    project = live_server.tenant.project_a
    model = _tool_model(isolated_env / "data" / "projects" / project)
    from trainer.agent.toy import problems

    prompts = "".join(json.dumps({"prompt": p.prompt, "reward_model": {"ground_truth": str(p.value)}}) + "\n"
                      for p in problems(2, seed=7))
    assert upload(trainer_client, project, "arith", prompts).status_code == 201
    before = _sandbox_counter(sandbox_url, "rewardhub_sandbox_session_executions_total", "success")
    config = run_config(model={"path": model}, dataset="arith", group_size=2, prompts_per_step=2, max_steps=1,
                        max_completion_length=48, learning_rate=1e-3, export_hf="none",
                        reward={"spec": {"type": "regex", "pattern": r"\d"}, "max_retries": 1, "timeout_s": 30},
                        multi_turn={"environment": "code", "max_turns": 3, "tools": {"timeout_s": 10}})
    run = succeeded(trainer_client, trainer_client.post(RUNS, json={"config": config}))
    [metrics] = metrics_of(trainer_client, run["id"])
    assert metrics["tool_calls_per_episode"] > 0, metrics
    after = _sandbox_counter(sandbox_url, "rewardhub_sandbox_session_executions_total", "success")
    assert after > before, "the episodes' code ran in the live sandbox service's sessions"
    assert "tools" not in run["config"]["multi_turn"] or "url" not in run["config"]["multi_turn"]["tools"]  # the three training runs are marked slow; the refusals are not


@pytest.mark.slow
@SQLITE_ONLY
def test_a_multi_turn_run_in_the_embedded_default_uses_the_platforms_sandbox_in_process(
        trainer_client: httpx.Client, live_server: LiveServer, isolated_env: Path,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.unit.sandbox.conftest import require_namespaces
    from trainer.agent.toy import problems

    require_namespaces()
    # No REWARDHUB_GATEWAY_URL nor REWARDHUB_SANDBOX_URL: the worker mounts the platform, sandbox included.
    monkeypatch.delenv("REWARDHUB_GATEWAY_URL")
    monkeypatch.setenv("REWARDHUB_URL", "http://127.0.0.1:9")  # a local config's default; never a service run's
    set_env(monkeypatch)
    project = live_server.tenant.project_a
    model = _tool_model(isolated_env / "data" / "projects" / project)
    prompts = "".join(json.dumps({"prompt": p.prompt, "reward_model": {"ground_truth": str(p.value)}}) + "\n"
                      for p in problems(2, seed=7))
    assert upload(trainer_client, project, "arith", prompts).status_code == 201
    config = run_config(model={"path": model}, dataset="arith", group_size=2, prompts_per_step=2, max_steps=1,
                        max_completion_length=48, learning_rate=1e-3, export_hf="none",
                        multi_turn={"environment": "code", "max_turns": 3, "tools": {"timeout_s": 10}})
    run = succeeded(trainer_client, trainer_client.post(RUNS, json={"config": config}))
    [metrics] = metrics_of(trainer_client, run["id"])
    assert metrics["tool_calls_per_episode"] > 0, metrics
    # An unreachable sandbox makes every call a tool error; the in-process sandbox answered some.
    assert metrics["tool_errors_per_episode"] < metrics["tool_calls_per_episode"], metrics


pytestmark = pytest.mark.timeout(600)  # the training runs are marked slow; the refusals are not
