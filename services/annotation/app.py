"""Annotation routes: projects and budgets, the trainer-facing step/label API, the annotator queue."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Header, Path, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from services.annotation import accounts, notifications, purchases, queue, webhooks
from services.annotation.models import (
    AnnotationProject,
    Annotator,
    AnnotatorMembership,
    Assignment,
    AssignmentState,
    DeliveryState,
    Policy,
    Task,
    TaskStatus,
    WebhookDelivery,
)
from services.annotation.schemas import (
    AdjudicationOut,
    AdjudicationView,
    AnnotationOut,
    AnnotationProjectCreate,
    AnnotationProjectCreated,
    AnnotationProjectOut,
    AnnotationProjectUpdate,
    AnnotatorCreate,
    AnnotatorOut,
    AnswerKeyOut,
    AnswerKeyUpload,
    Decision,
    LabelSchema,
    LabelsOut,
    LedgerOut,
    PromptsIn,
    PromptsOut,
    PurchaseIn,
    PurchasesOut,
    QueueStats,
    SkipOut,
    StepIn,
    StepOut,
    Submission,
    TaskView,
    UndoOut,
    WebhookDeliveriesOut,
    WebhookDeliveryOut,
    WebhookSecretOut,
)
from services.common import metrics
from services.common.app_factory import create_service_app
from services.common.auth import Principal, get_accessible_project, require_roles
from services.common.db import get_session, session_factory, session_scope, utcnow
from services.common.errors import Conflict, InvalidInput, NotFound
from services.common.models import Role
from services.common.validation import ID_PATTERN

ProjectPath = Annotated[str, Path(pattern=ID_PATTERN, description="An annotation project id.")]
ItemPath = Annotated[str, Path(pattern=ID_PATTERN, description="An id (32 hex characters).")]
IdempotencyKey = Annotated[str | None, Header(min_length=1, max_length=200, description=(
    "A retry with the same key returns the first answer and changes nothing."))]

admins = require_roles(Role.admin)
trainers = require_roles(Role.admin, Role.trainer)
readers = require_roles(Role.admin, Role.trainer, Role.annotator)
annotators = require_roles(Role.admin, Role.annotator)


def request_time() -> datetime | None:
    """The time a request acts at. None means "the real clock, read after locks are taken";
    tests override this dependency to drive lease expiry without sleeping."""
    return None


Now = Annotated[datetime | None, Depends(request_time)]


def accessible(session: Session, principal: Principal, annotation_project_id: str) -> AnnotationProject:
    """The annotation project if the key's tenancy scope covers it; otherwise reported absent."""
    project = session.get(AnnotationProject, annotation_project_id)
    if project is None or not principal.can_access(project.project_id):
        raise NotFound(f"annotation project {annotation_project_id!r} not found", field="annotation_project_id")
    return project


def project_out(session: Session, project: AnnotationProject) -> dict[str, Any]:
    return dict(
        id=project.id, project_id=project.project_id, name=project.name, description=project.description,
        budget=purchases.budget_of(project), label_schema=LabelSchema.model_validate(project.label_schema),
        overlap_k=project.overlap_k, lease_seconds=project.lease_seconds,
        rollouts_per_prompt=project.rollouts_per_prompt, policy=project.policy, care_params=project.care_params,
        answer_source=project.answer_source, answer_key_entries=purchases.answer_key_size(session, project.id),
        webhook_url=project.webhook_url, last_step=project.last_step, label_cursor=project.label_seq,
        created_at=project.created_at)


def _check_care_params(params: dict[str, Any]) -> dict[str, Any]:
    try:
        return purchases.validate_care_params(params)
    except (ValidationError, TypeError, ValueError) as exc:
        raise InvalidInput(f"care_params: {exc}".splitlines()[0][:500], field="care_params") from exc


# ------------------------------------------------------------------------------------- projects


def _checked_webhook(url: object | None) -> str | None:
    """The webhook URL as stored, once it passed the SSRF guard (``notifications.check_webhook_url``)."""
    if url is None:
        return None
    notifications.check_webhook_url(str(url), field_name="webhook_url")
    return str(url)

