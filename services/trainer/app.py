"""Trainer routes: start, watch, cancel and resume GRPO-family training runs; upload and list datasets.

Runs outlive this process: their workers run in their own sessions and a restarted (or another)
trainer service process supervises them through the database (services/trainer/supervisor.py,
started with the lifespan). Shutting the service down leaves the runs training.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from prometheus_client.core import REGISTRY, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session
from starlette.datastructures import UploadFile as StarletteUploadFile

from services.common.app_factory import create_service_app
from services.common.auth import Principal, choose_project, get_accessible_project, require_roles
from services.common.db import get_session
from services.common.errors import InvalidInput
from services.common.models import Role
from services.common.validation import ID_PATTERN, ProjectIdPath
from services.trainer import datasets, runs, supervisor
from services.trainer.models import TrainingDataset, TrainingRun
from services.trainer.schemas import DatasetOut, DatasetPage, RunCreate, RunMetricsOut, RunOut, StepMetricsOut

RunPath = Annotated[str, Path(pattern=ID_PATTERN, description="A training run id.")]
logger = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/runs", tags=["runs"])
datasets_router = APIRouter(prefix="/v1/projects", tags=["datasets"])
trainers = require_roles(Role.admin, Role.trainer)


def _scope(principal: Principal) -> set[str] | None:
    return None if principal.all_projects else set(principal.project_ids)


def _out(run: TrainingRun) -> RunOut:
    return RunOut(id=run.id, project_id=run.project_id, name=run.name, status=run.status.value,
                  current_step=run.current_step, max_steps=run.max_steps, cancel_requested=run.cancel_requested,
                  last_metrics=run.last_metrics or {}, checkpoint=run.checkpoint, error=run.error,
                  output_dir=run.output_dir, config=run.config, created_at=run.created_at,
                  started_at=run.started_at, finished_at=run.finished_at, attempt=run.attempt,
                  auto_resumes=run.auto_resumes, heartbeat_at=run.heartbeat_at)


@router.post("", response_model=RunOut, status_code=201)
def start_run(body: RunCreate, principal: Principal = Depends(trainers),
              session: Session = Depends(get_session)) -> RunOut:
    """Validate and confine the config, record the run with a key minted for it, start its worker process."""
    project = get_accessible_project(session, principal, choose_project(principal, body.project_id))
    run, ticket = runs.create_run(session, project, body.name, body.config)
    session.commit()
    runs.launch(ticket)
    return _out(run)


@router.get("", response_model=list[RunOut])
def list_runs(limit: int = Query(default=50, ge=1, le=500), principal: Principal = Depends(trainers),
              session: Session = Depends(get_session)) -> list[RunOut]:
    return [_out(run) for run in runs.list_runs(session, _scope(principal), limit)]


@router.get("/{run_id}", response_model=RunOut)
def get_run(run_id: RunPath, principal: Principal = Depends(trainers),
            session: Session = Depends(get_session)) -> RunOut:
    """Status, step and the latest metrics (reward mean/std, non-ok share, loss, KL, clip fraction…)."""
    return _out(runs.get_run(session, run_id, _scope(principal)))


@router.get("/{run_id}/metrics", response_model=RunMetricsOut)
def get_metrics(run_id: RunPath, after_step: int = Query(default=0, ge=0),
                limit: int = Query(default=1000, ge=1, le=10_000), principal: Principal = Depends(trainers),
                session: Session = Depends(get_session)) -> RunMetricsOut:
    runs.get_run(session, run_id, _scope(principal))
    rows = runs.step_metrics(session, run_id, after_step, limit)
    return RunMetricsOut(run_id=run_id, steps=[StepMetricsOut(step=r.step, metrics=r.metrics, created_at=r.created_at)
                                               for r in rows],
                         next_after_step=rows[-1].step if rows else after_step)


@router.post("/{run_id}/cancel", response_model=RunOut, status_code=202)
def cancel_run(run_id: RunPath, principal: Principal = Depends(trainers),
               session: Session = Depends(get_session)) -> RunOut:
    """Ask the run to stop; it saves a checkpoint at the end of the current step, then ends `cancelled`."""
    run = runs.get_run(session, run_id, _scope(principal))
    runs.request_cancel(session, run)
    return _out(run)


@router.post("/{run_id}/resume", response_model=RunOut, status_code=202)
def resume_run(run_id: RunPath, principal: Principal = Depends(trainers),
               session: Session = Depends(get_session)) -> RunOut:
    """Continue a cancelled or failed run from its last checkpoint, in a new worker process."""
    run = runs.get_run(session, run_id, _scope(principal))
    ticket = runs.prepare_resume(session, run)
    session.commit()
    runs.launch(ticket)
    return _out(run)


DatasetName = Annotated[str, Query(pattern=datasets.NAME_PATTERN, description="The dataset's name (what a run "
                                   "config's `dataset` names); a .jsonl/.parquet suffix is dropped.")]
DatasetFormat = Annotated[Literal["jsonl", "parquet"] | None, Query(description="Checked against the body; "
                                                                    "unset: detected.")]


async def _upload_bytes(request: Request) -> bytes:
    """The dataset's bytes: a multipart ``file`` part, or the raw body (JSONL or Parquet)."""
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        form = await request.form()
        part = form.get("file")
        if not isinstance(part, StarletteUploadFile):
            raise InvalidInput("file: a multipart upload needs its dataset in a part named 'file'", field="file")
        return await part.read()
    return await request.body()


