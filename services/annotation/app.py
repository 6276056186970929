"""The annotation service's app: its routers (projects, trainer steps and labels, the annotator
queue, the web UI) and the queue-depth gauge read at scrape time."""

from __future__ import annotations

from fastapi import FastAPI

from services.annotation import queue
from services.annotation.deps import (
    request_time as request_time,  # tests override the clock through this name
)
from services.annotation.routes_browse import router as browse_router
from services.annotation.routes_exports import router as exports_router
from services.annotation.routes_honeypots import router as honeypots_router
from services.annotation.routes_imports import router as imports_router
from services.annotation.routes_labels import router as labels_router
from services.annotation.routes_projects import router as projects_router
from services.annotation.routes_quality import router as quality_router
from services.annotation.routes_quality import ui_router as quality_ui_router
from services.annotation.routes_queue import router as queue_router
from services.annotation.routes_review import router as review_router
from services.annotation.routes_steps import router as steps_router
from services.annotation.webui_routes import router as webui_router
from services.common import metrics
from services.common.app_factory import create_service_app
from services.common.db import utcnow


def _queue_depth() -> dict[tuple[str, ...], float]:
    return queue.depth_by_state(utcnow())


def create_app() -> FastAPI:
    # Read at scrape time, from the database every replica shares; registered once per process.
    metrics.register_collector("annotation_queue_depth", metrics.ScrapeGauge(
        "rewardhub_annotation_queue_depth", "Annotation tasks by status, and active leases live or expired",
        ["kind", "state"], _queue_depth))
    return create_service_app(
        # The quality UI read goes before the web UI, whose last route answers every other /ui path.
        "annotation", [projects_router, quality_router, steps_router, labels_router, queue_router, review_router,
                       exports_router, imports_router, browse_router, honeypots_router, quality_ui_router, webui_router],
        title="rewardhub annotation",
        description="CARE active annotation: pseudo-labels from rollout groups, budgeted label purchases, "
                    "the annotator queue, and labels back to trainers. Every endpoint except health and "
                    "metrics needs `Authorization: Bearer <key>`.")
