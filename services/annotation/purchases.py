"""The budget ledger and the selection glue: a step's rollout groups → votes → policy → purchases.

Every purchase goes through ``record_purchase`` under the project-row lock, so the budget is never
overspent, also when trainers call concurrently: PostgreSQL takes ``SELECT … FOR UPDATE`` on the
project row; SQLite writes the row first, which takes the database's write lock for the rest of
the transaction. A bought label is answered by people (a queue task) or, in answer-key projects,
by the hidden key at once; both end in ``deliver_label``, which numbers the label in the feed.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.orm.util import identity_key

from services.annotation import notifications
from services.annotation.care import CareSelector, Decision, GroupView, LabelledView
from services.annotation.care import (
    validate_care_params as validate_care_params,  # app.py validates through here
)
from services.annotation.care.params import care_params_from
from services.annotation.care.selector import HistoryLoader
from services.annotation.equivalence import answers_equivalent, cluster_answers
from services.annotation.models import (
    AnnotationProject,
    AnswerKeyEntry,
    AnswerSource,
    LabelKind,
    Policy,
    Prompt,
    PseudoLabel,
    Purchase,
    PurchaseStatus,
    RolloutGroup,
    SelectionScore,
    SelectorState,
    Task,
)
from services.annotation.schemas import (
    Budget,
    ClusterOut,
    GroupOut,
    LabelOut,
    LabelsOut,
    LedgerOut,
    PromptIn,
    PromptsOut,
    PurchaseIn,
    PurchaseOut,
    PurchasesOut,
    RolloutGroupIn,
    StepIn,
    StepOut,
)
from services.common import idempotency
from services.common.db import utcnow
from services.common.errors import Conflict, InvalidInput, NotFound
from services.common.metrics import ANNOTATION_LABELS_BOUGHT

# ---------------------------------------------------------------------------------------- locks


def is_postgres(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def serialise_on_sqlite(session: Session, annotation_project_id: str) -> None:
    """On SQLite, take the database write lock now (the first write of the transaction takes it).

    Later reads in the transaction then see the latest data and nobody else writes until commit:
    the equivalent of ``BEGIN IMMEDIATE`` without reopening the session's transaction.
    """
    if not is_postgres(session):
        session.execute(update(AnnotationProject).where(AnnotationProject.id == annotation_project_id)
                        .values(lock_version=AnnotationProject.lock_version + 1)
                        .execution_options(synchronize_session=False))


def lock_project(session: Session, annotation_project_id: str) -> AnnotationProject:
    """The project row, locked until commit (budget, selector state and label numbering)."""
    serialise_on_sqlite(session, annotation_project_id)
    query = (select(AnnotationProject).where(AnnotationProject.id == annotation_project_id)
             .execution_options(populate_existing=True))
    if is_postgres(session):
        # FOR NO KEY UPDATE: serialises budget spenders like FOR UPDATE, but lets the queue keep
        # inserting rows that reference the project (their foreign-key checks take KEY SHARE).
        query = query.with_for_update(key_share=True)
    project = session.scalar(query)
    if project is None:
        raise NotFound(f"annotation project {annotation_project_id!r} not found", field="annotation_project_id")
    return project


def budget_of(project: AnnotationProject) -> Budget:
    return Budget(total=project.label_budget, spent=project.labels_bought,
                  left=max(project.label_budget - project.labels_bought, 0))


def new_webhook_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


# ---------------------------------------------------------------------------------- idempotency


def fingerprint(body: dict[str, Any]) -> str:
    return idempotency.fingerprint(body)


def _idempotency_scope(session: Session, annotation_project_id: str, endpoint: str) -> tuple[str, str]:
    """Annotation keys live in the shared table under the tenancy project, one name per annotation project."""
    project = session.get(AnnotationProject, annotation_project_id)
    if project is None:
        raise NotFound(f"annotation project {annotation_project_id!r} not found", field="annotation_project_id")
    return project.project_id, f"annotation/{annotation_project_id}/{endpoint}"


def replay(session: Session, annotation_project_id: str, endpoint: str, key: str, request_hash: str) -> str | None:
    """The stored response of an earlier request with this key, or None after claiming the key in this
    transaction (call under the project lock; ``remember`` stores the answer in the same transaction)."""
    project_id, name = _idempotency_scope(session, annotation_project_id, endpoint)
    stored = idempotency.replay(session, project_id, name, key, request_hash)
    return None if stored is None else stored.body


def remember(session: Session, annotation_project_id: str, endpoint: str, key: str, request_hash: str,
             status_code: int, response: str) -> None:
    project_id, name = _idempotency_scope(session, annotation_project_id, endpoint)
    idempotency.remember(session, project_id, name, key, request_hash, status_code, response)


# -------------------------------------------------------------------------------------- prompts


def register_prompts(session: Session, annotation_project_id: str, prompts: list[PromptIn]) -> PromptsOut:
    """Add prompts under the trainer's ids; a known id with the same text is left as it is."""
    lock_project(session, annotation_project_id)  # concurrent registrations of one id must not race
    seen: dict[str, int] = {}
    for index, prompt in enumerate(prompts):
        if prompt.id in seen:
            raise InvalidInput(f"prompt id {prompt.id!r} appears twice (also at prompts[{seen[prompt.id]}])",
                               field=f"prompts[{index}].id")
        seen[prompt.id] = index
    existing = _prompts_by_external_id(session, annotation_project_id, list(seen))
    created = 0
    for index, prompt in enumerate(prompts):
        known = existing.get(prompt.id)
        if known is None:
            session.add(Prompt(annotation_project_id=annotation_project_id, external_id=prompt.id, text=prompt.text))
            created += 1
        elif known.text != prompt.text:
            raise Conflict(f"prompt {prompt.id!r} is already registered with a different text",
                           field=f"prompts[{index}].text", code="prompt_text_mismatch")
    session.flush()
    return PromptsOut(created=created, existing=len(prompts) - created)


