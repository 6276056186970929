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

from tests.conftest import SQLITE_ONLY, LiveServer, bearer, require_module
from trainer import checkpoint
from trainer.grpo import CHECKPOINTS, METRICS_FILE

pytestmark = pytest.mark.slow
TRAINER = "/services/trainer"
RUNS = f"{TRAINER}/v1/runs"
DIGITS = "\n".join(json.dumps({"prompt": f"Say 7. ({i})", "reward_model": {"ground_truth": "7"}})
                   for i in range(8)) + "\n"


def datasets_url(project_id: str) -> str:
    return f"{TRAINER}/v1/projects/{project_id}/datasets"


def upload(client: httpx.Client, project_id: str, name: str = "digits", body: str = DIGITS) -> httpx.Response:
    return client.post(datasets_url(project_id), params={"name": name}, content=body.encode(),
                       headers={"Content-Type": "application/jsonl"})


def run_config(url: str | None = None, **overrides: Any) -> dict[str, Any]:
    """A tiny run on the project's uploaded ``digits`` dataset; no url: the platform's own gateway."""
    reward: dict[str, Any] = {"spec": {"type": "regex", "pattern": r"\d"}, "max_retries": 1, "timeout_s": 10}
    if url is not None:
        reward["url"] = url
    config: dict[str, Any] = {
        "model": {"tiny": {"seed": 0}}, "dataset": "digits", "reward": reward,
        "group_size": 4, "prompts_per_step": 2, "max_steps": 3, "learning_rate": 3e-3,
        "max_completion_length": 4, "seed": 0,
    }
    config.update(overrides)
    return config


def wait_for(client: httpx.Client, run_id: str, done: Any, limit_s: float = 120) -> dict[str, Any]:
    """Poll the run until ``done(run)`` holds (a state to reach, not a duration to wait)."""
    deadline = time.monotonic() + limit_s
    while True:
        run: dict[str, Any] = client.get(f"{RUNS}/{run_id}").json()
        if done(run):
            return run
        if time.monotonic() > deadline:
            raise AssertionError(f"run never reached the expected state: {run}")
        time.sleep(0.2)


def finished(run: dict[str, Any]) -> bool:
    return run["status"] in ("succeeded", "failed", "cancelled")


def set_env(monkeypatch: pytest.MonkeyPatch, **values: str) -> None:
    """Change settings for this process (the service) and for the workers it spawns (they inherit it)."""
    from services.common.settings import reset_settings_cache

    for name, value in values.items():
        monkeypatch.setenv(name, value)
    reset_settings_cache()


def minted_key_row(run_id: str) -> Any:
    from services.common.db import session_scope
    from services.common.models import ApiKey
    from services.trainer.models import TrainingRun

    with session_scope() as session:
        run = session.get_one(TrainingRun, run_id)
        key = session.get_one(ApiKey, run.api_key_id)
        session.expunge(key)
        return key


@pytest.fixture
def trainer_client(live_server: LiveServer, monkeypatch: pytest.MonkeyPatch) -> httpx.Client:
    """Project A's trainer key, with project A's ``digits`` dataset uploaded.

    The live server is the platform's gateway, so workers score over HTTP as in production.
    """
    set_env(monkeypatch, REWARDHUB_GATEWAY_URL=live_server.url)
    client = httpx.Client(base_url=live_server.url, headers=bearer(live_server.tenant.keys["trainer"]), timeout=30)
    assert upload(client, live_server.tenant.project_a).status_code == 201
    return client


