"""The Celery app shared by every service.

With ``REDIS_URL`` set, Redis is broker and result backend and separate worker processes run
the tasks. Without it (embedded default), tasks run in-process: ``submit`` runs them on a
background thread so a request still returns at once and progress can be polled.

Durability (production, Redis): a task is acknowledged only after it ran (``task_acks_late``) and
is requeued when its worker process dies (``task_reject_on_worker_lost``); Redis redelivers an
unacknowledged task after ``visibility_timeout`` (:func:`visibility_timeout_s`). The worker keeps
retrying a lost broker forever, with backoff, and survives an outage while busy
(:class:`ResilientConsumer`). Jobs keep their real state in the database, not in Redis: each
service registers a *sweeper* (:func:`register_sweeper`) that every worker runs at start-up and
every ``job_sweep_interval_s`` to resubmit work whose submission or delivery was lost.

Observability: ``submit`` sends the submitting request's id in a task header and ``task_prerun``
restores it, so the task's log lines carry it; task outcomes are counted
(``rewardhub_celery_tasks_total``); a worker's logging is rewardhub's JSON logging
(``setup_logging``), never Celery's own handlers on the root logger.
"""

from __future__ import annotations

import contextvars
import logging
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from celery import Celery, Task, signals
from celery.worker import state as worker_state
from celery.worker.consumer import Consumer
from kombu.entity import Exchange, Queue
from kombu.exceptions import OperationalError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.common.errors import UpstreamUnavailable
from services.common.logging import configure_logging, request_id_var, valid_request_id
from services.common.metrics import CELERY_TASKS
from services.common.registry import DEFAULT_QUEUE, job_queues, queue_names, task_modules
from services.common.settings import Settings, get_settings

# Every module with Celery tasks: this one and each service's own (declared once, services.common.registry).
TASK_MODULES = task_modules()
log = logging.getLogger("rewardhub.tasks")


def visibility_timeout_s(settings: Settings | None = None) -> float:
    """How long Redis holds an unacknowledged task before redelivering it.

    ``REWARDHUB_CELERY_VISIBILITY_TIMEOUT_S``, else twice the longest job step: one LLM call with all
    its retries (``llm_timeout_s × (llm_max_retries + 1)``), at least 300 s. A job is checkpointed
    per item and holds a heartbeat lease, so a redelivery of a job that is still running elsewhere is
    a no-op; the timeout only bounds how late a task of a killed worker comes back.
    """
    s = settings or get_settings()
    if s.celery_visibility_timeout_s is not None:
        return float(s.celery_visibility_timeout_s)
    return max(300.0, 2.0 * s.llm_timeout_s * (s.llm_max_retries + 1))


class ResilientConsumer(Consumer):  # type: ignore[misc]
    """The worker's consumer, surviving a broker outage while a late-acked task runs.

    Celery 5.7 / kombu 5.7 on Redis: on a lost connection the consumer first ``collect()``s the
    connection, which detaches its transport (``transport.client = None``), then ``close()``s it.

    1. The close reaches the channel that still holds the running task's unacknowledged message and
       tries to restore it to Redis, building a Redis client from ``transport.client`` — None — so it
       raises ``AttributeError: 'NoneType' object has no attribute 'hostname'``.
    2. When that task finishes after the reconnect, its late ack goes to the same detached channel
       and raises the same error from the event loop.

    Neither is a connection or channel error, so each escapes Celery's error handling and the worker
    exits with "Unrecoverable error" (reproduced with a real redis-server stopped for 12 s under a
    busy prefork worker: tests/reliability/test_job_durability.py). This consumer tolerates exactly
    that error on the detached connection and its channels. Nothing is lost by it: neither the
    restore nor the ack can reach Redis through a dropped connection; the message stays in Redis'
    unacked set and is redelivered after ``visibility_timeout``, where the job's own state (finished,
    or leased by a live worker) makes the delivery a no-op.
    """

    def on_connection_error_after_connected(self, exc: BaseException) -> None:
        connection = self.connection
        if connection is not None:
            close = connection.close

            def tolerant_close() -> None:
                try:
                    close()
                except AttributeError as error:  # (1) above
                    log.warning("broker connection lost while tasks run; skipped restoring their "
                                "unacknowledged messages (%s)", error)

            connection.close = connection.release = tolerant_close
            for request in (*worker_state.active_requests, *worker_state.reserved_requests):
                channel = getattr(getattr(request, "message", None), "channel", None)
                if channel is not None:
                    _tolerate_detached_acks(channel)
        super().on_connection_error_after_connected(exc)