def _prompts_by_external_id(session: Session, annotation_project_id: str, ids: list[str]) -> dict[str, Prompt]:
    found: dict[str, Prompt] = {}
    for start in range(0, len(ids), 1000):
        chunk = ids[start:start + 1000]
        for prompt in session.scalars(select(Prompt).where(Prompt.annotation_project_id == annotation_project_id,
                                                           Prompt.external_id.in_(chunk))):
            found[prompt.external_id] = prompt
    return found


def answer_key(session: Session, annotation_project_id: str, external_ids: list[str]) -> dict[str, str]:
    """Hidden answers by trainer prompt id. Only the answer-key purchase path, the evaluation-only
    oracle policy and evaluation metrics call this; selection policies never see it."""
    found: dict[str, str] = {}
    for start in range(0, len(external_ids), 1000):
        chunk = external_ids[start:start + 1000]
        for entry in session.scalars(select(AnswerKeyEntry).where(
                AnswerKeyEntry.annotation_project_id == annotation_project_id,
                AnswerKeyEntry.prompt_external_id.in_(chunk))):
            found[entry.prompt_external_id] = entry.answer
    return found


def answer_key_size(session: Session, annotation_project_id: str) -> int:
    return int(session.scalar(select(func.count(AnswerKeyEntry.id)).where(
        AnswerKeyEntry.annotation_project_id == annotation_project_id)) or 0)


def upload_answer_key(session: Session, annotation_project_id: str, entries: list[tuple[str, str]]) -> int:
    """Insert or replace answer-key entries; returns the number stored in the project."""
    lock_project(session, annotation_project_id)
    ids = [prompt_id for prompt_id, _ in entries]
    duplicates = {i for i in ids if ids.count(i) > 1} if len(ids) < 5000 else set()
    if len(set(ids)) != len(ids):
        first = next(iter(duplicates)) if duplicates else "?"
        raise InvalidInput(f"prompt id {first!r} appears more than once", field="entries")
    existing = {e.prompt_external_id: e for start in range(0, len(ids), 1000)
                for e in session.scalars(select(AnswerKeyEntry).where(
                    AnswerKeyEntry.annotation_project_id == annotation_project_id,
                    AnswerKeyEntry.prompt_external_id.in_(ids[start:start + 1000])))}
    for prompt_id, answer in entries:
        if prompt_id in existing:
            existing[prompt_id].answer = answer
        else:
            session.add(AnswerKeyEntry(annotation_project_id=annotation_project_id, prompt_external_id=prompt_id,
                                       answer=answer))
    session.flush()
    return answer_key_size(session, annotation_project_id)


