"""Observability in one process: metrics that move by exactly what happened, request ids, JSON logs.

Everything here runs on the embedded default (SQLite, the real grader pool, in-process service
calls); the multi-process checks (gateway and verifier processes, a Celery worker) are in
tests/integration/test_observability.py.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import socket
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from celery import signals
from fastapi import APIRouter, FastAPI, Request
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from rewardhub.embedded import build_embedded_app
from services.common import metrics, tasks
from services.common.app_factory import create_service_app
from services.common.logging import SecretMaskingFilter, configure_logging, request_id_var, valid_request_id
from services.common.service_client import register_local_app, service_client
from services.common.settings import reset_settings_cache
from services.verifier import grading
from services.verifier.pool import GraderPool
from tests.conftest import Tenant, bearer
from tests.unit.verifier import pool_fns

SERVICE_MOUNTS = ("verifier", "annotation", "sandbox", "rubric_rm", "trainer")


def scrape(client: TestClient, path: str = "/metrics") -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a /metrics page, keyed by (name, sorted labels)."""
    response = client.get(path)
    assert response.status_code == 200, response.text
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(response.text) for sample in family.samples}


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def wait_until(condition: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """configure_logging's real JSON handler writing into a buffer; the root logger restored afterwards."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    configure_logging("test", "INFO", json_logs=True)
    buffer = io.StringIO()
    root.handlers[0].setStream(buffer)  # type: ignore[attr-defined]
    yield buffer
    root.handlers, root.level = saved
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "celery", "celery.app.trace"):
        logger = logging.getLogger(name)
        logger.filters = [f for f in logger.filters if not isinstance(f, SecretMaskingFilter)]


def json_lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines() if line.strip()]


@pytest.fixture
def embedded(sqlite_tenant: Tenant) -> Iterator[TestClient]:
    with TestClient(build_embedded_app()) as client:
        yield client


# ------------------------------------------------------------------------------------ request ids

@pytest.mark.parametrize("given", ["abc123", "trainer-step-17.item_3", "a:b", "A" * 64])
def test_valid_request_ids_are_kept(given: str) -> None:
    assert valid_request_id(given) == given


@pytest.mark.parametrize("given", ["", "A" * 65, "has space", "new\r\nline", "-leading-dash", "semi;colon",
                                   "ünïcode", "<script>"])
def test_unsafe_request_ids_are_refused(given: str) -> None:
    assert valid_request_id(given) is None


@pytest.mark.parametrize("path", ["/healthz", "/nowhere", *(f"/services/{name}/healthz" for name in SERVICE_MOUNTS),
                                  *(f"/services/{name}/nowhere" for name in SERVICE_MOUNTS)])
def test_one_request_id_per_response_under_every_mount(embedded: TestClient, path: str) -> None:
    sent = embedded.get(path, headers={"x-request-id": "probe-1"})
    assert sent.headers.get_list("x-request-id") == ["probe-1"]
    fresh = embedded.get(path)
    generated = fresh.headers.get_list("x-request-id")
    assert len(generated) == 1 and valid_request_id(generated[0]) == generated[0]
    unsafe = embedded.get(path, headers={"x-request-id": "bad id;" * 20})
    replaced = unsafe.headers.get_list("x-request-id")
    assert len(replaced) == 1 and replaced[0] != "bad id;" * 20 and valid_request_id(replaced[0])


def _failing_app() -> FastAPI:
    router = APIRouter()

    @router.get("/boom")
    def boom() -> None:
        raise RuntimeError("kaboom")

    @router.get("/seen")
    def seen(request: Request) -> dict[str, str]:
        logging.getLogger("rewardhub.test").warning("handling %s", request.url.path)
        return {"request_id": request_id_var.get()}

    return create_service_app("test", [router], title="test")


def test_an_unhandled_error_is_a_500_whose_log_line_and_header_carry_the_request_id(
        isolated_env: Path, json_log: io.StringIO) -> None:
    with TestClient(_failing_app(), raise_server_exceptions=False) as client:
        response = client.get("/boom", headers={"x-request-id": "err-42"})
    assert response.status_code == 500 and response.json()["error"]["code"]
    assert response.headers.get_list("x-request-id") == ["err-42"]
    errors = [line for line in json_lines(json_log) if line["level"] == "ERROR"]
    assert errors, json_log.getvalue()
    assert all(line["request_id"] == "err-42" and line["service"] == "test" for line in errors)
    assert any("RuntimeError: kaboom" in line.get("exc_info", "") for line in errors)


def test_handler_log_lines_carry_the_request_id_and_it_is_cleared_after(isolated_env: Path,
                                                                       json_log: io.StringIO) -> None:
    with TestClient(_failing_app()) as client:
        assert client.get("/seen", headers={"x-request-id": "seen-1"}).json() == {"request_id": "seen-1"}
    logging.getLogger("rewardhub.test").warning("after the request")
    lines = [line for line in json_lines(json_log) if line["logger"] == "rewardhub.test"]
    assert [(line["message"], line["request_id"]) for line in lines] == [("handling /seen", "seen-1"),
                                                                         ("after the request", "")]


def test_a_mounted_service_uses_the_id_its_response_carries(isolated_env: Path) -> None:
    outer = create_service_app("outer", [], title="outer")
    outer.mount("/services/inner", _failing_app())  # as rewardhub/embedded.py mounts every service
    with TestClient(outer) as client:
        for headers in ({}, {"x-request-id": "given-5"}, {"x-request-id": "not valid!"}):
            response = client.get("/services/inner/seen", headers=headers)
            assert response.headers.get_list("x-request-id") == [response.json()["request_id"]]
        assert client.get("/services/inner/seen", headers={"x-request-id": "given-5"}).json() == {
            "request_id": "given-5"}


def test_service_calls_send_the_current_request_id(isolated_env: Path) -> None:
    echo = FastAPI()

    @echo.get("/echo")
    def echo_headers(request: Request) -> dict[str, list[str]]:
        return {"ids": request.headers.getlist("x-request-id")}

    register_local_app("verifier", echo)

    async def call(request_id: str) -> list[str]:
        token = request_id_var.set(request_id)
        try:
            async with service_client("verifier", headers={"Authorization": "Bearer x"}) as client:
                return list((await client.get("/echo")).json()["ids"])
        finally:
            request_id_var.reset(token)

    assert asyncio.run(call("hop-7")) == ["hop-7"]
    assert asyncio.run(call("")) == []  # no request being handled: nothing invented


def test_a_request_through_the_gateway_reaches_the_verifier_with_its_id(embedded: TestClient,
                                                                        sqlite_tenant: Tenant,
                                                                        json_log: io.StringIO,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    verifier_logger = logging.getLogger("rewardhub.test.verifier")

    async def spy(request: httpx.Request) -> None:
        seen.append(request.headers.get("x-request-id", ""))
        verifier_logger.info("calling %s", request.url.path)

    original = service_client

    def spying_client(name: str, **kwargs: Any) -> httpx.AsyncClient:
        client = original(name, **kwargs)
        client.event_hooks["request"].append(spy)
        return client

    from services.gateway import rewards

    monkeypatch.setattr(rewards, "service_client", spying_client)
    response = embedded.post("/v1/rewards", json={"spec": {"type": "exact"}, "items": [
        {"id": "a", "completion": "x", "ground_truth": "x"}]},
        headers={**bearer(sqlite_tenant.keys["trainer"]), "x-request-id": "through-1"})
    assert response.status_code == 200, response.text
    assert response.headers.get_list("x-request-id") == ["through-1"]
    assert seen == ["through-1"]
    assert [line["request_id"] for line in json_lines(json_log) if line["logger"] == verifier_logger.name] == [
        "through-1"]


# ---------------------------------------------------------------------------------- grader metrics

NESTED = "\\boxed{" + "{" * 3000 + "1" + "}" * 3000 + "}"  # outlasts the item limit (test_rewards_api)


def test_grader_results_and_item_latency_move_by_exactly_the_batch(embedded: TestClient, sqlite_tenant: Tenant,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REWARDHUB_VERIFIER_ITEM_TIMEOUT_S", "1.5")
    reset_settings_cache()
    items = [{"id": "ok1", "completion": "so \\boxed{1/2}", "ground_truth": "0.5"},
             {"id": "ok2", "completion": "so \\boxed{3}", "ground_truth": "4"},
             {"id": "empty-truth", "completion": "\\boxed{1}", "ground_truth": ""},
             {"id": "nested", "completion": NESTED, "ground_truth": "1"},
             # screened out by the gateway (a NUL), never sent to the verifier: counted there once
             {"id": "nul", "completion": "\\boxed{1}\x00", "ground_truth": "1"}]
    before = scrape(embedded)
    response = embedded.post("/v1/rewards", json={"spec": {"type": "math", "timeout_s": 1}, "items": items,
                                                  "deadline_s": 30}, headers=bearer(sqlite_tenant.keys["trainer"]))
    assert response.status_code == 200, response.text
    assert {r["id"]: r["status"] for r in response.json()["results"]} == {
        "ok1": "ok", "ok2": "ok", "empty-truth": "invalid_input", "nested": "timeout", "nul": "invalid_input"}
    after = scrape(embedded)
    for status, moved in (("ok", 2), ("invalid_input", 2), ("timeout", 1), ("error", 0)):
        delta = (value(after, "rewardhub_grader_results_total", grader="math", status=status)
                 - value(before, "rewardhub_grader_results_total", grader="math", status=status))
        assert delta == moved, (status, delta)
    observed = (value(after, "rewardhub_grader_item_seconds_count", grader="math")
                - value(before, "rewardhub_grader_item_seconds_count", grader="math"))
    assert observed == 5
    slow = (value(after, "rewardhub_grader_item_seconds_bucket", grader="math", le="1.0")
            - value(before, "rewardhub_grader_item_seconds_bucket", grader="math", le="1.0"))
    assert slow <= 4  # the timed-out item ran past 1 s before it was stopped
    # The embedded mounts serve the same registry: no second copy of any metric.
    assert scrape(embedded, "/services/verifier/metrics").keys() >= {
        key for key in after if key[0].startswith("rewardhub_grader_")}


def test_a_request_under_a_mount_is_counted_once_by_its_own_service(embedded: TestClient) -> None:
    route = {"method": "GET", "route": "/healthz", "status": "200"}
    before = scrape(embedded)
    assert embedded.get("/services/verifier/healthz").status_code == 200
    after = scrape(embedded)
    assert (value(after, "rewardhub_http_requests_total", service="verifier", **route)
            - value(before, "rewardhub_http_requests_total", service="verifier", **route)) == 1
    assert (value(after, "rewardhub_http_requests_total", service="gateway", **route)
            - value(before, "rewardhub_http_requests_total", service="gateway", **route)) == 0


# ------------------------------------------------------------------------------------- pool metrics

@pytest.fixture
def one_worker_pool() -> Iterator[GraderPool]:
    pool = GraderPool(1, preload=("tests.unit.verifier.pool_fns",))
    yield pool
    pool.shutdown()


def test_a_dying_pool_worker_is_logged_with_its_exit_code_and_counted(one_worker_pool: GraderPool,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    died = {"reason": "died"}
    before = metrics.sample_value("rewardhub_verifier_pool_worker_replacements_total", died)
    with caplog.at_level(logging.WARNING, logger="rewardhub.verifier.pool"):
        outcomes = asyncio.run(one_worker_pool.map(pool_fns.exit_on, [(i, 1) for i in range(3)], item_timeout_s=5))
    assert [o.status for o in outcomes] == ["ok", "error", "ok"]
    warnings = [r for r in caplog.records if r.name == "rewardhub.verifier.pool" and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "exit code 3" in warnings[0].getMessage()
    assert metrics.sample_value("rewardhub_verifier_pool_worker_replacements_total", died) == before + 1


def test_a_killed_pool_worker_is_counted_as_a_timeout_replacement(one_worker_pool: GraderPool) -> None:
    timeout = {"reason": "timeout"}
    before = metrics.sample_value("rewardhub_verifier_pool_worker_replacements_total", timeout)
    outcomes = asyncio.run(one_worker_pool.map(pool_fns.spin_forever_on, [(0, 0)], item_timeout_s=0.3))
    assert outcomes[0].status == "timeout"
    assert metrics.sample_value("rewardhub_verifier_pool_worker_replacements_total", timeout) == before + 1


def test_pool_queue_depth_gauge_reads_the_items_waiting(one_worker_pool: GraderPool,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(grading, "_POOL", one_worker_pool)
    futures = [one_worker_pool.submit_future(pool_fns.sleep_then, (1.0,), item_timeout_s=5) for _ in range(3)]
    # One item runs on the only worker, two wait for it.
    wait_until(lambda: one_worker_pool.queue_depth() == 2, 10, "two items queued behind the running one")
    assert metrics.sample_value("rewardhub_verifier_pool_queue_depth") == 2
    for future in futures:
        assert future.result(timeout=30).status == "ok"
    assert metrics.sample_value("rewardhub_verifier_pool_queue_depth") == 0


# ------------------------------------------------------------------------------------------ Celery

def test_task_outcomes_are_counted_and_the_submitting_request_id_reaches_the_task(isolated_env: Path) -> None:
    seen: list[str] = []

    def record(**_kwargs: Any) -> None:  # runs after task_prerun restored the id
        seen.append(request_id_var.get())

    signals.task_postrun.connect(record, weak=False)
    success = {"task": "rewardhub.ping", "outcome": "success"}
    failure = {"task": "rewardhub.ping", "outcome": "failure"}
    ok_before = metrics.sample_value("rewardhub_celery_tasks_total", success)
    failed_before = metrics.sample_value("rewardhub_celery_tasks_total", failure)
    token = request_id_var.set("submitted-9")
    try:
        handle = tasks.submit(tasks.ping, "x")
        assert handle.future is not None and handle.future.result(timeout=30)["payload"] == "x"
        broken = tasks.submit(tasks.ping, "x", "unexpected", "arguments")
        assert broken.future is not None and isinstance(broken.future.exception(timeout=30), TypeError)
    finally:
        request_id_var.reset(token)
        signals.task_postrun.disconnect(record)
    assert seen == ["submitted-9", "submitted-9"]
    assert metrics.sample_value("rewardhub_celery_tasks_total", success) == ok_before + 1
    assert metrics.sample_value("rewardhub_celery_tasks_total", failure) == failed_before + 1


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_celery_queue_depth_is_absent_without_redis_and_never_hangs_on_a_dead_one(
        isolated_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    collector = metrics.CeleryQueueCollector(lambda: ["celery"])
    assert list(collector.collect()) == []  # no REDIS_URL: the embedded default has no queue
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{_closed_port()}/12")
    reset_settings_cache()
    families = {family.name: family for family in collector.collect()}
    assert [s.value for s in families["rewardhub_celery_broker_up"].samples] == [0]
    assert "rewardhub_celery_queue_depth" not in families
    # A broker that accepts the connection and never answers: the scrape returns (broker down)
    # because its client has socket timeouts, which are checked rather than timed.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel completes the handshake; nothing ever reads or replies
        monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{silent.getsockname()[1]}/12")
        reset_settings_cache()
        families = {family.name: family for family in collector.collect()}
    assert [s.value for s in families["rewardhub_celery_broker_up"].samples] == [0]
    kwargs = metrics._scrape_redis(f"redis://127.0.0.1:{_closed_port()}/12").connection_pool.connection_kwargs
    assert kwargs["socket_timeout"] == kwargs["socket_connect_timeout"] == metrics.REDIS_SCRAPE_TIMEOUT_S


# -------------------------------------------------------------------------------------- annotation

def test_labels_bought_leases_expired_and_queue_depth(sqlite_tenant: Tenant, embedded: TestClient) -> None:
    from services.annotation import queue
    from services.common.db import session_scope
    from services.common.errors import Conflict
    from tests.unit.annotation.test_queue import LEASE, T0, add_annotators, answer, make_project, seed

    bought = {"source": "human"}
    bought_before = metrics.sample_value("rewardhub_annotation_labels_bought_total", bought)
    late_before = metrics.sample_value("rewardhub_annotation_leases_expired_total", {"found_by": "late_action"})
    again_before = metrics.sample_value("rewardhub_annotation_leases_expired_total", {"found_by": "re_lease"})
    project_id = make_project(sqlite_tenant)
    alice = add_annotators(project_id, "alice")["alice"]
    seed(project_id, [0.9, 0.5, 0.1])
    assert metrics.sample_value("rewardhub_annotation_labels_bought_total", bought) == bought_before + 3
    with session_scope() as session:
        lease = queue.next_task(session, project_id, alice, now=T0)
        assert lease is not None
    after = T0 + timedelta(seconds=LEASE + 1)
    with session_scope() as session, pytest.raises(Conflict):
        queue.submit(session, project_id, alice, lease.assignment_id, answer("late", "2"), now=after)
    assert metrics.sample_value("rewardhub_annotation_leases_expired_total",
                                {"found_by": "late_action"}) == late_before + 1
    depth = scrape(embedded)  # the lease dates from T0, long before the real clock: it shows as expired
    assert value(depth, "rewardhub_annotation_queue_depth", kind="task", state="open") == 3
    assert value(depth, "rewardhub_annotation_queue_depth", kind="task", state="done") == 0
    assert value(depth, "rewardhub_annotation_queue_depth", kind="lease", state="expired") == 1
    with session_scope() as session:
        again = queue.next_task(session, project_id, alice, now=after)
        assert again is not None and again.assignment_id == lease.assignment_id
    assert metrics.sample_value("rewardhub_annotation_leases_expired_total",
                                {"found_by": "re_lease"}) == again_before + 1


# ----------------------------------------------------------------------------------------- sandbox

def test_sandbox_runs_are_counted_by_how_they_ended(isolated_env: Path) -> None:
    from services.sandbox.app import create_app
    from tests.unit.sandbox.conftest import require_namespaces

    require_namespaces()
    completed = {"status": "completed"}
    before = metrics.sample_value("rewardhub_sandbox_runs_total", completed)
    with TestClient(create_app()) as client:
        response = client.post("/run_code", json={"language": "python", "run_timeout": 5, "code": "print(1)"})
    assert response.status_code == 200 and response.json()["status"] == "Success", response.text
    assert metrics.sample_value("rewardhub_sandbox_runs_total", completed) == before + 1


def test_a_bought_label_is_counted_only_when_its_transaction_commits() -> None:
    from sqlalchemy import create_engine, text
    from sqlalchemy.orm import Session

    from services.annotation import purchases

    def bought() -> float:
        return metrics.sample_value("rewardhub_annotation_labels_bought_total", {"source": "rollback-test"}) or 0.0

    before = bought()
    with Session(create_engine("sqlite://")) as session:
        session.execute(text("SELECT 1"))  # a purchase runs inside its transaction
        purchases._count_when_committed(session, "rollback-test")
        session.rollback()
        assert bought() == before
        session.execute(text("SELECT 1"))
        purchases._count_when_committed(session, "rollback-test")
        purchases._count_when_committed(session, "rollback-test")
        session.commit()
        assert bought() == before + 2
        session.commit()  # nothing new bought: nothing counted again
        assert bought() == before + 2