def _tolerate_detached_acks(channel: Any) -> None:
    """(2) above: an ack or reject on a channel whose connection was dropped is logged, not fatal."""
    if getattr(channel, "_rewardhub_tolerant", False):
        return
    for name in ("basic_ack", "basic_reject"):
        original = getattr(channel, name)

        def tolerant(*args: Any, _original: Any = original, _name: str = name, **kwargs: Any) -> Any:
            try:
                return _original(*args, **kwargs)
            except AttributeError as error:
                log.warning("%s after a broker reconnect could not reach Redis (%s); the message is "
                            "redelivered after the visibility timeout, a no-op then", _name, error)
                return None

        setattr(channel, name, tolerant)
    channel._rewardhub_tolerant = True


def make_celery(redis_url: str | None) -> Celery:
    app = Celery("rewardhub")
    if redis_url:
        app.conf.update(broker_url=redis_url, result_backend=redis_url)
    else:
        app.conf.update(broker_url="memory://", result_backend="cache+memory://",
                        task_always_eager=True, task_eager_propagates=True, task_store_eager_result=True)
    timeout = visibility_timeout_s()
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_track_started=True,
        result_expires=7 * 24 * 3600,
        imports=TASK_MODULES,
        # One queue per job kind (services.common.registry.job_queues): a worker started without
        # --queues consumes them all; `rewardhub worker --queues rubric_rm` only one kind.
        task_default_queue=DEFAULT_QUEUE,
        task_queues=[Queue(name, Exchange(name), routing_key=name)  # type: ignore[no-untyped-call]
                     for name in queue_names()],
        task_routes={pattern: {"queue": queue} for pattern, queue in job_queues().items()},
        # A lost broker is retried forever, with backoff (2 s, 4 s, ... capped by kombu), at start-up
        # and after a connection loss: a worker never gives up on Redis coming back.
        broker_connection_retry_on_startup=True,
        broker_connection_retry=True,
        broker_connection_max_retries=None,
        broker_transport_options={"visibility_timeout": timeout},
        result_backend_transport_options={"visibility_timeout": timeout},
        # Storing a result during an outage retries (10 ms doubling to 10 s, ~20 s in all) instead of
        # failing the finished task; results are also in the database, so a lost one is not fatal.
        result_backend_always_retry=True,
        result_backend_max_retries=10,
        # Publishing (the API's submit) gives up within ~2 s, so POST /v1/jobs answers 503 promptly.
        task_publish_retry_policy={"max_retries": 3, "interval_start": 0, "interval_step": 0.5,
                                   "interval_max": 1.0},
        # Worker heartbeats (worker-heartbeat events every 2 s, the Heart bootstep) stay on: the worker
        # is not started with --without-heartbeat. The liveness a sweeper trusts is each running job's
        # own heartbeat in the database (services/rubric_rm/jobs.py), which needs no broker.
        # Deliberately False: on a broker connection loss, running tasks keep running. Their work and
        # checkpoints go to the database, not Redis, so a job finishes during a Redis outage; True
        # would kill them and rely on a redelivery that a restarted Redis without persistence never
        # makes (the sweeper would then requeue them, after a delay and with in-flight items redone).
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_consumer="services.common.tasks:ResilientConsumer",
    )
    return app


celery_app = make_celery(get_settings().redis_url)


@celery_app.task(name="rewardhub.ping", bind=True)  # type: ignore[untyped-decorator]
def ping(self: Task, payload: str = "") -> dict[str, Any]:
    """Round-trip probe: echoes ``payload`` with the worker that ran it."""
    return {"payload": payload, "worker": socket.gethostname(), "task_id": self.request.id,
            "finished_at": time.time()}


@dataclass
class TaskHandle:
    id: str
    future: Future[Any] | None = None

    def state(self) -> str:
        if self.future is not None:
            if not self.future.done():
                return "STARTED"
            return "FAILURE" if self.future.exception() is not None else "SUCCESS"
        return str(celery_app.AsyncResult(self.id).state)


class BrokerUnavailable(UpstreamUnavailable):
    """503 with ``Retry-After``: the task broker (Redis) could not be reached to queue the work."""

    code = "broker_unavailable"

    def __init__(self, cause: BaseException, retry_after_s: float = 5.0) -> None:
        super().__init__(f"the task broker (Redis) is unreachable: {cause}; nothing was queued, retry later "
                         "(with the same Idempotency-Key)", field="broker")
        self.retry_after_s = max(1, math.ceil(retry_after_s))
        self.headers = {"Retry-After": str(self.retry_after_s)}


