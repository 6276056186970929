"""Routes for annotation projects: settings and budget, webhook, answer key, member accounts, stats."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from services.annotation import accounts, answer_key, projects, queue, webhooks
from services.annotation.deps import Admin, ItemPath, Now, ProjectPath, Reader, SessionDep
from services.annotation.models import DeliveryState, WebhookDelivery
from services.annotation.schemas import (
    AnnotationProjectCreate,
    AnnotationProjectCreated,
    AnnotationProjectOut,
    AnnotationProjectUpdate,
    AnnotatorCreate,
    AnnotatorOut,
    AnswerKeyOut,
    AnswerKeyUpload,
    QueueStats,
    WebhookDeliveryOut,
    WebhookSecretOut,
)
from services.common.pagination import DEFAULT_LIMIT, CursorParam, LimitParam, Page
from services.common.validation import ID_PATTERN

router = APIRouter(prefix="/v1/annotation", tags=["annotation projects"])


@router.post("/projects", response_model=AnnotationProjectCreated, status_code=201)
def create_project(body: AnnotationProjectCreate, principal: Admin, session: SessionDep) -> AnnotationProjectCreated:
    """Create an annotation project with its budget, label schema, queue settings and policy."""
    return projects.create(session, principal, body)


@router.get("/projects", response_model=Page[AnnotationProjectOut])
def list_projects(principal: Reader, session: SessionDep,
                  project_id: Annotated[str | None, Query(pattern=ID_PATTERN, description=(
                      "Only the annotation projects of this tenancy project."))] = None,
                  cursor: CursorParam = None, limit: LimitParam = DEFAULT_LIMIT) -> Page[AnnotationProjectOut]:
    """The annotation projects your key can see, oldest first."""
    return projects.list_page(session, principal, project_id, cursor, limit)


@router.get("/projects/{annotation_project_id}", response_model=AnnotationProjectOut)
def get_project(annotation_project_id: ProjectPath, principal: Reader, session: SessionDep) -> AnnotationProjectOut:
    return projects.project_out(session, projects.accessible(session, principal, annotation_project_id))


@router.patch("/projects/{annotation_project_id}", response_model=AnnotationProjectOut)
def update_project(annotation_project_id: ProjectPath, body: AnnotationProjectUpdate, principal: Admin,
                   session: SessionDep) -> AnnotationProjectOut:
    """Change budget, schema, queue settings, policy, webhook or guidelines. `overlap_k` applies to new tasks;
    a changed `guidelines` text is a new version."""
    projects.accessible(session, principal, annotation_project_id)
    return projects.change(session, annotation_project_id, body)


@router.post("/projects/{annotation_project_id}/webhook-secret", response_model=WebhookSecretOut)
def rotate_webhook_secret(annotation_project_id: ProjectPath, principal: Admin,
                          session: SessionDep) -> WebhookSecretOut:
    """Replace the secret that signs webhook messages; the new one is shown only here."""
    projects.accessible(session, principal, annotation_project_id)
    return WebhookSecretOut(webhook_secret=projects.rotate_webhook_secret(session, annotation_project_id))


def _delivery_out(row: WebhookDelivery) -> WebhookDeliveryOut:
    out = WebhookDeliveryOut.model_validate(row)
    if row.state is not DeliveryState.pending:
        out.next_attempt_at = None  # only a pending delivery has a next attempt
    return out


@router.get("/projects/{annotation_project_id}/webhook-deliveries", response_model=Page[WebhookDeliveryOut])
def list_webhook_deliveries(annotation_project_id: ProjectPath, principal: Admin, session: SessionDep,
                            state: Annotated[DeliveryState | None, Query(description="Only this state.")] = None,
                            cursor: CursorParam = None,
                            limit: LimitParam = DEFAULT_LIMIT) -> Page[WebhookDeliveryOut]:
    """The project's webhook deliveries, oldest first: state, attempts, last status or error."""
    projects.accessible(session, principal, annotation_project_id)
    rows, next_cursor = webhooks.list_deliveries(session, annotation_project_id, state=state, cursor=cursor,
                                                 limit=limit)
    return Page(data=[_delivery_out(r) for r in rows], next_cursor=next_cursor)


@router.post("/projects/{annotation_project_id}/webhook-deliveries/{delivery_id}/redeliver",
             response_model=WebhookDeliveryOut, status_code=202)
def redeliver_webhook(annotation_project_id: ProjectPath, delivery_id: ItemPath, principal: Admin,
                      session: SessionDep) -> WebhookDeliveryOut:
    """Send a failed delivery again (same delivery id, attempts counted afresh) to the current webhook URL,
    signed with the current secret. A delivery that is not failed is 409 `delivery_not_failed`."""
    projects.accessible(session, principal, annotation_project_id)
    row = webhooks.redeliver(session, annotation_project_id, delivery_id)
    session.flush()
    return _delivery_out(row)


@router.put("/projects/{annotation_project_id}/answer-key", response_model=AnswerKeyOut)
def put_answer_key(annotation_project_id: ProjectPath, body: AnswerKeyUpload, principal: Admin,
                   session: SessionDep) -> AnswerKeyOut:
    """Store hidden answers (simulation, evaluation). They are never returned and never used by selection."""
    projects.accessible(session, principal, annotation_project_id)
    count = answer_key.upload(session, annotation_project_id, [(e.prompt_id, e.answer) for e in body.entries])
    return AnswerKeyOut(entries=count)


@router.post("/projects/{annotation_project_id}/annotators", response_model=AnnotatorOut, status_code=201)
def create_annotator(annotation_project_id: ProjectPath, body: AnnotatorCreate, principal: Admin,
                     session: SessionDep) -> AnnotatorOut:
    """Create a login account for the web UI, member of this project."""
    projects.accessible(session, principal, annotation_project_id)
    annotator = accounts.create_annotator(session, body.username, body.password, role=body.role,
                                          display_name=body.display_name, project_ids=[annotation_project_id])
    return AnnotatorOut.model_validate(annotator)


@router.get("/projects/{annotation_project_id}/annotators", response_model=Page[AnnotatorOut])
def list_annotators(annotation_project_id: ProjectPath, principal: Admin, session: SessionDep,
                    cursor: CursorParam = None, limit: LimitParam = DEFAULT_LIMIT) -> Page[AnnotatorOut]:
    """The project's member accounts, by username."""
    projects.accessible(session, principal, annotation_project_id)
    rows, next_cursor = accounts.members_page(session, annotation_project_id, cursor, limit)
    return Page(data=[AnnotatorOut.model_validate(a) for a in rows], next_cursor=next_cursor)


@router.get("/projects/{annotation_project_id}/stats", response_model=QueueStats)
def stats(annotation_project_id: ProjectPath, now: Now, principal: Reader, session: SessionDep) -> QueueStats:
    """Budget, queue depth, leases, adjudication backlog, agreement, pseudo-label accuracy, throughput."""
    projects.accessible(session, principal, annotation_project_id)
    return queue.project_stats(session, annotation_project_id, now=now)
