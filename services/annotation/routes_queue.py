"""Annotator routes: lease the next task, submit, skip, come back later, renew, undo, confirm the
guidelines; the adjudication queue."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from sqlalchemy.orm import Session

from services.annotation import accounts, idempotency, projects, question_guidelines, queue
from services.annotation.deps import (
    AnnotatorKey,
    IdempotencyKey,
    ItemPath,
    Now,
    ProjectPath,
    SessionDep,
    SubmissionKey,
)
from services.annotation.models import Annotator
from services.annotation.schemas import (
    AdjudicationOut,
    AdjudicationView,
    AnnotationOut,
    Decision,
    GuidelinesConfirmIn,
    SkipOut,
    Submission,
    TaskView,
    UndoOut,
)
from services.common.auth import Principal
from services.common.db import utcnow
from services.common.errors import Conflict, InvalidInput
from services.common.pagination import CursorParam, LimitParam, Page

router = APIRouter(prefix="/v1/annotation", tags=["annotator queue"])
ADJUDICATION_PAGE = 50


def annotator_of(session: Session, principal: Principal, annotation_project_id: str) -> Annotator:
    projects.accessible(session, principal, annotation_project_id)
    return accounts.annotator_for_key(session, principal)


@router.post("/projects/{annotation_project_id}/queue/next", response_model=TaskView,
             responses={204: {"description": "Nothing to label right now."}})
def next_task(annotation_project_id: ProjectPath, now: Now, principal: AnnotatorKey, session: SessionDep) -> Any:
    """Lease the next task (highest selection score first), or get back your live lease. A project whose
    guidelines must be read first answers 409 ``guidelines_unconfirmed`` until you confirm their version."""
    project = projects.accessible(session, principal, annotation_project_id)
    annotator = accounts.annotator_for_key(session, principal)
    if projects.needs_confirmation(session, project, annotator.id):
        if projects.project_unconfirmed(session, project, annotator.id):
            raise Conflict(f"read the project's guidelines (version {project.guidelines_version}) and confirm them "
                           f"first: POST …/guidelines/confirm", field="version", code="guidelines_unconfirmed")
        waiting = question_guidelines.unconfirmed(session, project, annotator.id)
        names = ", ".join(f"{qid} (version {v})" for qid, v in waiting.items())
        raise Conflict(f"read the guidelines of question {names} and confirm them first: POST …/guidelines/confirm "
                       "with `questions`", field=f"questions.{next(iter(waiting))}", code="guidelines_unconfirmed")
    view = queue.next_task(session, annotation_project_id, annotator.id, now=now)
    return view if view is not None else Response(status_code=204)


@router.get("/projects/{annotation_project_id}/queue/current", response_model=TaskView,
            responses={204: {"description": "You hold no live lease."}})
def current_task(annotation_project_id: ProjectPath, now: Now, principal: AnnotatorKey, session: SessionDep) -> Any:
    annotator = annotator_of(session, principal, annotation_project_id)
    view = queue.current_task(session, annotation_project_id, annotator.id, now=now)
    return view if view is not None else Response(status_code=204)


@router.post("/projects/{annotation_project_id}/assignments/{assignment_id}/submit",
             response_model=AnnotationOut, status_code=201,
             responses={200: {"model": AnnotationOut, "description": "A retry with an earlier Idempotency-Key."}})
def submit(annotation_project_id: ProjectPath, assignment_id: ItemPath, body: Submission, response: Response,
           now: Now, principal: AnnotatorKey, session: SessionDep,
           idempotency_key: SubmissionKey = None) -> AnnotationOut:
    """Answer a leased task. Send an `Idempotency-Key` (the body's `submission_id` is deprecated).
    An expired lease is refused (409 `lease_expired`)."""
    annotator = annotator_of(session, principal, annotation_project_id)
    key = idempotency.key_from(idempotency_key, body.submission_id, "submission_id", response)
    out = queue.submit(session, annotation_project_id, annotator.id, assignment_id,
                       body.model_copy(update={"submission_id": key}), now=now)
    if out.replayed:
        response.status_code = 200
        response.headers[idempotency.REPLAYED_HEADER] = "true"
    return out


@router.post("/projects/{annotation_project_id}/assignments/{assignment_id}/skip", response_model=SkipOut)
def skip(annotation_project_id: ProjectPath, assignment_id: ItemPath, now: Now, principal: AnnotatorKey,
         session: SessionDep) -> SkipOut:
    """Hand the task back; you will not be offered it again."""
    annotator = annotator_of(session, principal, annotation_project_id)
    return queue.skip(session, annotation_project_id, annotator.id, assignment_id, now=now)


@router.post("/projects/{annotation_project_id}/assignments/{assignment_id}/later", response_model=SkipOut)
def come_back_later(annotation_project_id: ProjectPath, assignment_id: ItemPath, now: Now, principal: AnnotatorKey,
                    session: SessionDep) -> SkipOut:
    """Hand the lease back for now: the task is offered to you again once no other task is left."""
    annotator = annotator_of(session, principal, annotation_project_id)
    return queue.come_back_later(session, annotation_project_id, annotator.id, assignment_id, now=now)


@router.post("/projects/{annotation_project_id}/guidelines/confirm", status_code=204)
def confirm_guidelines(annotation_project_id: ProjectPath, body: GuidelinesConfirmIn, now: Now,
                       principal: AnnotatorKey, session: SessionDep) -> Response:
    """Say you read the project's guidelines at ``version`` and/or questions' guidelines at the versions in
    ``questions`` (GET …/guidelines lists them); a replaced version is a 409 guidelines_changed."""
    project = projects.accessible(session, principal, annotation_project_id)
    annotator = accounts.annotator_for_key(session, principal)
    if body.version is None and not body.questions:
        raise InvalidInput("give the project guidelines' `version`, or `questions` with each question's version",
                           field="version")
    if body.questions:
        question_guidelines.confirm(session, project, annotator.id, body.questions, now or utcnow())
    if body.version is not None:
        projects.confirm_guidelines(session, project, annotator.id, body.version, now or utcnow())
    return Response(status_code=204)


@router.post("/projects/{annotation_project_id}/assignments/{assignment_id}/renew", response_model=TaskView)
def renew(annotation_project_id: ProjectPath, assignment_id: ItemPath, now: Now, principal: AnnotatorKey,
          session: SessionDep) -> TaskView:
    """Extend a live lease (a heartbeat while you work on a long task)."""
    annotator = annotator_of(session, principal, annotation_project_id)
    return queue.renew_lease(session, annotation_project_id, annotator.id, assignment_id, now=now)


@router.post("/projects/{annotation_project_id}/queue/undo", response_model=UndoOut)
def undo(annotation_project_id: ProjectPath, now: Now, principal: AnnotatorKey, session: SessionDep,
         idempotency_key: IdempotencyKey = None) -> UndoOut:
    """Take back your last submission; its task is leased to you again. Send an Idempotency-Key so a
    retried undo does not also undo the submission before it."""
    annotator = annotator_of(session, principal, annotation_project_id)
    return queue.undo_once(session, annotation_project_id, annotator.id, idempotency_key, now=now)


@router.get("/projects/{annotation_project_id}/adjudications", response_model=Page[AdjudicationView])
def adjudications(annotation_project_id: ProjectPath, principal: AnnotatorKey, session: SessionDep,
                  cursor: CursorParam = None, limit: LimitParam = ADJUDICATION_PAGE) -> Page[AdjudicationView]:
    """Tasks whose annotators disagreed, waiting for a reviewer: highest priority first."""
    annotator = annotator_of(session, principal, annotation_project_id)
    accounts.require_adjudicator(annotator)
    return queue.adjudication_queue(session, annotation_project_id, cursor=cursor, limit=limit)


@router.post("/projects/{annotation_project_id}/tasks/{task_id}/adjudication", response_model=AdjudicationOut,
             status_code=201)
def adjudicate(annotation_project_id: ProjectPath, task_id: ItemPath, body: Decision, now: Now,
               principal: AnnotatorKey, session: SessionDep) -> AdjudicationOut:
    """Settle a disputed task; the decision becomes the label."""
    annotator = annotator_of(session, principal, annotation_project_id)
    return queue.adjudicate(session, annotation_project_id, annotator.id, task_id, body, now=now)
