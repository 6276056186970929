"""An evaluation job's worker is SIGKILLed mid-job; the resumed attempt redoes no finished item.

Real processes: the live server launches the job's worker process; the test sends it SIGKILL while a
test double holds the job's next request open (so the kill lands mid-job by construction, not by
timing). With REWARDHUB_TRAINER_RESUME_DEAD_RUNS the service that launched the worker requeues the job
and launches a new attempt, which reads the per-item results on file and asks only for the rest.
Counted at the far end: CountingRewardProxy (a TEST DOUBLE in front of the live server's /v1/rewards)
counts graded items per prompt; VisionServerTestDouble counts VLM requests per record.
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.common.db import session_scope
from services.trainer.models import EvaluationJob
from tests.conftest import LiveServer
from tests.integration.test_evaluation_jobs import (
    DINING_ANSWERS,
    EVALS,
    VisionServerTestDouble,
    area,
    ended,
    make_dining_bench,
    model_config,
    tiny_model,
    wait_job,
)
from tests.integration.test_trainer_service import set_env
from tests.reliability.conftest import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.reliability, pytest.mark.timeout(240)]


class CountingRewardProxy:
    """TEST DOUBLE: forwards /v1/rewards to the live server, counting graded items per prompt text.

    After ``hold_after`` requests it holds every later one until :meth:`release` (the worker is killed
    while it waits)."""

    def __init__(self, upstream: str, hold_after: int) -> None:
        self.items: Counter[str] = Counter()
        self.requests = 0
        self.hold_after = hold_after
        self.held = threading.Event()
        self.released = threading.Event()
        self._lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with proxy._lock:
                    proxy.requests += 1
                    hold = proxy.requests > proxy.hold_after
                    for item in json.loads(body).get("items", []):
                        proxy.items[str(item.get("prompt"))] += 1
                if hold:
                    proxy.held.set()
                    proxy.released.wait(60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                answer = httpx.post(upstream + self.path, content=body, headers=headers, timeout=30)
                try:
                    self.send_response(answer.status_code)
                    self.send_header("Content-Type", answer.headers.get("content-type", "application/json"))
                    self.send_header("Content-Length", str(len(answer.content)))
                    self.end_headers()
                    self.wfile.write(answer.content)
                except OSError:
                    pass  # the worker that asked was killed

            def log_message(self, *_: Any) -> None:
                return None

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()


def worker_pid(job_id: str) -> int:
    with session_scope() as session:
        pid = session.get_one(EvaluationJob, job_id).worker_pid
    assert pid is not None
    return pid


def kill_worker(job_id: str) -> None:
    pid = worker_pid(job_id)
    assert b"services.trainer.eval_worker" in Path(f"/proc/{pid}/cmdline").read_bytes()
    os.kill(pid, signal.SIGKILL)


@pytest.fixture
def client(live_server: LiveServer, monkeypatch: pytest.MonkeyPatch) -> httpx.Client:
    from tests.conftest import bearer
    from tests.integration.test_trainer_service import upload

    set_env(monkeypatch, REWARDHUB_GATEWAY_URL=live_server.url, REWARDHUB_TRAINER_RESUME_DEAD_RUNS="true")
    made = httpx.Client(base_url=live_server.url, headers=bearer(live_server.tenant.keys["trainer"]), timeout=30)
    assert upload(made, live_server.tenant.project_a).status_code == 201
    return made


def test_a_killed_model_evaluation_resumes_without_regrading_finished_prompts(
        client: httpx.Client, live_server: LiveServer, isolated_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    proxy = CountingRewardProxy(live_server.url, hold_after=2)
    set_env(monkeypatch, REWARDHUB_TRAINER_REWARD_URL_ALLOWLIST=proxy.url)
    try:
        tiny_model(isolated_env, live_server.tenant.project_a)
        reward = {"spec": {"type": "regex", "pattern": r"\d"}, "url": proxy.url, "max_retries": 0, "timeout_s": 60}
        created = client.post(EVALS, json={"kind": "model", "config": model_config(reward=reward)})
        assert created.status_code == 201, created.text
        job_id = created.json()["id"]
        # Batches 1 and 2 (prompts 0-3) graded and on file; batch 3's request is held open.
        assert proxy.held.wait(120), "the job never reached its third batch"
        wait_job(client, job_id, lambda j: j["progress"]["done"] == 4)
        kill_worker(job_id)
        wait_for(lambda: client.get(f"{EVALS}/{job_id}").json()["attempt"] == 2, 60, "the job to be resumed")
        proxy.released.set()
        job = wait_job(client, job_id, ended)
    finally:
        proxy.close()
    assert job["status"] == "succeeded" and job["auto_resumes"] == 1, job
    assert job["progress"] == {"stage": "done", "done": 8, "total": 8, "resumed": 4, "fraction": 1.0}
    graded = {int(prompt.rsplit("(", 1)[1].rstrip(")")): n for prompt, n in proxy.items.items()}
    print(f"\nitems graded per prompt: {dict(sorted(graded.items()))}")
    assert graded == {0: 2, 1: 2, 2: 2, 3: 2, 4: 4, 5: 4, 6: 2, 7: 2}, \
        "finished prompts are never graded again; only the batch in flight at the kill is redone"
    lines = (Path(job["output_dir"]) / "samples.jsonl").read_text().splitlines()
    assert len(lines) == 16 and job["metrics"]["resumed_prompts"] == 4


def test_a_killed_dining_evaluation_asks_no_finished_record_again(
        client: httpx.Client, live_server: LiveServer, isolated_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    vlm = VisionServerTestDouble(DINING_ANSWERS, hold_after=2)
    set_env(monkeypatch, REWARDHUB_LLM_BASE_URL=vlm.url, REWARDHUB_LLM_MODEL="vlm-test-double")
    try:
        records = make_dining_bench(area(isolated_env, live_server.tenant.project_a))
        created = client.post(EVALS, json={"kind": "dining", "config": {"records": records, "concurrency": 1,
                                                                          "max_retries": 0, "timeout_s": 60}})
        assert created.status_code == 201, created.text
        job_id = created.json()["id"]
        assert vlm.held.wait(120), "the job never asked for its third record"
        wait_job(client, job_id, lambda j: j["progress"]["done"] == 2)
        kill_worker(job_id)
        wait_for(lambda: client.get(f"{EVALS}/{job_id}").json()["attempt"] == 2, 60, "the job to be resumed")
        vlm.release()
        job = wait_job(client, job_id, ended)
    finally:
        vlm.close()
    assert job["status"] == "succeeded" and job["progress"]["resumed"] == 2, job
    print(f"\nVLM requests per record: {dict(vlm.requests)}")
    assert vlm.requests == Counter({"c1": 1, "c2": 1, "c3": 2, "n1": 1}), \
        "finished records are never asked again; only the one in flight at the kill is"
    assert job["metrics"]["counts"]["ok"] == 4 and job["metrics"]["run"]["resumed_records"] == 2


def test_the_watchers_end_an_evaluation_whose_heartbeat_went_stale(database: str, isolated_env: Path) -> None:
    """The run watchers sweep evaluation jobs too: a running job whose worker stopped beating is failed
    with the cause and the resume route, in one compare-and-set (a second sweep finds nothing)."""
    from datetime import timedelta

    from services.common.db import utcnow
    from services.trainer import supervisor
    from services.trainer.models import RunStatus
    from tests.conftest import make_tenant

    tenant = make_tenant()
    with session_scope() as session:
        job = EvaluationJob(project_id=tenant.project_a, kind="model", config={}, output_dir="/nowhere", attempt=1,
                            status=RunStatus.running, supervisor="elsewhere:1", worker_pid=4242, worker_host="h",
                            heartbeat_at=utcnow() - timedelta(hours=1))
        session.add(job)
        session.flush()
        job_id = job.id
    assert supervisor.watch_once() == {"failed": 1, "cancelled": 0, "resumed": 0, "launched": 0}
    assert supervisor.watch_once() == {"failed": 0, "cancelled": 0, "resumed": 0, "launched": 0}
    with session_scope() as session:
        ended_job = session.get_one(EvaluationJob, job_id)
        assert ended_job.status is RunStatus.failed and ended_job.heartbeat_at is None
        assert "the evaluation's worker stopped heartbeating" in (ended_job.error or "")
        assert f"POST /v1/evaluations/{job_id}/resume" in (ended_job.error or "")


def test_a_killed_sts_evaluation_keeps_the_sae_it_trained(client: httpx.Client, live_server: LiveServer,
                                                          isolated_env: Path) -> None:
    """SIGKILL once the SAE is on file (the stage moved on to the shift, which runs one example at a time
    so that it lasts seconds); the resumed attempt loads that SAE instead of training another."""
    from tests.integration.test_evaluation_jobs import require_sae_lens, write_sts_texts

    require_sae_lens()
    folder = area(isolated_env, live_server.tenant.project_a)
    tiny_model(isolated_env, live_server.tenant.project_a)
    write_sts_texts(folder, tuning=120)
    config = {"model": "models/tiny", "layer": 0, "fine_tuning": "sts/tune.jsonl",
              "targets": {"add": "sts/add.jsonl", "say": "sts/say.jsonl"}, "top_k": 4, "d_sae": 16,
              "sae_epochs": 1, "batch_size": 1, "max_examples": 120}
    created = client.post(EVALS, json={"kind": "sts", "config": config})
    assert created.status_code == 201, created.text
    job_id = created.json()["id"]

    def sae_on_file() -> bool:
        with session_scope() as session:
            job = session.get_one(EvaluationJob, job_id)
            assert job.status.value in ("queued", "running"), f"the job ended before the kill: {job.error}"
            return job.stage in ("shift", "scores")

    wait_for(sae_on_file, 120, "the SAE stage to finish", interval_s=0.02)
    sae_cfg = Path(created.json()["output_dir"]) / "sae" / "cfg.json"
    trained_at = sae_cfg.stat().st_mtime_ns
    kill_worker(job_id)
    job = wait_job(client, job_id, ended, limit_s=180)
    assert job["status"] == "succeeded" and job["attempt"] == 2 and job["auto_resumes"] == 1, job
    assert job["metrics"]["resumed_stages"][0] == "sae", job["metrics"]
    assert sae_cfg.stat().st_mtime_ns == trained_at, "the SAE on file was loaded, not trained again"
    print(f"\nresumed stages: {job['metrics']['resumed_stages']}")
