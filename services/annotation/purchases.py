"""The budget ledger: label purchases, spent under the project-row lock, and how each is answered.

Every purchase goes through ``record_purchase`` while the caller holds ``lock_project``, so the
budget is never overspent, also when trainers call concurrently. A bought label is answered by
people (a queue task) or, in answer-key projects, by the hidden key at once; both end in
``labels.deliver_label``, which numbers the label in the feed.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime

from sqlalchemy import event, select
from sqlalchemy.orm import Session, SessionTransaction

from services.annotation import answer_key, idempotency
from services.annotation.ingestion import prompts_by_external_id
from services.annotation.labels import deliver_label, external_ids
from services.annotation.locking import lock_project, project_not_found
from services.annotation.models import (
    AnnotationProject,
    AnswerSource,
    LabelKind,
    Prompt,
    Purchase,
    RolloutGroup,
    Task,
)
from services.annotation.projects import budget_of
from services.annotation.schemas import LedgerOut, PurchaseIn, PurchaseOut, PurchasesOut
from services.common.db import utcnow
from services.common.errors import Conflict, InvalidInput
from services.common.metrics import ANNOTATION_LABELS_BOUGHT
from services.common.pagination import keyset_page

__all__ = ["buy_prompts", "fulfil", "ledger", "purchase_out", "record_purchase"]


def record_purchase(session: Session, project: AnnotationProject, group: RolloutGroup, prompt: Prompt, *,
                    policy: str, score: float | None, now: datetime) -> Purchase:
    """Write one ledger row and spend one label. The caller holds ``lock_project``."""
    if project.labels_bought >= project.label_budget:
        raise Conflict(f"the label budget ({project.label_budget}) is spent", field="label_budget",
                       code="budget_exceeded")
    purchase = Purchase(annotation_project_id=project.id, prompt_id=prompt.id, rollout_group_id=group.id,
                        step=group.step, policy=policy, score=score, source=project.answer_source,
                        purchased_at=now)
    session.add(purchase)
    project.labels_bought += 1
    _count_when_committed(session, project.answer_source.value)
    return purchase


_BOUGHT = "annotation_labels_bought_pending"


def _count_when_committed(session: Session, source: str) -> None:
    """Count a bought label in the metrics once its transaction commits (a rolled-back one bought nothing)."""
    if _BOUGHT not in session.info:
        session.info[_BOUGHT] = Counter()
        event.listen(session, "after_commit", _count_bought)
        event.listen(session, "after_soft_rollback", _forget_bought)
    session.info[_BOUGHT][source] += 1


def _count_bought(session: Session) -> None:
    pending: Counter[str] = session.info[_BOUGHT]
    for source, n in pending.items():
        ANNOTATION_LABELS_BOUGHT.labels(source).inc(n)
    pending.clear()


def _forget_bought(session: Session, previous_transaction: SessionTransaction) -> None:
    # Any rollback of the whole transaction (a savepoint's rollback keeps what was bought before it).
    if not previous_transaction.nested:
        session.info[_BOUGHT].clear()


def fulfil(session: Session, project: AnnotationProject, purchase: Purchase, *, priority: float | None,
           key_answer: str | None, now: datetime) -> None:
    """Answer a purchase: the answer key at once, or a task in the annotator queue."""
    if project.answer_source is AnswerSource.answer_key:
        if key_answer is None:
            raise InvalidInput("this prompt has no entry in the project's answer key", field="prompt_ids")
        deliver_label(session, purchase, kind=LabelKind.answer, answer=key_answer, labelled_by=["answer_key"],
                      adjudicator_id=None, now=now)
        return
    session.add(Task(annotation_project_id=project.id, purchase_id=purchase.id, prompt_id=purchase.prompt_id,
                     rollout_group_id=purchase.rollout_group_id, priority=priority or 0.0,
                     overlap_k=project.overlap_k, created_at=now))


def buy_prompts(session: Session, annotation_project_id: str, body: PurchaseIn, *,
                idempotency_key: str | None = None, now: datetime | None = None) -> PurchasesOut:
    """Buy labels for chosen prompts of a posted step, outside the policy (ledger policy ``manual``)."""
    project = lock_project(session, annotation_project_id)
    request_hash = idempotency.body_hash(body)
    stored = idempotency.replayed(session, project.id, "purchases", idempotency_key, request_hash, PurchasesOut)
    if stored is not None:
        return stored
    now = now or utcnow()
    if len(set(body.prompt_ids)) != len(body.prompt_ids):
        raise InvalidInput("a prompt id appears more than once", field="prompt_ids")
    left = budget_of(project).left
    if len(body.prompt_ids) > left:
        raise Conflict(f"asked to buy {len(body.prompt_ids)} labels but only {left} of the budget of "
                       f"{project.label_budget} are left", field="prompt_ids", code="budget_exceeded")
    prompts = prompts_by_external_id(session, project.id, body.prompt_ids)
    rows = []
    for index, external_id in enumerate(body.prompt_ids):
        prompt = prompts.get(external_id)
        group = None if prompt is None else session.scalar(select(RolloutGroup).where(
            RolloutGroup.annotation_project_id == project.id, RolloutGroup.step == body.step,
            RolloutGroup.prompt_id == prompt.id))
        if prompt is None or group is None:
            raise InvalidInput(f"unknown prompt {external_id!r} at step {body.step}: post the step's rollout "
                               "groups first", field=f"prompt_ids[{index}]")
        if session.scalar(select(Task.id).where(Task.prompt_id == prompt.id, Task.honeypot.is_(True))) is not None:
            raise Conflict(f"prompt {external_id!r} is a honeypot of this project and cannot be bought",
                           field=f"prompt_ids[{index}]", code="honeypot")
        if session.scalar(select(Purchase.id).where(Purchase.annotation_project_id == project.id,
                                                    Purchase.prompt_id == prompt.id)) is not None:
            raise Conflict(f"prompt {external_id!r} was already bought", field=f"prompt_ids[{index}]",
                           code="already_bought")
        rows.append((prompt, group))
    key = answer_key.answers(session, project.id, body.prompt_ids) if answer_key.needed(project) else {}
    bought = [record_purchase(session, project, group, prompt, policy="manual", score=None, now=now)
              for prompt, group in rows]
    session.flush()
    for purchase, (prompt, _group) in zip(bought, rows, strict=True):
        fulfil(session, project, purchase, priority=None, key_answer=key.get(prompt.external_id), now=now)
    session.flush()
    out = PurchasesOut(purchases=[purchase_out(session, p) for p in bought], budget=budget_of(project))
    if idempotency_key is not None:
        idempotency.remember(session, project.id, "purchases", idempotency_key, request_hash, 201, out.model_dump_json())
    return out


def purchase_out(session: Session, purchase: Purchase, external_id: str | None = None) -> PurchaseOut:
    if external_id is None:
        prompt = session.get(Prompt, purchase.prompt_id)
        external_id = prompt.external_id if prompt is not None else ""
    return PurchaseOut(id=purchase.id, prompt_id=external_id, step=purchase.step, policy=purchase.policy,
                       score=purchase.score, source=purchase.source, status=purchase.status.value,
                       label_kind=purchase.label_kind, label=purchase.label, labelled_by=purchase.labelled_by,
                       adjudicator_id=purchase.adjudicator_id, purchased_at=purchase.purchased_at,
                       labelled_at=purchase.labelled_at)


def ledger(session: Session, annotation_project_id: str, *, cursor: str | None, limit: int) -> LedgerOut:
    """Every purchase in the order bought (one page after ``cursor``), with the project's budget."""
    project = session.get(AnnotationProject, annotation_project_id)
    if project is None:
        raise project_not_found(annotation_project_id)
    rows, next_cursor = keyset_page(session, select(Purchase).where(Purchase.annotation_project_id == project.id),
                                    (Purchase.purchased_at, Purchase.id), cursor, limit)
    names = external_ids(session, {p.prompt_id for p in rows})
    return LedgerOut(data=[purchase_out(session, p, names[p.prompt_id]) for p in rows], next_cursor=next_cursor,
                     budget=budget_of(project))
