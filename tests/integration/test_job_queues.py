"""One Celery queue per job kind: each service's tasks land in its own Redis list, the worker consumes
all of them unless told which (``rewardhub worker --queues``), and the depth of each is a metric."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from services.common import registry
from services.common.tasks import TASK_MODULES, celery_app, make_celery


def _registered_tasks() -> list[str]:
    import importlib

    for module in TASK_MODULES:
        importlib.import_module(module)
    return sorted(name for name in celery_app.tasks if not name.startswith("celery."))


def test_every_task_goes_to_the_queue_of_the_service_that_declares_it() -> None:
    routed = {name: celery_app.amqp.router.route({}, name)["queue"].name for name in _registered_tasks()}
    assert routed == {"annotation.deliver_webhooks": "annotation", "rec_rm.train_behaviour_model": "rec_rm",
                      "rewardhub.ping": "celery", "rubric_rm.run_job": "rubric_rm"}
    # Each declared job queue has a task (no queue that nothing feeds, for a pool or KEDA to scale on).
    assert set(registry.job_queues().values()) == {queue for queue in routed.values() if queue != "celery"}
    assert [queue.name for queue in celery_app.conf.task_queues] == registry.queue_names()


@pytest.mark.redis
def test_a_task_is_published_to_its_own_redis_list(redis_url: str) -> None:
    app = make_celery(redis_url)
    client = redis.Redis.from_url(redis_url)
    app.send_task("rubric_rm.run_job", args=["job-1"])
    app.send_task("rec_rm.train_behaviour_model", args=["model-1"])
    app.send_task("rec_rm.train_behaviour_model", args=["model-2"])
    app.send_task("rewardhub.ping")
    # kombu's Redis transport keeps each queue as a list named after it: what KEDA's redis scaler reads.
    assert {name: client.llen(name) for name in registry.queue_names()} == \
        {"celery": 1, "annotation": 0, "rubric_rm": 1, "rec_rm": 2}


@pytest.mark.redis
@pytest.mark.parametrize(("given", "expected"), [("", []), ("rubric_rm,rec_rm", ["--queues=rubric_rm,rec_rm"])])
def test_the_worker_consumes_every_queue_unless_told_which(given: str, expected: list[str],
                                                           isolated_env: Path, redis_url: str,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from rewardhub.cli import app
    from services.common.settings import reset_settings_cache

    started: list[list[str]] = []
    # A stand-in for Celery's worker loop (it would block): only the argv the CLI builds is checked.
    monkeypatch.setattr(celery_app, "worker_main", lambda argv: started.append(list(argv)))
    monkeypatch.setenv("REDIS_URL", redis_url)
    reset_settings_cache()
    args = ["worker", "--concurrency", "1", "--pool", "solo", *(["--queues", given] if given else [])]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    [argv] = started
    assert [a for a in argv if a.startswith("--queues")] == expected
    assert "--concurrency=1" in argv and "--pool=solo" in argv


@pytest.mark.redis
def test_the_depth_of_every_job_queue_is_a_metric(isolated_env: Path, redis_url: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from services.common.app_factory import create_service_app
    from services.common.settings import reset_settings_cache

    client = redis.Redis.from_url(redis_url)
    client.rpush("rubric_rm", b"a", b"b")
    monkeypatch.setenv("REDIS_URL", redis_url)
    reset_settings_cache()
    with TestClient(create_service_app("test", [], title="test")) as http:
        text = http.get("/metrics").text
    depth: dict[str, Any] = {s.labels["queue"]: s.value for family in text_string_to_metric_families(text)
                             for s in family.samples if s.name == "rewardhub_celery_queue_depth"}
    assert depth == {"annotation": 0, "celery": 0, "rec_rm": 0, "rubric_rm": 2}