router = APIRouter(prefix="/v1/annotation", tags=["annotation projects"])


@router.post("/projects", response_model=AnnotationProjectCreated, status_code=201)
def create_project(body: AnnotationProjectCreate, principal: Principal = Depends(admins),
                   session: Session = Depends(get_session)) -> AnnotationProjectCreated:
    """Create an annotation project with its budget, label schema, queue settings and policy."""
    get_accessible_project(session, principal, body.project_id)
    if session.scalar(select(AnnotationProject.id).where(AnnotationProject.project_id == body.project_id,
                                                         AnnotationProject.name == body.name)) is not None:
        raise Conflict(f"an annotation project named {body.name!r} already exists here", field="name")
    project = AnnotationProject(
        project_id=body.project_id, name=body.name, description=body.description, label_budget=body.label_budget,
        label_schema=body.label_schema.model_dump(), overlap_k=body.overlap_k, lease_seconds=body.lease_seconds,
        rollouts_per_prompt=body.rollouts_per_prompt, policy=body.policy,
        care_params=_check_care_params(body.care_params), answer_source=body.answer_source,
        webhook_url=_checked_webhook(body.webhook_url), webhook_secret=purchases.new_webhook_secret())
    session.add(project)
    try:
        session.flush()
    except IntegrityError as exc:
        raise Conflict(f"an annotation project named {body.name!r} already exists here", field="name") from exc
    return AnnotationProjectCreated(**project_out(session, project), webhook_secret=project.webhook_secret)


@router.get("/projects", response_model=list[AnnotationProjectOut])
def list_projects(project_id: str | None = Query(default=None, pattern=ID_PATTERN),
                  principal: Principal = Depends(readers),
                  session: Session = Depends(get_session)) -> list[AnnotationProjectOut]:
    query = select(AnnotationProject).order_by(AnnotationProject.created_at, AnnotationProject.id)
    if project_id is not None:
        query = query.where(AnnotationProject.project_id == project_id)
    return [AnnotationProjectOut(**project_out(session, p)) for p in session.scalars(query)
            if principal.can_access(p.project_id)]


@router.get("/projects/{annotation_project_id}", response_model=AnnotationProjectOut)
def get_project(annotation_project_id: ProjectPath, principal: Principal = Depends(readers),
                session: Session = Depends(get_session)) -> AnnotationProjectOut:
    return AnnotationProjectOut(**project_out(session, accessible(session, principal, annotation_project_id)))


@router.patch("/projects/{annotation_project_id}", response_model=AnnotationProjectOut)
def update_project(annotation_project_id: ProjectPath, body: AnnotationProjectUpdate,
                   principal: Principal = Depends(admins),
                   session: Session = Depends(get_session)) -> AnnotationProjectOut:
    """Change budget, schema, queue settings, policy or webhook. `overlap_k` applies to new tasks."""
    accessible(session, principal, annotation_project_id)
    project = purchases.lock_project(session, annotation_project_id)
    if body.label_budget is not None:
        if body.label_budget < project.labels_bought:
            raise Conflict(f"{project.labels_bought} labels were already bought; the budget cannot go below that",
                           field="label_budget", code="budget_below_spent")
        project.label_budget = body.label_budget
    for name in ("description", "overlap_k", "lease_seconds"):
        value = getattr(body, name)
        if value is not None:
            setattr(project, name, value)
    if body.label_schema is not None:
        project.label_schema = body.label_schema.model_dump()
    if body.policy is not None and body.policy is not project.policy:
        if body.policy is Policy.oracle_cag and not purchases.answer_key_size(session, project.id):
            raise InvalidInput("oracle_cag needs an answer key; upload one first", field="policy")
        project.policy = body.policy
    if body.care_params is not None:
        project.care_params = _check_care_params(body.care_params)
    if body.clear_webhook:
        project.webhook_url = None
    elif body.webhook_url is not None:
        project.webhook_url = _checked_webhook(body.webhook_url)
    session.flush()
    return AnnotationProjectOut(**project_out(session, project))


