"""A Celery task round-trip through a real Redis, executed by a separate worker process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from services.common.tasks import make_celery

pytestmark = [pytest.mark.redis, pytest.mark.slow]


def test_task_runs_in_a_separate_worker_process(redis_url: str, tmp_path: Path) -> None:
    env = {**os.environ, "REDIS_URL": redis_url, "REWARDHUB_DATA_DIR": str(tmp_path), "REWARDHUB_LOG_JSON": "false"}
    cli = Path(sys.executable).with_name("rewardhub")
    worker = subprocess.Popen([str(cli), "worker", "--pool", "solo", "--concurrency", "1"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        app = make_celery(redis_url)
        result = app.send_task("rewardhub.ping", args=["hello"])
        value = result.get(timeout=60)
        assert value["payload"] == "hello"
        assert value["task_id"] == result.id
        assert result.state == "SUCCESS"
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()


def test_reliability_settings() -> None:
    app = make_celery("redis://127.0.0.1:6379/15")
    assert app.conf.task_acks_late is True
    assert app.conf.task_reject_on_worker_lost is True
    assert app.conf.worker_prefetch_multiplier == 1
    assert not app.conf.task_always_eager


def test_embedded_default_runs_tasks_in_process() -> None:
    app = make_celery(None)
    assert app.conf.task_always_eager is True


def test_submit_in_process_returns_at_once_and_finishes(isolated_env: Path) -> None:
    from services.common import tasks

    handle = tasks.submit(tasks.ping, "local")
    assert handle.future is not None
    assert handle.future.result(timeout=30)["payload"] == "local"
    assert handle.state() == "SUCCESS"
