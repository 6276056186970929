"""UI routes for labelling: the queue page, the task page and its submit, "come back later", "never
show again", undo, lease renewal, and the guidelines gate.

They call the same queue functions as the JSON API (``queue.next_task``, ``submit``, ``skip``,
``undo_once``, ``renew_lease``, ``project_stats``); only the way the caller is identified differs.

Post/Redirect/Get: every form post answers with a 303 to a page, also when it is refused; the error
and the typed values travel in a signed flash cookie (``ui_session.Flash``), so a reload never posts
the form again.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import ValidationError
from sqlalchemy.orm import Session
from starlette.datastructures import FormData

from services.annotation import accounts, projects, question_guidelines, queue
from services.annotation.deps import ItemPath, Now, ProjectPath, SessionDep
from services.annotation.label_schema import (
    FreeTextQuestion,
    LabelSchema,
    MultiLabelQuestion,
    PreferencePairQuestion,
    RankingQuestion,
)
from services.annotation.models import AnnotationProject, Annotator, LabelKind
from services.annotation.schemas import QueueStats, Submission, TaskView
from services.annotation.ui_pages import (
    CSRF_HEADER,
    UI_PREFIX,
    error_page,
    notice_of,
    redirect,
    render,
    render_markdown,
)
from services.annotation.ui_session import (
    Flash,
    FormText,
    Labeller,
    LoggedIn,
    Viewer,
    check_csrf,
    clear_flash,
    guarded_project,
    member_project,
    read_flash,
    write_flash,
)
from services.common.db import utcnow
from services.common.errors import ApiError, InvalidInput

router = APIRouter(prefix=UI_PREFIX, include_in_schema=False)


def _my_counts(stats: QueueStats, annotator_id: str) -> tuple[int, int]:
    mine = next((a for a in stats.annotators if a.annotator_id == annotator_id), None)
    return (mine.submitted, mine.skipped) if mine is not None else (0, 0)


def _progress(stats: QueueStats, annotator_id: str) -> dict[str, Any]:
    submitted, skipped = _my_counts(stats, annotator_id)
    total = stats.tasks_open + stats.tasks_in_adjudication + stats.tasks_done
    return {"submitted": submitted, "skipped": skipped, "open": stats.tasks_open, "done": stats.tasks_done,
            "adjudication": stats.tasks_in_adjudication, "total": total}


@router.get("/queue", name="ui_queue")
def queue_page(request: Request, now: Now, found: LoggedIn, session: SessionDep) -> Response:
    if not found.can_label:
        return redirect(request, "ui_dashboard")
    assert found.annotator is not None
    rows = []
    for project in accounts.member_projects(session, found.annotator.id):
        stats = queue.project_stats(session, project.id, now=now)
        rows.append({"project": project, "progress": _progress(stats, found.annotator.id)})
    return render(request, "queue.html", {"rows": rows, "title": "Your queue",
                                          "notice": notice_of(request)}, found=found)


def _task_context(session: Session, project: AnnotationProject, annotator: Annotator, view: TaskView | None,
                  now: datetime | None) -> dict[str, Any]:
    stats = queue.project_stats(session, project.id, now=now)
    return {"project": project, "task": view, "progress": _progress(stats, annotator.id),
            "schema": view.label_schema if view is not None else LabelSchema.model_validate(project.label_schema),
            "submission_id": uuid.uuid4().hex, "undo_key": uuid.uuid4().hex, "form": {},
            "can_undo": queue.has_undoable(session, project.id, annotator.id),
            "guidelines_html": render_markdown(project.guidelines) if project.guidelines.strip() else None,
            "question_versions": question_guidelines.current_versions(session, project),
            "lease_seconds": project.lease_seconds, "markdown": render_markdown,
            "title": f"Label · {project.name}"}


def _gate_page(request: Request, session: Session, found: Viewer, project: AnnotationProject,
               flash: Flash | None) -> HTMLResponse:
    """The project's guidelines (if any) and every question's current guidelines, each with its version;
    the questions whose version this annotator has not confirmed yet are marked new."""
    assert found.annotator is not None
    schema = LabelSchema.model_validate(project.label_schema)
    versions = question_guidelines.current_versions(session, project)
    waiting = question_guidelines.unconfirmed(session, project, found.annotator.id)
    gate = [{"id": q.id, "prompt": q.prompt or q.id, "version": versions[q.id], "new": q.id in waiting,
             "html": render_markdown(q.guidelines)} for q in schema.questions if q.id in versions]
    return render(request, "guidelines.html", {
        "project": project,
        "guidelines_html": render_markdown(project.guidelines) if project.guidelines.strip() else None,
        "question_gate": gate, "error": flash,
        "notice": notice_of(request), "title": f"Guidelines · {project.name}"}, found=found)


def _task_page(request: Request, session: Session, found: Viewer, project: AnnotationProject,
               now: datetime | None) -> HTMLResponse:
    assert found.annotator is not None
    flash = read_flash(request, found.annotator.id, project.id)
    if projects.needs_confirmation(session, project, found.annotator.id):
        response = _gate_page(request, session, found, project, flash)
    else:
        view = queue.next_task(session, project.id, found.annotator.id, now=now)
        context = _task_context(session, project, found.annotator, view, now)
        context.update(error=flash, notice=notice_of(request), form=flash.form if flash is not None else {})
        response = render(request, "task.html", context, found=found)
    clear_flash(request, response)  # shown once: a reload shows the page without it
    return response


def _refused(request: Request, found: Viewer, project: AnnotationProject, exc: ApiError,
             form: dict[str, Any] | None = None) -> Response:
    """Back to the task page (303) with the error and the typed values in the flash cookie."""
    assert found.annotator is not None
    response = redirect(request, "ui_task", annotation_project_id=project.id)
    kept = {**(form or {}), "error_field": exc.field} if form is not None else {}
    write_flash(request, response, Flash(owner=found.annotator.id, project_id=project.id, message=exc.message,
                                         form=kept))
    return response


def _form_post(request: Request, session: Session, found: Viewer, annotation_project_id: str, csrf_token: str,
               act: Callable[[AnnotationProject, str], object], notice: str,
               form: dict[str, Any] | None = None) -> Response:
    """One task-page form post: the CSRF token and membership checked (else an error page), then
    ``act(project, annotator_id)``; refused, nothing of it is kept and the task page comes back with
    the error (and the typed ``form`` values); done, back to the task page with ``notice``."""
    try:
        project = guarded_project(session, found, annotation_project_id, csrf_token)
    except ApiError as exc:
        return error_page(request, exc, found)
    assert found.annotator is not None
    try:
        act(project, found.annotator.id)
    except ApiError as exc:
        session.rollback()
        return _refused(request, found, project, exc, form)
    return redirect(request, "ui_task", notice=notice, annotation_project_id=project.id)


@router.get("/projects/{annotation_project_id}/task", name="ui_task")
def task_page(request: Request, annotation_project_id: ProjectPath, now: Now, found: Labeller,
              session: SessionDep) -> Response:
    """Lease the next task (or show the one already leased) with the answer form; when the project's
    guidelines gate is on and their current version is unconfirmed, the guidelines instead."""
    try:
        project = member_project(session, found, annotation_project_id)
    except ApiError as exc:
        return error_page(request, exc, found)
    return _task_page(request, session, found, project, now)


async def question_versions_posted(request: Request) -> dict[str, str]:
    """The gate form's ``q-version-<question id>`` fields: the question guidelines versions the page showed."""
    form = await request.form()
    return {str(name).removeprefix("q-version-"): str(value) for name, value in form.items()
            if str(name).startswith("q-version-")}