@datasets_router.post("/{project_id}/datasets", response_model=DatasetOut, status_code=201,
                      responses={200: {"model": DatasetOut, "description": "The same dataset was uploaded before."}})
async def upload_dataset(project_id: ProjectIdPath, request: Request, response: Response, name: DatasetName,
                         format: DatasetFormat = None, principal: Principal = Depends(trainers),
                         session: Session = Depends(get_session)) -> DatasetOut:
    """Keep a veRL-schema dataset (JSONL or Parquet) in the project's area; runs of the project name it."""
    await run_in_threadpool(get_accessible_project, session, principal, project_id)
    upload = datasets.Upload(name=name, content=await _upload_bytes(request), declared_format=format)
    dataset, new = await run_in_threadpool(datasets.store, session, project_id, upload)
    if not new:
        response.status_code = 200
    return _dataset_out(dataset)


@datasets_router.get("/{project_id}/datasets", response_model=DatasetPage)
def list_datasets(project_id: ProjectIdPath, cursor: str | None = Query(default=None, max_length=100),
                  limit: int = Query(default=50, ge=1, le=500), principal: Principal = Depends(trainers),
                  session: Session = Depends(get_session)) -> DatasetPage:
    """The project's datasets by name, a page at a time."""
    get_accessible_project(session, principal, project_id)
    page, next_cursor = datasets.list_page(session, project_id, cursor, limit)
    return DatasetPage(data=[_dataset_out(d) for d in page], next_cursor=next_cursor)


def _dataset_out(dataset: TrainingDataset) -> DatasetOut:
    return DatasetOut(name=dataset.name, format=dataset.format, rows=dataset.rows, size_bytes=dataset.size_bytes,
                      sha256=dataset.sha256, created_at=dataset.created_at)


class RunMetricsCollector(Collector):
    """Exports the latest step metrics of every running run (the workers write them to the database)."""

    def collect(self) -> Iterable[GaugeMetricFamily]:
        families: dict[str, GaugeMetricFamily] = {}
        try:
            running = runs.running_metrics()
        except SQLAlchemyError:
            logger.warning("could not read training runs for /metrics", exc_info=True)
            return
        for run_id, metrics in running:
            for name, value in metrics.items():
                if not isinstance(value, int | float) or isinstance(value, bool):
                    continue
                family = families.setdefault(name, GaugeMetricFamily(
                    f"rewardhub_trainer_{name}", f"latest {name} of each running training run", labels=["run_id"]))
                family.add_metric([run_id], float(value))
        yield from families.values()


_collector: RunMetricsCollector | None = None


def _register_collector() -> None:
    global _collector
    if _collector is None:
        _collector = RunMetricsCollector()
        REGISTRY.register(_collector)


@asynccontextmanager
async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
    """Watch runs while the service is up; on shutdown stop watching and leave the runs training."""
    watcher = supervisor.Watcher()
    watcher.start()
    try:
        yield
    finally:
        watcher.stop()


def create_app() -> FastAPI:
    _register_collector()
    return create_service_app("trainer", [router, datasets_router], title="rewardhub trainer", lifespan=lifespan,
                              description="GRPO-family training runs against the reward API, one supervised worker "
                              "process each.")
