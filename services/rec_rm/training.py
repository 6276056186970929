"""Behaviour-model training jobs: one row per model version, trained by a Celery task with progress.

``POST .../behaviour-models`` commits a ``queued`` row (with the request's idempotency record) and
submits :func:`services.rec_rm.tasks.train_behaviour_model` (in-process on a local thread in the
embedded default). The task claims the row (``queued`` → ``running``, compare-and-set, so a
duplicate delivery is a no-op), replays the logs in time order counting ``done`` of ``total``
(events, then 2 steps: fit and evaluate), and stores the pickled model and its held-out metrics.
Logs that cannot train a model (too few events, one class on a side of the time split) fail the
job with the reason. A job whose worker died stays ``running``: start another one (versions are cheap).
"""

from __future__ import annotations

import logging
import pickle
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from services.common import idempotency
from services.common.db import session_scope, utcnow
from services.common.errors import NotFound
from services.common.pagination import Page, keyset_page
from services.common.settings import get_settings
from services.rec_rm import behaviour, store
from services.rec_rm.items import Event
from services.rec_rm.models import BehaviourModel, ModelState
from services.rec_rm.schemas import BehaviourModelOut, TrainRequest

IDEMPOTENCY_ENDPOINT = "rec_rm.behaviour_models"
LOCAL_FUTURES: dict[str, Future[Any]] = {}
log = logging.getLogger("rewardhub.rec_rm.training")
_MODELS: OrderedDict[str, behaviour.TrainedModel] = OrderedDict()
_MODELS_LOCK = threading.Lock()
CACHED_MODELS = 4


def model_out(row: BehaviourModel) -> BehaviourModelOut:
    return BehaviourModelOut(id=row.id, project_id=row.project_id, version=row.version, state=row.state.value,
                             stage=row.stage, total=row.total, done=row.done,
                             progress=row.done / row.total if row.total else 0.0, params=row.params,
                             metrics=row.metrics, error=row.error, created_at=row.created_at,
                             started_at=row.started_at, finished_at=row.finished_at)


def create_model(session: Session, project_id: str, body: TrainRequest) -> BehaviourModel:
    # The catalog is checked now, so a request naming a missing version is a 404, not a failed job.
    catalog = store.get_catalog(session, project_id, body.catalog_version)
    params = {**body.model_dump(mode="json"), "catalog_version": catalog.version}
    for _ in range(store.SAVE_ATTEMPTS):
        current = session.scalar(select(BehaviourModel.version).where(BehaviourModel.project_id == project_id)
                                 .order_by(BehaviourModel.version.desc()).limit(1)) or 0
        row = BehaviourModel(project_id=project_id, version=current + 1, state=ModelState.queued, stage="queued",
                             total=0, done=0, params=params)
        try:
            with session.begin_nested():
                session.add(row)
                session.flush()
        except Exception:  # IntegrityError: a concurrent request took this version
            continue
        return row
    raise RuntimeError("could not number a new behaviour model")


def remember(session: Session, project_id: str, key: str | None, request_hash: str, row: BehaviourModel) -> None:
    if key is not None:
        idempotency.remember(session, project_id, IDEMPOTENCY_ENDPOINT, key, request_hash, 202,
                             model_out(row).model_dump_json())


def get_model(session: Session, project_id: str, model_id: str) -> BehaviourModel:
    row = session.get(BehaviourModel, model_id)
    if row is None or row.project_id != project_id:
        raise NotFound(f"behaviour model {model_id!r} not found", field="model_id")
    return row


def list_models(session: Session, project_id: str, cursor: str | None, limit: int) -> Page[BehaviourModelOut]:
    query = select(BehaviourModel).where(BehaviourModel.project_id == project_id)
    rows, next_cursor = keyset_page(session, query, (BehaviourModel.version, BehaviourModel.id), cursor, limit)
    return Page(data=[model_out(r) for r in rows], next_cursor=next_cursor)


def _set(model_id: str, **values: Any) -> None:
    with session_scope() as session:
        session.execute(update(BehaviourModel).where(BehaviourModel.id == model_id).values(**values)
                        .execution_options(synchronize_session=False))


def run_training(model_id: str) -> dict[str, Any]:
    """Train model ``model_id`` (the Celery task's body); a second delivery of a claimed job is a no-op."""
    with session_scope() as session:
        claimed = session.execute(update(BehaviourModel)
                                  .where(BehaviourModel.id == model_id, BehaviourModel.state == ModelState.queued)
                                  .values(state=ModelState.running, stage="loading", started_at=utcnow(),
                                          heartbeat_at=utcnow())
                                  .execution_options(synchronize_session=False))
        if getattr(claimed, "rowcount", 0) != 1:
            return {"skipped": "not queued (gone, running elsewhere or finished)"}
        row = session.get(BehaviourModel, model_id)
        assert row is not None
        project_id, params = row.project_id, dict(row.params)
        catalog = store.get_catalog(session, project_id, params.get("catalog_version"))
        attributes = store.catalog_attributes(session, catalog.id)
        events = store.all_events(session, project_id)
    total = len(events) + 2
    _set(model_id, stage="features", total=total, done=0)
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(get_settings().job_heartbeat_s):
            try:
                _set(model_id, heartbeat_at=utcnow())
            except Exception as exc:  # a missed beat is retried; the lease may go stale meanwhile
                log.warning("behaviour model %s heartbeat failed: %s", model_id, exc)

    beating = threading.Thread(target=beat, name=f"rec-rm-beat-{model_id[:8]}", daemon=True)
    beating.start()
    try:
        return _train(model_id, events, attributes, params, catalog.version, total)
    finally:
        stop.set()
        beating.join(timeout=5)