def test_a_run_trains_in_its_own_process_and_reports_metrics(trainer_client: httpx.Client, live_server: LiveServer,
                                                             isolated_env: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # No reward.url and no REWARDHUB_GATEWAY_URL (the embedded default): the worker scores in-process.
    monkeypatch.delenv("REWARDHUB_GATEWAY_URL")
    set_env(monkeypatch)
    created = trainer_client.post(RUNS, json={"name": "digits", "config": run_config()})
    assert created.status_code == 201, created.text
    run = wait_for(trainer_client, created.json()["id"], lambda r: r["status"] in ("succeeded", "failed"))
    assert run["status"] == "succeeded", run
    area = isolated_env / "data" / "projects" / live_server.tenant.project_a
    assert Path(run["output_dir"]) == area / "runs" / run["id"], "the service chooses the run's folder"
    assert run["config"]["dataset"] == "digits" and run["config"]["output_dir"] is None
    assert "api_key_env" not in run["config"]["reward"]
    assert run["current_step"] == 3 and run["checkpoint"]
    for key in ("reward_mean", "reward_std", "non_ok_share", "loss", "clip_fraction", "entropy", "tokens_per_s",
                "step_time_s"):
        assert key in run["last_metrics"], key
    metrics = trainer_client.get(f"{RUNS}/{run['id']}/metrics").json()
    assert [s["step"] for s in metrics["data"]] == [1, 2, 3] and metrics["next_cursor"] is None
    first = trainer_client.get(f"{RUNS}/{run['id']}/metrics", params={"limit": 2}).json()
    rest = trainer_client.get(f"{RUNS}/{run['id']}/metrics", params={"cursor": first["next_cursor"]}).json()
    assert [s["step"] for s in first["data"]] == [1, 2] and [s["step"] for s in rest["data"]] == [3]
    legacy = trainer_client.get(f"{RUNS}/{run['id']}/metrics", params={"after_step": 1})
    assert legacy.headers["Deprecation"] == "true", "after_step still works for one release, marked deprecated"
    assert [s["step"] for s in legacy.json()["data"]] == [2, 3]
    logged = (Path(run["output_dir"]) / METRICS_FILE).read_text().splitlines()
    assert [json.loads(line)["step"] for line in logged] == [1, 2, 3]
    assert checkpoint.latest(Path(run["output_dir"]) / CHECKPOINTS) is not None
    listed = trainer_client.get(RUNS).json()
    assert [r["id"] for r in listed["data"]] == [run["id"]] and listed["next_cursor"] is None


def test_cancel_leaves_a_checkpoint_and_resume_continues(trainer_client: httpx.Client) -> None:
    config = run_config(max_steps=10_000)
    created = trainer_client.post(RUNS, json={"config": config}, headers={"Idempotency-Key": "long-run"})
    run_id = created.json()["id"]
    retried = trainer_client.post(RUNS, json={"config": config}, headers={"Idempotency-Key": "long-run"})
    assert retried.status_code == 201 and retried.headers["Idempotent-Replayed"] == "true"
    assert retried.json()["id"] == run_id, "a retried start with the same key never starts a second run"
    first_key = minted_key_row(run_id)
    wait_for(trainer_client, run_id, lambda r: r["current_step"] >= 2)
    assert trainer_client.post(f"{RUNS}/{run_id}/cancel").status_code == 202
    cancelled = wait_for(trainer_client, run_id, lambda r: r["status"] == "cancelled")
    saved = checkpoint.latest(Path(cancelled["output_dir"]) / CHECKPOINTS)
    assert saved is not None and cancelled["checkpoint"] == str(saved)
    assert json.loads((saved / "state.json").read_text())["step"] == cancelled["current_step"]
    assert trainer_client.post(f"{RUNS}/{run_id}/cancel").status_code == 409  # already over

    assert minted_key_row(run_id).id == first_key.id and minted_key_row(run_id).revoked_at is not None

    resumed = trainer_client.post(f"{RUNS}/{run_id}/resume")
    assert resumed.status_code == 202, resumed.text
    second_key = minted_key_row(run_id)
    assert second_key.id != first_key.id, "a resumed run gets a fresh key; the first one stays revoked"
    wait_for(trainer_client, run_id, lambda r: r["current_step"] > cancelled["current_step"])
    trainer_client.post(f"{RUNS}/{run_id}/cancel")
    final = wait_for(trainer_client, run_id, lambda r: r["status"] == "cancelled")
    steps = [s["step"] for s in trainer_client.get(f"{RUNS}/{run_id}/metrics").json()["data"]]
    assert steps == list(range(1, final["current_step"] + 1)), "a resumed run continues, it does not restart"
    assert minted_key_row(run_id).revoked_at is not None


def test_reward_outage_fails_the_run_with_the_cause(trainer_client: httpx.Client,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    set_env(monkeypatch, REWARDHUB_TRAINER_REWARD_URL_ALLOWLIST=dead)
    run_id = trainer_client.post(RUNS, json={"config": run_config(dead)}).json()["id"]
    run = wait_for(trainer_client, run_id, lambda r: r["status"] in ("succeeded", "failed"))
    assert run["status"] == "failed"
    assert "RewardServiceUnavailable" in run["error"] and dead in run["error"], run["error"]
    assert run["current_step"] == 0, "no step may be recorded with made-up rewards"


@pytest.mark.parametrize(("change", "field"), [
    ({"group_size": 1}, "config.group_size"),
    ({"epsilon_low": 0.3, "epsilon_high": 0.2}, "config"),
    ({"loss_type": "ppo"}, "config.loss_type"),
    ({"surprise": True}, "config.surprise"),
    ({"output_dir": "runs/mine"}, "config.output_dir"),
    ({"reward": None}, "config.reward"),
    ({"model": {"path": "/etc"}}, "config.model.path"),
    ({"deepspeed": {"overrides": {"tensorboard": {"enabled": True, "output_path": "/tmp/x"}}}},
     "config.deepspeed.overrides.tensorboard"),
])
@SQLITE_ONLY
def test_bad_config_is_a_422_naming_the_field(trainer_client: httpx.Client, change: dict[str, Any],
                                              field: str) -> None:
    response = trainer_client.post(RUNS, json={"config": run_config(**change)})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"].startswith(field), response.json()
    assert trainer_client.get(RUNS).json()["data"] == []


@pytest.mark.parametrize("secret", ["api_key_env", "api_key", "token_env", "headers"])
@SQLITE_ONLY
def test_a_field_naming_an_env_var_or_secret_is_a_422(trainer_client: httpx.Client, secret: str) -> None:
    config = run_config()
    config["reward"][secret] = "REWARDHUB_SECRET_KEY"
    response = trainer_client.post(RUNS, json={"config": config})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["field"] == f"config.reward.{secret}", error
    assert "minted" in error["message"], error
    assert trainer_client.get(RUNS).json()["data"] == []


def test_runs_of_another_project_are_not_found(trainer_client: httpx.Client, live_server: LiveServer) -> None:
    run_id = trainer_client.post(RUNS, json={"config": run_config(max_steps=1)}).json()["id"]
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


def test_a_deepspeed_run_is_one_rank_in_its_worker(trainer_client: httpx.Client) -> None:
    require_module("deepspeed", "DeepSpeed (dev extra)")
    config = run_config(max_steps=2, deepspeed={"zero_stage": 2})
    created = trainer_client.post(RUNS, json={"name": "zero2", "config": config})
    assert created.status_code == 201, created.text
    run = wait_for(trainer_client, created.json()["id"], lambda r: r["status"] in ("succeeded", "failed"))
    assert run["status"] == "succeeded", run
    final = Path(run["checkpoint"])
    assert json.loads((final / "state.json").read_text())["world_size"] == 1  # a DeepSpeed checkpoint
    assert (final / "rng-rank0.pt").exists() and (final / "model.pt").exists()


class RecordingProxy:
    """An allowlisted reward URL that forwards to the live server and keeps the Authorization it saw.

    The minted key is never shown by the API or stored in clear, so this is how a test gets hold of it:
    the way any reward endpoint would.
    """

    def __init__(self, upstream: str) -> None:
        import http.server
        import threading

        self.upstream = upstream
        self.authorizations: list[str] = []
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                proxy.authorizations.append(self.headers.get("Authorization", ""))
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                answer = httpx.post(proxy.upstream + self.path, content=body, headers=headers, timeout=30)
                self.send_response(answer.status_code)
                self.send_header("Content-Type", answer.headers.get("content-type", "application/json"))
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            def log_message(self, *_: Any) -> None:
                return None

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def key(self) -> str:
        scheme, _, token = self.authorizations[-1].partition(" ")
        assert scheme == "Bearer" and token, self.authorizations
        return token

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def proxy(live_server: LiveServer, monkeypatch: pytest.MonkeyPatch) -> Any:
    recording = RecordingProxy(live_server.url)
    set_env(monkeypatch, REWARDHUB_TRAINER_REWARD_URL_ALLOWLIST=recording.url)
    yield recording
    recording.close()


def test_a_run_gets_a_key_minted_for_its_project_and_revoked_when_it_ends(
        trainer_client: httpx.Client, live_server: LiveServer, proxy: RecordingProxy,
        capfd: pytest.CaptureFixture[str]) -> None:
    from sqlalchemy import text

    from services.common.db import session_scope

    tenant = live_server.tenant
    run_id = trainer_client.post(RUNS, json={"name": "minted", "config": run_config(proxy.url, max_steps=10_000)}
                                 ).json()["id"]
    wait_for(trainer_client, run_id, lambda r: r["current_step"] >= 1 or finished(r))
    key = proxy.key()
    assert key not in tenant.keys.values(), "the run authenticates with its own key, not its starter's"

    row = minted_key_row(run_id)
    assert row.role.value == "trainer" and not row.all_projects and row.revoked_at is None
    assert [p.id for p in row.projects] == [tenant.project_a]
    assert run_id in row.name and "minted" in row.name
    with httpx.Client(base_url=live_server.url, headers=bearer(key), timeout=30) as minted:
        me = minted.get("/v1/me").json()
        assert me["role"] == "trainer" and me["project_ids"] == [tenant.project_a] and not me["all_projects"]
        assert minted.get(f"/v1/projects/{tenant.project_a}").status_code == 200
        assert minted.get(f"/v1/projects/{tenant.project_b}").status_code == 404
        assert minted.get(datasets_url(tenant.project_b)).status_code == 404
        assert minted.post(f"/v1/projects/{tenant.project_a}/keys", json={"role": "admin"}).status_code == 403

        # Only its id is kept: not the clear key, not in the stored config, not in the API's answers.
        assert key not in trainer_client.get(f"{RUNS}/{run_id}").text
        with session_scope() as session:
            stored = session.execute(text("SELECT * FROM training_runs WHERE id = :id"), {"id": run_id}).one()
        assert key not in json.dumps([str(value) for value in stored])

        assert trainer_client.post(f"{RUNS}/{run_id}/cancel").status_code == 202
        wait_for(trainer_client, run_id, finished)
        assert minted_key_row(run_id).revoked_at is not None
        assert minted.get("/v1/me").status_code == 401
        assert minted.get(f"{RUNS}/{run_id}").status_code == 401
    captured = capfd.readouterr()
    assert key not in captured.out + captured.err, "the minted key must never reach a log line"


@pytest.mark.parametrize("url", [
    "http://rewards.example.com",            # nobody allowlisted it
    "http://127.0.0.1:1",                    # not the platform's gateway (another port)
    "http://user:pw@rewards.example.com",    # credentials in the URL
    "file:///etc/passwd",
])
@SQLITE_ONLY
def test_a_reward_url_off_the_allowlist_is_a_422(trainer_client: httpx.Client, url: str) -> None:
    response = trainer_client.post(RUNS, json={"config": run_config(url)})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == "config.reward.url", response.json()
    assert trainer_client.get(RUNS).json()["data"] == []


def test_the_platform_gateway_and_allowlisted_prefixes_are_accepted(
        trainer_client: httpx.Client, live_server: LiveServer, monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(monkeypatch, REWARDHUB_TRAINER_REWARD_URL_ALLOWLIST="https://rm.example.com/v1, rm2.example.com:8443")
    assert trainer_client.post(RUNS, json={"config": run_config("https://rm.example.com/v10")}).status_code == 422
    assert trainer_client.post(RUNS, json={"config": run_config("https://rm2.example.com")}).status_code == 422
    created = trainer_client.post(RUNS, json={"config": run_config(live_server.url, max_steps=1)})
    assert created.status_code == 201, created.text
    run = wait_for(trainer_client, created.json()["id"], finished)
    assert run["status"] == "succeeded", run  # over HTTP to the platform's gateway


def test_project_b_cannot_read_project_a_dataset_or_write_into_its_area(
        trainer_client: httpx.Client, live_server: LiveServer, isolated_env: Path) -> None:
    tenant = live_server.tenant
    projects = isolated_env / "data" / "projects"
    a_file = projects / tenant.project_a / "datasets" / "digits.jsonl"
    assert a_file.is_file()
    b = httpx.Client(base_url=live_server.url, headers=bearer(tenant.keys["admin_b"]), timeout=30)
    assert upload(b, tenant.project_b, "own").status_code == 201
    (projects / tenant.project_b / "datasets" / "link.jsonl").symlink_to(a_file)
    for dataset in ["digits", "digits.jsonl", str(a_file), f"../../{tenant.project_a}/datasets/digits.jsonl",
                    "link.jsonl", "link"]:
        response = b.post(RUNS, json={"project_id": tenant.project_b, "config": run_config(dataset=dataset)})
        assert response.status_code == 422, (dataset, response.text)
        assert response.json()["error"]["field"] == "config.dataset", (dataset, response.json())
    a_run = str(projects / tenant.project_a / "runs" / "x")
    response = b.post(RUNS, json={"project_id": tenant.project_b, "config": run_config(dataset="own",
                                                                                        output_dir=a_run)})
    assert response.status_code == 422 and response.json()["error"]["field"] == "config.output_dir"
    assert b.get(datasets_url(tenant.project_a)).status_code == 404
    assert upload(b, tenant.project_a, "planted").status_code == 404
    assert b.post(RUNS, json={"project_id": tenant.project_a, "config": run_config()}).status_code == 404
    assert b.get(RUNS).json()["data"] == []
    assert sorted(p.name for p in (projects / tenant.project_a / "datasets").iterdir()) == ["digits.jsonl"]


@pytest.mark.parametrize("dataset", [
    "/etc/passwd", "../digits.jsonl", "datasets/../../x/datasets/digits.jsonl", "sub/../../digits.jsonl",
    "..", "", "digits.jsonl\x00.txt", "..\\\\digits.jsonl", "missing", "digits.csv",
])
@SQLITE_ONLY
def test_dataset_paths_that_leave_the_area_are_refused(trainer_client: httpx.Client, dataset: str) -> None:
    response = trainer_client.post(RUNS, json={"config": run_config(dataset=dataset)})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["field"] == "config.dataset", response.json()


def test_a_dataset_named_by_relative_path_inside_the_area_runs(trainer_client: httpx.Client) -> None:
    for dataset in ("digits.jsonl", "datasets/digits.jsonl"):
        created = trainer_client.post(RUNS, json={"config": run_config(dataset=dataset, max_steps=1)})
        assert created.status_code == 201, created.text
        trainer_client.post(f"{RUNS}/{created.json()['id']}/cancel")
        assert wait_for(trainer_client, created.json()["id"], finished)["status"] in ("succeeded", "cancelled")


def test_dataset_upload_is_checked_idempotent_and_listed_in_pages(trainer_client: httpx.Client,
                                                                  live_server: LiveServer) -> None:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    project = live_server.tenant.project_a
    again = upload(trainer_client, project)
    assert again.status_code == 200 and again.json()["rows"] == 8, "same bytes, same name: the stored dataset"
    changed = upload(trainer_client, project, body=DIGITS.replace("Say", "Write"))
    assert changed.status_code == 409 and changed.json()["error"]["field"] == "name"
    bad = upload(trainer_client, project, "bad", body='{"prompt": "x"}\n')
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "body"
    assert "reward_model.ground_truth" in bad.json()["error"]["message"]
    for name in ("../evil", "a/b", ".hidden", ""):
        assert upload(trainer_client, project, name).status_code == 422, name

    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist([{"prompt": "Say 7.", "reward_model": {"ground_truth": "7"}}]), buffer)
    multipart = trainer_client.post(datasets_url(project), params={"name": "tiny.parquet"},
                                    files={"file": ("tiny.parquet", buffer.getvalue(), "application/octet-stream")})
    assert multipart.status_code == 201, multipart.text
    assert multipart.json()["name"] == "tiny" and multipart.json()["format"] == "parquet"

    first = trainer_client.get(datasets_url(project), params={"limit": 1}).json()
    assert [d["name"] for d in first["data"]] == ["digits"] and first["next_cursor"] is not None
    second = trainer_client.get(datasets_url(project), params={"limit": 1, "cursor": first["next_cursor"]}).json()
    assert [d["name"] for d in second["data"]] == ["tiny"] and second["next_cursor"] is None
    assert trainer_client.get(datasets_url(project), params={"limit": 501}).status_code == 422
    forged = trainer_client.get(datasets_url(project), params={"cursor": "digits"})
    assert forged.status_code == 422 and forged.json()["error"]["field"] == "cursor"
    annotator = httpx.Client(base_url=live_server.url, headers=bearer(live_server.tenant.keys["annotator"]))
    assert annotator.get(datasets_url(project)).status_code == 403
