"""Run bookkeeping: create, launch (one worker process per run), reap, cancel, report.

A run's worker process owns its row while it runs (status, step, metrics, checkpoint); the
service only launches it, reads it, and sets ``cancel_requested``. A worker that dies without
finishing its row is detected when the run is read and the run is failed with its exit code.

Each launch mints the run an API key (role trainer, the run's project only) that the worker
receives over the spawn pipe — never in its environment, command line, the stored config or a
log line — and that is revoked when the run ends, however it ends. The run row keeps its id.
"""

from __future__ import annotations

import multiprocessing
import os
from multiprocessing.process import BaseProcess
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.common.auth import create_api_key, forget_key
from services.common.db import session_scope, utcnow
from services.common.errors import Conflict, NotFound
from services.common.models import ApiKey, Project, Role
from services.trainer import confine, datasets
from services.trainer.models import RunStatus, RunStepMetrics, TrainingRun
from trainer.config import ConfigError, RunConfig, parse_config

# Runs launched by this service process; spawn, not fork: torch and an event loop live here.
_PROCESSES: dict[str, BaseProcess] = {}


def checked_config(session: Session, project_id: str, config: RunConfig) -> dict[str, Any]:
    """The config as stored for a run of ``project_id``, after every confinement check.

    The dataset stays as the caller named it (the worker resolves it again before opening it);
    rewards are scored in the run's own project.
    """
    confine.check_api_config(config, project_id)
    confine.dataset_path(project_id, config.dataset,
                         registered=datasets.registered_files(session, project_id, config.dataset))
    stored = config.model_dump(mode="json")
    stored["reward"]["project_id"] = project_id
    return stored


def create_run(session: Session, project: Project, name: str, config: RunConfig) -> tuple[TrainingRun, str]:
    """Record a checked run with the key minted for it; return the run and the clear key (for its launch)."""
    stored = checked_config(session, project.id, config)
    run = TrainingRun(project_id=project.id, name=name, config=stored, max_steps=config.max_steps, output_dir="")
    session.add(run)
    session.flush()
    run.output_dir = str(confine.run_dir(project.id, run.id))
    return run, mint_key(session, run, project)


def mint_key(session: Session, run: TrainingRun, project: Project | None = None) -> str:
    """A fresh trainer key for ``run``'s project alone, named after the run; its id goes on the row."""
    project = project or session.get(Project, run.project_id)
    if project is None:
        raise NotFound(f"project {run.project_id!r} not found", field="project_id")
    revoke_key(session, run)
    label = f"training run {run.id}" + (f" ({run.name})" if run.name else "")
    key, clear = create_api_key(session, role=Role.trainer, projects=[project], name=label[:200])
    run.api_key_id = key.id
    return clear


def revoke_key(session: Session, run: TrainingRun) -> None:
    """Revoke the run's minted key (idempotent) and drop it from this process's principal cache."""
    if run.api_key_id is None:
        return
    key = session.get(ApiKey, run.api_key_id)
    if key is None:
        return
    if key.revoked_at is None:
        key.revoked_at = utcnow()
    forget_key(key.key_hash)


def launch(run_id: str, api_key: str) -> None:
    """Start the run's worker process (it marks the run running, then trains).

    The key travels in the spawn pipe with the target's arguments: unlike the environment or
    argv it is not readable from /proc by other users, nor inherited by anything the worker starts.
    """
    from services.trainer.worker import run_worker

    context = multiprocessing.get_context("spawn")
    process = context.Process(target=run_worker, args=(run_id, api_key), name=f"rewardhub-run-{run_id[:8]}",
                              daemon=False)
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
    session = Session.object_session(run)
    if session is not None:
        revoke_key(session, run)


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
    if run.status.finished:
        revoke_key(session, run)  # the worker revoked it; this also clears this process's cache at once
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
        session = Session.object_session(run)
        if session is not None:
            revoke_key(session, run)


def prepare_resume(session: Session, run: TrainingRun) -> str:
    """Queue a finished run again under today's rules (allowlist, dataset); return its new minted key."""
    if run.status in (RunStatus.queued, RunStatus.running):
        raise Conflict(f"run {run.id} is {run.status.value}; only a finished run can be resumed", field="run_id")
    if run.status is RunStatus.succeeded:
        raise Conflict(f"run {run.id} has succeeded; there is nothing left to train", field="run_id")
    try:
        config = parse_config(run.config)
    except ConfigError as exc:  # a run stored before the current rules
        raise Conflict(f"config: run {run.id} cannot be resumed: {exc}", field="config") from None
    checked_config(session, run.project_id, config)
    if run.output_dir != str(confine.run_dir(run.project_id, run.id)):
        raise Conflict(f"output_dir: run {run.id} writes outside its project's area and cannot be resumed",
                       field="output_dir")
    run.status = RunStatus.queued
    run.cancel_requested = False
    run.error = None
    run.finished_at = None
    return mint_key(session, run)


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