# ------------------------------------------------------------------------------------ ingestion


@dataclass
class Vote:
    """The majority vote of one rollout group."""

    clusters: list[list[int]]
    pseudo_label: str | None
    majority_ratio: float
    valid_ratio: float


def vote(answers: list[str | None]) -> Vote:
    """Cluster by equivalence; majority = largest cluster (ties: earliest); ratio = size / n."""
    clusters = cluster_answers(answers)
    n = len(answers)
    valid = sum(1 for a in answers if a is not None and a.strip())
    if not clusters:
        return Vote(clusters=[], pseudo_label=None, majority_ratio=0.0, valid_ratio=valid / n)
    majority = clusters[0]
    pseudo = answers[majority[0]]
    return Vote(clusters=clusters, pseudo_label=pseudo, majority_ratio=len(majority) / n, valid_ratio=valid / n)


def _check_group_shapes(project: AnnotationProject, groups: list[RolloutGroupIn]) -> int | None:
    """Every group has n answers and matching per-rollout lists; features all-or-none with one width."""
    n = project.rollouts_per_prompt
    seen: dict[str, int] = {}
    widths: set[int] = set()
    with_features = [g.prompt_features is not None or g.rollout_features is not None for g in groups]
    for index, group in enumerate(groups):
        where = f"groups[{index}]"
        if group.prompt_id in seen:
            raise InvalidInput(f"prompt {group.prompt_id!r} appears twice in this step (also at "
                               f"groups[{seen[group.prompt_id]}])", field=f"{where}.prompt_id")
        seen[group.prompt_id] = index
        if len(group.answers) != n:
            raise InvalidInput(f"has {len(group.answers)} answers, but this project's groups have n = {n} "
                               "rollouts (rollouts_per_prompt)", field=f"{where}.answers")
        for name in ("completions", "response_lengths", "mean_token_probs", "rollout_features"):
            values = getattr(group, name)
            if values is not None and len(values) != n:
                raise InvalidInput(f"has {len(values)} entries but the group has n = {n} rollouts",
                                   field=f"{where}.{name}")
        if any(with_features) and not with_features[index]:
            raise InvalidInput("other groups of this step carry features; give prompt_features and "
                               "rollout_features for every group or for none", field=f"{where}.prompt_features")
        if with_features[index]:
            if group.prompt_features is None or group.rollout_features is None:
                missing = "prompt_features" if group.prompt_features is None else "rollout_features"
                raise InvalidInput("give both prompt_features and rollout_features", field=f"{where}.{missing}")
            widths.add(len(group.prompt_features))
            for row_index, row in enumerate(group.rollout_features):
                widths.add(len(row))
                if len(widths) > 1:
                    raise InvalidInput(f"feature vectors must all have one width; found {sorted(widths)}",
                                       field=f"{where}.rollout_features[{row_index}]")
            if len(widths) > 1:
                raise InvalidInput(f"feature vectors must all have one width; found {sorted(widths)}",
                                   field=f"{where}.prompt_features")
    return widths.pop() if widths else None


def _check_feature_width(session: Session, project: AnnotationProject, width: int | None) -> None:
    if width is None:
        return
    previous = session.scalar(select(RolloutGroup.feature_dim).where(
        RolloutGroup.annotation_project_id == project.id, RolloutGroup.feature_dim.is_not(None)).limit(1))
    if previous is not None and previous != width:
        raise InvalidInput(f"feature vectors have width {width}, but earlier steps of this project used "
                           f"{previous}; the probes need one width", field="groups[0].prompt_features")


