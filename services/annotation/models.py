"""Annotation tables: projects, prompts, rollout groups, selection, the purchase ledger, the queue.

Names are prefixed ``annotation_`` so they sit apart from the other services' tables in the one
database. The hidden answer key lives in its own table and only the answer-key purchase path, the
evaluation-only ``oracle_cag`` policy and evaluation metrics read it; selection never does.
"""

from __future__ import annotations

import enum
import secrets
import threading
import time
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from services.common.db import Base, utcnow
from services.common.models import new_id

_ID_LOCK = threading.Lock()
_LAST_NS = [0]


def ordered_id() -> str:
    """32 hex characters that sort in creation order within a process (time in ns, then random),
    so rows made in one transaction with the same timestamp still keep their order."""
    with _ID_LOCK:
        stamp = max(time.time_ns(), _LAST_NS[0] + 1)
        _LAST_NS[0] = stamp
    return f"{stamp:016x}{secrets.token_hex(8)}"


def _enum(cls: type[enum.Enum], length: int = 16) -> Enum:
    # Non-native enums are plain strings with a CHECK: identical on SQLite and Postgres.
    return Enum(cls, native_enum=False, length=length, values_callable=lambda e: [m.value for m in e])


class Policy(enum.StrEnum):
    care = "care"
    random = "random"
    low_consensus = "low_consensus"
    entropy = "entropy"
    low_token_prob = "low_token_prob"  # lowest mean token probability first
    oracle_cag = "oracle_cag"


class AnswerSource(enum.StrEnum):
    """Who answers a purchase: people through the queue, or the hidden answer key at once."""

    human = "human"
    answer_key = "answer_key"


class PurchaseStatus(enum.StrEnum):
    pending = "pending"
    labelled = "labelled"


class TaskStatus(enum.StrEnum):
    open = "open"
    adjudication = "adjudication"
    done = "done"


class AssignmentState(enum.StrEnum):
    # An ``active`` lease past its expiry no longer holds a slot; nothing has to sweep it.
    active = "active"
    submitted = "submitted"
    skipped = "skipped"
    # A reviewer rejected the submission: it holds no slot (the task may go back to the queue) and
    # its annotator is not offered the task again.
    rejected = "rejected"


class LabelKind(enum.StrEnum):
    answer = "answer"
    ambiguous = "ambiguous"


class AnnotatorRole(enum.StrEnum):
    annotator = "annotator"
    reviewer = "reviewer"  # may also adjudicate disagreements
    admin = "admin"