@router.post("/projects/{annotation_project_id}/webhook-secret", response_model=WebhookSecretOut)
def rotate_webhook_secret(annotation_project_id: ProjectPath, principal: Principal = Depends(admins),
                          session: Session = Depends(get_session)) -> WebhookSecretOut:
    """Replace the secret that signs webhook messages; the new one is shown only here."""
    accessible(session, principal, annotation_project_id)
    project = purchases.lock_project(session, annotation_project_id)
    project.webhook_secret = purchases.new_webhook_secret()
    return WebhookSecretOut(webhook_secret=project.webhook_secret)


def _delivery_out(row: WebhookDelivery) -> WebhookDeliveryOut:
    out = WebhookDeliveryOut.model_validate(row)
    if row.state is not DeliveryState.pending:
        out.next_attempt_at = None  # only a pending delivery has a next attempt
    return out


@router.get("/projects/{annotation_project_id}/webhook-deliveries", response_model=WebhookDeliveriesOut)
def list_webhook_deliveries(annotation_project_id: ProjectPath,
                            state: DeliveryState | None = Query(default=None, description="Only this state."),
                            offset: int = Query(default=0, ge=0), limit: int = Query(default=100, ge=1, le=500),
                            principal: Principal = Depends(admins),
                            session: Session = Depends(get_session)) -> WebhookDeliveriesOut:
    """The project's webhook deliveries, newest first: state, attempts, last status or error."""
    accessible(session, principal, annotation_project_id)
    rows, total = webhooks.list_deliveries(session, annotation_project_id, state=state, offset=offset, limit=limit)
    return WebhookDeliveriesOut(deliveries=[_delivery_out(r) for r in rows], total=total, offset=offset, limit=limit)


@router.post("/projects/{annotation_project_id}/webhook-deliveries/{delivery_id}/redeliver",
             response_model=WebhookDeliveryOut, status_code=202)
def redeliver_webhook(annotation_project_id: ProjectPath, delivery_id: ItemPath, principal: Principal = Depends(admins),
                      session: Session = Depends(get_session)) -> WebhookDeliveryOut:
    """Send a failed delivery again (same delivery id, attempts counted afresh) to the current webhook URL,
    signed with the current secret. A delivery that is not failed is 409 `delivery_not_failed`."""
    accessible(session, principal, annotation_project_id)
    row = webhooks.redeliver(session, annotation_project_id, delivery_id)
    session.flush()
    return _delivery_out(row)


@router.put("/projects/{annotation_project_id}/answer-key", response_model=AnswerKeyOut)
def put_answer_key(annotation_project_id: ProjectPath, body: AnswerKeyUpload, principal: Principal = Depends(admins),
                   session: Session = Depends(get_session)) -> AnswerKeyOut:
    """Store hidden answers (simulation, evaluation). They are never returned and never used by selection."""
    accessible(session, principal, annotation_project_id)
    ids = [e.prompt_id for e in body.entries]
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        index = next(i for i, v in enumerate(ids) if v in seen or seen.add(v))  # type: ignore[func-returns-value]
        raise InvalidInput(f"prompt id {ids[index]!r} appears more than once", field=f"entries[{index}].prompt_id")
    count = purchases.upload_answer_key(session, annotation_project_id, [(e.prompt_id, e.answer) for e in body.entries])
    return AnswerKeyOut(entries=count)


@router.post("/projects/{annotation_project_id}/annotators", response_model=AnnotatorOut, status_code=201)
def create_annotator(annotation_project_id: ProjectPath, body: AnnotatorCreate, principal: Principal = Depends(admins),
                     session: Session = Depends(get_session)) -> AnnotatorOut:
    """Create a login account for the web UI, member of this project."""
    accessible(session, principal, annotation_project_id)
    annotator = accounts.create_annotator(session, body.username, body.password, role=body.role,
                                          display_name=body.display_name, project_ids=[annotation_project_id])
    return AnnotatorOut.model_validate(annotator)


@router.get("/projects/{annotation_project_id}/annotators", response_model=list[AnnotatorOut])
def list_annotators(annotation_project_id: ProjectPath, principal: Principal = Depends(admins),
                    session: Session = Depends(get_session)) -> list[AnnotatorOut]:
    accessible(session, principal, annotation_project_id)
    rows = session.scalars(select(Annotator).join(AnnotatorMembership, AnnotatorMembership.annotator_id == Annotator.id)
                           .where(AnnotatorMembership.annotation_project_id == annotation_project_id)
                           .order_by(Annotator.username))
    return [AnnotatorOut.model_validate(a) for a in rows]