def _resolve_prompts(session: Session, project: AnnotationProject, groups: list[RolloutGroupIn]) -> list[Prompt]:
    known = _prompts_by_external_id(session, project.id, [g.prompt_id for g in groups])
    prompts = []
    for index, group in enumerate(groups):
        prompt = known.get(group.prompt_id)
        if prompt is None:
            if group.prompt_text is None:
                raise InvalidInput(f"unknown prompt {group.prompt_id!r}: register it with POST …/prompts or send "
                                   "its prompt_text", field=f"groups[{index}].prompt_id")
            prompt = Prompt(annotation_project_id=project.id, external_id=group.prompt_id, text=group.prompt_text)
            session.add(prompt)
        elif group.prompt_text is not None and group.prompt_text != prompt.text:
            raise Conflict(f"prompt {group.prompt_id!r} is registered with a different text",
                           field=f"groups[{index}].prompt_text", code="prompt_text_mismatch")
        prompts.append(prompt)
    session.flush()
    return prompts


def _float32(values: list[float] | list[list[float]] | None) -> bytes | None:
    import numpy as np

    return None if values is None else np.asarray(values, dtype=np.float32).tobytes()


@dataclass
class StoredStep:
    prompts: list[Prompt]
    groups: list[RolloutGroup]
    votes: list[Vote]
    key: dict[str, str]  # answer-key entries of these prompts (answer-key or oracle projects only)


def store_step(session: Session, project: AnnotationProject, body: StepIn, now: datetime) -> StoredStep:
    """Validate a step and store its prompts, rollout groups and pseudo-labels (no selection)."""
    width = _check_group_shapes(project, body.groups)
    if session.scalar(select(RolloutGroup.id).where(RolloutGroup.annotation_project_id == project.id,
                                                    RolloutGroup.step == body.step).limit(1)) is not None:
        raise Conflict(f"step {body.step} was already posted to this project", field="step",
                       code="step_already_posted")
    _check_feature_width(session, project, width)
    prompts = _resolve_prompts(session, project, body.groups)
    external_ids = [p.external_id for p in prompts]
    key = answer_key(session, project.id, external_ids) if _needs_key(project) else {}
    if _needs_key(project):
        why = ("answers its purchases" if project.answer_source is AnswerSource.answer_key
               else "the oracle_cag policy needs")
        for index, external_id in enumerate(external_ids):
            if external_id not in key:
                raise InvalidInput(f"prompt {external_id!r} has no entry in this project's answer key, which {why}",
                                   field=f"groups[{index}].prompt_id")
    groups, votes = [], []
    for group_in, prompt in zip(body.groups, prompts, strict=True):
        group = RolloutGroup(
            annotation_project_id=project.id, prompt_id=prompt.id, step=body.step, n=len(group_in.answers),
            answers=group_in.answers, completions=group_in.completions, response_lengths=group_in.response_lengths,
            mean_token_probs=group_in.mean_token_probs, prompt_features=_float32(group_in.prompt_features),
            rollout_features=_float32(group_in.rollout_features), feature_dim=width, created_at=now)
        session.add(group)
        groups.append(group)
        votes.append(vote(group_in.answers))
    session.flush()
    for group, result in zip(groups, votes, strict=True):
        session.add(PseudoLabel(rollout_group_id=group.id, answer=result.pseudo_label,
                                majority_ratio=result.majority_ratio, valid_ratio=result.valid_ratio,
                                clusters=[{"answer": group.answers[c[0]], "members": c} for c in result.clusters]))
    project.last_step = body.step if project.last_step is None else max(project.last_step, body.step)
    return StoredStep(prompts=prompts, groups=groups, votes=votes, key=key)


def ingest_step(session: Session, annotation_project_id: str, body: StepIn, *, idempotency_key: str | None = None,
                now: datetime | None = None) -> StepOut:
    """Vote, score, select and buy for one training step; returns what the trainer needs now."""
    project = lock_project(session, annotation_project_id)
    request_hash = fingerprint(body.model_dump(mode="json", exclude={"idempotency_key"}))
    if idempotency_key is not None:
        stored = replay(session, project.id, "steps", idempotency_key, request_hash)
        if stored is not None:
            return StepOut.model_validate_json(stored)
    now = now or utcnow()
    step = store_step(session, project, body, now)
    prompts, groups, votes, key = step.prompts, step.groups, step.votes, step.key
    external_ids = [p.external_id for p in prompts]
    selector = load_selector(session, project)
    _observe_new_labels(session, project, selector, now)

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
    _observe_new_labels(session, project, selector, now)
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
        remember(session, project.id, "steps", idempotency_key, request_hash, 200, out.model_dump_json())
    return out


