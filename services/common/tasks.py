"""The Celery app shared by every service.

With ``REDIS_URL`` set, Redis is broker and result backend and separate worker processes run
the tasks. Without it (embedded default), tasks run in-process: ``submit`` runs them on a
background thread so a request still returns at once and progress can be polled.
"""

from __future__ import annotations

import socket
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from celery import Celery, Task

from services.common.settings import get_settings

TASK_MODULES = ["services.common.tasks", "services.rubric_rm.tasks"]


def make_celery(redis_url: str | None) -> Celery:
    app = Celery("rewardhub")
    if redis_url:
        app.conf.update(broker_url=redis_url, result_backend=redis_url)
    else:
        app.conf.update(broker_url="memory://", result_backend="cache+memory://",
                        task_always_eager=True, task_eager_propagates=True, task_store_eager_result=True)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_track_started=True,
        result_expires=7 * 24 * 3600,
        broker_connection_retry_on_startup=True,
        imports=TASK_MODULES,
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


_LOCAL_EXECUTOR: ThreadPoolExecutor | None = None


def submit(task: Task, *args: Any, **kwargs: Any) -> TaskHandle:
    """Queue ``task`` on the broker, or run it on a local thread in the embedded default."""
    if not celery_app.conf.task_always_eager:
        result = task.apply_async(args=args, kwargs=kwargs)
        return TaskHandle(id=result.id)
    global _LOCAL_EXECUTOR
    if _LOCAL_EXECUTOR is None:
        _LOCAL_EXECUTOR = ThreadPoolExecutor(max_workers=4, thread_name_prefix="rewardhub-task")
    task_id = uuid.uuid4().hex
    future = _LOCAL_EXECUTOR.submit(lambda: task.apply(args=args, kwargs=kwargs, task_id=task_id).get())
    return TaskHandle(id=task_id, future=future)