@router.get("/projects/{annotation_project_id}/stats", response_model=QueueStats)
def stats(annotation_project_id: ProjectPath, now: Now, principal: Principal = Depends(readers),
          session: Session = Depends(get_session)) -> QueueStats:
    """Budget, queue depth, leases, adjudication backlog, agreement, pseudo-label accuracy, throughput."""
    accessible(session, principal, annotation_project_id)
    return queue.project_stats(session, annotation_project_id, now=now)


# -------------------------------------------------------------------------------- trainer API

trainer_router = APIRouter(prefix="/v1/annotation", tags=["trainer"])


@trainer_router.post("/projects/{annotation_project_id}/prompts", response_model=PromptsOut)
def register_prompts(annotation_project_id: ProjectPath, body: PromptsIn, principal: Principal = Depends(trainers),
                     session: Session = Depends(get_session)) -> PromptsOut:
    """Register prompts under your own ids (idempotent: a known id with the same text is kept)."""
    accessible(session, principal, annotation_project_id)
    return purchases.register_prompts(session, annotation_project_id, body.prompts)


@trainer_router.post("/projects/{annotation_project_id}/steps", response_model=StepOut)
def post_step(annotation_project_id: ProjectPath, body: StepIn, now: Now,
              idempotency_key: IdempotencyKey = None, principal: Principal = Depends(trainers),
              session: Session = Depends(get_session)) -> StepOut:
    """A training step's rollout groups → pseudo-labels, majority ratios, the prompts bought by the
    project's policy (within budget) and per-prompt advantage weights.

    Answer-key projects answer their purchases at once (`label_status: labelled`); otherwise
    bought prompts become annotation tasks and their labels arrive in the label feed.
    """
    accessible(session, principal, annotation_project_id)
    return purchases.ingest_step(session, annotation_project_id, body,
                                 idempotency_key=idempotency_key or body.idempotency_key, now=now)


@trainer_router.post("/projects/{annotation_project_id}/purchases", response_model=PurchasesOut, status_code=201)
def post_purchases(annotation_project_id: ProjectPath, body: PurchaseIn, now: Now,
                   idempotency_key: IdempotencyKey = None, principal: Principal = Depends(trainers),
                   session: Session = Depends(get_session)) -> PurchasesOut:
    """Buy labels for chosen prompts of a posted step, outside the policy. Over budget → 409."""
    accessible(session, principal, annotation_project_id)
    return purchases.buy_prompts(session, annotation_project_id, body,
                                 idempotency_key=idempotency_key or body.idempotency_key, now=now)


@trainer_router.get("/projects/{annotation_project_id}/labels", response_model=LabelsOut)
def get_labels(annotation_project_id: ProjectPath,
               cursor: int = Query(default=0, ge=0, description="Return label changes after this sequence number."),
               limit: int = Query(default=500, ge=1, le=10_000), principal: Principal = Depends(trainers),
               session: Session = Depends(get_session)) -> LabelsOut:
    """Labels bought and answered since `cursor`; pass `next_cursor` back to continue."""
    accessible(session, principal, annotation_project_id)
    return purchases.labels_since(session, annotation_project_id, cursor, limit)


def _fetch_labels(annotation_project_id: str, batch: int) -> Any:
    def fetch(cursor: int) -> list[dict[str, Any]]:
        with session_scope() as session:
            feed = purchases.labels_since(session, annotation_project_id, cursor, batch)
            return [label.model_dump(mode="json") for label in feed.labels]

    return fetch


@trainer_router.get("/projects/{annotation_project_id}/labels/stream",
                    responses={200: {"content": {"text/event-stream": {}}}})
