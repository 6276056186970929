"""Routes for label quality's inputs: honeypot gold tasks (honeypots.py) and per-question guidelines with
their versions and the gate (question_guidelines.py).

Honeypots are admin-only: no annotator door lists them or shows their hidden answers. An annotator reads
what the gate asks of them at ``GET …/guidelines`` and confirms with ``POST …/guidelines/confirm``
(routes_queue.py).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from services.annotation import accounts, honeypots, projects, question_guidelines
from services.annotation.deps import Admin, AnnotatorKey, Now, ProjectPath, Reader, SessionDep
from services.annotation.label_schema import QUESTION_ID
from services.annotation.locking import lock_project
from services.annotation.schemas import (
    GuidelinesStateOut,
    HoneypotsIn,
    HoneypotsList,
    HoneypotsOut,
    QuestionGuidelinesIn,
    QuestionGuidelinesOut,
)
from services.common.db import utcnow

router = APIRouter(prefix="/v1/annotation", tags=["annotation quality"])

QuestionPath = Annotated[str, Path(pattern=QUESTION_ID, description="A question id of the label schema.")]


@router.post("/projects/{annotation_project_id}/honeypots", response_model=HoneypotsOut, status_code=201)
def add_honeypots(annotation_project_id: ProjectPath, body: HoneypotsIn, now: Now, principal: Admin,
                  session: SessionDep) -> HoneypotsOut:
    """Add gold tasks: prompts with their rollouts (as a trainer posts them) and a hidden answer (`gold`, by
    question id). They are served at the project's `honeypot_rate`, look like any task to annotators, spend no
    budget, and their labels are graded (`…/quality`: `honeypot_accuracy`) instead of counted. Each item gets
    its own status; the good ones are stored."""
    projects.accessible(session, principal, annotation_project_id)
    return honeypots.create(session, annotation_project_id, body, now or utcnow())


@router.get("/projects/{annotation_project_id}/honeypots", response_model=HoneypotsList)
def list_honeypots(annotation_project_id: ProjectPath, principal: Admin, session: SessionDep) -> HoneypotsList:
    """Every honeypot with how often it was served, labelled and answered right (never its hidden answer)."""
    projects.accessible(session, principal, annotation_project_id)
    return honeypots.listing(session, annotation_project_id)


@router.get("/projects/{annotation_project_id}/questions/{question_id}/guidelines",
            response_model=QuestionGuidelinesOut)
def question_guidelines_history(annotation_project_id: ProjectPath, question_id: QuestionPath, principal: Reader,
                                session: SessionDep) -> QuestionGuidelinesOut:
    """A question's current guidelines and every earlier version, newest first."""
    project = projects.accessible(session, principal, annotation_project_id)
    return question_guidelines.history(session, project, question_id)


@router.put("/projects/{annotation_project_id}/questions/{question_id}/guidelines",
            response_model=QuestionGuidelinesOut)
def set_question_guidelines(annotation_project_id: ProjectPath, question_id: QuestionPath,
                            body: QuestionGuidelinesIn, now: Now, principal: Admin,
                            session: SessionDep) -> QuestionGuidelinesOut:
    """Replace one question's guidelines without resending the schema. A changed text is a new version (the
    old one is kept); under the gate, annotators confirm the new version before their next task."""
    projects.accessible(session, principal, annotation_project_id)
    project = lock_project(session, annotation_project_id)
    question_guidelines.set_text(session, project, question_id, body.guidelines, now or utcnow())
    return question_guidelines.history(session, project, question_id)


@router.get("/projects/{annotation_project_id}/guidelines", response_model=GuidelinesStateOut)
def guidelines_state(annotation_project_id: ProjectPath, principal: AnnotatorKey,
                     session: SessionDep) -> GuidelinesStateOut:
    """What the "read before labelling" gate asks of you: the project's guidelines and each question's, their
    current versions and the versions you confirmed."""
    project = projects.accessible(session, principal, annotation_project_id)
    annotator = accounts.annotator_for_key(session, principal)
    return question_guidelines.state(session, project, annotator.id,
                                     projects.needs_confirmation(session, project, annotator.id))