def _needs_key(project: AnnotationProject) -> bool:
    return project.answer_source is AnswerSource.answer_key or project.policy is Policy.oracle_cag


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


# ------------------------------------------------------------------------------------ purchases


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
    # Counted when spent (a transaction that then fails to commit is counted too: rare, and bounded).
    ANNOTATION_LABELS_BOUGHT.labels(project.answer_source.value).inc()
    return purchase


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
    request_hash = fingerprint(body.model_dump(mode="json", exclude={"idempotency_key"}))
    if idempotency_key is not None:
        stored = replay(session, project.id, "purchases", idempotency_key, request_hash)
        if stored is not None:
            return PurchasesOut.model_validate_json(stored)
    now = now or utcnow()
    if len(set(body.prompt_ids)) != len(body.prompt_ids):
        raise InvalidInput("a prompt id appears more than once", field="prompt_ids")
    left = budget_of(project).left
    if len(body.prompt_ids) > left:
        raise Conflict(f"asked to buy {len(body.prompt_ids)} labels but only {left} of the budget of "
                       f"{project.label_budget} are left", field="prompt_ids", code="budget_exceeded")
    prompts = _prompts_by_external_id(session, project.id, body.prompt_ids)
    rows = []
    for index, external_id in enumerate(body.prompt_ids):
        prompt = prompts.get(external_id)
        group = None if prompt is None else session.scalar(select(RolloutGroup).where(
            RolloutGroup.annotation_project_id == project.id, RolloutGroup.step == body.step,
            RolloutGroup.prompt_id == prompt.id))
        if prompt is None or group is None:
            raise InvalidInput(f"unknown prompt {external_id!r} at step {body.step}: post the step's rollout "
                               "groups first", field=f"prompt_ids[{index}]")
        if session.scalar(select(Purchase.id).where(Purchase.annotation_project_id == project.id,
                                                    Purchase.prompt_id == prompt.id)) is not None:
            raise Conflict(f"prompt {external_id!r} was already bought", field=f"prompt_ids[{index}]",
                           code="already_bought")
        rows.append((prompt, group))
    key = answer_key(session, project.id, body.prompt_ids) if _needs_key(project) else {}
    bought = [record_purchase(session, project, group, prompt, policy="manual", score=None, now=now)
              for prompt, group in rows]
    session.flush()
    for purchase, (prompt, _group) in zip(bought, rows, strict=True):
        fulfil(session, project, purchase, priority=None, key_answer=key.get(prompt.external_id), now=now)
    session.flush()
    out = PurchasesOut(purchases=[purchase_out(session, p) for p in bought], budget=budget_of(project))
    if idempotency_key is not None:
        remember(session, project.id, "purchases", idempotency_key, request_hash, 201, out.model_dump_json())
    return out


# --------------------------------------------------------------------------------------- labels


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
                  labelled_by: list[str], adjudicator_id: str | None, now: datetime) -> None:
    """A purchase's label is known: store it, number it in the feed, notify after commit."""
    # The project row first, then the purchase: the lock order every writer keeps (no deadlocks).
    seq = next_label_seq(session, purchase.annotation_project_id)
    purchase.label_seq = seq
    purchase.status = PurchaseStatus.labelled
    purchase.label_kind, purchase.label = kind, answer if kind is LabelKind.answer else None
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
    purchase.labelled_by = []
    purchase.observed_at = None
    _announce(session, purchase)


def _external_ids(session: Session, prompt_ids: set[str]) -> dict[str, str]:
    if not prompt_ids:
        return {}
    return dict(session.execute(select(Prompt.id, Prompt.external_id).where(Prompt.id.in_(prompt_ids))).all())


