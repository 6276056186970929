"""The trainer service: runs start in their own worker process, report metrics, cancel, resume, fail loudly.

Each run trains a tiny random model against the live server's own `/v1/rewards` (a regex grader),
so the whole path is real: HTTP API → database row → spawned worker → reward API → metrics.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import LiveServer, bearer
from trainer import checkpoint
from trainer.grpo import CHECKPOINTS, METRICS_FILE

pytestmark = pytest.mark.slow
RUNS = "/services/trainer/v1/runs"
KEY_ENV = "REWARDHUB_TEST_TRAINER_KEY"


def run_config(tmp_path: Path, url: str, **overrides: Any) -> dict[str, Any]:
    dataset = tmp_path / "digits.jsonl"
    dataset.write_text("\n".join(json.dumps({"prompt": f"Say 7. ({i})", "reward_model": {"ground_truth": "7"}})
                                 for i in range(8)) + "\n")
    config: dict[str, Any] = {
        "model": {"tiny": {"seed": 0}}, "dataset": str(dataset),
        "reward": {"spec": {"type": "regex", "pattern": r"\d"}, "url": url, "api_key_env": KEY_ENV,
                   "max_retries": 1, "timeout_s": 10},
        "group_size": 4, "prompts_per_step": 2, "max_steps": 3, "learning_rate": 3e-3,
        "max_completion_length": 4, "seed": 0,
    }
    config.update(overrides)
    return config


def wait_for(client: httpx.Client, run_id: str, done: Any, limit_s: float = 120) -> dict[str, Any]:
    """Poll the run until ``done(run)`` holds (a state to reach, not a duration to wait)."""
    deadline = time.monotonic() + limit_s
    while True:
        run = client.get(f"{RUNS}/{run_id}").json()
        if done(run):
            return run
        if time.monotonic() > deadline:
            raise AssertionError(f"run never reached the expected state: {run}")
        time.sleep(0.2)


@pytest.fixture
def trainer_client(live_server: LiveServer, monkeypatch: pytest.MonkeyPatch) -> httpx.Client:
    # The worker process inherits this environment: it finds its reward API key here.
    monkeypatch.setenv(KEY_ENV, live_server.tenant.keys["trainer"])
    return httpx.Client(base_url=live_server.url, headers=bearer(live_server.tenant.keys["trainer"]), timeout=30)


def test_a_run_trains_in_its_own_process_and_reports_metrics(trainer_client: httpx.Client, live_server: LiveServer,
                                                             tmp_path: Path) -> None:
    created = trainer_client.post(RUNS, json={"name": "digits", "config": run_config(tmp_path, live_server.url)})
    assert created.status_code == 201, created.text
    run = wait_for(trainer_client, created.json()["id"], lambda r: r["status"] in ("succeeded", "failed"))
    assert run["status"] == "succeeded", run
    assert run["current_step"] == 3 and run["checkpoint"]
    for key in ("reward_mean", "reward_std", "non_ok_share", "loss", "clip_fraction", "entropy", "tokens_per_s",
                "step_time_s"):
        assert key in run["last_metrics"], key
    steps = trainer_client.get(f"{RUNS}/{run['id']}/metrics").json()["steps"]
    assert [s["step"] for s in steps] == [1, 2, 3]
    logged = (Path(run["output_dir"]) / METRICS_FILE).read_text().splitlines()
    assert [json.loads(line)["step"] for line in logged] == [1, 2, 3]
    assert checkpoint.latest(Path(run["output_dir"]) / CHECKPOINTS) is not None
    listed = trainer_client.get(RUNS).json()
    assert [r["id"] for r in listed] == [run["id"]]


def test_cancel_leaves_a_checkpoint_and_resume_continues(trainer_client: httpx.Client, live_server: LiveServer,
                                                         tmp_path: Path) -> None:
    config = run_config(tmp_path, live_server.url, max_steps=10_000)
    run_id = trainer_client.post(RUNS, json={"config": config}).json()["id"]
    wait_for(trainer_client, run_id, lambda r: r["current_step"] >= 2)
    assert trainer_client.post(f"{RUNS}/{run_id}/cancel").status_code == 202
    cancelled = wait_for(trainer_client, run_id, lambda r: r["status"] == "cancelled")
    saved = checkpoint.latest(Path(cancelled["output_dir"]) / CHECKPOINTS)
    assert saved is not None and cancelled["checkpoint"] == str(saved)
    assert json.loads((saved / "state.json").read_text())["step"] == cancelled["current_step"]
    assert trainer_client.post(f"{RUNS}/{run_id}/cancel").status_code == 409  # already over

    resumed = trainer_client.post(f"{RUNS}/{run_id}/resume")
    assert resumed.status_code == 202, resumed.text
    wait_for(trainer_client, run_id, lambda r: r["current_step"] > cancelled["current_step"])
    trainer_client.post(f"{RUNS}/{run_id}/cancel")
    final = wait_for(trainer_client, run_id, lambda r: r["status"] == "cancelled")
    steps = [s["step"] for s in trainer_client.get(f"{RUNS}/{run_id}/metrics").json()["steps"]]
    assert steps == list(range(1, final["current_step"] + 1)), "a resumed run continues, it does not restart"


def test_reward_outage_fails_the_run_with_the_cause(trainer_client: httpx.Client, live_server: LiveServer,
                                                    tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    run_id = trainer_client.post(RUNS, json={"config": run_config(tmp_path, dead)}).json()["id"]
    run = wait_for(trainer_client, run_id, lambda r: r["status"] in ("succeeded", "failed"))
    assert run["status"] == "failed"
    assert "RewardServiceUnavailable" in run["error"] and dead in run["error"], run["error"]
    assert run["current_step"] == 0, "no step may be recorded with made-up rewards"


@pytest.mark.parametrize(("change", "field"), [
    ({"group_size": 1}, "config.group_size"),
    ({"epsilon_low": 0.3, "epsilon_high": 0.2}, "config"),
    ({"loss_type": "ppo"}, "config.loss_type"),
    ({"surprise": True}, "config.surprise"),
])
def test_bad_config_is_a_422_naming_the_field(trainer_client: httpx.Client, live_server: LiveServer,
                                              tmp_path: Path, change: dict[str, Any], field: str) -> None:
    response = trainer_client.post(RUNS, json={"config": run_config(tmp_path, live_server.url, **change)})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"].startswith(field), response.json()
    assert trainer_client.get(RUNS).json() == []


def test_runs_of_another_project_are_not_found(trainer_client: httpx.Client, live_server: LiveServer,
                                               tmp_path: Path) -> None:
    run_id = trainer_client.post(RUNS, json={"config": run_config(tmp_path, live_server.url, max_steps=1)}).json()["id"]
    stranger = httpx.Client(base_url=live_server.url, headers=bearer(live_server.tenant.keys["admin_b"]), timeout=30)
    assert stranger.get(f"{RUNS}/{run_id}").status_code == 404
    assert stranger.post(f"{RUNS}/{run_id}/cancel").status_code == 404
    annotator = httpx.Client(base_url=live_server.url, headers=bearer(live_server.tenant.keys["annotator"]))
    assert annotator.get(RUNS).status_code == 403
    wait_for(trainer_client, run_id, lambda r: r["status"] in ("succeeded", "failed"))


def test_prometheus_exports_the_metrics_of_running_runs(live_server: LiveServer) -> None:
    from services.common.db import session_scope
    from services.trainer.models import RunStatus, TrainingRun

    with session_scope() as session:
        run = TrainingRun(project_id=live_server.tenant.project_a, config={}, output_dir="/tmp/x", max_steps=5,
                          status=RunStatus.running, last_metrics={"reward_mean": 0.625, "step": 3, "note": "x"})
        session.add(run)
        session.flush()
        run_id = run.id
    text = httpx.get(f"{live_server.url}/metrics").text
    assert f'rewardhub_trainer_reward_mean{{run_id="{run_id}"}} 0.625' in text


def test_a_deepspeed_run_is_one_rank_in_its_worker(trainer_client: httpx.Client, live_server: LiveServer,
                                                   tmp_path: Path) -> None:
    pytest.importorskip("deepspeed", reason="DeepSpeed is not installed (dev extra)")
    config = run_config(tmp_path, live_server.url, max_steps=2, deepspeed={"zero_stage": 2})
    created = trainer_client.post(RUNS, json={"name": "zero2", "config": config})
    assert created.status_code == 201, created.text
    run = wait_for(trainer_client, created.json()["id"], lambda r: r["status"] in ("succeeded", "failed"))
    assert run["status"] == "succeeded", run
    final = Path(run["checkpoint"])
    assert json.loads((final / "state.json").read_text())["world_size"] == 1  # a DeepSpeed checkpoint
    assert (final / "rng-rank0.pt").exists() and (final / "model.pt").exists()
