"""An evaluation job's worker process: holds the job's lease, runs it, writes its progress and report.

Started by services.trainer.runs.launch (kind ``EVAL_JOBS``) as
``python -m services.trainer.eval_worker JOB_ID ATTEMPT`` in its own session, with the job's minted
key on stdin, exactly as a training run's worker (services/trainer/worker.py, whose lease and
heartbeat this reuses on the ``evaluation_jobs`` table): it marks the job running if the row is
still queued for this attempt and not cancelled, checks the stored config again, runs the job
(services/trainer/eval_kinds.py, which resumes from the per-item results in the job's folder),
writes progress (stage, done/total items, items found finished) as it goes and the report at the
end. Every write is conditional on the row still carrying this attempt; a lost lease exits at once
with :data:`~services.trainer.worker.EXIT_LEASE_LOST`.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select, update

from services.common.db import session_scope, utcnow
from services.common.logging import configure_logging
from services.common.settings import get_settings
from services.trainer import eval_kinds
from services.trainer.models import EvaluationJob, RunStatus
from services.trainer.runs import heartbeat_interval_s, revoke_key, rows_changed, stale_after_s
from services.trainer.worker import EXIT_LEASE_LOST, Heartbeat, Lease, LeaseLost, _reward_target, worker_main

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalLease(Lease):
    """A training run's lease, on the ``evaluation_jobs`` row."""

    def owns(self) -> tuple[Any, ...]:
        return (EvaluationJob.id == self.run_id, EvaluationJob.attempt == self.attempt,
                EvaluationJob.status == RunStatus.running)


class EvalHeartbeat(Heartbeat):
    """The run heartbeat (its timer, its lease-lost exit), stamping the job's row."""

    def beat(self) -> bool:
        with session_scope() as session:
            return rows_changed(session, update(EvaluationJob).where(*self.lease.owns())
                                .values(heartbeat_at=utcnow())) == 1


class Reporter:
    """Progress writes (stage, done/total/resumed items) and the cancel flag, on this attempt's row only."""

    def __init__(self, lease: EvalLease) -> None:
        self.lease = lease

    def progress(self, *, stage: str | None = None, done: int | None = None, total: int | None = None,
                 resumed: int | None = None) -> None:
        values: dict[str, Any] = {}
        if stage is not None:
            values["stage"] = stage
        if done is not None:
            values["done_items"] = done
        if total is not None:
            values["total_items"] = total
        if resumed is not None:
            values["resumed_items"] = resumed
        if not values:
            return
        with session_scope() as session:
            if rows_changed(session, update(EvaluationJob).where(*self.lease.owns()).values(**values)) != 1:
                raise LeaseLost(f"evaluation {self.lease.run_id}: attempt {self.lease.attempt} lost its lease")

    def cancel_requested(self) -> bool:
        with session_scope() as session:
            row = session.execute(select(EvaluationJob.cancel_requested).where(*self.lease.owns())).first()
        if row is None:
            raise LeaseLost(f"evaluation {self.lease.run_id}: attempt {self.lease.attempt} lost its lease")
        return bool(row[0])


@dataclass(frozen=True)
class _Job:
    kind: str
    config: dict[str, Any]
    project_id: str
    output_dir: str
    registered: dict[str, str]


def _start(lease: EvalLease) -> _Job | None:
    from services.trainer.evaljobs import registered_for

    now = utcnow()
    with session_scope() as session:
        started = rows_changed(session, update(EvaluationJob).where(
            EvaluationJob.id == lease.run_id, EvaluationJob.attempt == lease.attempt,
            EvaluationJob.status == RunStatus.queued, EvaluationJob.cancel_requested.is_(False))
            .values(status=RunStatus.running, started_at=now, heartbeat_at=now, error=None, stage="starting",
                    worker_pid=os.getpid(), worker_host=socket.gethostname()))
        job = session.get(EvaluationJob, lease.run_id)
        if started != 1 or job is None:
            return None
        config = dict(job.config)
        return _Job(job.kind, config, job.project_id, job.output_dir,
                    registered_for(session, job.project_id, job.kind, config))


def _finish(lease: EvalLease, status: RunStatus, *, error: str | None = None,
            metrics: dict[str, Any] | None = None) -> None:
    values: dict[str, Any] = {"status": status, "error": error, "finished_at": utcnow(), "heartbeat_at": None,
                              "stage": "done" if status is RunStatus.succeeded else status.value}
    if metrics is not None:
        values["metrics"] = metrics
    with session_scope() as session:
        ended = rows_changed(session, update(EvaluationJob).where(*lease.owns()).values(**values))
        job = session.get(EvaluationJob, lease.run_id)
        if ended == 1 and job is not None:
            revoke_key(session, job)
        else:
            logger.warning("evaluation %s: attempt %d lost its lease; its end (%s) is not recorded",
                           lease.run_id, lease.attempt, status.value)


def _run(lease: EvalLease, job: _Job, api_key: str) -> tuple[RunStatus, str | None, dict[str, Any] | None]:
    reporter = Reporter(lease)
    try:
        config = eval_kinds.parse_config(job.kind, job.config)
        eval_kinds.check(job.kind, config, job.project_id, job.registered)  # today's rules, before opening anything
        ctx = eval_kinds.JobContext(project_id=job.project_id, out_dir=Path(job.output_dir), api_key=api_key,
                                    registered=job.registered, progress=reporter.progress,
                                    should_stop=reporter.cancel_requested, reward_target=_reward_target)
        report = eval_kinds.execute(job.kind, config, ctx)
    except LeaseLost:
        raise
    except eval_kinds.Stopped:
        return RunStatus.cancelled, None, None
    except Exception as exc:  # any failure ends the job with its cause, never a silent success
        logger.exception("evaluation %s failed", lease.run_id)
        return RunStatus.failed, f"{type(exc).__name__}: {exc}", None
    return RunStatus.succeeded, None, report


def run_worker(job_id: str, attempt: int, api_key: str) -> int:
    settings = get_settings()
    configure_logging("trainer-eval", settings.log_level, settings.log_json)
    lease = EvalLease(job_id, attempt)
    job = _start(lease)
    if job is None:
        logger.info("evaluation %s: attempt %d has nothing to run (cancelled or taken over)", job_id, attempt)
        return 0
    heartbeat = EvalHeartbeat(lease, heartbeat_interval_s(settings), stale_after_s(settings))
    heartbeat.start()
    try:
        status, error, report = _run(lease, job, api_key)
    except LeaseLost as exc:
        logger.error("%s; exiting without writing more", exc)
        return EXIT_LEASE_LOST
    finally:
        heartbeat.stop()
    _finish(lease, status, error=error, metrics=report)
    return 0


def main(argv: list[str]) -> int:
    """``python -m services.trainer.eval_worker JOB_ID ATTEMPT`` with the job's key as the one line on stdin."""
    return worker_main(argv, run_worker, module="services.trainer.eval_worker", what="job")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
