"""The reviewer screen: tasks whose annotators disagreed, every label side by side, and a form that
settles one (the same ``queue.adjudicate`` as ``POST …/tasks/{id}/adjudication``).

Reviewer and admin annotator accounts only. Post/Redirect/Get like the task page: a refused decision
comes back to the task's review page with the error and what was typed (the flash cookie).
"""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from services.annotation import accounts, queue, review
from services.annotation.deps import ItemPath, Now, ProjectPath, SessionDep
from services.annotation.label_schema import LabelSchema
from services.annotation.models import Annotation, AnnotationProject, Annotator, Review, Task
from services.annotation.review_display import label_cells, snapshot_cells, snapshot_text
from services.annotation.routes_ui_tasks import (
    PostedForm,
    question_fields,
    submission_from_form,
    values_from_form,
)
from services.annotation.schemas import AdjudicationView, Decision, LabelSnapshot, ReviewIn
from services.annotation.ui_pages import UI_PREFIX, error_page, notice_of, redirect, render, render_markdown
from services.annotation.ui_session import (
    Flash,
    FormText,
    Labeller,
    Viewer,
    clear_flash,
    guarded_project,
    member_project,
    read_flash,
    write_flash,
)
from services.common.errors import ApiError, InvalidInput, NotFound
from services.common.pagination import CursorParam

router = APIRouter(prefix=UI_PREFIX, include_in_schema=False)
REVIEW_PAGE = 20

def reviewer_project(session: Session, found: Viewer, annotation_project_id: str) -> AnnotationProject:
    project = member_project(session, found, annotation_project_id)
    assert found.annotator is not None
    accounts.require_adjudicator(found.annotator)
    return project

def _rows(schema: LabelSchema, view: AdjudicationView) -> list[dict[str, Any]]:
    return [{"username": label.username, "cells": label_cells(schema, label, view.candidates)}
            for label in view.annotations]

@router.get("/projects/{annotation_project_id}/review", name="ui_review")
def review_page(request: Request, annotation_project_id: ProjectPath, found: Labeller, session: SessionDep,
                cursor: CursorParam = None) -> Response:
    """The project's disputed tasks, highest priority first, each annotator's label per question."""
    try:
        project = reviewer_project(session, found, annotation_project_id)
        page = queue.adjudication_queue(session, project.id, cursor=cursor, limit=REVIEW_PAGE)
    except ApiError as exc:
        return error_page(request, exc, found)
    schema = LabelSchema.model_validate(project.label_schema)
    tasks = [{"view": view, "rows": _rows(schema, view)} for view in page.data]
    assert found.annotator is not None
    waiting = review.reviewable(session, project.id, found.annotator.id, limit=REVIEW_PAGE)
    return render(request, "review.html", {"project": project, "schema": schema, "tasks": tasks,
                                           "next_cursor": page.next_cursor, "notice": notice_of(request),
                                           "waiting": waiting, "title": f"Review · {project.name}"}, found=found)

@router.get("/projects/{annotation_project_id}/review/{task_id}", name="ui_review_task")
def review_task_page(request: Request, annotation_project_id: ProjectPath, task_id: ItemPath, found: Labeller,
                     session: SessionDep) -> Response:
    """One disputed task: the labels side by side and the decision form (the project's questions)."""
    try:
        project = reviewer_project(session, found, annotation_project_id)
        view = queue.adjudication_view(session, project.id, task_id)
    except ApiError as exc:
        return error_page(request, exc, found)
    assert found.annotator is not None
    flash = read_flash(request, found.annotator.id, project.id)
    form = flash.form if flash is not None and flash.form.get("task_id") == task_id else {}
    schema = LabelSchema.model_validate(project.label_schema)
    response = render(request, "review_task.html", {
        "project": project, "schema": schema, "task": view, "rows": _rows(schema, view), "form": form,
        "error": flash, "markdown": render_markdown, "title": f"Settle · {project.name}"}, found=found)
    clear_flash(request, response)
    return response

@router.post("/projects/{annotation_project_id}/review/{task_id}", name="ui_adjudicate")
def adjudicate(request: Request, annotation_project_id: ProjectPath, task_id: ItemPath, now: Now, found: Labeller,
               session: SessionDep, posted: PostedForm, csrf_token: FormText = "", choice: FormText = "",
               answer: FormText = "", ambiguous: FormText = "", rationale: FormText = "") -> Response:
    try:
        project = guarded_project(session, found, annotation_project_id, csrf_token)
        assert found.annotator is not None
        accounts.require_adjudicator(found.annotator)
    except ApiError as exc:
        return error_page(request, exc, found)
    schema = LabelSchema.model_validate(project.label_schema)
    fields = question_fields(schema, posted)
    try:
        body = submission_from_form(uuid.uuid4().hex, choice, answer, ambiguous, rationale,
                                    values_from_form(schema, fields), math=schema.math is not None)
        decision = Decision.model_validate(body.model_dump(exclude={"submission_id"}))
        queue.adjudicate(session, project.id, found.annotator.id, task_id, decision, now=now)
    except ApiError as exc:
        session.rollback()
        response = redirect(request, "ui_review_task", annotation_project_id=project.id, task_id=task_id)
        form = {"task_id": task_id, "choice": choice, "answer": answer, "ambiguous": bool(ambiguous),
                "rationale": rationale, "error_field": exc.field, **fields}
        write_flash(request, response, Flash(owner=found.annotator.id, project_id=project.id, message=exc.message,
                                             form=form))
        return response
    return redirect(request, "ui_review", notice="adjudicated", annotation_project_id=project.id)


