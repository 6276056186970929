"""Rubric jobs resume, not restart: a Redis outage under a busy worker, a SIGKILLed worker, a POST
while Redis is down, and a submission that was lost. Each test prints its figures."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from services.common.auth import Principal
from services.common.db import session_scope
from services.common.models import Role
from services.common.tasks import make_celery
from services.rubric_rm import jobs
from services.rubric_rm.models import JobState, RubricJob
from services.rubric_rm.schemas import JobRequest
from tests.conftest import Tenant, bearer
from tests.reliability.conftest import (
    CountingJudge,
    Processes,
    RedisServer,
    figures,
    free_port,
    job_items,
    wait_for,
)

pytestmark = [pytest.mark.slow, pytest.mark.reliability, pytest.mark.postgres, pytest.mark.timeout(120)]


def _job(job_id: str) -> RubricJob:
    with session_scope() as session:
        job = session.get(RubricJob, job_id)
        assert job is not None
        session.expunge(job)
        return job


def _wait_job(job_id: str, condition: Any, timeout_s: float, what: str) -> RubricJob:
    """Poll the job row until ``condition(job)`` holds; returns that row."""
    found: list[RubricJob] = []

    def check() -> bool:
        job = _job(job_id)
        if condition(job):
            found.append(job)
            return True
        return False

    wait_for(check, timeout_s, what)
    return found[-1]


def _finished(job: RubricJob) -> bool:
    return job.state in jobs.TERMINAL


def _create(tenant: Tenant, n: int, concurrency: int, first: int = 0) -> str:
    principal = Principal(key_id="test", role=Role.trainer, all_projects=False,
                          project_ids=frozenset({tenant.project_a}))
    body = JobRequest(kind="judge_pointwise", items=job_items(n, first), max_concurrency=concurrency)
    job = jobs.create_job(principal, body, tenant.project_a)
    assert isinstance(job, RubricJob)
    return job.id


def _submit(redis: RedisServer, job_id: str) -> None:
    app = make_celery(redis.url)
    app.send_task("rubric_rm.run_job", args=[job_id])
    jobs.mark_submitted(job_id)


def _check_results(job: RubricJob, n: int) -> None:
    assert job.state is JobState.succeeded, (job.state, job.error)
    assert job.results is not None and len(job.results) == n
    assert [r["status"] for r in job.results] == ["ok"] * n
    assert [r["rules_passed"] for r in job.results] == [1 if i % 2 == 0 else 0 for i in range(n)]


def _duplicated(judge: CountingJudge) -> int:
    return sum(1 for count in judge.answered.values() if count > 1)


def test_worker_survives_a_redis_outage_while_busy(postgres_tenant: Tenant, own_redis: RedisServer,
                                                   processes: Processes, judge_factory: Any) -> None:
    n = 40
    judge = judge_factory(delay_s=0.6)
    env = processes.env(own_redis, judge.server.base_url)
    worker = processes.worker(env)
    job_id = _create(postgres_tenant, n, concurrency=2)
    _submit(own_redis, job_id)
    wait_for(lambda: _job(job_id).done >= 4, 45, "the job to be running with 4 items done")
    own_redis.stop()
    outage_started = time.monotonic()
    done_at_outage = _job(job_id).done
    time.sleep(12)  # the injected fault: Redis is down for 12 s while the worker is busy
    assert worker.alive(), "the worker exited during the Redis outage:\n" + worker.log()[-4000:]
    own_redis.start()
    restarted = time.monotonic()
    app = make_celery(own_redis.url)
    pong = app.send_task("rewardhub.ping", args=["after-outage"]).get(timeout=45)
    recovery_s = time.monotonic() - restarted
    assert pong["payload"] == "after-outage"
    job = _wait_job(job_id, _finished, 45, "the job to finish")
    _check_results(job, n)
    assert worker.alive() and "Unrecoverable error" not in worker.log()
    assert set(judge.answered) == set(range(n)) and _duplicated(judge) == 0, judge.answered
    assert max(judge.requests.values()) == 1
    figures("redis outage 12 s", jobs=1, items=n, done_at_outage=done_at_outage,
            outage_s=round(restarted - outage_started, 1), lost=n - len(judge.answered),
            duplicated=_duplicated(judge), attempts=job.attempts, worker_survived=worker.alive(),
            max_recovery_s=round(recovery_s, 1))


def test_sigkilled_worker_job_resumes_on_a_new_worker(postgres_tenant: Tenant, own_redis: RedisServer,
                                                      processes: Processes, judge_factory: Any) -> None:
    n, first_part = 40, 15
    judge = judge_factory(delay_s=0.05, hold_after=first_part)
    env = processes.env(own_redis, judge.server.base_url)
    first = processes.worker(env, "worker-a")
    job_id = _create(postgres_tenant, n, concurrency=4)
    _submit(own_redis, job_id)
    wait_for(lambda: _job(job_id).done >= first_part and judge.held > 0, 45,
             f"{first_part} items stored and calls held in flight")
    first.kill()  # the whole worker: kill -9 of its process group
    killed = time.monotonic()
    judge.kill_epoch()  # the calls it left in flight are never answered: their caller is dead
    in_flight = sum(judge.requests.values()) - sum(judge.answered.values())
    stored_before = _job(job_id).done
    judge.release()
    second = processes.worker(env, "worker-b")
    resumed = _wait_job(job_id, lambda j: j.attempts >= 2, 45, "a second attempt to start")
    recovery_s = time.monotonic() - killed
    job = _wait_job(job_id, _finished, 45, "the job to finish")
    _check_results(job, n)
    assert set(judge.answered) == set(range(n)), sorted(set(range(n)) - set(judge.answered))
    assert _duplicated(judge) == 0, {k: v for k, v in judge.answered.items() if v > 1}
    assert resumed.done >= stored_before  # the checkpoints were kept, not redone
    rejudged = sum(1 for count in judge.requests.values() if count > 1)
    assert rejudged <= in_flight  # only calls whose caller died in flight were asked again
    assert second.alive()
    figures("worker SIGKILL mid-job", jobs=1, items=n, stored_before_kill=stored_before,
            in_flight_at_kill=in_flight, rerequested=rejudged, lost=n - len(judge.answered),
            duplicated=_duplicated(judge), attempts=job.attempts, max_recovery_s=round(recovery_s, 1))


def test_post_during_redis_outage_is_503_then_one_job(postgres_tenant: Tenant, own_redis: RedisServer,
                                                      processes: Processes, judge_factory: Any) -> None:
    n = 6
    judge = judge_factory()
    env = processes.env(own_redis, judge.server.base_url)
    port = free_port()
    processes.serve("rubric_rm", port, env)
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: httpx.get(url + "/healthz", timeout=2).status_code == 200, 45, "the rubric_rm service")
    headers = {**bearer(postgres_tenant.keys["trainer"]), "Idempotency-Key": "job-key-1"}
    body = {"kind": "judge_pointwise", "items": job_items(n), "max_concurrency": 2}
    own_redis.stop()
    refused = httpx.post(url + "/v1/jobs", json=body, headers=headers, timeout=30)
    assert refused.status_code == 503, refused.text
    assert int(refused.headers["Retry-After"]) >= 1
    error = refused.json()["error"]
    assert error["code"] == "broker_unavailable" and error["field"] == "broker" and "Redis" in error["message"]
    with session_scope() as session:
        assert session.scalars(select(RubricJob)).all() == []  # nothing was accepted
    own_redis.start()
    restarted = time.monotonic()
    created = httpx.post(url + "/v1/jobs", json=body, headers=headers, timeout=30)
    recovery_s = time.monotonic() - restarted
    assert created.status_code == 202, created.text
    replayed = httpx.post(url + "/v1/jobs", json=body, headers=headers, timeout=30)
    assert replayed.status_code == 202 and replayed.headers.get("Idempotent-Replayed") == "true"
    assert replayed.json()["id"] == created.json()["id"]
    reused = httpx.post(url + "/v1/jobs", json={**body, "max_concurrency": 3}, headers=headers, timeout=30)
    assert reused.status_code == 409
    with session_scope() as session:
        rows = session.scalars(select(RubricJob)).all()
    assert len(rows) == 1 and rows[0].state is JobState.queued and rows[0].submitted_at is not None
    processes.worker(env)
    job = _wait_job(rows[0].id, _finished, 50, "the job to finish")
    _check_results(job, n)
    assert _duplicated(judge) == 0
    figures("POST during outage", jobs=len(rows), items=n, refused_status=refused.status_code,
            retry_after=refused.headers["Retry-After"], lost=n - len(judge.answered), duplicated=_duplicated(judge),
            max_recovery_s=round(recovery_s, 1))


def test_sweeper_submits_jobs_whose_submission_was_lost(postgres_tenant: Tenant, own_redis: RedisServer,
                                                        processes: Processes, judge_factory: Any) -> None:
    n = 5
    judge = judge_factory()
    lost_message = _create(postgres_tenant, n, concurrency=2)   # queued, but the broker lost the message
    never_sent = _create(postgres_tenant, n, concurrency=2, first=100)   # pending_submit: the API died before submitting
    _submit(own_redis, lost_message)
    own_redis.stop()   # a restart without persistence: the queue is gone, the row still says queued
    own_redis.start()
    for job_id in (lost_message, never_sent):
        assert _job(job_id).state in (JobState.queued, JobState.pending_submit)
    assert _job(never_sent).state is JobState.pending_submit
    started = time.monotonic()
    worker = processes.worker(processes.env(own_redis, judge.server.base_url))
    done = [_wait_job(i, _finished, 50, "the sweeper to run the job") for i in (lost_message, never_sent)]
    recovery_s = time.monotonic() - started
    for job in done:
        _check_results(job, n)
    assert "resubmitted" in worker.log()
    assert _duplicated(judge) == 0 and sum(judge.answered.values()) == 2 * n
    figures("lost submission swept", jobs=2, items=2 * n, lost=2 * n - sum(judge.answered.values()),
            duplicated=_duplicated(judge), max_recovery_s=round(recovery_s, 1))
