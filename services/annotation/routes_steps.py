"""Trainer routes: prompts, training steps (selection and purchases), manual purchases, the ledger."""

from __future__ import annotations

from fastapi import APIRouter, Response

from services.annotation import idempotency, ingestion, projects, purchases, steps
from services.annotation.deps import IdempotencyKey, Now, ProjectPath, SessionDep, Trainer
from services.annotation.schemas import (
    LedgerOut,
    PromptsIn,
    PromptsOut,
    PurchaseIn,
    PurchasesOut,
    StepIn,
    StepOut,
)
from services.common.pagination import DEFAULT_LIMIT, CursorParam, LimitParam

router = APIRouter(prefix="/v1/annotation", tags=["trainer"])


@router.post("/projects/{annotation_project_id}/prompts", response_model=PromptsOut)
def register_prompts(annotation_project_id: ProjectPath, body: PromptsIn, principal: Trainer,
                     session: SessionDep) -> PromptsOut:
    """Register prompts under your own ids (idempotent: a known id with the same text is kept)."""
    projects.accessible(session, principal, annotation_project_id)
    return ingestion.register_prompts(session, annotation_project_id, body.prompts)


@router.post("/projects/{annotation_project_id}/steps", response_model=StepOut)
def post_step(annotation_project_id: ProjectPath, body: StepIn, now: Now, response: Response, principal: Trainer,
              session: SessionDep, idempotency_key: IdempotencyKey = None) -> StepOut:
    """A training step's rollout groups → pseudo-labels, majority ratios, the prompts bought by the
    project's policy (within budget) and per-prompt advantage weights.

    Answer-key projects answer their purchases at once (`label_status: labelled`); otherwise
    bought prompts become annotation tasks and their labels arrive in the label feed. Send an
    `Idempotency-Key` so a retried step is answered once (the body's `idempotency_key` is deprecated).
    """
    projects.accessible(session, principal, annotation_project_id)
    key = idempotency.key_from(idempotency_key, body.idempotency_key, "idempotency_key", response)
    return steps.ingest_step(session, annotation_project_id, body, idempotency_key=key, now=now)


@router.post("/projects/{annotation_project_id}/purchases", response_model=PurchasesOut, status_code=201)
def post_purchases(annotation_project_id: ProjectPath, body: PurchaseIn, now: Now, response: Response,
                   principal: Trainer, session: SessionDep, idempotency_key: IdempotencyKey = None) -> PurchasesOut:
    """Buy labels for chosen prompts of a posted step, outside the policy. Over budget → 409."""
    projects.accessible(session, principal, annotation_project_id)
    key = idempotency.key_from(idempotency_key, body.idempotency_key, "idempotency_key", response)
    return purchases.buy_prompts(session, annotation_project_id, body, idempotency_key=key, now=now)


@router.get("/projects/{annotation_project_id}/ledger", response_model=LedgerOut)
def get_ledger(annotation_project_id: ProjectPath, principal: Trainer, session: SessionDep,
               cursor: CursorParam = None, limit: LimitParam = DEFAULT_LIMIT) -> LedgerOut:
    """Every purchase in the order bought: prompt, step, policy, score, who labelled it and when, with the budget."""
    projects.accessible(session, principal, annotation_project_id)
    return purchases.ledger(session, annotation_project_id, cursor=cursor, limit=limit)