def label_out(purchase: Purchase, external_id: str) -> LabelOut:
    labelled = purchase.status is PurchaseStatus.labelled
    return LabelOut(seq=purchase.label_seq or 0, event="labelled" if labelled else "retracted",
                    purchase_id=purchase.id, prompt_id=external_id, step=purchase.step, policy=purchase.policy,
                    score=purchase.score, label_kind=purchase.label_kind, label=purchase.label,
                    labelled_by=purchase.labelled_by, labelled_at=purchase.labelled_at)


def labels_since(session: Session, annotation_project_id: str, cursor: int, limit: int) -> LabelsOut:
    """Label changes after ``cursor`` in feed order (each purchase appears at its latest change)."""
    rows = list(session.scalars(select(Purchase).where(Purchase.annotation_project_id == annotation_project_id,
                                                       Purchase.label_seq > cursor)
                                .order_by(Purchase.label_seq).limit(limit)))
    names = _external_ids(session, {p.prompt_id for p in rows})
    labels = [label_out(p, names[p.prompt_id]) for p in rows]
    return LabelsOut(labels=labels, next_cursor=labels[-1].seq if labels else cursor)


def purchase_out(session: Session, purchase: Purchase, external_id: str | None = None) -> PurchaseOut:
    if external_id is None:
        prompt = session.get(Prompt, purchase.prompt_id)
        external_id = prompt.external_id if prompt is not None else ""
    return PurchaseOut(id=purchase.id, prompt_id=external_id, step=purchase.step, policy=purchase.policy,
                       score=purchase.score, source=purchase.source, status=purchase.status.value,
                       label_kind=purchase.label_kind, label=purchase.label, labelled_by=purchase.labelled_by,
                       adjudicator_id=purchase.adjudicator_id, purchased_at=purchase.purchased_at,
                       labelled_at=purchase.labelled_at)


def ledger(session: Session, annotation_project_id: str, *, offset: int, limit: int) -> LedgerOut:
    project = session.get(AnnotationProject, annotation_project_id)
    if project is None:
        raise NotFound(f"annotation project {annotation_project_id!r} not found", field="annotation_project_id")
    in_project = Purchase.annotation_project_id == annotation_project_id
    total = int(session.scalar(select(func.count(Purchase.id)).where(in_project)) or 0)
    rows = list(session.scalars(select(Purchase).where(in_project)
                                .order_by(Purchase.purchased_at, Purchase.id).offset(offset).limit(limit)))
    names = _external_ids(session, {p.prompt_id for p in rows})
    return LedgerOut(budget=budget_of(project), purchases=[purchase_out(session, p, names[p.prompt_id]) for p in rows],
                     total=total, offset=offset, limit=limit)


# ------------------------------------------------------------------------------- probe training


def _observe_new_labels(session: Session, project: AnnotationProject, selector: Selector,
                        now: datetime) -> None:
    """Train the selector on labels it has not seen (it learns only from bought labels)."""
    rows = session.execute(
        select(Purchase, RolloutGroup, PseudoLabel)
        .join(RolloutGroup, RolloutGroup.id == Purchase.rollout_group_id)
        .join(PseudoLabel, PseudoLabel.rollout_group_id == Purchase.rollout_group_id)
        .where(Purchase.annotation_project_id == project.id, Purchase.status == PurchaseStatus.labelled,
               Purchase.observed_at.is_(None))
        .order_by(Purchase.label_seq)).all()
    if not rows:
        return
    examples = []
    for purchase, group, pseudo in rows:
        purchase.observed_at = now
        if purchase.label_kind is not LabelKind.answer or purchase.label is None:
            continue  # ambiguous prompts carry no ground truth to learn from
        correct = rollout_correctness(group.answers, [c["members"] for c in pseudo.clusters], purchase.label)
        examples.append(LabelledGroup(group=group, clusters=[c["members"] for c in pseudo.clusters],
                                                correct=correct))
    if examples:
        selector.observe(examples)


def rollout_correctness(answers: list[str | None], clusters: list[list[int]], label: str) -> list[bool]:
    """r_j = 1[answer_j ≡ GT], decided once per cluster (its members are equivalent)."""
    correct = [False] * len(answers)
    for members in clusters:
        if answers_equivalent(answers[members[0]], label):
            for index in members:
                correct[index] = True
    return correct