@router.post("/projects/{annotation_project_id}/guidelines/confirm", name="ui_confirm_guidelines")
def confirm_guidelines(request: Request, annotation_project_id: ProjectPath, now: Now, found: Labeller,
                       session: SessionDep, questions: Annotated[dict[str, str], Depends(question_versions_posted)],
                       csrf_token: FormText = "", version: FormText = "") -> Response:
    """"I have read these guidelines" for the versions the page showed: the project's and each question's
    (a stale version is refused, and the page shows the new text)."""
    def confirm(project: AnnotationProject, annotator_id: str) -> None:
        if not version.isdigit() and not questions:
            raise InvalidInput("the guidelines version is missing", field="version")
        if any(not v.isdigit() for v in questions.values()):
            raise InvalidInput("a question's guidelines version is missing", field="questions")
        if questions:
            question_guidelines.confirm(session, project, annotator_id, {q: int(v) for q, v in questions.items()},
                                        now or utcnow())
        if version.isdigit():
            projects.confirm_guidelines(session, project, annotator_id, int(version), now or utcnow())

    return _form_post(request, session, found, annotation_project_id, csrf_token, confirm, "guidelines_confirmed")


async def posted_form(request: Request) -> FormData:
    """The whole posted form (the question fields are named after the schema, so not declared one by one)."""
    return await request.form()


