"""Routes for reviewing single submissions, task history, one's own labels, and adding existing accounts
to a project (``services/annotation/review.py``, ``accounts.add_existing_member``)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from services.annotation import accounts, projects, review
from services.annotation.deps import Admin, AnnotatorKey, ItemPath, Now, ProjectPath, SessionDep
from services.annotation.routes_queue import annotator_of
from services.annotation.schemas import (
    AnnotationOut,
    Decision,
    MembershipIn,
    MembershipOut,
    MyLabelOut,
    ReviewIn,
    ReviewOut,
    TaskHistoryOut,
)
from services.common.errors import Forbidden
from services.common.pagination import CursorParam, LimitParam, Page

router = APIRouter(prefix="/v1/annotation", tags=["review"])
MY_LABELS_PAGE = 50


@router.post("/projects/{annotation_project_id}/annotations/{annotation_id}/review", response_model=ReviewOut,
             status_code=201, responses={200: {"model": ReviewOut, "description": "The same decision again."}})
def review_submission(annotation_project_id: ProjectPath, annotation_id: ItemPath, body: ReviewIn, response: Response,
                      now: Now, principal: AnnotatorKey, session: SessionDep) -> ReviewOut:
    """Accept or reject one submission (reviewer or admin; never your own label). A rejected label stops counting
    and its task goes back to the queue when it now has fewer than k labels. The same decision again is a no-op
    (200); another decision on a reviewed label is 409 `already_reviewed`."""
    reviewer = annotator_of(session, principal, annotation_project_id)
    out = review.review_submission(session, annotation_project_id, reviewer.id, annotation_id, body, now=now)
    if out.replayed:
        response.status_code = 200
    return out


@router.get("/projects/{annotation_project_id}/tasks/{task_id}/history", response_model=TaskHistoryOut)
def task_history(annotation_project_id: ProjectPath, task_id: ItemPath, principal: AnnotatorKey,
                 session: SessionDep) -> TaskHistoryOut:
    """A task's labels, edits, undos, reviews and adjudication, oldest first (reviewer or admin)."""
    viewer = annotator_of(session, principal, annotation_project_id)
    if not accounts.can_adjudicate(viewer):
        raise Forbidden("a task's history is for reviewer and admin accounts")
    return review.task_history(session, annotation_project_id, task_id)


@router.get("/projects/{annotation_project_id}/my-labels", response_model=Page[MyLabelOut])
def my_labels(annotation_project_id: ProjectPath, now: Now, principal: AnnotatorKey, session: SessionDep,
              cursor: CursorParam = None, limit: LimitParam = MY_LABELS_PAGE) -> Page[MyLabelOut]:
    """Your labels in this project, newest first, each with whether you may still edit it (and why not)."""
    annotator = annotator_of(session, principal, annotation_project_id)
    return review.my_labels(session, annotation_project_id, annotator.id, cursor=cursor, limit=limit, now=now)


@router.get("/projects/{annotation_project_id}/my-labels/{annotation_id}", response_model=MyLabelOut)
def my_label(annotation_project_id: ProjectPath, annotation_id: ItemPath, now: Now, principal: AnnotatorKey,
             session: SessionDep) -> MyLabelOut:
    annotator = annotator_of(session, principal, annotation_project_id)
    return review.my_label(session, annotation_project_id, annotator.id, annotation_id, now=now)[1]


@router.put("/projects/{annotation_project_id}/my-labels/{annotation_id}", response_model=AnnotationOut)
def edit_my_label(annotation_project_id: ProjectPath, annotation_id: ItemPath, body: Decision, now: Now,
                  principal: AnnotatorKey, session: SessionDep) -> AnnotationOut:
    """Replace your label's value (same fields as a submission) while the project's `label_edit_window_s` allows
    and no reviewer or adjudication has settled it (else 409 `not_editable`). The old value is kept in the
    task's history; the same value again changes nothing (`replayed: true`)."""
    annotator = annotator_of(session, principal, annotation_project_id)
    return review.edit_label(session, annotation_project_id, annotator.id, annotation_id, body, now=now)


@router.post("/projects/{annotation_project_id}/members", response_model=MembershipOut, status_code=201,
             responses={200: {"model": MembershipOut, "description": "Already a member: nothing changed."}})
def add_member(annotation_project_id: ProjectPath, body: MembershipIn, response: Response, principal: Admin,
               session: SessionDep) -> MembershipOut:
    """Add an existing login account (annotator, reviewer or admin) to this project. Your key must see the
    account: it is a member of some annotation project in your key's scope (any, for an all-projects key)."""
    projects.accessible(session, principal, annotation_project_id)
    annotator, added = accounts.add_existing_member(session, principal, annotation_project_id,
                                                    username=body.username, annotator_id=body.annotator_id)
    if not added:
        response.status_code = 200
    return MembershipOut(id=annotator.id, username=annotator.username, role=annotator.role,
                         display_name=annotator.display_name, created_at=annotator.created_at, added=added)


@router.delete("/projects/{annotation_project_id}/members/{annotator_id}", status_code=204)
def remove_member(annotation_project_id: ProjectPath, annotator_id: ItemPath, principal: Admin,
                  session: SessionDep) -> Response:
    """Take an account out of this project (its labels stay). Removing a non-member is a no-op."""
    projects.accessible(session, principal, annotation_project_id)
    accounts.remove_member(session, annotation_project_id, annotator_id)
    return Response(status_code=204)
