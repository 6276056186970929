"""A training run's worker process: holds the run's lease and owns its row while it trains.

Started by services.trainer.runs.launch as ``python -m services.trainer.worker RUN_ID ATTEMPT`` in
its own session, with the run's minted API key on stdin (read once; never in argv or the
environment). It marks the run running (if the row is still queued for this attempt and not
cancelled), resumes from the run's last checkpoint if there is one, trains, and writes each
step's metrics to the database (and, through the trainer, to metrics.jsonl). It checks
``cancel_requested`` between steps. Whatever ends the run is written to its row: success,
cancellation with the checkpoint it left, or the error that stopped it — and the run's minted
API key is revoked in the same transaction.

The lease: a timer thread stamps ``heartbeat_at`` every ``trainer_heartbeat_s``, whatever the step
length, and every write is conditional on the row still carrying this attempt. A worker whose row
moved on (a watcher declared it dead and failed or resumed the run) or that could not renew its
heartbeat for ``trainer_stale_after_s`` has lost its lease and exits at once with
:data:`EXIT_LEASE_LOST`, writing nothing more: another attempt may own the run's folder by then.

The stored config is checked again here (confinement to the project's area, the reward URL
allowlist) right before the worker opens anything, and its paths are resolved only then. A run's
multi-turn tools, RLAVR steps and self-distillation teacher calls go to the platform's sandbox, annotation
and teacher services (services/trainer/targets.py), never to a host or with a credential the config chose.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import delete, select, update
from sqlalchemy.exc import SQLAlchemyError

from services.common.db import session_scope, utcnow
from services.common.logging import configure_logging
from services.common.settings import get_settings
from services.trainer import confine
from services.trainer.models import RunStatus, RunStepMetrics, TrainingRun
from services.trainer.runs import heartbeat_interval_s, revoke_key, rows_changed, stale_after_s
from trainer.config import RewardConfig, RunConfig, parse_config

logger = logging.getLogger(__name__)
EXIT_LEASE_LOST = 75  # EX_TEMPFAIL: the run is someone else's now


class LeaseLost(Exception):
    """The run's row no longer carries this worker's attempt, or is no longer running."""


@dataclass(frozen=True)
class Lease:
    run_id: str
    attempt: int

    def owns(self) -> tuple[Any, ...]:
        """The conditions under which a row is still this attempt's to write."""
        return (TrainingRun.id == self.run_id, TrainingRun.attempt == self.attempt,
                TrainingRun.status == RunStatus.running)


