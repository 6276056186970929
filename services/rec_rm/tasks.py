"""The Celery task that trains a behaviour model (a worker needs ``services.rec_rm.tasks`` in its imports),
and the sweeper that requeues training jobs whose worker died (registered here, so every worker runs it)."""

from __future__ import annotations

from typing import Any

from celery import Task

from services.common.tasks import celery_app, register_sweeper, submit
from services.rec_rm import training


@celery_app.task(name="rec_rm.train_behaviour_model", bind=True)  # type: ignore[untyped-decorator]
def train_behaviour_model(self: Task, model_id: str) -> dict[str, Any]:
    return training.run_training(model_id)


def submit_training(model_id: str) -> str:
    """Queue the training (or start it on a local thread in the embedded default); raises
    ``BrokerUnavailable`` when the broker is down."""
    handle = submit(train_behaviour_model, model_id)
    if handle.future is not None:
        training.LOCAL_FUTURES[model_id] = handle.future
    return handle.id


def sweep_models() -> dict[str, int]:
    """One round of the training-jobs sweeper (requeue jobs of dead workers, resubmit lost submissions)."""
    return training.sweep(submit_training)


register_sweeper("rec_rm.behaviour_models", sweep_models)
