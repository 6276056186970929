"""A training run's worker process: owns the run's row while it trains.

It marks the run running, resumes from the run's last checkpoint if there is one, trains, and
writes each step's metrics to the database (and, through the trainer, to metrics.jsonl). It
checks ``cancel_requested`` between steps. Whatever ends the run is written to its row: success,
cancellation with the checkpoint it left, or the error that stopped it.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from sqlalchemy import select

from services.common.db import session_scope, utcnow
from services.common.logging import configure_logging
from services.common.settings import get_settings
from services.trainer.models import RunStatus, RunStepMetrics, TrainingRun

logger = logging.getLogger(__name__)


def _record_step(run_id: str, step: int, metrics: dict[str, Any]) -> None:
    clean = {k: v for k, v in metrics.items() if isinstance(v, int | float | str | bool)}
    with session_scope() as session:
        session.add(RunStepMetrics(run_id=run_id, step=step, metrics=clean))
        run = session.get(TrainingRun, run_id)
        if run is not None:
            run.current_step = step
            run.last_metrics = clean


def _cancel_requested(run_id: str) -> bool:
    with session_scope() as session:
        return bool(session.scalar(select(TrainingRun.cancel_requested).where(TrainingRun.id == run_id)))


def _finish(run_id: str, status: RunStatus, *, error: str | None = None, checkpoint: str | None = None) -> None:
    with session_scope() as session:
        run = session.get(TrainingRun, run_id)
        if run is None:
            return
        run.status = status
        run.error = error
        if checkpoint is not None:
            run.checkpoint = checkpoint
        run.finished_at = utcnow()


def _start(run_id: str) -> dict[str, Any] | None:
    with session_scope() as session:
        run = session.get(TrainingRun, run_id)
        if run is None or run.status is not RunStatus.queued:
            return None
        if run.cancel_requested:
            run.status = RunStatus.cancelled
            run.finished_at = utcnow()
            return None
        run.status = RunStatus.running
        run.started_at = utcnow()
        run.worker_pid = os.getpid()
        return dict(run.config)


def run_worker(run_id: str) -> None:
    """Entry point of the run's process (spawned by services.trainer.runs.launch)."""
    settings = get_settings()
    configure_logging("trainer-run", settings.log_level, settings.log_json)
    config_data = _start(run_id)
    if config_data is None:
        return
    try:
        from trainer.config import parse_config
        from trainer.grpo import GRPOTrainer

        trainer = GRPOTrainer(parse_config(config_data))
        trainer.resume()
        outcome = trainer.train(on_step=lambda step, metrics: _record_step(run_id, step, metrics),
                                should_stop=lambda: _cancel_requested(run_id))
    except Exception as exc:  # any failure ends the run with its cause, never a silent success
        logger.exception("training run %s failed", run_id)
        _finish(run_id, RunStatus.failed, error=f"{type(exc).__name__}: {exc}")
        return
    status = RunStatus.cancelled if outcome.status == "cancelled" else RunStatus.succeeded
    _finish(run_id, status, checkpoint=str(outcome.checkpoint) if outcome.checkpoint else None)