_LOCAL_EXECUTOR: ThreadPoolExecutor | None = None
BROKER_ERRORS: tuple[type[BaseException], ...] = (OperationalError, RedisConnectionError, RedisTimeoutError, OSError)


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _broker_down(exc: BaseException) -> bool:
    """A publish that failed for want of Redis: kombu's OperationalError, or a Redis connection error
    anywhere in the cause chain (the result backend's subscription wraps it in a RuntimeError)."""
    return any(isinstance(e, BROKER_ERRORS) for e in _chain(exc))


def _root_cause(exc: BaseException) -> BaseException:
    return next((e for e in _chain(exc) if isinstance(e, BROKER_ERRORS)), exc)


def submit(task: Task, *args: Any, **kwargs: Any) -> TaskHandle:
    """Queue ``task`` on the broker, or run it on a local thread in the embedded default.

    Raises :class:`BrokerUnavailable` when the broker cannot be reached (after the publish retries).
    """
    headers = {REQUEST_ID_HEADER: request_id_var.get()}
    if not celery_app.conf.task_always_eager:
        try:
            result = task.apply_async(args=args, kwargs=kwargs, headers=headers)
        except Exception as exc:
            if not _broker_down(exc):
                raise
            raise BrokerUnavailable(_root_cause(exc)) from exc
        return TaskHandle(id=result.id)
    global _LOCAL_EXECUTOR
    if _LOCAL_EXECUTOR is None:
        _LOCAL_EXECUTOR = ThreadPoolExecutor(max_workers=4, thread_name_prefix="rewardhub-task")
    task_id = uuid.uuid4().hex
    # The thread runs in a copy of this context: the task sees the submitting request's id.
    context = contextvars.copy_context()
    future = _LOCAL_EXECUTOR.submit(
        context.run, lambda: task.apply(args=args, kwargs=kwargs, task_id=task_id, headers=headers).get())
    return TaskHandle(id=task_id, future=future)


# ------------------------------------------------------------------------------- observability

REQUEST_ID_HEADER = "rewardhub_request_id"


def _request_id_of(request: Any) -> str:
    """The submitting request's id from a task's request: with the Redis protocol a custom header is
    an attribute of the request; an eager ``apply`` keeps it in ``request.headers``."""
    value = getattr(request, REQUEST_ID_HEADER, None) or (getattr(request, "headers", None) or {}).get(
        REQUEST_ID_HEADER)
    return valid_request_id(value if isinstance(value, str) else None) or ""


def _add_request_id_header(headers: dict[str, Any] | None = None, **_kwargs: Any) -> None:
    """Every publish (``submit``, or a task queueing another with ``apply_async``) carries the current
    request id, unless the caller set one."""
    request_id = request_id_var.get()
    if headers is not None and request_id and not headers.get(REQUEST_ID_HEADER):
        headers[REQUEST_ID_HEADER] = request_id


def _restore_request_id(task: Task | None = None, **_kwargs: Any) -> None:
    # Set (or cleared) before every task, so a pool process never carries one task's id into the next.
    request_id_var.set(_request_id_of(task.request) if task is not None else "")


def _task_name(sender: Any) -> str:
    # Registered task names only (bounded); anything else is counted as "other".
    name = getattr(sender, "name", None)
    return name if isinstance(name, str) and name in celery_app.tasks else "other"


def _count_success(sender: Any = None, **_kwargs: Any) -> None:
    CELERY_TASKS.labels(_task_name(sender), "success").inc()


def _count_failure(sender: Any = None, **_kwargs: Any) -> None:
    CELERY_TASKS.labels(_task_name(sender), "failure").inc()


def _count_eager_failure(sender: Any = None, request: Any = None, **_kwargs: Any) -> None:
    """In the embedded default (eager, exceptions propagated) Celery reports a task that raised as an
    internal error and sends no task_failure; on a worker it sends task_failure as well, counted there."""
    eager = request.get("is_eager") if isinstance(request, dict) else getattr(request, "is_eager", False)
    if eager:
        _count_failure(sender)


def _count_retry(sender: Any = None, **_kwargs: Any) -> None:
    CELERY_TASKS.labels(_task_name(sender), "retry").inc()


def _worker_logging(**_kwargs: Any) -> None:
    """Celery's ``setup_logging``: with a receiver Celery leaves the root logger (and stdout) alone."""
    settings = get_settings()
    configure_logging("worker", settings.log_level, settings.log_json)


