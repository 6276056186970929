"""A training run's worker process: owns the run's row while it trains.

It marks the run running, resumes from the run's last checkpoint if there is one, trains, and
writes each step's metrics to the database (and, through the trainer, to metrics.jsonl). It
checks ``cancel_requested`` between steps. Whatever ends the run is written to its row: success,
cancellation with the checkpoint it left, or the error that stopped it — and the run's minted
API key is revoked in the same transaction.

The stored config is checked again here (confinement to the project's area, the reward URL
allowlist) right before the worker opens anything, and its paths are resolved only then.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import httpx
from sqlalchemy import select

from services.common.db import session_scope, utcnow
from services.common.logging import configure_logging
from services.common.settings import get_settings
from services.trainer import confine
from services.trainer.models import RunStatus, RunStepMetrics, TrainingRun
from trainer.config import RewardConfig, RunConfig, parse_config

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
    """Write how the run ended and revoke its minted key in the same transaction."""
    from services.trainer.runs import revoke_key

    with session_scope() as session:
        run = session.get(TrainingRun, run_id)
        if run is None:
            return
        run.status = status
        run.error = error
        if checkpoint is not None:
            run.checkpoint = checkpoint
        run.finished_at = utcnow()
        revoke_key(session, run)


@dataclass(frozen=True)
class _Job:
    config: dict[str, Any]
    project_id: str
    output_dir: str
    registered: dict[str, str]


def _start(run_id: str) -> _Job | None:
    from services.trainer.datasets import registered_files
    from services.trainer.runs import revoke_key

    with session_scope() as session:
        run = session.get(TrainingRun, run_id)
        if run is None or run.status is not RunStatus.queued:
            return None
        if run.cancel_requested:
            run.status = RunStatus.cancelled
            run.finished_at = utcnow()
            revoke_key(session, run)
            return None
        run.status = RunStatus.running
        run.started_at = utcnow()
        run.worker_pid = os.getpid()
        config = dict(run.config)
        return _Job(config, run.project_id, run.output_dir,
                    registered_files(session, run.project_id, str(config.get("dataset", ""))))


def _runnable(job: _Job) -> tuple[RunConfig, RewardConfig]:
    """The stored config checked again and made concrete: resolved paths, the reward target, the key."""
    config = parse_config(job.config)
    confine.check_api_config(config, job.project_id)
    dataset = confine.dataset_path(job.project_id, config.dataset, registered=job.registered)
    model = config.model
    if model.path is not None:
        model = model.model_copy(update={"path": str(confine.model_path(job.project_id, model.path))})
    concrete = config.model_copy(update={"dataset": str(dataset), "output_dir": job.output_dir, "model": model})
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
    from rewardhub.embedded import build_embedded_app

    return "http://gateway.local", httpx.ASGITransport(app=build_embedded_app())


def run_worker(run_id: str, api_key: str) -> None:
    """Entry point of the run's process (spawned by services.trainer.runs.launch with the run's minted key)."""
    settings = get_settings()
    configure_logging("trainer-run", settings.log_level, settings.log_json)
    job = _start(run_id)
    if job is None:
        return
    try:
        from trainer.grpo import GRPOTrainer
        from trainer.rewards import HttpRewards

        config, reward = _runnable(job)
        base_url, transport = _reward_target(reward.url)
        rewards = HttpRewards(reward, api_key=api_key, base_url=base_url, transport=transport)
        trainer = GRPOTrainer(config, rewards=rewards)
        trainer.resume()
        outcome = trainer.train(on_step=lambda step, metrics: _record_step(run_id, step, metrics),
                                should_stop=lambda: _cancel_requested(run_id))
    except Exception as exc:  # any failure ends the run with its cause, never a silent success
        logger.exception("training run %s failed", run_id)
        _finish(run_id, RunStatus.failed, error=f"{type(exc).__name__}: {exc}")
        return
    status = RunStatus.cancelled if outcome.status == "cancelled" else RunStatus.succeeded
    _finish(run_id, status, checkpoint=str(outcome.checkpoint) if outcome.checkpoint else None)
