"""Run bookkeeping: create, launch (one worker process per run), reap, cancel, report.

A run's worker process owns its row while it runs (status, step, metrics, checkpoint); the
service only launches it, reads it, and sets ``cancel_requested``. A worker that dies without
finishing its row is detected when the run is read and the run is failed with its exit code.
"""

from __future__ import annotations

import multiprocessing
import os
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.common.db import session_scope, utcnow
from services.common.errors import Conflict, NotFound
from services.common.settings import get_settings
from services.trainer.models import RunStatus, RunStepMetrics, TrainingRun

# Runs launched by this service process; spawn, not fork: torch and an event loop live here.
_PROCESSES: dict[str, BaseProcess] = {}


def runs_dir() -> Path:
    return get_settings().data_dir / "runs"


def create_run(session: Session, project_id: str, name: str, config: dict[str, Any], max_steps: int) -> TrainingRun:
    run = TrainingRun(project_id=project_id, name=name, config=config, max_steps=max_steps, output_dir="")
    session.add(run)
    session.flush()
    output_dir = config.get("output_dir") or str(runs_dir() / run.id)
    run.output_dir = output_dir
    run.config = {**config, "output_dir": output_dir}
    return run


def launch(run_id: str) -> None:
    """Start the run's worker process (it marks the run running, then trains)."""
    from services.trainer.worker import run_worker

    context = multiprocessing.get_context("spawn")
    process = context.Process(target=run_worker, args=(run_id,), name=f"rewardhub-run-{run_id[:8]}", daemon=False)
    process.start()
    _PROCESSES[run_id] = process


def reap(run: TrainingRun) -> None:
    """Fail a run whose worker is gone without having finished it (killed, out of memory, restart)."""
    if run.status.finished:
        return
    process = _PROCESSES.get(run.id)
    if process is not None:
        if process.is_alive():
            return
        process.join(timeout=0)
        _PROCESSES.pop(run.id, None)
        reason = f"the run's worker process exited with code {process.exitcode} before finishing"
    elif run.worker_pid is not None and _pid_alive(run.worker_pid):
        return  # launched by an earlier service process on this host and still training
    else:
        reason = "the run's worker is gone (the trainer service restarted); resume it from its last checkpoint"
    run.status = RunStatus.failed
    run.error = reason
    run.finished_at = utcnow()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def get_run(session: Session, run_id: str, project_ids: set[str] | None) -> TrainingRun:
    run = session.get(TrainingRun, run_id)
    if run is None or (project_ids is not None and run.project_id not in project_ids):
        raise NotFound(f"no training run {run_id}", field="run_id")
    reap(run)
    return run


def list_runs(session: Session, project_ids: set[str] | None, limit: int) -> list[TrainingRun]:
    query = select(TrainingRun).order_by(TrainingRun.created_at.desc()).limit(limit)
    if project_ids is not None:
        query = query.where(TrainingRun.project_id.in_(project_ids))
    runs = list(session.scalars(query))
    for run in runs:
        reap(run)
    return runs


def request_cancel(run: TrainingRun) -> None:
    if run.status.finished:
        raise Conflict(f"run {run.id} has already {run.status.value}", field="run_id")
    run.cancel_requested = True
    if run.status is RunStatus.queued and run.id not in _PROCESSES:
        run.status = RunStatus.cancelled
        run.finished_at = utcnow()


def prepare_resume(run: TrainingRun) -> None:
    if run.status in (RunStatus.queued, RunStatus.running):
        raise Conflict(f"run {run.id} is {run.status.value}; only a finished run can be resumed", field="run_id")
    if run.status is RunStatus.succeeded:
        raise Conflict(f"run {run.id} has succeeded; there is nothing left to train", field="run_id")
    run.status = RunStatus.queued
    run.cancel_requested = False
    run.error = None
    run.finished_at = None


def step_metrics(session: Session, run_id: str, after_step: int, limit: int) -> list[RunStepMetrics]:
    return list(session.scalars(select(RunStepMetrics).where(RunStepMetrics.run_id == run_id,
                                                             RunStepMetrics.step > after_step)
                                .order_by(RunStepMetrics.step).limit(limit)))


def running_metrics() -> list[tuple[str, dict[str, Any]]]:
    """(run id, last metrics) of every run that is training now, for the Prometheus collector."""
    with session_scope() as session:
        rows = session.execute(select(TrainingRun.id, TrainingRun.last_metrics)
                               .where(TrainingRun.status == RunStatus.running)).all()
    return [(run_id, metrics or {}) for run_id, metrics in rows]


def stop_all(timeout_s: float = 10.0) -> None:
    """Ask every local worker to stop (service shutdown); kill those that do not."""
    for run_id in list(_PROCESSES):
        with session_scope() as session:
            run = session.get(TrainingRun, run_id)
            if run is not None and not run.status.finished:
                run.cancel_requested = True
    for run_id, process in list(_PROCESSES.items()):
        process.join(timeout=timeout_s)
        if process.is_alive():
            process.kill()
            process.join(timeout=5)
        _PROCESSES.pop(run_id, None)
