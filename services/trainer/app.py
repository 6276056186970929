"""The trainer app: GRPO-family training runs and the project datasets they train on.

Runs outlive this process: their workers run in their own sessions and a restarted (or another)
trainer service process supervises them through the database (services/trainer/supervisor.py,
started with the lifespan). Shutting the service down leaves the runs training.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from prometheus_client.core import REGISTRY, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy.exc import SQLAlchemyError

from services.common.app_factory import create_service_app
from services.trainer import routes_datasets, routes_evaluations, routes_runs, runs, supervisor

logger = logging.getLogger(__name__)


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
    return create_service_app("trainer", [routes_runs.router, routes_evaluations.router, routes_datasets.router], title="rewardhub trainer", lifespan=lifespan,
                              description="GRPO-family training runs against the reward API, one supervised worker "
                              "process each.")
