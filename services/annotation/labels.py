"""Labels: a purchase's answer delivered into the project's label feed, or taken back.

Every label change gets the next number of the project's feed (``label_seq``, bumped on the
project row, whose lock is held to commit), so changes commit in feed order and a reader
following the cursor never skips one. Trainers read the feed (``labels_since``), stream it (SSE)
or get it pushed (webhooks, sent after commit by ``notifications``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.orm.util import identity_key

from services.annotation import notifications
from services.annotation.models import AnnotationProject, LabelKind, Prompt, Purchase, PurchaseStatus
from services.annotation.schemas import LabelOut, LabelsOut
from services.common.errors import InvalidInput


def next_label_seq(session: Session, annotation_project_id: str) -> int:
    """Number the next label change. The row lock this takes is held to commit, so labels commit
    in sequence order and a reader following the cursor never skips one."""
    seq = session.execute(update(AnnotationProject).where(AnnotationProject.id == annotation_project_id)
                          .values(label_seq=AnnotationProject.label_seq + 1)
                          .returning(AnnotationProject.label_seq)
                          .execution_options(synchronize_session=False)).scalar_one()
    loaded = session.identity_map.get(identity_key(AnnotationProject, annotation_project_id))
    if loaded is not None:  # keep the loaded row in step without reading it again
        set_committed_value(loaded, "label_seq", seq)
    return int(seq)


def deliver_label(session: Session, purchase: Purchase, *, kind: LabelKind, answer: str | None,
                  labelled_by: list[str], adjudicator_id: str | None, now: datetime,
                  values: dict[str, Any] | None = None) -> None:
    """A purchase's label is known: store it, number it in the feed, notify after commit."""
    # The project row first, then the purchase: the lock order every writer keeps (no deadlocks).
    seq = next_label_seq(session, purchase.annotation_project_id)
    purchase.label_seq = seq
    purchase.status = PurchaseStatus.labelled
    purchase.label_kind, purchase.label = kind, answer if kind is LabelKind.answer else None
    purchase.label_values = values
    purchase.labelled_by, purchase.adjudicator_id, purchase.labelled_at = list(labelled_by), adjudicator_id, now
    _announce(session, purchase)


def _announce(session: Session, purchase: Purchase) -> None:
    project = session.get(AnnotationProject, purchase.annotation_project_id)
    assert project is not None
    label = None
    if project.webhook_url:  # only the webhook needs the entry now; SSE streams read the feed
        prompt = session.get(Prompt, purchase.prompt_id)
        assert prompt is not None
        label = label_out(purchase, prompt.external_id).model_dump(mode="json")
    notifications.label_changed(session, project.id, label, webhook_url=project.webhook_url,
                                webhook_secret=project.webhook_secret)


def retract_label(session: Session, purchase: Purchase, *, now: datetime) -> None:
    """Take a delivered label back (an annotator's undo); the feed carries a ``retracted`` event."""
    purchase.label_seq = next_label_seq(session, purchase.annotation_project_id)
    purchase.status = PurchaseStatus.pending
    purchase.label_kind = purchase.label = purchase.adjudicator_id = purchase.labelled_at = None
    purchase.label_values = None
    purchase.labelled_by = []
    purchase.observed_at = None
    _announce(session, purchase)


def external_ids(session: Session, prompt_ids: set[str]) -> dict[str, str]:
    if not prompt_ids:
        return {}
    return dict(session.execute(select(Prompt.id, Prompt.external_id).where(Prompt.id.in_(prompt_ids))).all())


def label_out(purchase: Purchase, external_id: str) -> LabelOut:
    labelled = purchase.status is PurchaseStatus.labelled
    return LabelOut(seq=purchase.label_seq or 0, event="labelled" if labelled else "retracted",
                    purchase_id=purchase.id, prompt_id=external_id, step=purchase.step, policy=purchase.policy,
                    score=purchase.score, label_kind=purchase.label_kind, label=purchase.label,
                    values=purchase.label_values, labelled_by=purchase.labelled_by, labelled_at=purchase.labelled_at)


def feed_position(cursor: str | None) -> int:
    """The feed position a ``cursor`` names: a label sequence number (0, or none, for the start)."""
    if cursor is None:
        return 0
    if not cursor.isdigit():
        raise InvalidInput("cursor: a label feed cursor is a sequence number; pass back `next_cursor` as it came",
                           field="cursor")
    return int(cursor)


def labels_since(session: Session, annotation_project_id: str, cursor: int, limit: int) -> LabelsOut:
    """Label changes after ``cursor`` in feed order (each purchase appears at its latest change).

    A feed has no last page: ``next_cursor`` is where the next poll starts, never null.
    """
    rows = list(session.scalars(select(Purchase).where(Purchase.annotation_project_id == annotation_project_id,
                                                       Purchase.label_seq > cursor)
                                .order_by(Purchase.label_seq).limit(limit)))
    names = external_ids(session, {p.prompt_id for p in rows})
    labels = [label_out(p, names[p.prompt_id]) for p in rows]
    return LabelsOut(data=labels, next_cursor=str(labels[-1].seq if labels else cursor))
