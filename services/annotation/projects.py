"""Annotation projects: budgets, settings, scoped lookups and listing.

Changes to a project happen under its row lock (``locking.lock_project``).
"""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy import Select, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from services.annotation import answer_key, notifications, question_guidelines
from services.annotation.care import validate_care_params
from services.annotation.label_schema import LabelSchema
from services.annotation.locking import lock_project, project_not_found
from services.annotation.models import AnnotationProject, AnswerSource, GuidelinesConfirmation, Policy
from services.annotation.schemas import (
    AnnotationProjectCreate,
    AnnotationProjectCreated,
    AnnotationProjectOut,
    AnnotationProjectUpdate,
    Budget,
)
from services.common.auth import Principal, get_accessible_project
from services.common.db import utcnow
from services.common.errors import Conflict, InvalidInput
from services.common.pagination import Page, keyset_page

# -------------------------------------------------------------------------------------- lookups


def get_project(session: Session, annotation_project_id: str) -> AnnotationProject:
    project = session.get(AnnotationProject, annotation_project_id)
    if project is None:
        raise project_not_found(annotation_project_id)
    return project


def accessible(session: Session, principal: Principal, annotation_project_id: str) -> AnnotationProject:
    """The annotation project if the key's tenancy scope covers it; otherwise reported absent."""
    project = session.get(AnnotationProject, annotation_project_id)
    if project is None or not principal.can_access(project.project_id):
        raise project_not_found(annotation_project_id)
    return project


def budget_of(project: AnnotationProject) -> Budget:
    return Budget(total=project.label_budget, spent=project.labels_bought,
                  left=max(project.label_budget - project.labels_bought, 0))


def new_webhook_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


def project_out(session: Session, project: AnnotationProject) -> AnnotationProjectOut:
    return AnnotationProjectOut(
        id=project.id, project_id=project.project_id, name=project.name, description=project.description,
        budget=budget_of(project), label_schema=LabelSchema.model_validate(project.label_schema),
        overlap_k=project.overlap_k, lease_seconds=project.lease_seconds,
        rollouts_per_prompt=project.rollouts_per_prompt, policy=project.policy, care_params=project.care_params,
        answer_source=project.answer_source, answer_key_entries=answer_key.size(session, project.id),
        webhook_url=project.webhook_url, last_step=project.last_step, label_cursor=project.label_seq,
        guidelines=project.guidelines, guidelines_version=project.guidelines_version,
        guidelines_required=project.guidelines_required, label_edit_window_s=project.label_edit_window_s,
        honeypot_rate=project.honeypot_rate, created_at=project.created_at)


def in_scope(all_projects: bool, project_ids: frozenset[str]) -> Select[AnnotationProject]:
    """Annotation projects of the tenancy projects a key may see (every one for an all-projects key)."""
    query = select(AnnotationProject)
    return query if all_projects else query.where(AnnotationProject.project_id.in_(project_ids))


def list_page(session: Session, principal: Principal, project_id: str | None, cursor: str | None,
              limit: int) -> Page[AnnotationProjectOut]:
    """The key's annotation projects, oldest first; the scope is applied in SQL so pages are full."""
    query = in_scope(principal.all_projects, principal.project_ids)
    if project_id is not None:
        query = query.where(AnnotationProject.project_id == project_id)
    rows, next_cursor = keyset_page(session, query, (AnnotationProject.created_at, AnnotationProject.id),
                                    cursor, limit)
    return Page(data=[project_out(session, p) for p in rows], next_cursor=next_cursor)


def all_in_scope(session: Session, all_projects: bool, project_ids: frozenset[str]) -> list[AnnotationProject]:
    """Every annotation project an admin key sees (the dashboard shows them all on one page)."""
    query = in_scope(all_projects, project_ids).order_by(AnnotationProject.created_at, AnnotationProject.id)
    return list(session.scalars(query))


# ------------------------------------------------------------------------------------- settings


def checked_care_params(params: dict[str, Any]) -> dict[str, Any]:
    try:
        return validate_care_params(params)
    except (ValidationError, TypeError, ValueError) as exc:
        raise InvalidInput(f"care_params: {exc}".splitlines()[0][:500], field="care_params") from exc


def checked_webhook(url: object | None) -> str | None:
    """The webhook URL as stored, once it passed the SSRF guard (``notifications.check_webhook_url``)."""
    if url is None:
        return None
    notifications.check_webhook_url(str(url), field_name="webhook_url")
    return str(url)


def check_schema_fits(schema: LabelSchema, policy: Policy, answer_source: AnswerSource) -> None:
    """CARE (and the oracle) learn from the math answer, and the answer key answers it: those need a
    math_answer question. Any other project is a plain labelling queue."""
    if schema.math is not None:
        return
    if policy in (Policy.care, Policy.oracle_cag):
        raise InvalidInput(f"policy {policy.value!r} learns from the math answer: give the label schema a "
                           "math_answer question, or use another policy (random, low_consensus, entropy, "
                           "low_token_prob) for a plain labelling queue", field="label_schema")
    if answer_source is AnswerSource.answer_key:
        raise InvalidInput("the answer key answers the math answer: give the label schema a math_answer question",
                           field="label_schema")


def _name_taken(name: str) -> Conflict:
    return Conflict(f"an annotation project named {name!r} already exists here", field="name")


