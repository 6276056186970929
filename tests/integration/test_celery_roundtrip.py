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
    # A lost broker is retried forever; Redis redelivers an unacked task after the visibility timeout.
    assert app.conf.broker_connection_retry_on_startup is True and app.conf.broker_connection_retry is True
    assert app.conf.broker_connection_max_retries is None
    assert app.conf.broker_transport_options["visibility_timeout"] >= 300
    assert app.conf.result_backend_transport_options["visibility_timeout"] >= 300
    assert app.conf.worker_cancel_long_running_tasks_on_connection_loss is False
    assert app.conf.worker_consumer == "services.common.tasks:ResilientConsumer"


def test_visibility_timeout_follows_the_longest_job_step(isolated_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from services.common.settings import get_settings, reset_settings_cache
    from services.common.tasks import visibility_timeout_s

    monkeypatch.setenv("REWARDHUB_LLM_TIMEOUT_S", "120")
    monkeypatch.setenv("REWARDHUB_LLM_MAX_RETRIES", "3")
    reset_settings_cache()
    assert visibility_timeout_s(get_settings()) == 2 * 120 * 4
    monkeypatch.setenv("REWARDHUB_CELERY_VISIBILITY_TIMEOUT_S", "42")
    reset_settings_cache()
    assert visibility_timeout_s(get_settings()) == 42
    assert make_celery("redis://127.0.0.1:6379/15").conf.broker_transport_options == {"visibility_timeout": 42.0}


def test_embedded_default_runs_tasks_in_process() -> None:
    app = make_celery(None)
    assert app.conf.task_always_eager is True


def test_submit_in_process_returns_at_once_and_finishes(isolated_env: Path) -> None:
    from services.common import tasks

    handle = tasks.submit(tasks.ping, "local")
    assert handle.future is not None
    assert handle.future.result(timeout=30)["payload"] == "local"
    assert handle.state() == "SUCCESS"
