"""Run bookkeeping: create, launch (one worker process per run), end dead attempts, cancel, report.

A run's worker process owns its row while it runs (status, step, metrics, checkpoint) and holds
a heartbeat lease on it: every launch is a new ``attempt``, and the worker writes only while the
row still carries its attempt (services/trainer/worker.py). The service launches workers, reads
rows and sets ``cancel_requested``; a worker that dies is noticed by the process that launched it
(it waits for its children, so none is left a zombie) or, after that process is gone, by the
watchers (services/trainer/supervisor.py) once its heartbeat is stale. Every transition is a
conditional UPDATE on (status, attempt[, heartbeat]), so two processes never both act on a run.

A worker runs in its own session and process group, not as a daemon child: it survives a restart
of the service process that launched it. Each launch mints the run an API key (role trainer, the
run's project only) that the worker reads once from its stdin — never from its environment, its
command line, the stored config or a log line — and that is revoked when the attempt ends,
however it ends. The run row keeps its id.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, cast

from sqlalchemy import CursorResult, Update, select, update
from sqlalchemy.orm import Session

from services.common.auth import create_api_key, forget_key
from services.common.db import session_scope, utcnow
from services.common.errors import Conflict, NotFound
from services.common.models import ApiKey, Project, Role
from services.common.pagination import keyset_page
from services.common.settings import Settings, get_settings
from services.trainer import confine, datasets
from services.trainer.models import LIVE_STATUSES, RunStatus, RunStepMetrics, TrainingRun
from trainer.config import ConfigError, RunConfig, parse_config

logger = logging.getLogger(__name__)
WORKER_LOG = "worker.log"


def rows_changed(session: Session, statement: Update) -> int:
    """Run a conditional UPDATE (a compare-and-set) and say how many rows it changed."""
    result = session.execute(statement.execution_options(synchronize_session=False))
    return cast(CursorResult[Any], result).rowcount


def heartbeat_interval_s(settings: Settings | None = None) -> float:
    return (settings or get_settings()).trainer_heartbeat_s


def stale_after_s(settings: Settings | None = None) -> float:
    """How old a heartbeat may get before the run's worker counts as dead (and its lease as lost)."""
    s = settings or get_settings()
    return s.trainer_stale_after_s if s.trainer_stale_after_s is not None else 4.0 * s.trainer_heartbeat_s