PostedForm = Annotated[FormData, Depends(posted_form)]


def question_fields(schema: LabelSchema, form: FormData) -> dict[str, Any]:
    """The raw ``q-<id>`` fields of the schema's non-math questions, as the flash keeps them."""
    kept: dict[str, Any] = {}
    for question in schema.questions:
        name = f"q-{question.id}"
        if isinstance(question, MultiLabelQuestion):
            kept[name] = [str(v) for v in form.getlist(name)]
        elif name in form:
            kept[name] = str(form[name])
        if isinstance(question, PreferencePairQuestion) and f"{name}-rationale" in form:
            kept[f"{name}-rationale"] = str(form[f"{name}-rationale"])
    return kept


def values_from_form(schema: LabelSchema, fields: dict[str, Any]) -> dict[str, Any]:
    """The ``values`` of a submission from the form's ``q-<id>`` fields (the math answer travels in the
    top-level fields, as before). An empty field is an unanswered question; a ranking is its hidden
    field's comma-separated order; a multi-label question always answers its (maybe empty) list."""
    values: dict[str, Any] = {}
    for question in schema.questions:
        name = f"q-{question.id}"
        raw = fields.get(name)
        if isinstance(question, MultiLabelQuestion):
            values[question.id] = list(raw or [])
        elif isinstance(question, PreferencePairQuestion):
            note = str(fields.get(f"{name}-rationale") or "").strip() or None
            if raw or note:
                values[question.id] = {"choice": raw or None, "rationale": note}
        elif isinstance(question, RankingQuestion):
            if raw:
                parts = str(raw).split(",")
                values[question.id] = [int(p) for p in parts] if all(p.strip().isdigit() for p in parts) else raw
        elif isinstance(question, FreeTextQuestion):
            if raw is not None and (raw != "" or question.required):
                values[question.id] = raw
        elif raw not in (None, "") and question.type != "math_answer":
            values[question.id] = raw
    return values


def submission_from_form(submission_id: str, choice: str, answer: str, ambiguous: str,
                         rationale: str, values: dict[str, Any] | None = None, *,
                         math: bool = True) -> Submission:
    """The queue's Submission for what the form says: the flag wins, then a picked candidate, then the
    typed answer (typing without picking means "my own answer"); the other questions in ``values``.
    Without a math_answer question only ``values`` is sent."""
    if not math:
        return Submission.model_validate({"submission_id": submission_id, "values": values or {}})
    note = rationale.strip() or None
    fields: dict[str, Any] = {"submission_id": submission_id, "rationale": note}
    if values:
        fields["values"] = values
    if ambiguous:
        fields["kind"] = LabelKind.ambiguous
    elif choice.startswith("candidate-"):
        index = choice.removeprefix("candidate-")
        if not index.isdigit():
            raise InvalidInput(f"unknown choice {choice!r}", field="choice")
        fields["candidate"] = int(index)
    elif answer.strip():
        fields["answer"] = answer
    else:
        raise InvalidInput("pick one of the candidate answers, type your own answer, or flag the prompt as "
                           "ambiguous", field="answer")
    try:
        return Submission.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = ".".join(str(p) for p in first.get("loc", ())) or "answer"
        raise InvalidInput(f"{name}: {first.get('msg', 'invalid value')}", field=name) from exc