def stream_labels(annotation_project_id: ProjectPath, request: Request,
                  cursor: int = Query(default=0, ge=0),
                  limit: int | None = Query(default=None, ge=1, le=1_000_000,
                                            description="Close the stream after this many events."),
                  last_event_id: str | None = Header(default=None, max_length=32),
                  principal: Principal = Depends(trainers),
                  session: Session = Depends(get_session)) -> StreamingResponse:
    """Server-Sent Events: `event: label`, `id: <seq>`, data = one label-feed entry.

    Reconnecting clients resume from `Last-Event-ID` (EventSource sends it automatically).
    """
    accessible(session, principal, annotation_project_id)
    if last_event_id is not None:
        if not last_event_id.isdigit():
            raise InvalidInput("Last-Event-ID must be a label sequence number", field="Last-Event-ID")
        cursor = int(last_event_id)
    from services.annotation import notifications

    return StreamingResponse(
        notifications.label_stream(annotation_project_id, cursor, _fetch_labels(annotation_project_id, 500),
                                   limit=limit),
        media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@trainer_router.get("/projects/{annotation_project_id}/ledger", response_model=LedgerOut)
def get_ledger(annotation_project_id: ProjectPath, offset: int = Query(default=0, ge=0),
               limit: int = Query(default=500, ge=1, le=10_000), principal: Principal = Depends(trainers),
               session: Session = Depends(get_session)) -> LedgerOut:
    """Every purchase: prompt, step, policy, score, who labelled it and when, with the budget."""
    accessible(session, principal, annotation_project_id)
    return purchases.ledger(session, annotation_project_id, offset=offset, limit=limit)


# ------------------------------------------------------------------------------- annotator API

queue_router = APIRouter(prefix="/v1/annotation", tags=["annotator queue"])


def annotator_of(session: Session, principal: Principal, annotation_project_id: str) -> Annotator:
    accessible(session, principal, annotation_project_id)
    return accounts.annotator_for_key(session, principal)


@queue_router.post("/projects/{annotation_project_id}/queue/next", response_model=TaskView,
                   responses={204: {"description": "Nothing to label right now."}})
def next_task(annotation_project_id: ProjectPath, now: Now, principal: Principal = Depends(annotators),
              session: Session = Depends(get_session)) -> Any:
    """Lease the next task (highest selection score first), or get back your live lease."""
    annotator = annotator_of(session, principal, annotation_project_id)
    view = queue.next_task(session, annotation_project_id, annotator.id, now=now)
    return view if view is not None else Response(status_code=204)


@queue_router.get("/projects/{annotation_project_id}/queue/current", response_model=TaskView,
                  responses={204: {"description": "You hold no live lease."}})
def current_task(annotation_project_id: ProjectPath, now: Now, principal: Principal = Depends(annotators),
                 session: Session = Depends(get_session)) -> Any:
    annotator = annotator_of(session, principal, annotation_project_id)
    view = queue.current_task(session, annotation_project_id, annotator.id, now=now)
    return view if view is not None else Response(status_code=204)


@queue_router.post("/projects/{annotation_project_id}/assignments/{assignment_id}/submit",
                   response_model=AnnotationOut, status_code=201,
                   responses={200: {"model": AnnotationOut, "description": "A retry of an earlier submission_id."}})
def submit(annotation_project_id: ProjectPath, assignment_id: ItemPath, body: Submission, response: Response,
           now: Now, principal: Principal = Depends(annotators),
           session: Session = Depends(get_session)) -> AnnotationOut:
    """Answer a leased task. An expired lease is refused (409 `lease_expired`)."""
    annotator = annotator_of(session, principal, annotation_project_id)
    out = queue.submit(session, annotation_project_id, annotator.id, assignment_id, body, now=now)
    if out.replayed:
        response.status_code = 200
    return out


@queue_router.post("/projects/{annotation_project_id}/assignments/{assignment_id}/skip", response_model=SkipOut)
def skip(annotation_project_id: ProjectPath, assignment_id: ItemPath, now: Now,
         principal: Principal = Depends(annotators), session: Session = Depends(get_session)) -> SkipOut:
    """Hand the task back; you will not be offered it again."""
    annotator = annotator_of(session, principal, annotation_project_id)
    return queue.skip(session, annotation_project_id, annotator.id, assignment_id, now=now)


@queue_router.post("/projects/{annotation_project_id}/assignments/{assignment_id}/renew", response_model=TaskView)
def renew(annotation_project_id: ProjectPath, assignment_id: ItemPath, now: Now,
          principal: Principal = Depends(annotators), session: Session = Depends(get_session)) -> TaskView:
    """Extend a live lease (a heartbeat while you work on a long task)."""
    annotator = annotator_of(session, principal, annotation_project_id)
    return queue.renew_lease(session, annotation_project_id, annotator.id, assignment_id, now=now)


@queue_router.post("/projects/{annotation_project_id}/queue/undo", response_model=UndoOut)
def undo(annotation_project_id: ProjectPath, now: Now, idempotency_key: IdempotencyKey = None,
         principal: Principal = Depends(annotators), session: Session = Depends(get_session)) -> Any:
    """Take back your last submission; its task is leased to you again. Send an Idempotency-Key so a
    retried undo does not also undo the submission before it."""
    annotator = annotator_of(session, principal, annotation_project_id)
    endpoint = f"undo:{annotator.id}"
    if idempotency_key is not None:
        stored = purchases.replay(session, annotation_project_id, endpoint, idempotency_key, "-")
        if stored is not None:
            return Response(stored, media_type="application/json")
    out = queue.undo_last(session, annotation_project_id, annotator.id, now=now)
    if idempotency_key is not None:
        purchases.remember(session, annotation_project_id, endpoint, idempotency_key, "-", 200, out.model_dump_json())
    return out


@queue_router.get("/projects/{annotation_project_id}/adjudications", response_model=list[AdjudicationView])
def adjudications(annotation_project_id: ProjectPath, limit: int = Query(default=50, ge=1, le=500),
                  principal: Principal = Depends(annotators),
                  session: Session = Depends(get_session)) -> list[AdjudicationView]:
    """Tasks whose annotators disagreed, waiting for a reviewer."""
    annotator = annotator_of(session, principal, annotation_project_id)
    accounts.require_adjudicator(annotator)
    return queue.adjudication_queue(session, annotation_project_id, limit=limit)


@queue_router.post("/projects/{annotation_project_id}/tasks/{task_id}/adjudication", response_model=AdjudicationOut,
                   status_code=201)
def adjudicate(annotation_project_id: ProjectPath, task_id: ItemPath, body: Decision, now: Now,
               principal: Principal = Depends(annotators),
               session: Session = Depends(get_session)) -> AdjudicationOut:
    """Settle a disputed task; the decision becomes the label."""
    annotator = annotator_of(session, principal, annotation_project_id)
    return queue.adjudicate(session, annotation_project_id, annotator.id, task_id, body, now=now)


def _queue_depth() -> dict[tuple[str, ...], float]:
    """Tasks by status and leases by state (live or expired, not yet taken up), over every project."""
    now = utcnow()
    with session_factory()() as session:
        tasks = session.execute(select(Task.status, func.count(Task.id)).group_by(Task.status)).all()
        leases = session.execute(
            select(Assignment.expires_at > now, func.count(Assignment.id))
            .where(Assignment.state == AssignmentState.active).group_by(Assignment.expires_at > now)).all()
    depth: dict[tuple[str, ...], float] = {("task", status.value): 0.0 for status in TaskStatus}
    depth.update({("task", TaskStatus(status).value): float(count) for status, count in tasks})
    depth.update({("lease", "live" if live else "expired"): float(count) for live, count in leases})
    return depth


def create_app() -> FastAPI:
    from services.annotation.webui_routes import router as webui_router  # imported here: it uses request_time

    # Read at scrape time, from the database every replica shares; registered once per process.
    metrics.register_collector("annotation_queue_depth", metrics.ScrapeGauge(
        "rewardhub_annotation_queue_depth", "Annotation tasks by status, and active leases live or expired",
        ["kind", "state"], _queue_depth))
    return create_service_app(
        "annotation", [router, trainer_router, queue_router, webui_router], title="rewardhub annotation",
        description="CARE active annotation: pseudo-labels from rollout groups, budgeted label purchases, "
                    "the annotator queue, and labels back to trainers. Every endpoint except health and "
                    "metrics needs `Authorization: Bearer <key>`.")

