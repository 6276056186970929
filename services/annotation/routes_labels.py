"""Trainer routes: the label feed, as pages (`GET …/labels?cursor=`) and as Server-Sent Events."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query
from fastapi.responses import StreamingResponse

from services.annotation import labels, notifications, projects
from services.annotation.deps import ProjectPath, SessionDep, Trainer
from services.annotation.schemas import LabelsOut
from services.common.db import session_scope
from services.common.errors import InvalidInput
from services.common.pagination import MAX_LIMIT, CursorParam, LimitParam

router = APIRouter(prefix="/v1/annotation", tags=["trainer"])
STREAM_BATCH = 500


@router.get("/projects/{annotation_project_id}/labels", response_model=LabelsOut)
def get_labels(annotation_project_id: ProjectPath, principal: Trainer, session: SessionDep,
               cursor: CursorParam = None, limit: LimitParam = MAX_LIMIT) -> LabelsOut:
    """Label changes after `cursor` (a feed position; omit or 0 for the start), in feed order.

    Pass `next_cursor` back to continue; on the newest page it is where the next poll starts.
    """
    projects.accessible(session, principal, annotation_project_id)
    return labels.labels_since(session, annotation_project_id, labels.feed_position(cursor), limit)


def _fetch_labels(annotation_project_id: str, batch: int) -> Callable[[int], list[dict[str, Any]]]:
    def fetch(cursor: int) -> list[dict[str, Any]]:
        with session_scope() as session:
            feed = labels.labels_since(session, annotation_project_id, cursor, batch)
            return [label.model_dump(mode="json") for label in feed.data]

    return fetch


@router.get("/projects/{annotation_project_id}/labels/stream", responses={200: {"content": {"text/event-stream": {}}}})
def stream_labels(annotation_project_id: ProjectPath, principal: Trainer, session: SessionDep,
                  cursor: Annotated[int, Query(ge=0)] = 0,
                  limit: Annotated[int | None, Query(ge=1, le=1_000_000, description=(
                      "Close the stream after this many events."))] = None,
                  last_event_id: Annotated[str | None, Header(max_length=32)] = None) -> StreamingResponse:
    """Server-Sent Events: `event: label`, `id: <seq>`, data = one label-feed entry.

    Reconnecting clients resume from `Last-Event-ID` (EventSource sends it automatically).
    """
    projects.accessible(session, principal, annotation_project_id)
    if last_event_id is not None:
        if not last_event_id.isdigit():
            raise InvalidInput("Last-Event-ID must be a label sequence number", field="Last-Event-ID")
        cursor = int(last_event_id)
    return StreamingResponse(
        notifications.label_stream(annotation_project_id, cursor, _fetch_labels(annotation_project_id, STREAM_BATCH),
                                   limit=limit),
        media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