@router.post("/projects/{annotation_project_id}/assignments/{assignment_id}/submit", name="ui_submit")
def submit(request: Request, annotation_project_id: ProjectPath, assignment_id: ItemPath, now: Now,
           found: Labeller, session: SessionDep, posted: PostedForm, csrf_token: FormText = "",
           submission_id: FormText = "", choice: FormText = "", answer: FormText = "", ambiguous: FormText = "",
           rationale: FormText = "") -> Response:
    form: dict[str, Any] = {"assignment_id": assignment_id, "choice": choice, "answer": answer,
                            "ambiguous": bool(ambiguous), "rationale": rationale}
    project_row = session.get(AnnotationProject, annotation_project_id)
    schema = LabelSchema.model_validate(project_row.label_schema) if project_row is not None else LabelSchema()
    fields = question_fields(schema, posted)
    form.update(fields)

    def answer_it(project: AnnotationProject, annotator_id: str) -> None:
        body = submission_from_form(submission_id or uuid.uuid4().hex, choice, answer, ambiguous, rationale,
                                    values_from_form(schema, fields), math=schema.math is not None)
        queue.submit(session, project.id, annotator_id, assignment_id, body, now=now)

    return _form_post(request, session, found, annotation_project_id, csrf_token, answer_it, "submitted", form)


@router.post("/projects/{annotation_project_id}/assignments/{assignment_id}/later", name="ui_later")
def come_back_later(request: Request, annotation_project_id: ProjectPath, assignment_id: ItemPath, now: Now,
                    found: Labeller, session: SessionDep, csrf_token: FormText = "") -> Response:
    """Put the task off: it comes back to this annotator after every other task (``queue.come_back_later``)."""
    return _form_post(request, session, found, annotation_project_id, csrf_token,
                      lambda project, annotator_id: queue.come_back_later(session, project.id, annotator_id,
                                                                          assignment_id, now=now), "deferred")


@router.post("/projects/{annotation_project_id}/assignments/{assignment_id}/skip", name="ui_skip")
def never_show_again(request: Request, annotation_project_id: ProjectPath, assignment_id: ItemPath, now: Now,
                     found: Labeller, session: SessionDep, csrf_token: FormText = "") -> Response:
    """The permanent skip: this annotator is never offered the task again."""
    return _form_post(request, session, found, annotation_project_id, csrf_token,
                      lambda project, annotator_id: queue.skip(session, project.id, annotator_id, assignment_id,
                                                               now=now), "skipped")


@router.post("/projects/{annotation_project_id}/undo", name="ui_undo")
def undo(request: Request, annotation_project_id: ProjectPath, now: Now, found: Labeller, session: SessionDep,
         csrf_token: FormText = "", undo_key: FormText = "") -> Response:
    """Take back the last answer. ``undo_key`` is fresh on each page, so a double press undoes once."""
    return _form_post(request, session, found, annotation_project_id, csrf_token,
                      lambda project, annotator_id: queue.undo_once(session, project.id, annotator_id,
                                                                    undo_key[:200] or None, now=now), "undone")


@router.post("/projects/{annotation_project_id}/assignments/{assignment_id}/renew", name="ui_renew")
def renew(annotation_project_id: ProjectPath, assignment_id: ItemPath, now: Now, found: Labeller,
          session: SessionDep, csrf: Annotated[str | None, Header(alias=CSRF_HEADER)] = None) -> JSONResponse:
    """The task page's heartbeat (fetch with the CSRF header) while the annotator works."""
    check_csrf(found.csrf, csrf)
    project = member_project(session, found, annotation_project_id)
    assert found.annotator is not None
    view = queue.renew_lease(session, project.id, found.annotator.id, assignment_id, now=now)
    return JSONResponse({"lease_expires_at": view.lease_expires_at.isoformat()}, headers={"Cache-Control": "no-store"})
