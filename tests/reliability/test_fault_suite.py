"""The fault suite (issue 10, item 8): the production topology on loopback, crashed and cut off on purpose.

Each service is its own `rewardhub` process (tests/reliability/conftest.py ``FaultTopology``) on a
PostgreSQL cluster and a redis-server this suite starts itself. Every scenario injects one fault
(``kill -9`` of the gateway, the verifier, one grader-pool worker or the Celery worker's pool child; a
Redis or a PostgreSQL restart under load; a streaming client that hangs up), then retries every
interrupted request with its idempotency key and asserts that the retries succeed with identical
results, that nothing was lost and that nothing was stored twice. Each prints one summary line
(``[reliability] …: requests, items, lost, duplicated, max_recovery_s``); run with ``-s`` to see them.

``REWARDHUB_FAULT_SCALE`` (default 1) multiplies the batch sizes and the load; CI keeps the default.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from services.common.db import session_scope
from services.common.idempotency import IdempotencyRecord
from services.gateway.models import RewardResultRecord
from services.rubric_rm.models import RubricJob
from tests.conftest import Tenant, bearer
from tests.reliability.conftest import (
    RUBRIC_TEXT,
    CountingJudge,
    FaultTopology,
    PostgresCluster,
    RedisServer,
    child_pids,
    figures,
    job_items,
    process_state,
    wait_for,
)

pytestmark = [pytest.mark.reliability, pytest.mark.postgres, pytest.mark.redis, pytest.mark.timeout(300)]

SCALE = max(1, int(os.environ.get("REWARDHUB_FAULT_SCALE", "1")))
RECOVERY_DEADLINE_S = 90.0
# A regular expression that backtracks exponentially on a run of "a"s with no "b": each such item keeps a
# grader-pool worker busy for a few tenths of a second (deterministically: it never matches).
BACKTRACKING = r"(a|aa)+b"
SLOW_RUN = 31
RETRYABLE = (502, 503, 504)


# --------------------------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def tenant(fault_database: tuple[str, Tenant]) -> Tenant:
    return fault_database[1]


@pytest.fixture(autouse=True)
def whole_topology(fault_topology: FaultTopology, own_postgres: PostgresCluster, module_redis: RedisServer) -> None:
    """Each scenario starts from a whole topology, even after an earlier one failed half-way through a fault."""
    if not own_postgres.accepts_connections_now():
        own_postgres.start()
    if module_redis.proc is None or module_redis.proc.poll() is not None:
        module_redis.start()
    for name, proc in list(fault_topology.procs.items()):
        if not proc.alive():
            fault_topology.restart(name)


def rubric_batch(prefix: str, first: int, n: int, concurrency: int = 4) -> dict[str, Any]:
    """``n`` items judged by the judge double through verifier -> rubric_rm; even ITEM numbers pass."""
    items = [{"id": f"{prefix}-{first + i}", "prompt": f"Question {first + i}?",
              "completion": f"ITEM-{first + i} answer"} for i in range(n)]
    return {"spec": {"type": "rubric", "rubric": RUBRIC_TEXT, "max_concurrency": concurrency, "timeout_s": 30},
            "items": items, "persist": True}


def exact_batch(prefix: str, n: int) -> dict[str, Any]:
    """``n`` quick items for the grader pool; every third one is wrong."""
    items = [{"id": f"{prefix}-{i}", "completion": f"answer {i}", "ground_truth": f"answer {i if i % 3 else -1}"}
             for i in range(n)]
    return {"spec": {"type": "exact"}, "items": items, "persist": True}


def expected_exact(body: dict[str, Any]) -> list[tuple[str, str, float]]:
    return [(item["id"], "ok", 1.0 if item["completion"] == item["ground_truth"] else 0.0)
            for item in body["items"]]


def outcome(results: list[dict[str, Any]]) -> list[tuple[str, str, float | None]]:
    return [(r["id"], r["status"], r["score"]) for r in results]


def check_rubric_results(body: dict[str, Any], results: list[dict[str, Any]]) -> None:
    """All ok, in request order, even ITEMs scored alike and above the odd ones (the double's verdicts)."""
    assert [r["id"] for r in results] == [item["id"] for item in body["items"]]
    assert [r["status"] for r in results] == ["ok"] * len(results), results
    numbers = [int(item["completion"].split()[0].split("-")[1]) for item in body["items"]]
    even = {r["score"] for r, n in zip(results, numbers, strict=True) if n % 2 == 0}
    odd = {r["score"] for r, n in zip(results, numbers, strict=True) if n % 2 == 1}
    assert len(even) == 1 and len(odd) == 1 and even.pop() > odd.pop(), results


def post_rewards(topology: FaultTopology, tenant: Tenant, body: dict[str, Any], key: str | None,
                 timeout_s: float = 60) -> httpx.Response:
    headers = {**bearer(tenant.keys["trainer"]), **({"Idempotency-Key": key} if key else {})}
    return httpx.post(topology.url("gateway") + "/v1/rewards", json=body, headers=headers, timeout=timeout_s)


def retry_until_done(send: Callable[[], httpx.Response], ok_status: int = 200,
                     deadline_s: float = RECOVERY_DEADLINE_S) -> tuple[httpx.Response, Counter[int]]:
    """Retry ``send`` (the same request, the same key) until it answers ``ok_status``.

    Every answer on the way must be retryable: 409 ``idempotency_in_progress`` (another attempt's lease
    is still live) or a 5xx that says to retry; a connection refused counts as the service restarting.
    Returns the final answer and the statuses seen (0: no connection).
    """
    seen: Counter[int] = Counter()

    def attempt() -> httpx.Response | None:
        try:
            response = send()
        except httpx.TransportError:
            seen[0] += 1
            return None
        seen[response.status_code] += 1
        if response.status_code == ok_status:
            return response
        if response.status_code == 409:
            assert response.json()["error"]["code"] == "idempotency_in_progress", response.text
            assert int(response.headers["Retry-After"]) >= 1
            return None
        assert response.status_code in RETRYABLE, f"not retryable: {response.status_code} {response.text}"
        return None

    final = wait_for(attempt, deadline_s, f"a retry to answer {ok_status}", interval_s=0.25)
    assert final is not None
    return final, seen


def stored_rows(project_id: str, item_ids: list[str]) -> Counter[str]:
    """The persisted reward rows of these items, counted by the request that stored them."""
    with session_scope() as session:
        rows = session.execute(select(RewardResultRecord.request_id, RewardResultRecord.item_id).where(
            RewardResultRecord.project_id == project_id, RewardResultRecord.item_id.in_(item_ids))).all()
    by_item = Counter(item for _request, item in rows)
    assert set(by_item) <= set(item_ids)
    return Counter(request for request, _item in rows)


def check_stored_once(tenant: Tenant, body: dict[str, Any], answer: dict[str, Any]) -> tuple[int, int]:
    """The items' rows were stored exactly once, by the request whose answer the client got.

    Returns (lost, duplicated) item counts.
    """
    ids = [item["id"] for item in body["items"]]
    by_request = stored_rows(tenant.project_a, ids)
    stored = sum(by_request.values())
    assert dict(by_request) == {answer["request_id"]: len(ids)}, (dict(by_request), answer["request_id"])
    return max(0, len(ids) - stored), max(0, stored - len(ids))


def replay_is_identical(send: Callable[[], httpx.Response], first: httpx.Response) -> None:
    again = send()
    assert again.status_code == first.status_code, again.text
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert again.content == first.content


def key_state(project_id: str, endpoint: str, key: str) -> str | None:
    with session_scope() as session:
        record = session.scalar(select(IdempotencyRecord).where(
            IdempotencyRecord.project_id == project_id, IdempotencyRecord.endpoint == endpoint,
            IdempotencyRecord.key == key))
        return None if record is None else record.state


def judged(judge: CountingJudge, first: int, n: int) -> tuple[Counter[int], Counter[int]]:
    """The judge's (requests, answered) counts for the ITEM range [first, first + n)."""
    numbers = range(first, first + n)
    return (Counter({i: judge.requests[i] for i in numbers if judge.requests[i]}),
            Counter({i: judge.answered[i] for i in numbers if judge.answered[i]}))


@dataclass
class InFlight:
    """A request sent from a thread, so that the test can inject a fault while it is under way."""

    send: Callable[[], httpx.Response]
    response: httpx.Response | None = None
    error: BaseException | None = None
    sent_at: float = 0.0
    answered_at: float = 0.0
    _thread: threading.Thread | None = None

    def start(self) -> InFlight:
        def run() -> None:
            self.sent_at = time.monotonic()
            try:
                self.response = self.send()
            except BaseException as exc:  # the failure is the observation
                self.error = exc
            self.answered_at = time.monotonic()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        return self

    def join(self, timeout_s: float) -> InFlight:
        assert self._thread is not None
        self._thread.join(timeout_s)
        assert not self._thread.is_alive(), f"the request did not return within {timeout_s:.0f} s (it hangs)"
        return self


# ------------------------------------------------------------------------------------ kill -9 gateway


def test_gateway_sigkill_mid_batch_then_retry(fault_topology: FaultTopology, tenant: Tenant,
                                              fault_judge: CountingJudge) -> None:
    n, first, key = 12 * SCALE, 1000, "gateway-kill-1"
    body = rubric_batch("gw", first, n)
    fault_judge.delay_s = 0.25
    try:
        inflight = InFlight(lambda: post_rewards(fault_topology, tenant, body, key)).start()
        wait_for(lambda: sum(judged(fault_judge, first, n)[1].values()) >= 2, 60, "the batch to be half-way graded")
        killed = fault_topology.kill("gateway")
        inflight.join(30)
        assert inflight.response is None and isinstance(inflight.error, httpx.TransportError), inflight.response
        assert key_state(tenant.project_a, "rewards", key) == "pending"  # the dead attempt's claim
        restart_s = fault_topology.restart("gateway")
        final, seen = retry_until_done(lambda: post_rewards(fault_topology, tenant, body, key))
        recovery_s = time.monotonic() - killed
    finally:
        fault_judge.delay_s = 0.0
    answer = final.json()
    check_rubric_results(body, answer["results"])
    lost, duplicated = check_stored_once(tenant, body, answer)
    replay_is_identical(lambda: post_rewards(fault_topology, tenant, body, key), final)
    requests, _answered = judged(fault_judge, first, n)
    assert set(requests) == set(range(first, first + n))
    figures("gateway kill -9 mid-batch", requests=1 + sum(seen.values()), items=n, lost=lost, duplicated=duplicated,
            regraded=sum(1 for c in requests.values() if c > 1), retry_statuses=dict(seen),
            gateway_restart_s=round(restart_s, 1), max_recovery_s=round(recovery_s, 1))


# ----------------------------------------------------------------------------------- kill -9 verifier


def test_verifier_sigkill_mid_batch_is_retryable_then_retry(fault_topology: FaultTopology, tenant: Tenant,
                                                            fault_judge: CountingJudge) -> None:
    n, first, key = 12 * SCALE, 2000, "verifier-kill-1"
    body = rubric_batch("vf", first, n)
    fault_judge.delay_s = 0.25
    try:
        inflight = InFlight(lambda: post_rewards(fault_topology, tenant, body, key)).start()
        wait_for(lambda: sum(judged(fault_judge, first, n)[1].values()) >= 2, 60, "the batch to be half-way graded")
        killed = fault_topology.kill("verifier")
        # The gateway must answer, and soon: a retryable 5xx, not a hang and not a 2xx without results.
        inflight.join(45)
    finally:
        fault_judge.delay_s = 0.0
    assert inflight.response is not None, inflight.error
    failed = inflight.response
    answered_s = inflight.answered_at - killed
    assert failed.status_code in RETRYABLE, (failed.status_code, failed.text)
    assert failed.json()["error"]["code"] == "upstream_unavailable"
    assert stored_rows(tenant.project_a, [item["id"] for item in body["items"]]) == Counter()
    restart_s = fault_topology.restart("verifier")
    final, seen = retry_until_done(lambda: post_rewards(fault_topology, tenant, body, key))
    recovery_s = time.monotonic() - killed
    answer = final.json()
    check_rubric_results(body, answer["results"])
    lost, duplicated = check_stored_once(tenant, body, answer)
    replay_is_identical(lambda: post_rewards(fault_topology, tenant, body, key), final)
    figures("verifier kill -9 mid-batch", requests=2 + sum(seen.values()), items=n, lost=lost, duplicated=duplicated,
            first_answer=failed.status_code, answered_after_kill_s=round(answered_s, 1), retry_statuses=dict(seen),
            verifier_restart_s=round(restart_s, 1), max_recovery_s=round(recovery_s, 1))


# ------------------------------------------------------------------------------ kill -9 a pool worker


def pool_workers(topology: FaultTopology) -> list[int]:
    """The verifier's grader-pool workers: the processes its forkserver forked (grandchildren)."""
    return [grandchild for child in child_pids(topology.procs["verifier"].pid) for grandchild in child_pids(child)]


def two_pool_workers(topology: FaultTopology) -> list[int]:
    """The pool's workers once there are two of them (its size), else an empty list."""
    workers = pool_workers(topology)
    return workers if len(workers) == 2 else []


def busy_worker(topology: FaultTopology) -> int | None:
    """A pool worker on a CPU right now, i.e. grading one of the backtracking items."""
    return next((worker for worker in pool_workers(topology) if process_state(worker) == "R"), None)


def test_pool_worker_sigkill_mid_batch(fault_topology: FaultTopology, tenant: Tenant) -> None:
    n, key = 8 * SCALE, "pool-kill-1"
    # Half the items backtrack for a while (score 0), half match at once (score 1).
    items = [{"id": f"pool-{i}", "completion": "a" * SLOW_RUN if i % 2 == 0 else "a" * (i % 5 + 1) + "b"}
             for i in range(n)]
    body = {"spec": {"type": "regex", "pattern": BACKTRACKING, "full_match": True}, "items": items, "persist": True}
    expected = {item["id"]: 0.0 if item["completion"].endswith("a") else 1.0 for item in items}
    warm_up = post_rewards(fault_topology, tenant, {**exact_batch("pool-warm", 2), "persist": False}, None)
    assert warm_up.status_code == 200, warm_up.text  # the pool starts on first use
    workers_before = set(wait_for(lambda: two_pool_workers(fault_topology), 30, "two pool workers"))
    inflight = InFlight(lambda: post_rewards(fault_topology, tenant, body, key)).start()
    victim = wait_for(lambda: busy_worker(fault_topology), 30, "a pool worker busy grading", interval_s=0.02)
    assert victim is not None
    os.kill(victim, signal.SIGKILL)
    killed = time.monotonic()
    replaced = wait_for(lambda: victim not in two_pool_workers(fault_topology) and two_pool_workers(fault_topology),
                        30, "the pool to replace the killed worker")
    replaced_s = time.monotonic() - killed
    inflight.join(60)
    assert replaced and victim in workers_before
    assert inflight.response is not None and inflight.response.status_code == 200, inflight.response or inflight.error
    answer = inflight.response.json()
    results = answer["results"]
    assert [r["id"] for r in results] == [item["id"] for item in items]
    # The item the killed worker was grading has its own status; every other item is graded as usual.
    died = [r for r in results if r["status"] != "ok"]
    assert len(died) <= 1, died
    for r in died:
        assert r["status"] == "error" and "died" in r["details"]["reason"], r
    assert all(r["score"] == expected[r["id"]] for r in results if r["status"] == "ok"), results
    lost, duplicated = check_stored_once(tenant, body, answer)
    replay_is_identical(lambda: post_rewards(fault_topology, tenant, body, key), inflight.response)
    # The item that died with its worker grades normally on the replacement (a new request, a new key).
    regrade = [item for item in items if item["id"] in {r["id"] for r in died}] or items[:1]
    again = post_rewards(fault_topology, tenant, {**body, "items": regrade, "persist": False}, f"{key}-regrade")
    assert again.status_code == 200 and [r["status"] for r in again.json()["results"]] == ["ok"] * len(regrade)
    figures("pool worker kill -9 mid-batch", requests=3, items=n, lost=lost, duplicated=duplicated,
            own_status_items=len(died), killed_pid=victim, max_recovery_s=round(replaced_s, 1))


# ------------------------------------------------------------------- kill -9 the Celery worker's child


def post_job(topology: FaultTopology, tenant: Tenant, body: dict[str, Any], key: str) -> httpx.Response:
    headers = {**bearer(tenant.keys["trainer"]), "Idempotency-Key": key}
    return httpx.post(topology.url("rubric_rm") + "/v1/jobs", json=body, headers=headers, timeout=30)


def get_job(topology: FaultTopology, tenant: Tenant, job_id: str) -> dict[str, Any]:
    response = httpx.get(f"{topology.url('rubric_rm')}/v1/jobs/{job_id}", headers=bearer(tenant.keys["trainer"]),
                         timeout=30)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def job_ids() -> set[str]:
    with session_scope() as session:
        return set(session.scalars(select(RubricJob.id)).all())


def finished_job(topology: FaultTopology, tenant: Tenant, job_id: str) -> dict[str, Any] | None:
    """The job once it succeeded or failed, else None."""
    job = get_job(topology, tenant, job_id)
    return job if job["state"] in ("succeeded", "failed") else None


def check_job_results(job: dict[str, Any], first: int, n: int) -> None:
    assert job["state"] == "succeeded", job
    assert job["done"] == job["total"] == n and len(job["results"]) == n
    assert [r["status"] for r in job["results"]] == ["ok"] * n
    assert [r["rules_passed"] for r in job["results"]] == [1 if (first + i) % 2 == 0 else 0 for i in range(n)]


def test_celery_pool_child_sigkill_mid_job(fault_topology: FaultTopology, tenant: Tenant,
                                           fault_judge: CountingJudge) -> None:
    """test_job_durability.py kills the whole worker (its process group) and submits jobs directly; here the
    job comes in over HTTP with a key, and only the prefork child running it dies: the worker's main
    process must replace the child and the job must resume from its checkpoints, not restart."""
    n, first, key, concurrency = 24 * SCALE, 3000, "celery-child-kill-1", 2
    body = {"kind": "judge_pointwise", "items": job_items(n, first), "max_concurrency": concurrency}
    before = job_ids()
    fault_judge.delay_s = 0.1
    try:
        created = post_job(fault_topology, tenant, body, key)
        assert created.status_code == 202, created.text
        job_id = created.json()["id"]
        wait_for(lambda: get_job(fault_topology, tenant, job_id)["done"] >= n // 4, 60, "a quarter of the job done")
        worker_pid = fault_topology.procs["worker"].pid
        [child] = child_pids(worker_pid)
        done_at_kill = get_job(fault_topology, tenant, job_id)["done"]
        os.kill(child, signal.SIGKILL)
        killed = time.monotonic()
        requested_at_kill = sum(judged(fault_judge, first, n)[0].values())
        job = wait_for(lambda: finished_job(fault_topology, tenant, job_id), RECOVERY_DEADLINE_S,
                       "the job to finish after its worker child died")
        assert job is not None
        recovery_s = time.monotonic() - killed
    finally:
        fault_judge.delay_s = 0.0
    check_job_results(job, first, n)
    assert fault_topology.procs["worker"].alive(), fault_topology.procs["worker"].log()[-3000:]
    assert len(child_pids(worker_pid)) == 1 and child not in child_pids(worker_pid)  # a fresh child
    requests, answered = judged(fault_judge, first, n)
    assert set(answered) == set(range(first, first + n)), sorted(set(range(first, first + n)) - set(answered))
    rejudged = sorted(i for i, count in requests.items() if count > 1)
    # Only the judgments in flight when the child died may be asked again: the stored ones are kept.
    assert len(rejudged) <= concurrency, rejudged
    assert requested_at_kill >= done_at_kill
    replayed = post_job(fault_topology, tenant, body, key)
    assert replayed.status_code == 202 and replayed.headers.get("Idempotent-Replayed") == "true"
    assert replayed.json()["id"] == job_id
    assert job_ids() - before == {job_id}  # one job for the key, however often it is sent
    figures("celery worker child kill -9 mid-job", requests=2, items=n, done_at_kill=done_at_kill,
            lost=n - len(answered), duplicated=len(job["results"]) - n, rejudged=len(rejudged),
            max_recovery_s=round(recovery_s, 1))


# ------------------------------------------------------------------ Redis / PostgreSQL restarts under load


@dataclass
class Sent:
    """One request of the load: what was sent, with which key, and what came back (None: no answer)."""

    kind: str  # "rewards" | "job"
    key: str
    body: dict[str, Any]
    status: int | None = None
    detail: str = ""
    at: float = 0.0
    final: httpx.Response | None = None

    @property
    def succeeded(self) -> bool:
        return self.status in (200, 202)


@dataclass
class Load:
    """A client thread sending small /v1/rewards batches and /v1/jobs, each with its own key, until stopped."""

    topology: FaultTopology
    tenant: Tenant
    prefix: str
    items: int = 4
    sent: list[Sent] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def request(self, index: int) -> Sent:
        key = f"{self.prefix}-{index}"
        if index % 2 == 0:
            return Sent("rewards", key, exact_batch(key, self.items))
        return Sent("job", key, {"kind": "judge_pointwise", "max_concurrency": 2,
                                 "items": job_items(2, 100_000 + hash(key) % 100_000)})

    def send(self, request: Sent) -> httpx.Response:
        if request.kind == "rewards":
            return post_rewards(self.topology, self.tenant, request.body, request.key, timeout_s=30)
        return post_job(self.topology, self.tenant, request.body, request.key)

    def _run(self) -> None:
        index = 0
        while not self._stop.is_set():
            request = self.request(index)
            index += 1
            try:
                response = self.send(request)
                request.status, request.detail = response.status_code, response.text[:300]
                if request.succeeded:
                    request.final = response
            except httpx.HTTPError as exc:
                request.detail = f"{type(exc).__name__}: {exc}"
            request.at = time.monotonic()
            self.sent.append(request)

    def start(self) -> Load:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(60)
        assert not self._thread.is_alive(), "a request of the load hangs"

    def answered_since(self, since: float, succeeded: bool | None = None) -> int:
        return sum(1 for r in list(self.sent) if r.at >= since and (succeeded is None or r.succeeded == succeeded))


def check_retryable(sent: list[Sent]) -> None:
    """Every request either succeeded or got an answer that tells the client to retry."""
    for request in sent:
        if request.succeeded:
            continue
        assert request.status is not None, f"{request.kind} {request.key}: no answer: {request.detail}"
        assert request.status in (*RETRYABLE, 409), f"{request.kind} {request.key}: {request.status} {request.detail}"
        if request.status == 409:
            assert "idempotency_in_progress" in request.detail, request.detail


def settle(load: Load) -> tuple[int, float]:
    """Retry every request that did not succeed, with its key, until it does; returns (retries, slowest s)."""
    retries, slowest = 0, 0.0
    for request in load.sent:
        if request.succeeded:
            continue
        started = time.monotonic()
        final, seen = retry_until_done(functools.partial(load.send, request), 200 if request.kind == "rewards" else 202)
        request.final, request.status = final, final.status_code
        retries += sum(seen.values())
        slowest = max(slowest, time.monotonic() - started)
    return retries, slowest


def check_once_per_key(load: Load, jobs_before: set[str]) -> tuple[int, int]:
    """Exactly one result set per key: reward rows stored once by the answered request, one job per key,
    and every retry replays what the first success answered. Returns (lost, duplicated) items."""
    lost = duplicated = 0
    job_of_key: dict[str, str] = {}
    for request in load.sent:
        assert request.final is not None
        answer = request.final.json()
        if request.kind == "rewards":
            assert outcome(answer["results"]) == expected_exact(request.body), answer["results"]
            item_lost, item_duplicated = check_stored_once(load.tenant, request.body, answer)
            lost, duplicated = lost + item_lost, duplicated + item_duplicated
        else:
            job_of_key[request.key] = answer["id"]
        replay_is_identical(functools.partial(load.send, request), request.final)
    new_jobs = job_ids() - jobs_before
    assert len(set(job_of_key.values())) == len(job_of_key) and new_jobs == set(job_of_key.values()), \
        (len(new_jobs), len(job_of_key))
    return lost, duplicated


def wait_jobs_finish(topology: FaultTopology, tenant: Tenant, load: Load) -> None:
    for request in load.sent:
        if request.kind != "job":
            continue
        assert request.final is not None
        job_id = request.final.json()["id"]
        job = wait_for(functools.partial(finished_job, topology, tenant, job_id), RECOVERY_DEADLINE_S,
                       f"job {job_id} to finish")
        assert job is not None and job["state"] == "succeeded" and [r["status"] for r in job["results"]] == ["ok", "ok"], job


def load_items(load: Load) -> int:
    return sum(len(r.body["items"]) for r in load.sent)


def test_redis_restart_under_load(fault_topology: FaultTopology, tenant: Tenant, module_redis: RedisServer) -> None:
    jobs_before = job_ids()
    load = Load(fault_topology, tenant, "redis-restart").start()
    try:
        wait_for(lambda: load.answered_since(0, succeeded=True) >= 4 * SCALE, 60, "the load to be flowing")
        module_redis.stop()
        stopped = time.monotonic()
        wait_for(lambda: load.answered_since(stopped) >= 3, 60, "requests sent while Redis is down")
        module_redis.start()
        restarted = time.monotonic()
        wait_for(lambda: load.answered_since(restarted, succeeded=True) >= 4 * SCALE, RECOVERY_DEADLINE_S,
                 "the load to succeed again after the restart")
        first_success_s = min(r.at for r in load.sent if r.at >= restarted and r.succeeded) - restarted
    finally:
        load.stop()
    refused = sum(1 for r in load.sent if not r.succeeded)
    check_retryable(load.sent)
    retries, slowest_retry_s = settle(load)
    lost, duplicated = check_once_per_key(load, jobs_before)
    wait_jobs_finish(fault_topology, tenant, load)
    worker = fault_topology.procs["worker"]
    assert worker.alive(), worker.log()[-3000:]
    figures("redis restart under load", requests=len(load.sent) + retries, items=load_items(load),
            refused_retryable=refused, lost=lost, duplicated=duplicated, worker_survived=worker.alive(),
            max_recovery_s=round(max(first_success_s, slowest_retry_s), 1))


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_postgres_restart_under_load(fault_topology: FaultTopology, tenant: Tenant, own_postgres: PostgresCluster,
                                     mode: str) -> None:
    jobs_before = job_ids()
    load = Load(fault_topology, tenant, f"pg-restart-{mode}").start()
    try:
        wait_for(lambda: load.answered_since(0, succeeded=True) >= 4 * SCALE, 60, "the load to be flowing")
        restarting = time.monotonic()
        own_postgres.restart(mode)
        restarted = time.monotonic()
        wait_for(lambda: load.answered_since(restarted, succeeded=True) >= 4 * SCALE, RECOVERY_DEADLINE_S,
                 "the load to succeed again after the restart")
        first_success_s = min(r.at for r in load.sent if r.at >= restarted and r.succeeded) - restarting
    finally:
        load.stop()
    refused = sum(1 for r in load.sent if not r.succeeded)
    check_retryable(load.sent)
    retries, slowest_retry_s = settle(load)
    lost, duplicated = check_once_per_key(load, jobs_before)
    wait_jobs_finish(fault_topology, tenant, load)
    figures(f"postgres restart -m {mode} under load", requests=len(load.sent) + retries, items=load_items(load),
            refused_retryable=refused, lost=lost, duplicated=duplicated,
            max_recovery_s=round(max(first_success_s, slowest_retry_s), 1))


# ------------------------------------------------------------------------- a client that hangs up mid-stream


def test_stream_client_disconnects_then_retries(fault_topology: FaultTopology, tenant: Tenant,
                                                fault_judge: CountingJudge) -> None:
    n, first, key = 12 * SCALE, 4000, "stream-disconnect-1"
    body = {**rubric_batch("st", first, n, concurrency=2), "stream": True}
    headers = {**bearer(tenant.keys["trainer"]), "Idempotency-Key": key}
    received: list[str] = []
    fault_judge.delay_s = 0.25
    try:
        with httpx.Client(timeout=60) as client, \
                client.stream("POST", fault_topology.url("gateway") + "/v1/rewards", json=body,
                              headers=headers) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if line.strip():
                    received.append(line)
                if len(received) == 2:
                    break  # hang up with the batch half graded
        hung_up = time.monotonic()
        assert all(json.loads(line)["type"] == "result" for line in received)
        assert sum(judged(fault_judge, first, n)[1].values()) < n, "the batch finished before the client hung up"
        final, seen = retry_until_done(lambda: post_rewards(fault_topology, tenant, body, key))
        recovery_s = time.monotonic() - hung_up
    finally:
        fault_judge.delay_s = 0.0
    assert final.headers.get("Idempotent-Replayed") == "true"
    assert final.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in final.text.splitlines() if line.strip()]
    results, summary = [line for line in lines if line["type"] == "result"], lines[-1]
    assert summary["type"] == "summary" and len(lines) == n + 1
    order = {item["id"]: i for i, item in enumerate(body["items"])}
    results.sort(key=lambda r: order[r["id"]])
    check_rubric_results(body, results)
    assert all(json.loads(line) in results for line in received)  # what the client saw is part of the answer
    lost, duplicated = check_stored_once(tenant, body, summary)
    replay_is_identical(lambda: post_rewards(fault_topology, tenant, body, key), final)
    requests, _answered = judged(fault_judge, first, n)
    # The batch went on grading after the hang-up and its answer was stored: nothing was judged twice.
    assert set(requests) == set(range(first, first + n)) and max(requests.values()) == 1, requests
    figures("stream client disconnect", requests=2 + sum(seen.values()), items=n, lines_before_hangup=len(received),
            lost=lost, duplicated=duplicated, rejudged=sum(1 for c in requests.values() if c > 1),
            retry_statuses=dict(seen), max_recovery_s=round(recovery_s, 1))


def test_postgres_down_between_grading_and_storing(fault_topology: FaultTopology, tenant: Tenant,
                                                   own_postgres: PostgresCluster) -> None:
    """The batch is graded while the database is gone: the answer cannot be stored with its key, so the
    client gets a retryable 503 (never a 2xx for results that were not kept), and the key it holds frees
    itself (its lease runs out) so the retry re-runs and succeeds."""
    n, key = 12 * SCALE, "pg-down-while-grading-1"
    # Three in four items backtrack, a little longer than elsewhere: grading outlasts stopping the server.
    items = [{"id": f"pgdown-{i}", "completion": "a" * (SLOW_RUN + 1) if i % 4 else "aab"} for i in range(n)]
    body = {"spec": {"type": "regex", "pattern": BACKTRACKING, "full_match": True}, "items": items, "persist": True}
    warm_up = post_rewards(fault_topology, tenant, {**exact_batch("pgdown-warm", 2), "persist": False}, None)
    assert warm_up.status_code == 200, warm_up.text
    inflight = InFlight(lambda: post_rewards(fault_topology, tenant, body, key)).start()
    wait_for(lambda: busy_worker(fault_topology), 30, "the verifier to be grading", interval_s=0.02)
    own_postgres.stop("immediate")
    stopped = time.monotonic()
    try:
        inflight.join(60)
    finally:
        own_postgres.start()
    restarted = time.monotonic()
    assert inflight.response is not None, inflight.error
    first = inflight.response
    assert first.status_code == 503, (first.status_code, first.text)
    assert first.json()["error"]["code"] == "storage_unavailable" and int(first.headers["Retry-After"]) >= 1
    assert stored_rows(tenant.project_a, [item["id"] for item in items]) == Counter()
    final, seen = retry_until_done(lambda: post_rewards(fault_topology, tenant, body, key))
    recovery_s = time.monotonic() - restarted
    answer = final.json()
    assert outcome(answer["results"]) == [(item["id"], "ok", 1.0 if item["completion"].endswith("b") else 0.0)
                                          for item in items], answer["results"]
    lost, duplicated = check_stored_once(tenant, body, answer)
    replay_is_identical(lambda: post_rewards(fault_topology, tenant, body, key), final)
    figures("postgres down between grading and storing", requests=2 + sum(seen.values()), items=n, lost=lost,
            duplicated=duplicated, first_answer=first.status_code, outage_s=round(restarted - stopped, 1),
            retry_statuses=dict(seen), max_recovery_s=round(recovery_s, 1))
