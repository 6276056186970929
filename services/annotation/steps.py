"""A training step, end to end: rollout groups → votes → the policy's selection → purchases → weights.

``ingest_step`` runs under the project lock (budget, selector state and label numbering), so
concurrent trainers never overspend; a retry with the same idempotency key replays the first answer.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.annotation import idempotency
from services.annotation.care import Decision
from services.annotation.ingestion import Vote, store_step
from services.annotation.locking import lock_project
from services.annotation.models import Policy, Prompt, Purchase, PurchaseStatus, RolloutGroup, SelectionScore
from services.annotation.projects import budget_of
from services.annotation.purchases import fulfil, record_purchase
from services.annotation.schemas import ClusterOut, GroupOut, StepIn, StepOut
from services.annotation.selection import GroupInput, load_selector, save_selector
from services.common.db import utcnow


def ingest_step(session: Session, annotation_project_id: str, body: StepIn, *, idempotency_key: str | None = None,
                now: datetime | None = None) -> StepOut:
    """Vote, score, select and buy for one training step; returns what the trainer needs now."""
    project = lock_project(session, annotation_project_id)
    request_hash = idempotency.body_hash(body)
    stored = idempotency.replayed(session, project.id, "steps", idempotency_key, request_hash, StepOut)
    if stored is not None:
        return stored
    now = now or utcnow()
    step = store_step(session, project, body, now)
    prompts, groups, votes, key = step.prompts, step.groups, step.votes, step.key
    external_ids = [p.external_id for p in prompts]
    selector = load_selector(session, project)
    selector.learn_new_labels(session, project, now)

    already = {p.prompt_id: p for p in session.scalars(select(Purchase).where(
        Purchase.annotation_project_id == project.id, Purchase.prompt_id.in_([p.id for p in prompts])))}
    inputs = [GroupInput(group=g_in, vote=v, known=p.id in already)
              for g_in, v, p in zip(body.groups, votes, prompts, strict=True)]
    decision = selector.decide(inputs, step=body.step,
                               oracle_answers=[key.get(e) for e in external_ids]
                               if project.policy is Policy.oracle_cag else None)

    left = budget_of(project).left
    wanted = [i for i in decision.ranked_selection() if prompts[i].id not in already]
    to_buy = wanted[:left]
    bought_now: dict[int, Purchase] = {}
    for index in to_buy:
        bought_now[index] = record_purchase(session, project, groups[index], prompts[index], policy=project.policy.value,
                                            score=decision.scores[index], now=now)
    session.flush()
    for index, purchase in bought_now.items():
        fulfil(session, project, purchase, priority=decision.scores[index],
               key_answer=key.get(prompts[index].external_id), now=now)
    selector.learn_new_labels(session, project, now)  # the answer key may have labelled some at once
    save_selector(session, project, selector, now)

    known = {i: already.get(prompts[i].id) or bought_now.get(i) for i in range(len(prompts))}
    weights = decision.final_weights(bought=set(bought_now),
                                     labelled={i for i, p in known.items()
                                               if p is not None and p.status is PurchaseStatus.labelled})
    out_groups = []
    for index, (group, result) in enumerate(zip(groups, votes, strict=True)):
        held = known[index]
        session.add(SelectionScore(rollout_group_id=group.id, policy=project.policy,
                                   score=decision.scores[index], reliability=decision.reliability[index],
                                   reliable=decision.reliable[index], selected=decision.selected[index],
                                   bought=index in bought_now, advantage_weight=weights[index]))
        out_groups.append(_group_out(prompts[index], group, result, decision, index, held,
                                     index in bought_now, weights[index]))
    session.flush()
    out = StepOut(annotation_project_id=project.id, step=body.step, policy=project.policy, groups=out_groups,
                  purchased=len(bought_now), budget=budget_of(project),
                  budget_exhausted=len(wanted) > len(to_buy), label_cursor=project.label_seq)
    if idempotency_key is not None:
        idempotency.remember(session, project.id, "steps", idempotency_key, request_hash, 200, out.model_dump_json())
    return out


def _group_out(prompt: Prompt, group: RolloutGroup, result: Vote, decision: Decision, index: int,
               purchase: Purchase | None, bought: bool, weight: float) -> GroupOut:
    if purchase is None:
        status, label, kind = "none", None, None
    elif purchase.status is PurchaseStatus.labelled:
        status, label, kind = "labelled", purchase.label, purchase.label_kind
    else:
        status, label, kind = "pending", None, None
    return GroupOut(
        prompt_id=prompt.external_id, pseudo_label=result.pseudo_label, majority_ratio=result.majority_ratio,
        valid_ratio=result.valid_ratio,
        clusters=[ClusterOut(answer=group.answers[c[0]] or "", size=len(c)) for c in result.clusters],
        score=decision.scores[index], reliability=decision.reliability[index], reliable=decision.reliable[index],
        selected=decision.selected[index], bought=bought, label_status=status, label=label, label_kind=kind,
        purchase_id=purchase.id if purchase is not None else None, advantage_weight=weight)
