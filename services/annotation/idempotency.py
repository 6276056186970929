"""Annotation's idempotency keys, on the shared table and helper (``services.common.idempotency``).

Keys arrive in the ``Idempotency-Key`` header; the older body fields (``idempotency_key`` of steps
and purchases, ``submission_id`` of a submission) still work for one release, answered with
``Deprecation: true``. Annotation work runs in one transaction under a row lock, so keys are held in
transaction mode (``replay`` / ``remember``): the stored answer commits with the work or not at all.
Keys are scoped to the annotation project's tenancy project and an endpoint name per annotation
project.
"""

from __future__ import annotations

from typing import TypeVar

from fastapi import Response
from pydantic import BaseModel
from sqlalchemy.orm import Session

from services.annotation.locking import project_not_found
from services.annotation.models import AnnotationProject
from services.common import idempotency as shared

HEADER, REPLAYED_HEADER = shared.HEADER, shared.REPLAYED_HEADER
Answer = TypeVar("Answer", bound=BaseModel)


def deprecated_field_warning(field_name: str) -> str:
    return f'299 - "the body field {field_name} is deprecated; send the {HEADER} header"'


def key_from(header: str | None, body_field: str | None, field_name: str, response: Response) -> str | None:
    """The request's key: the header, else the deprecated body field (then ``response`` says so)."""
    key, deprecated = shared.key_from(header, body_field)
    if deprecated:
        response.headers["Deprecation"] = "true"
        response.headers["Warning"] = deprecated_field_warning(field_name)
    return key


def _scope(session: Session, annotation_project_id: str, endpoint: str) -> tuple[str, str]:
    project = session.get(AnnotationProject, annotation_project_id)
    if project is None:
        raise project_not_found(annotation_project_id)
    return project.project_id, f"annotation/{annotation_project_id}/{endpoint}"


def replay(session: Session, annotation_project_id: str, endpoint: str, key: str, request_hash: str) -> str | None:
    """The stored response of an earlier request with this key, or None after claiming the key in this
    transaction (call under the lock the work takes; ``remember`` stores the answer in the same transaction)."""
    project_id, name = _scope(session, annotation_project_id, endpoint)
    stored = shared.replay(session, project_id, name, key, request_hash)
    return None if stored is None else stored.body


def remember(session: Session, annotation_project_id: str, endpoint: str, key: str, request_hash: str,
             status_code: int, response: str) -> None:
    project_id, name = _scope(session, annotation_project_id, endpoint)
    shared.remember(session, project_id, name, key, request_hash, status_code, response)


def body_hash(body: BaseModel) -> str:
    """The request fingerprint a key is bound to (the deprecated body key itself left out)."""
    return shared.fingerprint(body.model_dump(mode="json", exclude={"idempotency_key"}))


def replayed(session: Session, annotation_project_id: str, endpoint: str, key: str | None, request_hash: str,
             answer: type[Answer]) -> Answer | None:
    """The earlier answer to this key as ``answer``, or None (the work runs; no key: nothing to replay)."""
    if key is None:
        return None
    stored = replay(session, annotation_project_id, endpoint, key, request_hash)
    return None if stored is None else answer.model_validate_json(stored)