def this_process() -> str:
    """``host:pid`` of this process: who launched an attempt, or where a worker runs."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class JobKind:
    """One kind of supervised job: its table (with the lease columns of :class:`TrainingRun`: status,
    attempt, supervisor, heartbeat_at, worker_pid/host, cancel_requested, auto_resumes, api_key_id,
    finished_at, error), the module its worker runs as (``python -m MODULE ID ATTEMPT``, the key on
    stdin), what it is called in messages, its resume route and its resume check (raises a 4xx).

    Training runs are :data:`RUN_JOBS`; evaluation jobs (services/trainer/evaljobs.py) are another.
    Launching, reaping, ending dead attempts, claiming queued ones and the watchers' sweeps
    (services/trainer/supervisor.py) take a kind and work the same for every one.
    """

    table: Any
    worker_module: str
    noun: str
    resume_route: str  # with ``{id}``
    check_resumable: Callable[[Session, Any], None]


_JOB_KINDS: list[JobKind] = []


def register_job_kind(kind: JobKind) -> JobKind:
    """Make the watchers sweep and launch jobs of ``kind`` too (idempotent)."""
    if kind not in _JOB_KINDS:
        _JOB_KINDS.append(kind)
    return kind


def job_kinds() -> list[JobKind]:
    return list(_JOB_KINDS)


@dataclass(frozen=True)
class Launch:
    """What a worker needs to start one attempt of a run; the key stays out of every repr."""

    run_id: str
    attempt: int
    output_dir: str
    api_key: str = field(repr=False)
    kind: JobKind | None = field(default=None, repr=False)  # None: a training run


def checked_config(session: Session, project_id: str, config: RunConfig) -> dict[str, Any]:
    """The config as stored for a run of ``project_id``, after every confinement check.

    The dataset stays as the caller named it (the worker resolves it again before opening it);
    rewards are scored in the run's own project.
    """
    confine.check_api_config(config, project_id)
    confine.dataset_path(project_id, config.dataset,
                         registered=datasets.registered_files(session, project_id, config.dataset))
    if config.eval is not None:  # a held-out set: one of the project's datasets, confined the same way
        confine.dataset_path(project_id, config.eval.data, field="config.eval.data",
                             registered=datasets.registered_files(session, project_id, config.eval.data))
    stored = config.model_dump(mode="json")
    stored["reward"]["project_id"] = project_id
    return stored


def create_run(session: Session, project: Project, name: str, config: RunConfig) -> tuple[TrainingRun, Launch]:
    """Record a checked run, claimed by this process as its first attempt, with the key minted for it."""
    stored = checked_config(session, project.id, config)
    run = TrainingRun(project_id=project.id, name=name, config=stored, max_steps=config.max_steps, output_dir="",
                      attempt=1, supervisor=this_process(), heartbeat_at=utcnow())
    session.add(run)
    session.flush()
    run.output_dir = str(confine.run_dir(project.id, run.id))
    return run, Launch(run.id, run.attempt, run.output_dir, mint_key(session, run, project))


def mint_key(session: Session, run: Any, project: Project | None = None) -> str:
    """A fresh trainer key for ``run``'s project alone, named after the run; its id goes on the row.

    ``run`` is a training run or another supervised job (an evaluation job): a row with ``id``,
    ``project_id``, ``name`` and ``api_key_id``."""
    project = project or session.get(Project, run.project_id)
    if project is None:
        raise NotFound(f"project {run.project_id!r} not found", field="project_id")
    revoke_key(session, run)
    label = ("training run " if isinstance(run, TrainingRun) else "evaluation job ") + run.id \
        + (f" ({run.name})" if run.name else "")
    key, clear = create_api_key(session, role=Role.trainer, projects=[project], name=label[:200])
    run.api_key_id = key.id
    return clear


def revoke_key(session: Session, run: Any) -> None:
    """Revoke the run's minted key (idempotent) and drop it from this process's principal cache."""
    if run.api_key_id is None:
        return
    key = session.get(ApiKey, run.api_key_id)
    if key is None:
        return
    if key.revoked_at is None:
        key.revoked_at = utcnow()
    forget_key(key.key_hash)


# ------------------------------------------------------------------------------------- launching

def launch(ticket: Launch) -> None:
    """Start the attempt's worker (it marks the run running, then trains) and wait for it on a thread.

    The worker gets its own session (``start_new_session``): a signal to the service's process group
    or the service's death does not reach it. Its output goes to ``worker.log`` in the run's folder,
    not to the service's pipes, whose reader may be gone long before the run ends. The key is
    written to its stdin and the pipe closed: unlike argv or the environment it is not readable from
    /proc, nor inherited by anything the worker starts.
    """
    kind = ticket.kind or RUN_JOBS
    log_path = Path(ticket.output_dir) / WORKER_LOG
    try:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", kind.worker_module, ticket.run_id, str(ticket.attempt)],
                stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
    except OSError as exc:
        end_dead_attempt(ticket.run_id, ticket.attempt, f"the {kind.noun}'s worker could not be started: {exc}",
                         kind=kind)
        return
    try:
        if process.stdin is not None:  # always, with stdin=PIPE
            process.stdin.write(ticket.api_key.encode() + b"\n")
            process.stdin.close()
    except OSError:  # it died at once; the waiter below reports how
        logger.warning("run %s: the worker exited before it read its key", ticket.run_id)
    threading.Thread(target=_wait_for_worker, args=(process, ticket.run_id, ticket.attempt, kind), daemon=True,
                     name=f"rewardhub-run-{ticket.run_id[:8]}").start()
    logger.info("%s %s: attempt %d launched as worker pid %d", kind.noun, ticket.run_id, ticket.attempt, process.pid)


def _exit_reason(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def _wait_for_worker(process: subprocess.Popen[bytes], run_id: str, attempt: int,
                     kind: JobKind | None = None) -> None:
    """Reap the worker when it exits; if it left its attempt unfinished, end (or resume) it at once."""
    kind = kind or RUN_JOBS
    code = process.wait()
    try:
        outcome = end_dead_attempt(run_id, attempt, f"the {kind.noun}'s worker process {_exit_reason(code)} "
                                   f"before finishing the {kind.noun}", kind=kind)
        if outcome == "resumed":
            relaunch(run_id, kind=kind)
    except Exception as exc:  # the database is down: the watchers see the stale heartbeat later
        logger.warning("%s %s: could not record that its worker (pid %d) exited: %s: %s", kind.noun, run_id,
                       process.pid, type(exc).__name__, exc)


def claim_pending(run_id: str, *, kind: JobKind | None = None) -> Launch | None:
    """Claim a queued run that no process launched yet (an automatic resume) and mint its key.

    None when another process claimed it first, or it is no longer waiting.
    """
    table = (kind or RUN_JOBS).table
    with session_scope() as session:
        run = session.get(table, run_id)
        if run is None or run.status is not RunStatus.queued or run.supervisor is not None:
            return None
        claimed = rows_changed(session, update(table).where(
            table.id == run_id, table.attempt == run.attempt, table.status == RunStatus.queued,
            table.supervisor.is_(None)).values(supervisor=this_process(), heartbeat_at=utcnow()))
        if claimed != 1:
            session.rollback()
            return None
        return Launch(run.id, run.attempt, run.output_dir, mint_key(session, run), kind)


def relaunch(run_id: str, *, kind: JobKind | None = None) -> bool:
    """Claim and launch a run waiting for a worker; False when another process got it."""
    ticket = claim_pending(run_id, kind=kind)
    if ticket is None:
        return False
    launch(ticket)
    return True


# ----------------------------------------------------------------------------- dead attempts

def check_resumable(session: Session, run: TrainingRun) -> None:
    """Raise (a 4xx) unless ``run`` may be queued again under today's rules (allowlist, dataset, folder)."""
    try:
        config = parse_config(run.config)
    except ConfigError as exc:  # a run stored before the current rules
        raise Conflict(f"config: run {run.id} cannot be resumed: {exc}", field="config") from None
    checked_config(session, run.project_id, config)
    if run.output_dir != str(confine.run_dir(run.project_id, run.id)):
        raise Conflict(f"output_dir: run {run.id} writes outside its project's area and cannot be resumed",
                       field="output_dir")