# ------------------------------------------------------------------------------- selection glue


@dataclass
class GroupInput:
    """One rollout group as the policy sees it (never with ground truth)."""

    group: RolloutGroupIn
    vote: Vote
    known: bool  # this prompt's label was bought at an earlier step


@dataclass
class LabelledGroup:
    """A bought, answered group: what the probes train on."""

    group: RolloutGroup
    clusters: list[list[int]]
    correct: list[bool]


class Selector:
    """The project's selector behind ``ingest_step``: turns stored rows into the pure ``care`` views."""

    def __init__(self, core: CareSelector, history: HistoryLoader | None = None) -> None:
        self.core = core
        self.history = history

    def decide(self, inputs: list[GroupInput], *, step: int, oracle_answers: list[str | None] | None) -> Decision:
        """Score and select a step's groups. ``oracle_answers`` (hidden answer key) is passed for
        ``oracle_cag`` only; every other policy decides without ground truth."""
        truth = None
        if oracle_answers is not None:
            truth = [None if answer is None else rollout_correctness(i.group.answers, i.vote.clusters, answer)
                     for i, answer in zip(inputs, oracle_answers, strict=True)]
        return self.core.decide([_input_view(i) for i in inputs], step=step, truth=truth)

    def observe(self, examples: list[LabelledGroup]) -> None:
        self.core.observe([LabelledView(key=e.group.id, view=stored_view(e.group, e.clusters), correct=e.correct)
                           for e in examples], self.history)


def _input_view(item: GroupInput) -> GroupView:
    group = item.group
    return GroupView(
        n=len(group.answers), clusters=item.vote.clusters,
        prompt_features=None if group.prompt_features is None else np.asarray(group.prompt_features, np.float32),
        rollout_features=None if group.rollout_features is None else np.asarray(group.rollout_features, np.float32),
        response_lengths=group.response_lengths, known=item.known)


def stored_view(group: RolloutGroup, clusters: list[list[int]]) -> GroupView:
    """A stored rollout group (float32 feature bytes) as the probes see it."""
    width = group.feature_dim
    prompt = rollouts = None
    if width is not None and group.prompt_features is not None and group.rollout_features is not None:
        prompt = np.frombuffer(group.prompt_features, dtype=np.float32).reshape(width)
        rollouts = np.frombuffer(group.rollout_features, dtype=np.float32).reshape(group.n, width)
    return GroupView(n=group.n, clusters=clusters, prompt_features=prompt, rollout_features=rollouts,
                     response_lengths=group.response_lengths, known=True)


def _history_loader(session: Session, annotation_project_id: str) -> HistoryLoader:
    """Loads replayed groups (by rollout-group id) with their clusters for probe training."""

    def load(keys: list[str]) -> dict[str, GroupView]:
        rows = session.execute(select(RolloutGroup, PseudoLabel)
                               .join(PseudoLabel, PseudoLabel.rollout_group_id == RolloutGroup.id)
                               .where(RolloutGroup.annotation_project_id == annotation_project_id,
                                      RolloutGroup.id.in_(keys))).all()
        return {group.id: stored_view(group, [c["members"] for c in pseudo.clusters]) for group, pseudo in rows}

    return load


def load_selector(session: Session, project: AnnotationProject) -> Selector:
    """The project's selector from its ``SelectorState`` row (a fresh one before the first step)."""
    params = care_params_from(project.care_params)
    row = session.get(SelectorState, project.id)
    if row is None:
        core = CareSelector(project.policy, params, project.rollouts_per_prompt)
    else:
        core = CareSelector.from_bytes(row.state, policy=project.policy, params=params,
                                       n=project.rollouts_per_prompt)
    return Selector(core, history=_history_loader(session, project.id))


def save_selector(session: Session, project: AnnotationProject, selector: Selector, now: datetime) -> None:
    data = selector.core.to_bytes()
    row = session.get(SelectorState, project.id)
    if row is None:
        session.add(SelectorState(annotation_project_id=project.id, policy=project.policy.value, state=data,
                                  updated_at=now))
    else:
        row.policy, row.state, row.updated_at = project.policy.value, data, now