def _serve_worker_metrics(**_kwargs: Any) -> None:
    """On ``worker_ready``: serve ``/metrics`` of every pool process of this worker, if configured.

    Task outcomes are counted in the pool's child processes; ``rewardhub worker`` points
    ``PROMETHEUS_MULTIPROC_DIR`` at a fresh folder before prometheus_client is first imported (see
    rewardhub/entry.py), so each child writes its counters there and this server sums them.
    """
    port = get_settings().worker_metrics_port
    if port is None or not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return
    from prometheus_client import CollectorRegistry, multiprocess, start_http_server

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    start_http_server(port, registry=registry)
    log.info("worker metrics on :%d/metrics", port)


def _forget_dead_child(pid: int | None = None, **_kwargs: Any) -> None:
    if pid is not None and os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


signals.worker_ready.connect(_serve_worker_metrics, weak=False)
signals.worker_process_shutdown.connect(_forget_dead_child, weak=False)
signals.before_task_publish.connect(_add_request_id_header, weak=False)
signals.task_prerun.connect(_restore_request_id, weak=False)
signals.task_success.connect(_count_success, weak=False)
signals.task_failure.connect(_count_failure, weak=False)
signals.task_internal_error.connect(_count_eager_failure, weak=False)
signals.task_retry.connect(_count_retry, weak=False)
signals.setup_logging.connect(_worker_logging, weak=False)


# ------------------------------------------------------------------------------------- sweepers

# Celery beat does not run in our deployment, so each worker's main process runs the sweepers: once
# when it is ready and then every ``job_sweep_interval_s`` on a daemon thread. Several workers sweep
# concurrently; a sweeper's updates are compare-and-set, and a duplicate submission is a no-op.
_SWEEPERS: dict[str, Callable[[], Any]] = {}
_SWEEP_STOP = threading.Event()
_SWEEP_THREAD: threading.Thread | None = None


def register_sweeper(name: str, sweep: Callable[[], Any]) -> None:
    """Run ``sweep()`` on every worker at start-up and periodically (it must be idempotent)."""
    _SWEEPERS[name] = sweep


def run_sweepers() -> dict[str, Any]:
    """Run each registered sweeper once; one that fails is logged and retried next round."""
    out: dict[str, Any] = {}
    for name, sweep in list(_SWEEPERS.items()):
        try:
            out[name] = sweep()
        except Exception as exc:  # the database or the broker is down: the next round retries
            log.warning("sweeper %s failed: %s: %s", name, type(exc).__name__, exc)
            out[name] = None
    return out


def _sweep_loop() -> None:
    interval = get_settings().job_sweep_interval_s
    while not _SWEEP_STOP.is_set():
        run_sweepers()
        _SWEEP_STOP.wait(interval)


def _start_sweeping(**_kwargs: Any) -> None:
    global _SWEEP_THREAD
    if _SWEEP_THREAD is None or not _SWEEP_THREAD.is_alive():
        _SWEEP_STOP.clear()
        _SWEEP_THREAD = threading.Thread(target=_sweep_loop, daemon=True, name="rewardhub-sweeper")
        _SWEEP_THREAD.start()


def start_embedded_sweeping() -> None:
    """The embedded default has no Celery worker: run the sweepers in this process instead (for work a
    previous run left behind — webhook deliveries, rubric jobs). Called by ``rewardhub up``."""
    import importlib

    for module in TASK_MODULES:
        importlib.import_module(module)  # each registers its sweeper on import
    _start_sweeping()


def _stop_sweeping(**_kwargs: Any) -> None:
    _SWEEP_STOP.set()


def stop_embedded_sweeping() -> None:
    """Stop the sweepers :func:`start_embedded_sweeping` started (``rewardhub up`` on its way out)."""
    _stop_sweeping()


def _forget_inherited_connections(**_kwargs: Any) -> None:
    """A forked pool process must not reuse the parent's pooled database sockets (the sweeper's):
    drop them without closing them (closing would end the parent's sessions)."""
    from services.common import db

    for engine in list(db._ENGINES.values()):
        engine.dispose(close=False)
    db._ENGINES.clear()
    db._SESSIONMAKERS.clear()


signals.worker_ready.connect(_start_sweeping, weak=False)
signals.worker_shutdown.connect(_stop_sweeping, weak=False)
signals.worker_process_init.connect(_forget_inherited_connections, weak=False)
