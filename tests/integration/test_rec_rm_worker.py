"""The behaviour-model training task through a real Redis (DB 12) and a separate `rewardhub worker`
process: the job's progress and metrics land in the database; a second delivery is a no-op."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SQLITE_ONLY, flushed_redis, make_tenant
from tests.integration.test_rec_rm_api import ITEMS, jsonl, logs

# Slow (a worker process starts, ~12 s): its in-process counterpart is test_rec_rm_api.py's training job.
pytestmark = [pytest.mark.redis, pytest.mark.slow]
REDIS_DB_12 = os.environ.get("REWARDHUB_TEST_REC_RM_REDIS_URL", "redis://127.0.0.1:6379/12")


@SQLITE_ONLY
def test_training_runs_on_a_worker_through_redis(database: str, tmp_path: Path) -> None:
    from services.common.db import session_scope
    from services.common.tasks import make_celery
    from services.rec_rm import operations, training
    from services.rec_rm.models import BehaviourModel
    from services.rec_rm.schemas import TrainRequest

    tenant = make_tenant()
    operations.import_catalog(tenant.project_a, "jsonl", jsonl(ITEMS).encode(), None)
    operations.import_interactions(tenant.project_a, "jsonl", logs().encode(), None)
    with session_scope() as session:
        model_id = training.create_model(session, tenant.project_a, TrainRequest(max_iter=20)).id
    with flushed_redis(REDIS_DB_12) as redis_url:
        env = {**os.environ, "REDIS_URL": redis_url, "REWARDHUB_LOG_JSON": "false"}
        cli = Path(sys.executable).with_name("rewardhub")
        worker = subprocess.Popen([str(cli), "worker", "--pool", "solo", "--concurrency", "1"], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            app = make_celery(redis_url)
            metrics = app.send_task("rec_rm.train_behaviour_model", args=[model_id]).get(timeout=120)
            again = app.send_task("rec_rm.train_behaviour_model", args=[model_id]).get(timeout=60)
        finally:
            os.killpg(worker.pid, signal.SIGTERM)
            try:
                worker.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait()
    assert metrics["n_events"] == 300 and 0.5 < metrics["auc"] <= 1.0
    assert "skipped" in again
    with session_scope() as session:
        row = session.get(BehaviourModel, model_id)
        assert row is not None and row.state.value == "succeeded" and row.done == row.total == 302
        assert row.blob and row.metrics and row.metrics["log_loss"] > 0