class Heartbeat:
    """Stamps the run's ``heartbeat_at`` on a daemon thread; exits the process when the lease is lost."""

    def __init__(self, lease: Lease, interval_s: float, stale_after_s: float) -> None:
        self.lease = lease
        self.interval_s = interval_s
        self.stale_after_s = stale_after_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="rewardhub-run-heartbeat")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop beating (before the run's end is written, so a beat never races the final write)."""
        self._stop.set()
        self._thread.join(timeout=self.interval_s + 30)

    def beat(self) -> bool:
        with session_scope() as session:
            return rows_changed(session, update(TrainingRun).where(*self.lease.owns())
                                .values(heartbeat_at=utcnow())) == 1

    def _loop(self) -> None:
        renewed = time.monotonic()
        while not self._stop.wait(self.interval_s):
            try:
                owned = self.beat()
            except SQLAlchemyError as exc:
                logger.warning("run %s: heartbeat failed: %s", self.lease.run_id, exc)
                if time.monotonic() - renewed > self.stale_after_s:
                    self._lose(f"no heartbeat could be written for {self.stale_after_s:.0f} s; the watchers "
                               "count this worker as dead")
                continue
            if not owned:
                self._lose("the run's row no longer names this attempt as running (a watcher ended or "
                           "resumed it)")
            renewed = time.monotonic()

    def _lose(self, why: str) -> None:
        if self._stop.is_set():  # the run is being finished normally
            return
        logger.error("run %s: attempt %d lost its lease, exiting: %s", self.lease.run_id, self.lease.attempt, why)
        logging.shutdown()
        os._exit(EXIT_LEASE_LOST)  # at once: the main thread must not write another checkpoint or row


def _record_step(lease: Lease, step: int, metrics: dict[str, Any]) -> None:
    clean = {k: v for k, v in metrics.items() if isinstance(v, int | float | str | bool)}
    with session_scope() as session:
        if rows_changed(session, update(TrainingRun).where(*lease.owns())
                        .values(current_step=step, last_metrics=clean)) != 1:
            raise LeaseLost(f"run {lease.run_id}: attempt {lease.attempt} lost its lease (step {step} not recorded)")
        session.add(RunStepMetrics(run_id=lease.run_id, step=step, metrics=clean))


def _forget_steps_after(lease: Lease, step: int) -> None:
    """A resumed attempt takes again the steps its predecessor did after the checkpoint: drop their rows."""
    with session_scope() as session:
        if rows_changed(session, update(TrainingRun).where(*lease.owns()).values(current_step=step)) != 1:
            raise LeaseLost(f"run {lease.run_id}: attempt {lease.attempt} lost its lease before training")
        session.execute(delete(RunStepMetrics).where(RunStepMetrics.run_id == lease.run_id,
                                                     RunStepMetrics.step > step))


def _cancel_requested(lease: Lease) -> bool:
    with session_scope() as session:
        row = session.execute(select(TrainingRun.cancel_requested).where(*lease.owns())).first()
    if row is None:
        raise LeaseLost(f"run {lease.run_id}: attempt {lease.attempt} lost its lease")
    return bool(row[0])


def _finish(lease: Lease, status: RunStatus, *, error: str | None = None, checkpoint: str | None = None) -> None:
    """Write how the run ended (if it is still this attempt's) and revoke its key in the same transaction."""
    values: dict[str, Any] = {"status": status, "error": error, "finished_at": utcnow(), "heartbeat_at": None}
    if checkpoint is not None:
        values["checkpoint"] = checkpoint
    with session_scope() as session:
        ended = rows_changed(session, update(TrainingRun).where(*lease.owns()).values(**values))
        run = session.get(TrainingRun, lease.run_id)
        if ended == 1 and run is not None:
            revoke_key(session, run)
        else:
            logger.warning("run %s: attempt %d lost its lease; its end (%s) is not recorded",
                           lease.run_id, lease.attempt, status.value)


@dataclass(frozen=True)
class _Job:
    config: dict[str, Any]
    project_id: str
    output_dir: str
    registered: dict[str, str]


def _start(lease: Lease) -> _Job | None:
    """Take the run from queued to running for this attempt; None when it is not this attempt's to run."""
    from services.trainer.datasets import registered_files

    now = utcnow()
    with session_scope() as session:
        started = rows_changed(session, update(TrainingRun).where(
            TrainingRun.id == lease.run_id, TrainingRun.attempt == lease.attempt,
            TrainingRun.status == RunStatus.queued, TrainingRun.cancel_requested.is_(False))
            .values(status=RunStatus.running, started_at=now, heartbeat_at=now, error=None, worker_pid=os.getpid(),
                    worker_host=socket.gethostname()))
        run = session.get(TrainingRun, lease.run_id)
        if started != 1 or run is None:
            return None  # cancelled while queued, or another attempt owns it
        config = dict(run.config)
        registered = registered_files(session, run.project_id, str(config.get("dataset", "")))
        evaluation = config.get("eval")
        if isinstance(evaluation, dict):  # eval.data names one of the project's datasets too
            registered |= registered_files(session, run.project_id, str(evaluation.get("data", "")))
        return _Job(config, run.project_id, run.output_dir, registered)


def _runnable(job: _Job) -> tuple[RunConfig, RewardConfig]:
    """The stored config checked again and made concrete: resolved paths, the reward target, the key."""
    config = parse_config(job.config)
    confine.check_api_config(config, job.project_id)
    dataset = confine.dataset_path(job.project_id, config.dataset, registered=job.registered)
    model = config.model
    if model.path is not None:
        model = model.model_copy(update={"path": str(confine.model_path(job.project_id, model.path))})
    update: dict[str, Any] = {"dataset": str(dataset), "output_dir": job.output_dir, "model": model}
    if config.eval is not None:
        data = confine.dataset_path(job.project_id, config.eval.data, registered=job.registered,
                                    field="config.eval.data")
        update["eval"] = config.eval.model_copy(update={"data": str(data)})
    concrete = config.model_copy(update=update)
    if config.reward is None:  # check_api_config refuses it; kept for the type checker
        raise ValueError("config.reward: required for a run started through the service")
    return concrete, config.reward


def _reward_target(url: str | None) -> tuple[str | None, httpx.AsyncBaseTransport | None]:
    """Where rewards are scored: the config's (allowlisted) URL, the gateway's URL, or in-process.

    The embedded default has no gateway URL; the worker then mounts the platform's apps in its own
    process (same database, same code path as over HTTP), so the run's key never leaves the platform.
    """
    if url:
        return url, None
    gateway = get_settings().gateway_url
    if gateway:
        return gateway, None
    from services.trainer.targets import IN_PROCESS_BASE, platform_app

    return IN_PROCESS_BASE, httpx.ASGITransport(app=platform_app())


def _service_sessions(trainer: Any, config: RunConfig, job: _Job, api_key: str) -> None:
    """Give a service run's multi-turn engine, RLAVR session and self-distillation teacher the platform's
    targets (services.trainer.targets).

    The trainer builds them from the config as a local run would; for a service run they are rebuilt
    here before any step, so that tool sessions go to the platform's sandbox with the service's token
    and the run's project, RLAVR steps to the (allowlisted) annotation service with the run's key, and an
    http teacher's scores, hints and weights pushes to the (allowlisted) teacher service with the run's key.
    An in_process teacher is a copy of the run's own policy and reaches nothing.
    """
    from services.trainer import targets

    if config.multi_turn is not None:
        from trainer.agent.setup import agent_engine

        tools = targets.sandbox_tool(config.multi_turn.tools, job.project_id)
        trainer.agent = agent_engine(config, trainer.engine, trainer.tokenizer, tools=tools)
    if config.rlavr is not None:
        from trainer.rlavr import RlavrSession

        base_url, transport = targets.annotation_target(config.rlavr.url)
        concrete = config.model_copy(update={"rlavr": config.rlavr.model_copy(update={"url": base_url})})
        trainer.rlavr = RlavrSession(concrete, trainer.output_dir, rank=trainer.collective.rank,
                                     world_size=trainer.collective.world_size, api_key=api_key,
                                     transport=transport)
    sd = config.self_distillation
    if sd is not None and sd.teacher.backend == "http" and trainer.self_distill is not None:
        from trainer.self_distillation.loop import SelfDistillation

        # The run's own id (its folder's name) keys each weights push, so a retried or resumed push applies once.
        teacher = targets.http_teacher(sd.teacher, api_key, run_id=Path(job.output_dir).name)
        trainer.self_distill.teacher.close()  # the local-config one, built before the service's targets were known
        trainer.self_distill = SelfDistillation.build(trainer, teacher=teacher)


@dataclass(frozen=True)
class _End:
    status: RunStatus
    error: str | None = None
    checkpoint: str | None = None


def _train(lease: Lease, job: _Job, api_key: str) -> _End:
    """Train the started attempt to its end; LeaseLost propagates (nothing more may be written)."""
    try:
        from trainer.grpo import GRPOTrainer
        from trainer.rewards import HttpRewards

        config, reward = _runnable(job)
        base_url, transport = _reward_target(reward.url)
        rewards = HttpRewards(reward, api_key=api_key, base_url=base_url, transport=transport)
        trainer = GRPOTrainer(config, rewards=rewards)
        _service_sessions(trainer, config, job, api_key)
        trainer.resume()
        _forget_steps_after(lease, trainer.step)
        outcome = trainer.train(on_step=lambda step, metrics: _record_step(lease, step, metrics),
                                should_stop=lambda: _cancel_requested(lease))
    except LeaseLost:
        raise
    except Exception as exc:  # any failure ends the run with its cause, never a silent success
        logger.exception("training run %s failed", lease.run_id)
        return _End(RunStatus.failed, error=f"{type(exc).__name__}: {exc}")
    status = RunStatus.cancelled if outcome.status == "cancelled" else RunStatus.succeeded
    return _End(status, checkpoint=str(outcome.checkpoint) if outcome.checkpoint else None)


def run_worker(run_id: str, attempt: int, api_key: str) -> int:
    """Run one attempt of ``run_id``; the process's exit code (0, or EXIT_LEASE_LOST)."""
    settings = get_settings()
    configure_logging("trainer-run", settings.log_level, settings.log_json)
    lease = Lease(run_id, attempt)
    job = _start(lease)
    if job is None:
        logger.info("run %s: attempt %d has nothing to run (cancelled or taken over)", run_id, attempt)
        return 0
    heartbeat = Heartbeat(lease, heartbeat_interval_s(settings), stale_after_s(settings))
    heartbeat.start()
    try:
        end = _train(lease, job, api_key)
    except LeaseLost as exc:
        logger.error("%s; exiting without writing more", exc)
        return EXIT_LEASE_LOST
    finally:
        heartbeat.stop()  # before the end is written, so no beat finds the row finished and exits
    _finish(lease, end.status, error=end.error, checkpoint=end.checkpoint)
    return 0


def worker_main(argv: list[str], run: Callable[[str, int, str], int], *, module: str, what: str) -> int:
    """``python -m MODULE ID ATTEMPT`` with the job's key as the one line on stdin (never in argv or
    the environment, where other local users could read it): checks the arguments and runs ``run``."""
    if len(argv) != 2 or not argv[1].isdigit():
        print(f"usage: python -m {module} {what.upper()}_ID ATTEMPT  (the {what}'s API key on stdin)",
              file=sys.stderr)
        return 2
    api_key = sys.stdin.readline().strip()
    sys.stdin.close()
    if not api_key:
        print(f"the {what}'s API key must be the first line on stdin", file=sys.stderr)
        return 2
    return run(argv[0], int(argv[1]), api_key)


def main(argv: list[str]) -> int:
    """``python -m services.trainer.worker RUN_ID ATTEMPT`` with the run's key as the one line on stdin."""
    return worker_main(argv, run_worker, module="services.trainer.worker", what="run")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