RUN_JOBS = register_job_kind(JobKind(TrainingRun, "services.trainer.worker", "run", "/v1/runs/{id}/resume",
                                     check_resumable))


def _resume_problem(session: Session, run: Any, kind: JobKind | None = None) -> str | None:
    try:
        (kind or RUN_JOBS).check_resumable(session, run)
    except Exception as exc:  # any refusal: the run is failed with it instead of resumed
        return str(exc)
    return None


def _dead_attempt_values(session: Session, run: Any, cause: str, kind: JobKind | None = None) -> dict[str, Any]:
    """The row's next state when its attempt's worker is dead: requeued for a resume, or ended."""
    kind = kind or RUN_JOBS
    settings = get_settings()
    ended: dict[str, Any] = {"finished_at": utcnow(), "heartbeat_at": None}
    if run.cancel_requested:
        return {**ended, "status": RunStatus.cancelled, "error": f"{cause} (while it was being cancelled)"}
    if not settings.trainer_resume_dead_runs:
        return {**ended, "status": RunStatus.failed,
                "error": f"{cause}; resume it from its last checkpoint with POST "
                         f"{kind.resume_route.format(id=run.id)}"}
    if run.auto_resumes >= settings.trainer_max_auto_resumes:
        return {**ended, "status": RunStatus.failed,
                "error": f"{cause}; gave up after {run.auto_resumes} automatic resumes "
                         f"(REWARDHUB_TRAINER_MAX_AUTO_RESUMES={settings.trainer_max_auto_resumes})"}
    problem = _resume_problem(session, run, kind)
    if problem is not None:
        return {**ended, "status": RunStatus.failed, "error": f"{cause}; not resumed: {problem}"}
    resumes = run.auto_resumes + 1
    return {"status": RunStatus.queued, "attempt": run.attempt + 1, "auto_resumes": resumes, "supervisor": None,
            "heartbeat_at": None, "worker_pid": None, "worker_host": None, "finished_at": None,
            "error": f"resuming from the last checkpoint (automatic resume {resumes} of "
                     f"{settings.trainer_max_auto_resumes}) after: {cause}"}


def end_dead_attempt(run_id: str, attempt: int, cause: str, *, stale_before: datetime | None = None,
                     kind: JobKind | None = None) -> str | None:
    """Fail, cancel or requeue (automatic resume) ``attempt`` of a run whose worker is dead.

    A compare-and-set on (status, attempt) — and on the heartbeat being older than ``stale_before``
    when the death was inferred from it — so of several processes noticing the same death exactly
    one acts, and a worker that beat in between keeps its run. Returns "failed", "cancelled",
    "resumed", or None when nothing was done (the attempt finished, was taken over, or is alive).
    """
    kind = kind or RUN_JOBS
    table = kind.table
    with session_scope() as session:
        run = session.get(table, run_id)
        if run is None or run.attempt != attempt or run.status not in LIVE_STATUSES or run.supervisor is None:
            return None
        values = _dead_attempt_values(session, run, cause, kind)
        conditions = [table.id == run_id, table.attempt == attempt,
                      table.status.in_(LIVE_STATUSES), table.supervisor.is_not(None)]
        if stale_before is not None:
            conditions.append(table.heartbeat_at < stale_before)
        if rows_changed(session, update(table).where(*conditions).values(**values)) != 1:
            session.rollback()
            return None
        revoke_key(session, run)
    outcome = "resumed" if values["status"] is RunStatus.queued else values["status"].value
    logger.warning("%s %s attempt %d: %s -> %s", kind.noun, run_id, attempt, cause, outcome)
    return outcome