# ------------------------------------------------------------ single submissions and task history


def _label_cards(session: Session, schema: LabelSchema, task_id: str, reviewer_id: str,
                 candidates: list[Any]) -> list[dict[str, Any]]:
    """Every label of the task that was not undone (rejected ones too), with its review and whether the
    viewer may review it (not their own, not reviewed yet, not taken back)."""
    rows = session.execute(select(Annotation, Annotator.username).join(Annotator, Annotator.id == Annotation.annotator_id)
                           .where(Annotation.task_id == task_id, Annotation.undone_at.is_(None))
                           .order_by(Annotation.created_at, Annotation.id)).all()
    reviews = {r.annotation_id: r for r in session.scalars(select(Review).where(Review.task_id == task_id))}
    cards = []
    for annotation, username in rows:
        snap = LabelSnapshot.model_validate(review.snapshot(annotation))
        found_review = reviews.get(annotation.id)
        cards.append({"annotation": annotation, "username": username, "review": found_review,
                      "cells": list(zip(schema.questions, snapshot_cells(schema, snap, candidates), strict=True)),
                      "can_review": found_review is None and annotation.annotator_id != reviewer_id})
    return cards


@router.get("/projects/{annotation_project_id}/tasks/{task_id}/history", name="ui_task_history")
def task_history_page(request: Request, annotation_project_id: ProjectPath, task_id: ItemPath, found: Labeller,
                      session: SessionDep) -> Response:
    """One task for a reviewer: each label with Accept / Reject (and a comment), and the task's history."""
    try:
        project = reviewer_project(session, found, annotation_project_id)
        history = review.task_history(session, project.id, task_id)
    except ApiError as exc:
        return error_page(request, exc, found)
    assert found.annotator is not None
    task = session.get(Task, task_id)
    assert task is not None
    schema = LabelSchema.model_validate(project.label_schema)
    candidates = queue.candidates(session, task.rollout_group_id)
    flash = read_flash(request, found.annotator.id, project.id)
    events = [{"event": e, "text": snapshot_text(schema, e.label, candidates) if e.label is not None else "",
               "previous": snapshot_text(schema, e.previous, candidates) if e.previous is not None else ""}
              for e in history.events]
    response = render(request, "task_history.html", {
        "project": project, "history": history, "events": events,
        "cards": _label_cards(session, schema, task_id, found.annotator.id, candidates),
        "final_text": snapshot_text(schema, history.final, candidates) if history.final is not None else None,
        "error": flash, "notice": notice_of(request), "title": f"Task · {project.name}"}, found=found)
    clear_flash(request, response)
    return response


@router.post("/projects/{annotation_project_id}/annotations/{annotation_id}/review", name="ui_review_submission")
def review_submission(request: Request, annotation_project_id: ProjectPath, annotation_id: ItemPath, now: Now,
                      found: Labeller, session: SessionDep, csrf_token: FormText = "", decision: FormText = "",
                      comment: FormText = "", task_id: FormText = "") -> Response:
    """Accept or reject one label (``review.review_submission``), then back to the task's page (PRG)."""
    try:
        project = guarded_project(session, found, annotation_project_id, csrf_token)
        assert found.annotator is not None
        accounts.require_adjudicator(found.annotator)
        target = session.get(Annotation, annotation_id)
        if target is None or target.annotation_project_id != project.id:
            raise NotFound(f"annotation {annotation_id!r} not found", field="annotation_id")
    except ApiError as exc:
        return error_page(request, exc, found)
    back = {"annotation_project_id": project.id, "task_id": target.task_id}
    try:
        if decision not in ("accept", "reject"):
            raise InvalidInput("decision: choose accept or reject", field="decision")
        body = ReviewIn(decision="accept" if decision == "accept" else "reject", comment=comment.strip() or None)
        review.review_submission(session, project.id, found.annotator.id, annotation_id, body, now=now)
    except ApiError as exc:
        session.rollback()
        response = redirect(request, "ui_task_history", **back)
        write_flash(request, response, Flash(owner=found.annotator.id, project_id=project.id, message=exc.message,
                                             form={"annotation_id": annotation_id, "comment": comment}))
        return response
    return redirect(request, "ui_task_history", notice="reviewed", **back)