class AnnotationProject(Base):
    """An active-annotation project inside a tenancy project: budget, label schema, queue and policy."""

    __tablename__ = "annotation_projects"
    __table_args__ = (UniqueConstraint("project_id", "name"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(String(2000), default="")
    label_budget: Mapped[int] = mapped_column(Integer)
    # Kept equal to the number of purchase rows, under the project-row lock.
    labels_bought: Mapped[int] = mapped_column(Integer, default=0)
    label_schema: Mapped[dict[str, Any]] = mapped_column(JSON)
    overlap_k: Mapped[int] = mapped_column(Integer, default=1)
    lease_seconds: Mapped[int] = mapped_column(Integer, default=600)
    rollouts_per_prompt: Mapped[int] = mapped_column(Integer, default=8)
    policy: Mapped[Policy] = mapped_column(_enum(Policy))
    care_params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    answer_source: Mapped[AnswerSource] = mapped_column(_enum(AnswerSource), default=AnswerSource.human)
    webhook_url: Mapped[str | None] = mapped_column(String(2000), default=None)
    webhook_secret: Mapped[str] = mapped_column(String(128))
    # Markdown shown on the task page; the version goes up each time the text changes, and a
    # "read before labelling" gate asks for one confirmation per version (GuidelinesConfirmation).
    guidelines: Mapped[str] = mapped_column(Text, default="")
    guidelines_version: Mapped[int] = mapped_column(Integer, default=0)
    guidelines_required: Mapped[bool] = mapped_column(Boolean, default=False)
    # Share of leases (0..1) that serve a honeypot (gold task, services/annotation/honeypots.py), chosen
    # per lease by a hash of this secret seed; the seed is made on first use and never shown to annotators.
    honeypot_rate: Mapped[float] = mapped_column(Float, default=0.0)
    honeypot_seed: Mapped[str | None] = mapped_column(String(64), default=None)
    # How long after submitting an annotator may still edit their label (0: never); a reviewed label, or
    # one on an adjudicated task, is never edited (review.edit_refusal).
    label_edit_window_s: Mapped[int] = mapped_column(Integer, default=86400)
    # Bumped each time a label changes; the new value orders the label feed (see labels.deliver_label).
    label_seq: Mapped[int] = mapped_column(Integer, default=0)
    last_step: Mapped[int | None] = mapped_column(Integer, default=None)
    # Touched to take SQLite's database write lock at the start of a serialised operation.
    lock_version: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Prompt(Base):
    """A prompt the trainer sent, under the trainer's own id."""

    __tablename__ = "annotation_prompts"
    __table_args__ = (UniqueConstraint("annotation_project_id", "external_id"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    annotation_project_id: Mapped[str] = mapped_column(ForeignKey("annotation_projects.id", ondelete="CASCADE"))
    external_id: Mapped[str] = mapped_column(String(200))
    text: Mapped[str] = mapped_column(Text)
    # Metadata columns of an imported row (services/annotation/imports.py); exported back unchanged.
    meta: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class RolloutGroup(Base):
    """One prompt's n rollouts at one training step: final answers and optional probe features."""

    __tablename__ = "annotation_rollout_groups"
    __table_args__ = (UniqueConstraint("annotation_project_id", "step", "prompt_id"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    annotation_project_id: Mapped[str] = mapped_column(ForeignKey("annotation_projects.id", ondelete="CASCADE"))
    prompt_id: Mapped[str] = mapped_column(ForeignKey("annotation_prompts.id", ondelete="CASCADE"), index=True)
    step: Mapped[int] = mapped_column(Integer)
    n: Mapped[int] = mapped_column(Integer)
    # Extracted final answers; null where a rollout's answer could not be parsed.
    answers: Mapped[list[str | None]] = mapped_column(JSON)
    completions: Mapped[list[str] | None] = mapped_column(JSON, default=None)
    response_lengths: Mapped[list[int] | None] = mapped_column(JSON, default=None)
    mean_token_probs: Mapped[list[float] | None] = mapped_column(JSON, default=None)
    # float32 bytes: (d,) for the prompt, (n, d) for the rollouts.
    prompt_features: Mapped[bytes | None] = mapped_column(LargeBinary, default=None)
    rollout_features: Mapped[bytes | None] = mapped_column(LargeBinary, default=None)
    feature_dim: Mapped[int | None] = mapped_column(Integer, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class PseudoLabel(Base):
    """The majority vote over a rollout group's equivalence clusters."""

    __tablename__ = "annotation_pseudo_labels"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    rollout_group_id: Mapped[str] = mapped_column(
        ForeignKey("annotation_rollout_groups.id", ondelete="CASCADE"), unique=True)
    # None when no rollout had a parseable answer.
    answer: Mapped[str | None] = mapped_column(Text, default=None)
    majority_ratio: Mapped[float] = mapped_column(Float)
    valid_ratio: Mapped[float] = mapped_column(Float)
    # [{"answer": str, "members": [rollout index, ...]}], largest first, ties by first appearance.
    clusters: Mapped[list[dict[str, Any]]] = mapped_column(JSON)


class SelectionScore(Base):
    """What the project's policy said about a rollout group at its step."""

    __tablename__ = "annotation_selection_scores"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    rollout_group_id: Mapped[str] = mapped_column(
        ForeignKey("annotation_rollout_groups.id", ondelete="CASCADE"), unique=True)
    policy: Mapped[Policy] = mapped_column(_enum(Policy))
    score: Mapped[float | None] = mapped_column(Float, default=None)
    reliability: Mapped[float | None] = mapped_column(Float, default=None)
    reliable: Mapped[bool] = mapped_column(default=False)
    selected: Mapped[bool] = mapped_column(default=False)
    # Selected but not bought: the budget ran out, or the prompt was bought at an earlier step.
    bought: Mapped[bool] = mapped_column(default=False)
    advantage_weight: Mapped[float] = mapped_column(Float)


class Purchase(Base):
    """The budget ledger: one row per bought label. A prompt is bought at most once per project."""

    __tablename__ = "annotation_purchases"
    __table_args__ = (
        UniqueConstraint("annotation_project_id", "prompt_id"),
        Index("ix_annotation_purchases_project_label_seq", "annotation_project_id", "label_seq"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=ordered_id)
    annotation_project_id: Mapped[str] = mapped_column(ForeignKey("annotation_projects.id", ondelete="CASCADE"))
    prompt_id: Mapped[str] = mapped_column(ForeignKey("annotation_prompts.id", ondelete="CASCADE"))
    rollout_group_id: Mapped[str] = mapped_column(ForeignKey("annotation_rollout_groups.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(Integer)
    policy: Mapped[str] = mapped_column(String(32))
    score: Mapped[float | None] = mapped_column(Float, default=None)
    source: Mapped[AnswerSource] = mapped_column(_enum(AnswerSource))
    status: Mapped[PurchaseStatus] = mapped_column(_enum(PurchaseStatus), default=PurchaseStatus.pending)
    label_kind: Mapped[LabelKind | None] = mapped_column(_enum(LabelKind), default=None)
    label: Mapped[str | None] = mapped_column(Text, default=None)
    # The final label's answers by question id (label_schema.py); ``label`` keeps the math answer.
    label_values: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    # Who labelled it: annotator ids, or ["answer_key"] for the oracle.
    labelled_by: Mapped[list[str]] = mapped_column(JSON, default=list)
    adjudicator_id: Mapped[str | None] = mapped_column(String(32), default=None)
    purchased_at: Mapped[datetime] = mapped_column(default=utcnow)
    labelled_at: Mapped[datetime | None] = mapped_column(default=None)
    label_seq: Mapped[int | None] = mapped_column(Integer, default=None)
    # Set once the selector has trained on this label.
    observed_at: Mapped[datetime | None] = mapped_column(default=None)


class AnswerKeyEntry(Base):
    """Hidden ground truth for simulation and evaluation, keyed by the trainer's prompt id."""

    __tablename__ = "annotation_answer_keys"
    __table_args__ = (UniqueConstraint("annotation_project_id", "prompt_external_id"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    annotation_project_id: Mapped[str] = mapped_column(ForeignKey("annotation_projects.id", ondelete="CASCADE"))
    prompt_external_id: Mapped[str] = mapped_column(String(200))
    answer: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class SelectorState(Base):
    """The project's selector (probe weights, replay buffer, step count) as opaque bytes."""

    __tablename__ = "annotation_selector_states"

    annotation_project_id: Mapped[str] = mapped_column(
        ForeignKey("annotation_projects.id", ondelete="CASCADE"), primary_key=True)
    policy: Mapped[str] = mapped_column(String(32))
    state: Mapped[bytes] = mapped_column(LargeBinary)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class Annotator(Base):
    """A person (or an annotator API key) who labels tasks."""

    __tablename__ = "annotation_annotators"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    # argon2id hash; null for accounts that stand for an API key and never log in with a password.
    password_hash: Mapped[str | None] = mapped_column(String(256), default=None)
    role: Mapped[AnnotatorRole] = mapped_column(_enum(AnnotatorRole), default=AnnotatorRole.annotator)
    api_key_id: Mapped[str | None] = mapped_column(
        ForeignKey("api_keys.id", ondelete="CASCADE"), unique=True, default=None)
    display_name: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    disabled_at: Mapped[datetime | None] = mapped_column(default=None)


class AnnotatorMembership(Base):
    __tablename__ = "annotation_memberships"

    annotator_id: Mapped[str] = mapped_column(
        ForeignKey("annotation_annotators.id", ondelete="CASCADE"), primary_key=True)
    annotation_project_id: Mapped[str] = mapped_column(
        ForeignKey("annotation_projects.id", ondelete="CASCADE"), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Task(Base):
    """A bought prompt waiting for k annotations (and an adjudication when they disagree)."""

    __tablename__ = "annotation_tasks"
    __table_args__ = (
        Index("ix_annotation_tasks_queue", "annotation_project_id", "status", "priority"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=ordered_id)
    annotation_project_id: Mapped[str] = mapped_column(ForeignKey("annotation_projects.id", ondelete="CASCADE"))
    # None for a honeypot: a gold task is not bought, spends no budget and delivers no label.
    purchase_id: Mapped[str | None] = mapped_column(
        ForeignKey("annotation_purchases.id", ondelete="CASCADE"), unique=True, default=None)
    prompt_id: Mapped[str] = mapped_column(ForeignKey("annotation_prompts.id", ondelete="CASCADE"))
    rollout_group_id: Mapped[str] = mapped_column(ForeignKey("annotation_rollout_groups.id", ondelete="CASCADE"))
    # The selection score: higher is served first.
    priority: Mapped[float] = mapped_column(Float, default=0.0)
    overlap_k: Mapped[int] = mapped_column(Integer)
    status: Mapped[TaskStatus] = mapped_column(_enum(TaskStatus), default=TaskStatus.open)
    # Bumped on every change of the task's assignments, so concurrent lockers see a new row version.
    version: Mapped[int] = mapped_column(Integer, default=0)
    agreement: Mapped[float | None] = mapped_column(Float, default=None)
    final_kind: Mapped[LabelKind | None] = mapped_column(_enum(LabelKind), default=None)
    final_answer: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column(default=None)
    # A gold task (HoneypotKey holds its hidden answer): served to every annotator once, never done,
    # never adjudicated, left out of agreement, stats, the browser and exports.
    honeypot: Mapped[bool] = mapped_column(Boolean, default=False)


class Assignment(Base):
    """An annotator's lease on a task. One row per (task, annotator): nobody gets a task twice."""

    __tablename__ = "annotation_assignments"
    __table_args__ = (
        UniqueConstraint("task_id", "annotator_id"),
        Index("ix_annotation_assignments_annotator", "annotator_id", "state"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=ordered_id)
    task_id: Mapped[str] = mapped_column(ForeignKey("annotation_tasks.id", ondelete="CASCADE"), index=True)
    annotation_project_id: Mapped[str] = mapped_column(ForeignKey("annotation_projects.id", ondelete="CASCADE"))
    annotator_id: Mapped[str] = mapped_column(ForeignKey("annotation_annotators.id", ondelete="CASCADE"))
    state: Mapped[AssignmentState] = mapped_column(_enum(AssignmentState), default=AssignmentState.active)
    leased_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    # "Come back later": the lease was handed back (expires_at = then) and the task is offered to
    # this annotator again only once nothing else is left; cleared when it is leased again.
    deferred_at: Mapped[datetime | None] = mapped_column(default=None)


class GuidelinesConfirmation(Base):
    """An annotator confirmed reading one version of a project's guidelines."""

    __tablename__ = "annotation_guidelines_confirmations"

    annotator_id: Mapped[str] = mapped_column(
        ForeignKey("annotation_annotators.id", ondelete="CASCADE"), primary_key=True)
    annotation_project_id: Mapped[str] = mapped_column(
        ForeignKey("annotation_projects.id", ondelete="CASCADE"), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    confirmed_at: Mapped[datetime] = mapped_column(default=utcnow)


class HoneypotKey(Base):
    """The hidden answer of a honeypot task: label values by question id, as ``check_values`` returns them.

    Read only to grade honeypot labels (agreement.honeypot_results); no endpoint returns it."""

    __tablename__ = "annotation_honeypot_keys"

    task_id: Mapped[str] = mapped_column(ForeignKey("annotation_tasks.id", ondelete="CASCADE"), primary_key=True)
    annotation_project_id: Mapped[str] = mapped_column(
        ForeignKey("annotation_projects.id", ondelete="CASCADE"), index=True)
    values: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class QuestionGuidelines(Base):
    """One version of one question's guidelines (Markdown). Every change adds a row; none is overwritten."""

    __tablename__ = "annotation_question_guidelines"

    annotation_project_id: Mapped[str] = mapped_column(
        ForeignKey("annotation_projects.id", ondelete="CASCADE"), primary_key=True)
    question_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class QuestionGuidelinesConfirmation(Base):
    """An annotator confirmed reading one version of one question's guidelines."""

    __tablename__ = "annotation_question_guidelines_confirmations"

    annotator_id: Mapped[str] = mapped_column(
        ForeignKey("annotation_annotators.id", ondelete="CASCADE"), primary_key=True)
    annotation_project_id: Mapped[str] = mapped_column(
        ForeignKey("annotation_projects.id", ondelete="CASCADE"), primary_key=True)
    question_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    confirmed_at: Mapped[datetime] = mapped_column(default=utcnow)


class Annotation(Base):
    """One annotator's answer to a task. ``submission_id`` makes a retried submit a no-op."""

    __tablename__ = "annotation_annotations"
    __table_args__ = (UniqueConstraint("annotator_id", "submission_id"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=ordered_id)
    task_id: Mapped[str] = mapped_column(ForeignKey("annotation_tasks.id", ondelete="CASCADE"), index=True)
    assignment_id: Mapped[str] = mapped_column(ForeignKey("annotation_assignments.id", ondelete="CASCADE"))
    annotation_project_id: Mapped[str] = mapped_column(ForeignKey("annotation_projects.id", ondelete="CASCADE"))
    annotator_id: Mapped[str] = mapped_column(ForeignKey("annotation_annotators.id", ondelete="CASCADE"))
    submission_id: Mapped[str] = mapped_column(String(100))
    kind: Mapped[LabelKind] = mapped_column(_enum(LabelKind))
    answer: Mapped[str | None] = mapped_column(Text, default=None)
    candidate_index: Mapped[int | None] = mapped_column(Integer, default=None)
    rationale: Mapped[str | None] = mapped_column(Text, default=None)
    # Every question's answer by question id, normalised (label_schema.check_values); the math_answer
    # question's also fills kind/answer/candidate_index/rationale above.
    label_values: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    # Seconds from lease to submit (throughput statistics).
    duration_s: Mapped[float | None] = mapped_column(Float, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    undone_at: Mapped[datetime | None] = mapped_column(default=None)
    # Set when a reviewer rejects it: like an undone label it no longer counts anywhere.
    rejected_at: Mapped[datetime | None] = mapped_column(default=None)
    # The last edit by its annotator (every old value is kept in LabelEdit).
    edited_at: Mapped[datetime | None] = mapped_column(default=None)


class Adjudication(Base):
    """A reviewer's decision on a task whose annotations disagreed."""

    __tablename__ = "annotation_adjudications"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    task_id: Mapped[str] = mapped_column(ForeignKey("annotation_tasks.id", ondelete="CASCADE"), unique=True)
    adjudicator_id: Mapped[str] = mapped_column(ForeignKey("annotation_annotators.id", ondelete="CASCADE"))
    kind: Mapped[LabelKind] = mapped_column(_enum(LabelKind))
    answer: Mapped[str | None] = mapped_column(Text, default=None)
    candidate_index: Mapped[int | None] = mapped_column(Integer, default=None)
    rationale: Mapped[str | None] = mapped_column(Text, default=None)
    label_values: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ReviewDecision(enum.StrEnum):
    accepted = "accepted"
    rejected = "rejected"


class Review(Base):
    """A reviewer's accept or reject of one submission: who, when, an optional comment. One per label."""

    __tablename__ = "annotation_reviews"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=ordered_id)
    annotation_id: Mapped[str] = mapped_column(
        ForeignKey("annotation_annotations.id", ondelete="CASCADE"), unique=True)
    task_id: Mapped[str] = mapped_column(ForeignKey("annotation_tasks.id", ondelete="CASCADE"), index=True)
    annotation_project_id: Mapped[str] = mapped_column(ForeignKey("annotation_projects.id", ondelete="CASCADE"))
    reviewer_id: Mapped[str] = mapped_column(ForeignKey("annotation_annotators.id", ondelete="CASCADE"))
    decision: Mapped[ReviewDecision] = mapped_column(_enum(ReviewDecision))
    comment: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class LabelEdit(Base):
    """An annotator changed their own label: the value before and after (review.snapshot), kept for the history."""

    __tablename__ = "annotation_label_edits"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=ordered_id)
    annotation_id: Mapped[str] = mapped_column(
        ForeignKey("annotation_annotations.id", ondelete="CASCADE"), index=True)
    task_id: Mapped[str] = mapped_column(ForeignKey("annotation_tasks.id", ondelete="CASCADE"), index=True)
    annotation_project_id: Mapped[str] = mapped_column(ForeignKey("annotation_projects.id", ondelete="CASCADE"))
    annotator_id: Mapped[str] = mapped_column(ForeignKey("annotation_annotators.id", ondelete="CASCADE"))
    old: Mapped[dict[str, Any]] = mapped_column(JSON)
    new: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


# Idempotency records live in the shared ``idempotency_records`` table (services.common.idempotency);
# annotation's endpoints name themselves ``annotation/<annotation project id>/<endpoint>`` there.


class LoginAttempt(Base):
    """One web-UI login attempt that counts against a username or a client address.

    Kept in the database (not in memory) so every annotation replica sees the same counts.
    ``subject`` is an HMAC of the typed username or the address: a password typed into the
    username box never lands in the database. A row is written before the password is checked
    (so a burst of parallel guesses cannot all slip past the limit) and removed again when the
    attempt turns out not to count (refused while locked, or a correct password).
    """

    __tablename__ = "annotation_login_attempts"
    __table_args__ = (Index("ix_annotation_login_attempts_subject", "scope", "subject", "attempted_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=ordered_id)
    scope: Mapped[str] = mapped_column(String(16))  # "account" or "address"
    subject: Mapped[str] = mapped_column(String(64))
    attempted_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class DeliveryState(enum.StrEnum):
    """Where one webhook delivery stands (services/annotation/webhooks.py)."""

    pending = "pending"  # waiting for its next attempt (``next_attempt_at``)
    delivering = "delivering"  # leased by a sender until ``lease_until``
    delivered = "delivered"  # the receiver answered 2xx
    failed = "failed"  # dead: out of attempts, or refused for good; kept for the admin to redeliver


class WebhookDelivery(Base):
    """One webhook message to a project's receiver: a transactional-outbox row.

    Written in the same transaction as the label change it announces, so a rolled-back label
    leaves no row and a committed one is never lost to a restart. The target is a reference: each
    attempt reads the project's current ``webhook_url`` and ``webhook_secret`` (no secret, and no
    URL that may carry credentials, is copied here), so an admin who fixes a broken URL can
    redeliver. ``id`` is the ``X-Rewardhub-Delivery`` header, the same on every attempt.
    """

    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhook_deliveries_due", "state", "next_attempt_at"),
                      Index("ix_webhook_deliveries_project", "annotation_project_id", "created_at"))

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=ordered_id)
    annotation_project_id: Mapped[str] = mapped_column(ForeignKey("annotation_projects.id", ondelete="CASCADE"))
    event_id: Mapped[str] = mapped_column(String(32), default=new_id)
    event_type: Mapped[str] = mapped_column(String(32))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    state: Mapped[DeliveryState] = mapped_column(_enum(DeliveryState), default=DeliveryState.pending)
    # Attempts started so far (counted when a sender claims the row, so a sender that dies mid-send
    # still uses one up and a row that kills its senders cannot loop forever).
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    lease_owner: Mapped[str | None] = mapped_column(String(64), default=None)
    lease_until: Mapped[datetime | None] = mapped_column(default=None)
    last_status_code: Mapped[int | None] = mapped_column(Integer, default=None)
    # Redacted: no secret, no URL credentials or query string (webhooks.describe_error).
    last_error: Mapped[str | None] = mapped_column(String(500), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_attempt_at: Mapped[datetime | None] = mapped_column(default=None)
    delivered_at: Mapped[datetime | None] = mapped_column(default=None)