# ------------------------------------------------------------------------------ API operations

def get_run(session: Session, run_id: str, project_ids: set[str] | None) -> TrainingRun:
    run = session.get(TrainingRun, run_id)
    if run is None or (project_ids is not None and run.project_id not in project_ids):
        raise NotFound(f"no training run {run_id}", field="run_id")
    if run.status.finished:
        revoke_key(session, run)  # the worker revoked it; this also clears this process's cache at once
    return run


def list_runs(session: Session, project_ids: set[str] | None, cursor: str | None,
              limit: int) -> tuple[list[TrainingRun], str | None]:
    """One page of the runs in ``project_ids`` (None: every project), oldest first, and the next cursor."""
    query = select(TrainingRun)
    if project_ids is not None:
        query = query.where(TrainingRun.project_id.in_(project_ids))
    return keyset_page(session, query, (TrainingRun.created_at, TrainingRun.id), cursor, limit)


def request_cancel(session: Session, run: Any) -> None:
    """Ask the run's worker to stop (it polls the row between steps, whoever launched it).

    A run still queued ends at once: its worker's start is conditional on the run being queued and
    not cancelled, so it then finds nothing to do. ``run`` may be any supervised job's row (an
    evaluation job): the update goes to its own table.
    """
    table = type(run)
    if run.status.finished:
        raise Conflict(f"run {run.id} has already {run.status.value}", field="run_id")
    rows_changed(session, update(table).where(table.id == run.id, table.status.in_(LIVE_STATUSES))
                 .values(cancel_requested=True))
    ended = rows_changed(session, update(table).where(table.id == run.id, table.status == RunStatus.queued)
                         .values(status=RunStatus.cancelled, finished_at=utcnow(), heartbeat_at=None))
    session.refresh(run)
    if ended == 1:
        revoke_key(session, run)
    elif run.status.finished and not run.cancel_requested:
        raise Conflict(f"run {run.id} has already {run.status.value}", field="run_id")


def prepare_resume(session: Session, run: Any, kind: JobKind | None = None) -> Launch:
    """Queue a finished run (or job of ``kind``) again under today's rules as a new attempt claimed by this
    process."""
    kind = kind or RUN_JOBS
    table = kind.table
    if run.status in LIVE_STATUSES:
        raise Conflict(f"{kind.noun} {run.id} is {run.status.value}; only a finished {kind.noun} can be resumed",
                       field="run_id")
    if run.status is RunStatus.succeeded:
        left = "train" if kind is RUN_JOBS else "do"
        raise Conflict(f"{kind.noun} {run.id} has succeeded; there is nothing left to {left}", field="run_id")
    kind.check_resumable(session, run)
    queued = rows_changed(session, update(table).where(
        table.id == run.id, table.status == run.status, table.attempt == run.attempt)
        .values(status=RunStatus.queued, attempt=run.attempt + 1, supervisor=this_process(), heartbeat_at=utcnow(),
                cancel_requested=False, error=None, finished_at=None, worker_pid=None, worker_host=None))
    if queued != 1:
        raise Conflict(f"{kind.noun} {run.id} changed while it was being resumed; read it again", field="run_id")
    session.refresh(run)
    return Launch(run.id, run.attempt, run.output_dir, mint_key(session, run), kind)


def step_metrics(session: Session, run_id: str, after_step: int, cursor: str | None,
                 limit: int) -> tuple[list[RunStepMetrics], str | None]:
    """One page of a run's step metrics by step (after ``after_step``), and the next cursor."""
    query = select(RunStepMetrics).where(RunStepMetrics.run_id == run_id, RunStepMetrics.step > after_step)
    return keyset_page(session, query, (RunStepMetrics.step,), cursor, limit)


def running_metrics() -> list[tuple[str, dict[str, Any]]]:
    """(run id, last metrics) of every run that is training now, for the Prometheus collector."""
    with session_scope() as session:
        rows = session.execute(select(TrainingRun.id, TrainingRun.last_metrics)
                               .where(TrainingRun.status == RunStatus.running)).all()
    return [(run_id, metrics or {}) for run_id, metrics in rows]