def create(session: Session, principal: Principal, body: AnnotationProjectCreate) -> AnnotationProjectCreated:
    """A new annotation project with its budget, label schema, queue settings, policy and webhook secret."""
    get_accessible_project(session, principal, body.project_id)
    check_schema_fits(body.label_schema, body.policy, body.answer_source)
    if session.scalar(select(AnnotationProject.id).where(AnnotationProject.project_id == body.project_id,
                                                         AnnotationProject.name == body.name)) is not None:
        raise _name_taken(body.name)
    project = AnnotationProject(
        project_id=body.project_id, name=body.name, description=body.description, label_budget=body.label_budget,
        label_schema=body.label_schema.model_dump(), overlap_k=body.overlap_k, lease_seconds=body.lease_seconds,
        rollouts_per_prompt=body.rollouts_per_prompt, policy=body.policy,
        care_params=checked_care_params(body.care_params), answer_source=body.answer_source,
        webhook_url=checked_webhook(body.webhook_url), webhook_secret=new_webhook_secret(),
        guidelines=body.guidelines, guidelines_version=1 if body.guidelines.strip() else 0,
        guidelines_required=body.guidelines_required, label_edit_window_s=body.label_edit_window_s,
        honeypot_rate=body.honeypot_rate)
    session.add(project)
    try:
        session.flush()
    except IntegrityError as exc:  # a concurrent create of the same name won the unique index
        raise _name_taken(body.name) from exc
    question_guidelines.record_versions(session, project, utcnow())
    return AnnotationProjectCreated(**project_out(session, project).model_dump(),
                                    webhook_secret=project.webhook_secret)


def change(session: Session, annotation_project_id: str, body: AnnotationProjectUpdate) -> AnnotationProjectOut:
    """Apply a settings change under the project lock; the budget never drops below what was spent."""
    project = lock_project(session, annotation_project_id)
    if body.label_budget is not None:
        if body.label_budget < project.labels_bought:
            raise Conflict(f"{project.labels_bought} labels were already bought; the budget cannot go below that",
                           field="label_budget", code="budget_below_spent")
        project.label_budget = body.label_budget
    for name in ("description", "overlap_k", "lease_seconds", "label_edit_window_s", "honeypot_rate"):
        value = getattr(body, name)
        if value is not None:
            setattr(project, name, value)
    if body.label_schema is not None:
        project.label_schema = body.label_schema.model_dump()
    if body.policy is not None and body.policy is not project.policy:
        if body.policy is Policy.oracle_cag and not answer_key.size(session, project.id):
            raise InvalidInput("oracle_cag needs an answer key; upload one first", field="policy")
        project.policy = body.policy
    if body.care_params is not None:
        project.care_params = checked_care_params(body.care_params)
    check_schema_fits(LabelSchema.model_validate(project.label_schema), project.policy, project.answer_source)
    if body.label_schema is not None:
        question_guidelines.record_versions(session, project, utcnow())
    if body.guidelines is not None:
        set_guidelines(project, body.guidelines)
    if body.guidelines_required is not None:
        project.guidelines_required = body.guidelines_required
    if body.clear_webhook:
        project.webhook_url = None
    elif body.webhook_url is not None:
        project.webhook_url = checked_webhook(body.webhook_url)
    session.flush()
    return project_out(session, project)


def rotate_webhook_secret(session: Session, annotation_project_id: str) -> str:
    project = lock_project(session, annotation_project_id)
    project.webhook_secret = new_webhook_secret()
    return project.webhook_secret


# ----------------------------------------------------------------------------------- guidelines


def set_guidelines(project: AnnotationProject, text: str) -> None:
    """Store new guidelines; only a changed text is a new version (re-sending the same text keeps the
    version, so annotators are not asked to confirm again for nothing)."""
    if text == project.guidelines:
        return
    project.guidelines = text
    project.guidelines_version += 1


def needs_confirmation(session: Session, project: AnnotationProject, annotator_id: str) -> bool:
    """The gate is on and this annotator has not confirmed the current version of the project's guidelines
    (when there are any) or of some question's guidelines (question_guidelines.unconfirmed)."""
    if not project.guidelines_required:
        return False
    return project_unconfirmed(session, project, annotator_id) or bool(
        question_guidelines.unconfirmed(session, project, annotator_id))


def project_unconfirmed(session: Session, project: AnnotationProject, annotator_id: str) -> bool:
    """There are project guidelines and this annotator has not confirmed their current version."""
    if not project.guidelines.strip():
        return False
    key = (annotator_id, project.id, project.guidelines_version)
    return session.get(GuidelinesConfirmation, key) is None


def confirm_guidelines(session: Session, project: AnnotationProject, annotator_id: str, version: int,
                       now: datetime) -> None:
    """Record that the annotator read ``version``; a stale version (the text changed meanwhile) is refused."""
    if version != project.guidelines_version:
        raise Conflict(f"the guidelines changed (now version {project.guidelines_version}); read them again",
                       field="version", code="guidelines_changed")
    if session.get(GuidelinesConfirmation, (annotator_id, project.id, version)) is None:
        session.add(GuidelinesConfirmation(annotator_id=annotator_id, annotation_project_id=project.id,
                                           version=version, confirmed_at=now))
        session.flush()