def _train(model_id: str, events: list[Event], attributes: dict[str, dict[str, Any]], params: dict[str, Any],
           catalog_version: int, total: int) -> dict[str, Any]:
    try:
        trained = behaviour.train(events, attributes, positive_events=params["positive_events"],
                                  test_fraction=params["test_fraction"], max_iter=params["max_iter"],
                                  learning_rate=params["learning_rate"], seed=params["seed"],
                                  progress=lambda done: _set(model_id, done=done))
    except behaviour.TrainingError as exc:
        _set(model_id, state=ModelState.failed, stage="failed", error=str(exc), finished_at=utcnow())
        return {"failed": str(exc)}
    except Exception as exc:
        log.exception("behaviour model %s failed", model_id)
        _set(model_id, state=ModelState.failed, stage="failed", error=f"{type(exc).__name__}: {exc}"[:5000],
             finished_at=utcnow())
        raise
    metrics = {**trained.metrics, "n_events": len(events), "catalog_version": catalog_version}
    _set(model_id, state=ModelState.succeeded, stage="done", done=total, metrics=metrics,
         blob=pickle.dumps({"estimator": trained.estimator, "state": trained.state}), finished_at=utcnow())
    return metrics


def _stale_after_s() -> float:
    s = get_settings()
    return s.job_stale_after_s if s.job_stale_after_s is not None else 6.0 * s.job_heartbeat_s


def sweep(submit: Callable[[str], Any], now: datetime | None = None, limit: int = 100) -> dict[str, int]:
    """Requeue training jobs whose worker died and resubmit those whose submission was lost.

    ``submit(model_id)`` hands one job to the broker (raising when it is down: the next round retries).
    """
    s = get_settings()
    now = now or utcnow()
    stale_before = now - timedelta(seconds=_stale_after_s())
    resubmit_before = now - timedelta(seconds=s.job_resubmit_after_s)
    last_beat = func.coalesce(BehaviourModel.heartbeat_at, BehaviourModel.started_at, BehaviourModel.created_at)
    with session_scope() as session:
        rows = session.execute(select(BehaviourModel.id, BehaviourModel.state).where(or_(
            (BehaviourModel.state == ModelState.running) & (last_beat < stale_before),
            (BehaviourModel.state == ModelState.queued) & (BehaviourModel.created_at < resubmit_before),
        )).order_by(BehaviourModel.created_at).limit(limit)).all()
    counts = {"requeued": 0, "resubmitted": 0}
    for model_id, state in rows:
        if state is ModelState.running:
            with session_scope() as session:
                taken = session.execute(update(BehaviourModel)
                                        .where(BehaviourModel.id == model_id, BehaviourModel.state == ModelState.running,
                                               last_beat < stale_before)
                                        .values(state=ModelState.queued, stage="requeued")
                                        .execution_options(synchronize_session=False))
            if getattr(taken, "rowcount", 0) != 1:
                continue  # it beat again, or another sweeper took it
            log.warning("behaviour model %s: heartbeat older than %.0f s, requeued", model_id, _stale_after_s())
            counts["requeued"] += 1
        else:
            counts["resubmitted"] += 1
        submit(model_id)
    return counts


def load_trained(session: Session, project_id: str, version: int | None) -> tuple[behaviour.TrainedModel | None,
                                                                                   int | None, str | None]:
    """(model, its version, why there is none) for the project's model ``version`` or its newest succeeded one."""
    query = select(BehaviourModel).where(BehaviourModel.project_id == project_id,
                                         BehaviourModel.state == ModelState.succeeded)
    if version is not None:
        query = query.where(BehaviourModel.version == version)
    row = session.scalar(query.order_by(BehaviourModel.version.desc()).limit(1))
    if row is None:
        why = (f"behaviour model version {version} has not been trained successfully" if version is not None
               else "no behaviour model trained for this project yet (POST .../behaviour-models)")
        return None, None, why
    with _MODELS_LOCK:
        cached = _MODELS.get(row.id)
        if cached is not None:
            _MODELS.move_to_end(row.id)
            return cached, row.version, None
    # Written by this service's own training task (run_training), never by a client.
    try:
        data = pickle.loads(row.blob or b"")
    except (ImportError, pickle.UnpicklingError, EOFError, AttributeError) as exc:
        return None, None, (f"behaviour model version {row.version} cannot be loaded in this process: {exc} "
                            "(the rec extra: pip install 'rewardhub[rec]')")
    trained = behaviour.TrainedModel(estimator=data["estimator"], state=data["state"], metrics=row.metrics or {})
    with _MODELS_LOCK:
        _MODELS[row.id] = trained
        while len(_MODELS) > CACHED_MODELS:
            _MODELS.popitem(last=False)
    return trained, row.version, None


def wait_local(model_id: str, timeout_s: float | None = None) -> None:
    """Block until an in-process training job has finished (no-op for jobs sent to a broker)."""
    future = LOCAL_FUTURES.get(model_id)
    if future is not None:
        future.result(timeout=timeout_s)
