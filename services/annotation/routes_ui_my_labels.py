"""UI routes for an annotator's own past labels: the "my labels" list and the edit form
(``review.my_labels`` / ``review.edit_label``, the same functions as the JSON API).

Post/Redirect/Get like the task page: a refused edit comes back to the edit page with the error and what
was typed (the flash cookie).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from services.annotation import queue, review
from services.annotation.deps import ItemPath, Now, ProjectPath, SessionDep
from services.annotation.label_schema import LabelSchema
from services.annotation.models import Task
from services.annotation.review_display import form_of, snapshot_text
from services.annotation.routes_ui_tasks import (
    PostedForm,
    question_fields,
    submission_from_form,
    values_from_form,
)
from services.annotation.schemas import Decision
from services.annotation.ui_pages import UI_PREFIX, error_page, notice_of, redirect, render, render_markdown
from services.annotation.ui_session import (
    Flash,
    FormText,
    Labeller,
    clear_flash,
    guarded_project,
    member_project,
    read_flash,
    write_flash,
)
from services.common.errors import ApiError
from services.common.pagination import CursorParam

router = APIRouter(prefix=UI_PREFIX, include_in_schema=False)
MY_LABELS_PAGE = 25


@router.get("/projects/{annotation_project_id}/my-labels", name="ui_my_labels")
def my_labels_page(request: Request, annotation_project_id: ProjectPath, now: Now, found: Labeller,
                   session: SessionDep, cursor: CursorParam = None) -> Response:
    """The annotator's own labels, newest first, with an Edit link while the project allows editing."""
    try:
        project = member_project(session, found, annotation_project_id)
        assert found.annotator is not None
        page = review.my_labels(session, project.id, found.annotator.id, cursor=cursor, limit=MY_LABELS_PAGE,
                                now=now)
    except ApiError as exc:
        return error_page(request, exc, found)
    schema = LabelSchema.model_validate(project.label_schema)
    rows = []
    for label in page.data:
        task = session.get(Task, label.task_id)
        candidates = queue.candidates(session, task.rollout_group_id) if task is not None else []
        rows.append({"label": label, "text": snapshot_text(schema, label.label, candidates)})
    return render(request, "my_labels.html", {
        "project": project, "rows": rows, "next_cursor": page.next_cursor, "notice": notice_of(request),
        "window_s": project.label_edit_window_s, "title": f"My labels · {project.name}"}, found=found)


@router.get("/projects/{annotation_project_id}/my-labels/{annotation_id}", name="ui_edit_label")
def edit_label_page(request: Request, annotation_project_id: ProjectPath, annotation_id: ItemPath, now: Now,
                    found: Labeller, session: SessionDep) -> Response:
    """The label form, filled with the stored value (or with what was typed, after a refusal)."""
    try:
        project = member_project(session, found, annotation_project_id)
        assert found.annotator is not None
        annotation, mine = review.my_label(session, project.id, found.annotator.id, annotation_id, now=now)
    except ApiError as exc:
        return error_page(request, exc, found)
    task = session.get(Task, annotation.task_id)
    assert task is not None
    view = queue._adjudication_view(session, task)  # the prompt, candidates and pairs of the task
    schema = LabelSchema.model_validate(project.label_schema)
    flash = read_flash(request, found.annotator.id, project.id)
    form: dict[str, Any] = flash.form if flash is not None and flash.form.get("annotation_id") == annotation_id \
        else form_of(schema, mine.label)
    response = render(request, "label_edit.html", {
        "project": project, "schema": schema, "task": view, "mine": mine, "form": form, "error": flash,
        "markdown": render_markdown, "title": f"Edit my label · {project.name}"}, found=found)
    clear_flash(request, response)
    return response


@router.post("/projects/{annotation_project_id}/my-labels/{annotation_id}", name="ui_save_label")
def save_label(request: Request, annotation_project_id: ProjectPath, annotation_id: ItemPath, now: Now,
               found: Labeller, session: SessionDep, posted: PostedForm, csrf_token: FormText = "",
               choice: FormText = "", answer: FormText = "", ambiguous: FormText = "",
               rationale: FormText = "") -> Response:
    try:
        project = guarded_project(session, found, annotation_project_id, csrf_token)
        assert found.annotator is not None
    except ApiError as exc:
        return error_page(request, exc, found)
    schema = LabelSchema.model_validate(project.label_schema)
    fields = question_fields(schema, posted)
    try:
        body = submission_from_form("edit", choice, answer, ambiguous, rationale, values_from_form(schema, fields),
                                    math=schema.math is not None)
        decision = Decision.model_validate(body.model_dump(exclude={"submission_id"}))
        review.edit_label(session, project.id, found.annotator.id, annotation_id, decision, now=now)
    except ApiError as exc:
        session.rollback()
        response = redirect(request, "ui_edit_label", annotation_project_id=project.id, annotation_id=annotation_id)
        form = {"annotation_id": annotation_id, "choice": choice, "answer": answer, "ambiguous": bool(ambiguous),
                "rationale": rationale, "error_field": exc.field, **fields}
        write_flash(request, response, Flash(owner=found.annotator.id, project_id=project.id, message=exc.message,
                                             form=form))
        return response
    return redirect(request, "ui_my_labels", notice="label_edited", annotation_project_id=project.id)
