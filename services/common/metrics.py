"""Prometheus metrics for every process, and the /metrics route.

Every metric is a module-level object in the default registry, so it is registered once per
process however many service apps that process builds: the embedded default mounts every service
under ``/services/<name>`` and each mount's ``/metrics`` serves the same registry. Collectors that
read state at scrape time (Celery queue depth, the annotation queue) are added with
:func:`register_collector`, which is idempotent for the same reason.

Labels are bounded: grader types, statuses, outcomes, task names and route templates — never ids
or user text.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from functools import lru_cache
from typing import Any

import redis
from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("rewardhub.metrics")

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

HTTP_REQUESTS = Counter("rewardhub_http_requests_total", "HTTP requests handled",
                        ["service", "method", "route", "status"])
HTTP_LATENCY = Histogram("rewardhub_http_request_seconds", "HTTP request latency",
                         ["service", "method", "route"], buckets=LATENCY_BUCKETS)

# --- verifier
GRADER_STATUSES = ("ok", "invalid_input", "timeout", "error")
GRADER_RESULTS = Counter("rewardhub_grader_results_total", "Graded items by grader type and result status",
                         ["grader", "status"])
GRADER_ITEM_SECONDS = Histogram("rewardhub_grader_item_seconds",
                                "Time one item took to grade (from when it started running), by grader type",
                                ["grader"], buckets=(0.001, *LATENCY_BUCKETS))
POOL_QUEUE_DEPTH = Gauge("rewardhub_verifier_pool_queue_depth", "Items waiting for a verifier pool worker")
POOL_WORKER_REPLACEMENTS = Counter("rewardhub_verifier_pool_worker_replacements_total",
                                   "Verifier pool workers replaced, by why (timeout: killed past an item's "
                                   "limit; died: exited on its own)", ["reason"])

# --- Celery
CELERY_TASKS = Counter("rewardhub_celery_tasks_total", "Celery task outcomes (success, failure, retry) by task",
                       ["task", "outcome"])

# --- annotation
ANNOTATION_LEASES_EXPIRED = Counter("rewardhub_annotation_leases_expired_total",
                                    "Annotator leases found expired, by what found them (late_action: a submit "
                                    "or renewal refused; re_lease: the annotator took the task up again)",
                                    ["found_by"])
ANNOTATION_LABELS_BOUGHT = Counter("rewardhub_annotation_labels_bought_total",
                                   "Labels bought from the budget, by who answers them", ["source"])

# --- sandbox
SANDBOX_RUNS = Counter("rewardhub_sandbox_runs_total", "Sandbox runs by how they ended", ["status"])
SANDBOX_SESSIONS_LIVE = Gauge("rewardhub_sandbox_sessions_live", "Tool sessions whose interpreter is running")
SANDBOX_SESSION_EXECUTIONS = Counter("rewardhub_sandbox_session_executions_total",
                                     "Tool-session executions by status (success, timeout, runtime_error)",
                                     ["status"])
SANDBOX_SESSIONS_ENDED = Counter("rewardhub_sandbox_sessions_ended_total",
                                 "Tool sessions ended, by why (closed, expired, timeout, memory_exceeded, …)",
                                 ["reason"])

# A scrape must answer even when Redis is down: every Redis call is bounded by this.
REDIS_SCRAPE_TIMEOUT_S = 0.5

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


def observe_grade(grader: str, status: str, seconds: float) -> None:
    """Count one graded item and record how long it took."""
    GRADER_RESULTS.labels(grader, status if status in GRADER_STATUSES else "error").inc()
    GRADER_ITEM_SECONDS.labels(grader).observe(max(seconds, 0.0))


_COLLECTORS: dict[str, Collector] = {}
_COLLECTORS_LOCK = threading.Lock()


def register_collector(name: str, collector: Collector) -> None:
    """Register a scrape-time collector once per process (a second app build reuses the first)."""
    with _COLLECTORS_LOCK:
        if name not in _COLLECTORS:
            REGISTRY.register(collector)
            _COLLECTORS[name] = collector


class ScrapeGauge(Collector):
    """A gauge family computed at scrape time by ``read()`` (label values -> value). A ``read`` that
    fails (its database is down) leaves the family out of that scrape rather than failing /metrics."""

    def __init__(self, name: str, documentation: str, labels: list[str],
                 read: Callable[[], dict[tuple[str, ...], float]]) -> None:
        self.name, self.documentation, self.labels, self.read = name, documentation, labels, read

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            values = self.read()
        except Exception as exc:  # whatever the source raised: the scrape must still answer
            log.debug("%s unavailable: %s", self.name, type(exc).__name__)
            return
        family = GaugeMetricFamily(self.name, self.documentation, labels=self.labels)
        for label_values, value in sorted(values.items()):
            family.add_metric(list(label_values), value)
        yield family


# ------------------------------------------------------------------------ Celery queue depth

@lru_cache(maxsize=4)
def _scrape_redis(url: str) -> redis.Redis:
    # Short timeouts: /metrics must never hang on a Redis that is down or unreachable.
    return redis.Redis.from_url(url, socket_timeout=REDIS_SCRAPE_TIMEOUT_S,
                                socket_connect_timeout=REDIS_SCRAPE_TIMEOUT_S, retry_on_timeout=False)


def _queue_keys(queue: str, priority_steps: Iterable[int]) -> list[str]:
    """The Redis lists kombu keeps a queue in: the queue's own name for priority 0, and
    ``<name>\\x06\\x16<priority>`` for each other priority step used."""
    return [queue, *(f"{queue}\x06\x16{step}" for step in priority_steps if step)]


class CeleryQueueCollector(Collector):
    """``rewardhub_celery_queue_depth{queue}``: messages waiting in each Celery queue, read from Redis at
    scrape time; ``rewardhub_celery_broker_up`` is 0 when Redis did not answer. Nothing without REDIS_URL."""

    def __init__(self, queue_names: Callable[[], list[str]]) -> None:
        self.queue_names = queue_names

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from services.common.settings import get_settings

        url = get_settings().redis_url
        if not url:
            return
        depth = GaugeMetricFamily("rewardhub_celery_queue_depth", "Messages waiting in a Celery queue",
                                  labels=["queue"])
        up = GaugeMetricFamily("rewardhub_celery_broker_up", "Whether the Celery broker answered this scrape")
        try:
            client = _scrape_redis(url)
            pipe = client.pipeline(transaction=False)
            names = self.queue_names()
            keys = {name: _queue_keys(name, (0, 3, 6, 9)) for name in names}
            for name in names:
                for key in keys[name]:
                    pipe.llen(key)
            lengths = iter(pipe.execute())
            for name in names:
                depth.add_metric([name], sum(int(next(lengths)) for _ in keys[name]))
        except (redis.RedisError, OSError) as exc:
            log.debug("celery queue depth unavailable: %s", type(exc).__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield depth
        yield up


# ----------------------------------------------------------------------------- HTTP middleware

# Set on the (shared) ASGI scope by the innermost MetricsMiddleware that counted the request, so the
# gateway's middleware around an embedded /services/<name> mount does not count it a second time.
COUNTED_SCOPE_KEY = "rewardhub.metrics_counted"


class MetricsMiddleware:
    """Pure ASGI middleware (no per-request task group, unlike BaseHTTPMiddleware): counts and times requests."""

    def __init__(self, app: ASGIApp, service: str) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            if not scope.get(COUNTED_SCOPE_KEY):
                scope[COUNTED_SCOPE_KEY] = True
                self._record(scope, status, time.perf_counter() - start)

    def _record(self, scope: Scope, status: int, seconds: float) -> None:
        # Label by route template, not raw path, so ids do not explode the label cardinality.
        route = getattr(scope.get("route"), "path", "unmatched")
        method = scope.get("method", "")
        HTTP_REQUESTS.labels(self.service, method, route, str(status)).inc()
        HTTP_LATENCY.labels(self.service, method, route).observe(seconds)


def sample_value(name: str, labels: dict[str, str] | None = None) -> float:
    """The current value of one sample in this process's registry (0.0 when it has none yet)."""
    value: Any = REGISTRY.get_sample_value(name, labels or {})
    return float(value) if value is not None else 0.0
