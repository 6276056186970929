"""Pydantic I/O of the annotation service: projects, steps, purchases, labels, the queue."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from services.annotation.label_schema import LabelSchema, parse_schema
from services.annotation.models import AnnotatorRole, AnswerSource, DeliveryState, LabelKind, Policy
from services.common.pagination import Page
from services.common.validation import ID_PATTERN, NameText, StoredText

# Stored text: StoredText refuses NUL and lone surrogates, naming the field.
Text = StoredText

PROMPT_ID = Field(min_length=1, max_length=200, description="The trainer's own prompt id.")
MAX_FEATURE_DIM = 16_384
MAX_ROLLOUTS = 1024
MAX_GUIDELINES = 100_000
GUIDELINES_DOC = ("Markdown shown on the task page (raw HTML is escaped; KaTeX math like `$x^2$` is typeset).")
GATE_DOC = "Annotators must confirm each guidelines version once before their first task is leased."
EDIT_WINDOW_DOC = ("How many seconds after submitting an annotator may still edit their label (0: never). A label "
                   "that a reviewer accepted or rejected, or on a task settled by adjudication, is never edited.")
MAX_EDIT_WINDOW_S = 365 * 86400
HONEYPOT_RATE_DOC = ("Share (0 to 1) of annotators' leases that serve a honeypot (POST …/honeypots), chosen by a seeded "
                     "hash per lease; 0: none.")


def _checked_schema(value: Any) -> Any:
    """A label schema checked by ``label_schema.parse_schema``: a 422 naming the exact field
    (``label_schema.questions[1].choices``, without pydantic's union tag in the path)."""
    return None if value is None else parse_schema(value)


SCHEMA_DOC = ("The questions asked about each task (default: one math_answer question). The pre-0014 flat "
              "form {free_form, candidates, ambiguous, rationale} is still accepted.")


class AnnotationProjectCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    project_id: str = Field(pattern=ID_PATTERN, description="The tenancy project this belongs to.")
    name: NameText = Field(min_length=1, max_length=200)
    description: StoredText = Field(default="", max_length=2000)
    label_budget: int = Field(ge=0, le=100_000_000, description="How many labels may be bought in all.")
    label_schema: LabelSchema = Field(default_factory=LabelSchema, description=SCHEMA_DOC)
    overlap_k: int = Field(default=1, ge=1, le=20, description="Annotators per task.")
    lease_seconds: int = Field(default=600, ge=5, le=7 * 86400, description="How long a task stays leased.")
    rollouts_per_prompt: int = Field(default=8, ge=1, le=MAX_ROLLOUTS, description="n: every group has n answers.")
    policy: Policy = Policy.care
    care_params: dict[str, Any] = Field(default_factory=dict, description="CareParams overrides.")
    answer_source: AnswerSource = Field(default=AnswerSource.human, description=(
        "`human`: purchases become annotation tasks. `answer_key`: the hidden answer key answers at once."))
    webhook_url: AnyHttpUrl | None = Field(default=None, description="POSTed a signed message when labels arrive.")
    guidelines: StoredText = Field(default="", max_length=MAX_GUIDELINES, description=GUIDELINES_DOC)
    guidelines_required: bool = Field(default=False, description=GATE_DOC)
    label_edit_window_s: int = Field(default=86400, ge=0, le=MAX_EDIT_WINDOW_S, description=EDIT_WINDOW_DOC)
    honeypot_rate: float = Field(default=0.0, ge=0.0, le=1.0, description=HONEYPOT_RATE_DOC)

    _schema = field_validator("label_schema", mode="before")(_checked_schema)


class AnnotationProjectUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    description: StoredText | None = Field(default=None, max_length=2000)
    label_budget: int | None = Field(default=None, ge=0, le=100_000_000)
    label_schema: LabelSchema | None = Field(default=None, description=(
        "Replaces the questions; labels already given keep the values they were given with."))
    overlap_k: int | None = Field(default=None, ge=1, le=20, description="Applies to tasks created from now on.")
    lease_seconds: int | None = Field(default=None, ge=5, le=7 * 86400)
    policy: Policy | None = None
    care_params: dict[str, Any] | None = None
    webhook_url: AnyHttpUrl | None = None
    clear_webhook: bool = False
    guidelines: StoredText | None = Field(default=None, max_length=MAX_GUIDELINES, description=(
        "New guidelines text; a changed text is a new version (annotators confirm it again under the gate)."))
    guidelines_required: bool | None = Field(default=None, description=GATE_DOC)
    label_edit_window_s: int | None = Field(default=None, ge=0, le=MAX_EDIT_WINDOW_S, description=EDIT_WINDOW_DOC)
    honeypot_rate: float | None = Field(default=None, ge=0.0, le=1.0, description=HONEYPOT_RATE_DOC)

    _schema = field_validator("label_schema", mode="before")(_checked_schema)


class Budget(BaseModel):
    total: int
    spent: int
    left: int


class AnnotationProjectOut(BaseModel):
    id: str
    project_id: str
    name: str
    description: str
    budget: Budget
    label_schema: LabelSchema
    overlap_k: int
    lease_seconds: int
    rollouts_per_prompt: int
    policy: Policy
    care_params: dict[str, Any]
    answer_source: AnswerSource
    answer_key_entries: int
    webhook_url: str | None
    last_step: int | None
    label_cursor: int = Field(description="The newest label's sequence number (the label feed's head).")
    guidelines: str = Field(default="", description=GUIDELINES_DOC)
    guidelines_version: int = Field(default=0, description="Goes up by one each time the guidelines text changes.")
    guidelines_required: bool = Field(default=False, description=GATE_DOC)
    label_edit_window_s: int = Field(default=86400, description=EDIT_WINDOW_DOC)
    honeypot_rate: float = Field(default=0.0, description=HONEYPOT_RATE_DOC)
    created_at: datetime


class AnnotationProjectCreated(AnnotationProjectOut):
    webhook_secret: str = Field(description="Signs webhook messages (HMAC-SHA256). Shown only on create/rotate.")


class WebhookSecretOut(BaseModel):
    webhook_secret: str = Field(description="Signs webhook messages (HMAC-SHA256). Shown only here.")


class AnswerKeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt_id: StoredText = PROMPT_ID
    answer: StoredText = Field(min_length=1, max_length=20_000)


class AnswerKeyUpload(BaseModel):
    model_config = ConfigDict(extra="forbid")

    entries: list[AnswerKeyIn] = Field(min_length=1, max_length=1_000_000)


class AnswerKeyOut(BaseModel):
    entries: int = Field(description="Entries stored; the answers themselves are never returned.")


class PromptIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: Text = PROMPT_ID
    text: Text = Field(min_length=1, max_length=200_000)


class PromptsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompts: list[PromptIn] = Field(min_length=1, max_length=100_000)


class PromptsOut(BaseModel):
    created: int
    existing: int


class RolloutGroupIn(BaseModel):
    """One prompt's n rollouts at this step."""

    model_config = ConfigDict(extra="forbid")

    prompt_id: Text = PROMPT_ID
    prompt_text: Text | None = Field(default=None, min_length=1, max_length=200_000, description=(
        "Needed the first time a prompt is seen (or register it with POST …/prompts)."))
    answers: list[Text | None] = Field(min_length=1, max_length=MAX_ROLLOUTS, description=(
        "Each rollout's extracted final answer; null where none could be parsed."))
    completions: list[Text] | None = Field(default=None, description="Full rollout texts (shown to annotators).")
    response_lengths: list[int] | None = Field(default=None, description="Tokens per rollout.")
    mean_token_probs: list[float] | None = Field(default=None, description="Mean token probability per rollout.")
    prompt_features: list[float] | None = Field(default=None, max_length=MAX_FEATURE_DIM, description=(
        "Policy hidden state at the last prompt token (CARE's probes)."))
    rollout_features: list[list[float]] | None = Field(default=None, description=(
        "Per rollout, the hidden state at the last response token."))

    @field_validator("answers")
    @classmethod
    def _answer_length(cls, answers: list[str | None]) -> list[str | None]:
        for index, answer in enumerate(answers):
            if answer is not None and len(answer) > 20_000:
                raise ValueError(f"answer {index} is longer than 20000 characters")
        return answers

    @field_validator("response_lengths")
    @classmethod
    def _lengths(cls, values: list[int] | None) -> list[int] | None:
        if values is not None and any(v < 0 for v in values):
            raise ValueError("must be non-negative token counts")
        return values

    @field_validator("mean_token_probs")
    @classmethod
    def _probs(cls, values: list[float] | None) -> list[float] | None:
        if values is not None and any(not (0.0 <= v <= 1.0) for v in values):
            raise ValueError("must be probabilities in [0, 1]")
        return values

    @field_validator("prompt_features")
    @classmethod
    def _finite(cls, values: list[float] | None) -> list[float] | None:
        if values is not None and not all(math.isfinite(v) for v in values):
            raise ValueError("must be finite numbers")
        return values

    @field_validator("rollout_features")
    @classmethod
    def _finite_rows(cls, rows: list[list[float]] | None) -> list[list[float]] | None:
        if rows is not None:
            for index, row in enumerate(rows):
                if len(row) > MAX_FEATURE_DIM:
                    raise ValueError(f"row {index} has more than {MAX_FEATURE_DIM} values")
                if not all(math.isfinite(v) for v in row):
                    raise ValueError(f"row {index} must hold finite numbers")
        return rows


class StepIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    step: int = Field(ge=0, le=10_000_000, description="The training step these groups come from.")
    groups: list[RolloutGroupIn] = Field(min_length=1, max_length=10_000)
    idempotency_key: StoredText | None = Field(default=None, min_length=1, max_length=200,
                                               description="Or the Idempotency-Key header.")


class ClusterOut(BaseModel):
    answer: str
    size: int


class GroupOut(BaseModel):
    prompt_id: str
    pseudo_label: str | None = Field(description="The majority answer; null when no rollout had one.")
    majority_ratio: float
    valid_ratio: float
    clusters: list[ClusterOut]
    score: float | None = Field(description="The policy's acquisition score (CARE: expected advantage gap).")
    reliability: float | None = Field(description="CARE stage 1: P(majority vote is correct).")
    reliable: bool
    selected: bool = Field(description="The policy chose to buy this prompt's label.")
    bought: bool = Field(description="Bought at this step (selected and within budget).")
    label_status: Literal["none", "pending", "labelled"] = Field(description=(
        "none: no label bought; pending: bought, not answered yet; labelled: the label is known."))
    label: str | None = None
    label_kind: LabelKind | None = None
    purchase_id: str | None = None
    advantage_weight: float


class StepOut(BaseModel):
    annotation_project_id: str
    step: int
    policy: Policy
    groups: list[GroupOut]
    purchased: int
    budget: Budget
    budget_exhausted: bool = Field(description="Some selected prompts were not bought: the budget ran out.")
    label_cursor: int


class PurchaseIn(BaseModel):
    """Buy labels for chosen prompts of an already-posted step (outside the policy)."""

    model_config = ConfigDict(extra="forbid")

    step: int = Field(ge=0)
    prompt_ids: list[StoredText] = Field(min_length=1, max_length=10_000)
    idempotency_key: StoredText | None = Field(default=None, min_length=1, max_length=200)


class PurchaseOut(BaseModel):
    id: str
    prompt_id: str
    step: int
    policy: str
    score: float | None
    source: AnswerSource
    status: str
    label_kind: LabelKind | None
    label: str | None
    labelled_by: list[str]
    adjudicator_id: str | None
    purchased_at: datetime
    labelled_at: datetime | None


class PurchasesOut(BaseModel):
    purchases: list[PurchaseOut]
    budget: Budget


class LedgerOut(Page[PurchaseOut]):
    """One page of the ledger (every purchase, in the order bought), with the project's budget."""

    budget: Budget


class LabelOut(BaseModel):
    seq: int = Field(description="Feed position; pass the largest one back as `cursor`.")
    event: Literal["labelled", "retracted"] = Field(description="retracted: an annotator undid the label.")
    purchase_id: str
    prompt_id: str
    step: int
    policy: str
    score: float | None
    label_kind: LabelKind | None
    label: str | None
    values: dict[str, Any] | None = Field(default=None, description=(
        "The label's answers by question id (for every question type; math_answer also fills `label`)."))
    labelled_by: list[str]
    labelled_at: datetime | None


class LabelsOut(Page[LabelOut]):
    """One page of the label feed. A feed has no last page: `next_cursor` is where the next poll
    starts (the last entry's `seq`, or the cursor sent when nothing new arrived), never null."""

    next_cursor: str = Field(description="Pass back as `cursor`; the feed position after this page.")


class AnnotatorCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: StoredText = Field(min_length=3, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
    password: StoredText = Field(min_length=10, max_length=1024)
    role: AnnotatorRole = AnnotatorRole.annotator
    display_name: StoredText = Field(default="", max_length=200)


class AnnotatorOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    username: str
    role: AnnotatorRole
    display_name: str
    created_at: datetime


def has_top_level(body: Submission | Decision) -> bool:
    return body.answer is not None or body.candidate is not None or body.kind is LabelKind.ambiguous


def _check_top_level(body: Submission | Decision) -> None:
    """The top-level math answer: exactly one of answer or candidate, or kind ambiguous. With ``values``
    it may be left out (a project whose schema has no math_answer question, or one answered in values)."""
    if body.answer is not None and not body.answer.strip():
        body.answer = None
    if body.kind is LabelKind.ambiguous:
        if body.answer is not None or body.candidate is not None:
            raise ValueError("an ambiguous label carries neither answer nor candidate")
    elif body.answer is not None and body.candidate is not None:
        raise ValueError("give exactly one of answer or candidate (or kind 'ambiguous')")
    elif body.values is None and body.answer is None and body.candidate is None:
        raise ValueError("give exactly one of answer or candidate (or kind 'ambiguous'), or values")


class Submission(BaseModel):
    """An annotator's answer. Give `answer` (free form) or `candidate` (index), or kind `ambiguous`."""

    model_config = ConfigDict(extra="forbid")

    submission_id: StoredText | None = Field(default=None, min_length=1, max_length=100, description=(
        "Deprecated: send the `Idempotency-Key` header. A client-chosen id: sending the same one again "
        "returns the first result."))
    kind: LabelKind = LabelKind.answer
    answer: StoredText | None = Field(default=None, max_length=20_000, description="Free-form answer, LaTeX allowed.")
    candidate: int | None = Field(default=None, ge=0, description="Index into the task's candidates.")
    rationale: StoredText | None = Field(default=None, max_length=20_000)
    values: dict[str, Any] | None = Field(default=None, description=(
        "Answers by question id (see the project's label_schema). A math_answer question may instead be "
        "answered with the top-level kind/answer/candidate/rationale, as before."))

    @model_validator(mode="after")
    def _one_answer(self) -> Submission:
        _check_top_level(self)
        return self

    @property
    def has_top_level(self) -> bool:
        """The math answer came in the top-level fields (the pre-0014 way)."""
        return has_top_level(self)


class Decision(BaseModel):
    """A reviewer's final answer for a disputed task (same fields as a submission, no id)."""

    model_config = ConfigDict(extra="forbid")

    kind: LabelKind = LabelKind.answer
    answer: StoredText | None = Field(default=None, max_length=20_000)
    candidate: int | None = Field(default=None, ge=0)
    rationale: StoredText | None = Field(default=None, max_length=20_000)
    values: dict[str, Any] | None = Field(default=None, description=(
        "Answers by question id (see the project's label_schema). A math_answer question may instead be "
        "answered with the top-level kind/answer/candidate/rationale, as before."))

    @model_validator(mode="after")
    def _one_answer(self) -> Decision:
        _check_top_level(self)
        return self

    @property
    def has_top_level(self) -> bool:
        return has_top_level(self)


class CandidateOut(BaseModel):
    index: int
    answer: str
    count: int = Field(description="How many of the n rollouts gave this answer.")


class PairOut(BaseModel):
    a: str
    b: str


class TaskView(BaseModel):
    """What an annotator sees for a leased task."""

    assignment_id: str
    task_id: str
    annotation_project_id: str
    prompt_id: str
    prompt_text: str
    step: int
    n: int
    unparseable: int = Field(description="Rollouts without a parseable answer.")
    candidates: list[CandidateOut]
    completions: list[str] | None = None
    label_schema: LabelSchema
    pairs: dict[str, PairOut] = Field(default_factory=dict, description=(
        "Per preference_pair question id, the two responses it compares (absent: fewer than two)."))
    priority: float
    overlap_k: int
    leased_at: datetime
    lease_expires_at: datetime
    resumed: bool = Field(description="This lease was already yours (after a reload or an undo).")


class AnnotationOut(BaseModel):
    id: str
    task_id: str
    assignment_id: str
    submission_id: str
    kind: LabelKind
    answer: str | None
    candidate_index: int | None
    rationale: str | None
    values: dict[str, Any] | None = Field(default=None, description="The answers by question id, normalised.")
    created_at: datetime
    undone: bool
    task_status: str
    replayed: bool = Field(description="True when this submission id had already been received.")


class SkipOut(BaseModel):
    assignment_id: str
    task_id: str
    state: str


class UndoOut(BaseModel):
    undone: AnnotationOut
    task: TaskView
    label_retracted: bool


class AnnotationSummary(BaseModel):
    annotator_id: str
    username: str
    kind: LabelKind
    answer: str | None
    rationale: str | None
    values: dict[str, Any] | None = None


class AdjudicationView(BaseModel):
    task_id: str
    prompt_id: str
    prompt_text: str
    candidates: list[CandidateOut]
    annotations: list[AnnotationSummary]
    agreement: float | None
    pairs: dict[str, PairOut] = Field(default_factory=dict)


class AdjudicationOut(BaseModel):
    id: str
    task_id: str
    adjudicator_id: str
    kind: LabelKind
    answer: str | None
    values: dict[str, Any] | None = None
    created_at: datetime


# ------------------------------------------------------- review, history, one's own labels, members


class ReviewIn(BaseModel):
    """A reviewer's accept or reject of one submission."""

    model_config = ConfigDict(extra="forbid")

    decision: Literal["accept", "reject"] = Field(description=(
        "`reject`: the label stops counting (agreement, adjudication, exports) and the task goes back to the "
        "queue when it now has fewer than k labels. Sending the same decision again is a no-op."))
    comment: StoredText | None = Field(default=None, max_length=5000, description="Why (shown in the history).")


class ReviewOut(BaseModel):
    id: str
    annotation_id: str
    task_id: str
    reviewer_id: str
    reviewer: str = Field(description="The reviewer's username.")
    decision: Literal["accepted", "rejected"]
    comment: str | None
    created_at: datetime
    task_status: str
    label_retracted: bool = Field(description="The rejection took back the task's delivered label.")
    replayed: bool = Field(description="This decision had already been recorded (nothing changed).")


class LabelSnapshot(BaseModel):
    """One value of a label, as stored at one moment."""

    kind: LabelKind
    answer: str | None = None
    candidate_index: int | None = None
    rationale: str | None = None
    values: dict[str, Any] | None = None


class HistoryEvent(BaseModel):
    type: Literal["label", "edit", "undo", "review", "adjudication"]
    at: datetime
    actor_id: str
    actor: str = Field(description="The username of who did it.")
    annotation_id: str | None = None
    label: LabelSnapshot | None = Field(default=None, description=(
        "label: the value first submitted; edit: the new value; adjudication: the decision."))
    previous: LabelSnapshot | None = Field(default=None, description="edit: the value before.")
    decision: Literal["accepted", "rejected"] | None = None
    comment: str | None = None


class TaskHistoryOut(BaseModel):
    task_id: str
    prompt_id: str
    prompt_text: str
    status: str
    overlap_k: int
    agreement: float | None
    final: LabelSnapshot | None = Field(description="The task's final label, once it has one.")
    events: list[HistoryEvent] = Field(description="Labels, edits, undos, reviews and adjudications, oldest first.")


class MyLabelOut(BaseModel):
    annotation_id: str
    task_id: str
    prompt_id: str
    prompt_text: str
    label: LabelSnapshot
    created_at: datetime
    edited_at: datetime | None
    edits: int
    review: Literal["accepted", "rejected"] | None
    review_comment: str | None
    task_status: str
    editable: bool
    editable_until: datetime | None = Field(description="The end of the edit window (null: editing is off).")
    not_editable_because: str | None = None


class MembershipIn(BaseModel):
    """An existing login account to add to this project: by username or by id."""

    model_config = ConfigDict(extra="forbid")

    username: StoredText | None = Field(default=None, min_length=3, max_length=64)
    annotator_id: str | None = Field(default=None, pattern=ID_PATTERN)

    @model_validator(mode="after")
    def _exactly_one(self) -> MembershipIn:
        if (self.username is None) == (self.annotator_id is None):
            raise ValueError("give exactly one of username or annotator_id")
        return self


class MembershipOut(AnnotatorOut):
    added: bool = Field(description="False when the account was already a member (nothing changed).")


class AnnotatorThroughput(BaseModel):
    annotator_id: str
    username: str
    submitted: int
    skipped: int
    last_hour: int
    mean_seconds: float | None


class QueueStats(BaseModel):
    budget: Budget
    tasks_open: int = Field(description="Tasks still needing annotations (queue depth).")
    leases_active: int
    tasks_in_adjudication: int
    tasks_done: int
    labels_pending: int
    labels_delivered: int
    mean_agreement: float | None = Field(description="Mean share of a task's annotations in its largest "
                                                     "equivalence cluster, over finished tasks with k ≥ 2.")
    pseudo_label_accuracy: float | None = Field(description="Share of bought labels equal to the pseudo-label.")
    annotators: list[AnnotatorThroughput]


class AgreementFigure(BaseModel):
    """One chance-corrected agreement coefficient with the data it rests on (services/annotation/agreement.py)."""

    value: float | None = Field(description="The coefficient; null where it does not apply or is undefined.")
    items: int = Field(description="Tasks compared (each with at least two live labels).")
    labels: int = Field(description="Labels in those tasks.")
    note: str | None = Field(default=None, description="Why there is no value, when there is none.")


class AnnotatorQuality(BaseModel):
    """An annotator's accuracy against the hidden answer key and against reviewers' adjudications."""

    annotator_id: str
    username: str
    labels: int = Field(description="Live (not undone) labels in the project.")
    gold_accuracy: float | None = Field(description="Share of labels on answer-key prompts equal to the key; "
                                                    "null when none of their labels has a key.")
    gold_n: int = Field(description="Labels compared with the answer key.")
    adjudicated_accuracy: float | None = Field(description="Share of labels on adjudicated tasks equal to the "
                                                           "reviewer's answer; null when none was adjudicated.")
    adjudicated_n: int = Field(description="Labels compared with an adjudication (by someone else).")
    honeypot_accuracy: float | None = Field(default=None, description=(
        "Share of their labels on honeypot (gold) tasks that match the hidden answer; null when they labelled none."))
    honeypot_n: int = Field(default=0, description="Honeypot labels graded (not counted in `labels`).")


class QuestionAgreement(BaseModel):
    """Agreement on one question: nominal for labels and preference pairs (A/B/tie), ordinal or interval
    for ratings (the question's ``level``); ordinal per item position for rankings; none for free text."""

    question_id: str
    type: str
    level: Literal["nominal", "ordinal", "interval"] | None
    krippendorff_alpha: AgreementFigure


class ProjectQuality(BaseModel):
    """Inter-annotator agreement (nominal: answers grouped by the queue's equivalence) and accuracy."""

    annotation_project_id: str
    krippendorff_alpha: AgreementFigure = Field(description="Nominal alpha over every task with two or more labels.")
    cohen_kappa: AgreementFigure = Field(description="Applies when exactly two annotators labelled those tasks.")
    fleiss_kappa: AgreementFigure = Field(description="Applies when every compared task has the same number "
                                                      "of labels.")
    annotators: list[AnnotatorQuality]
    questions: list[QuestionAgreement] = Field(default_factory=list, description=(
        "Krippendorff's alpha per question of the label schema, at the level its type calls for."))
    honeypots: int = Field(default=0, description="Honeypot (gold) tasks in the project; their labels are left "
                                                  "out of every agreement figure.")


class WebhookDeliveryOut(BaseModel):
    """One webhook delivery as an admin sees it (never the secret, never the URL's credentials)."""

    model_config = ConfigDict(from_attributes=True)

    id: str = Field(description="Sent as `X-Rewardhub-Delivery`, the same on every attempt.")
    event_id: str
    event_type: str
    state: DeliveryState = Field(description="pending, delivering, delivered or failed (out of attempts, or "
                                 "refused for good; POST …/redeliver to try again).")
    attempts: int
    next_attempt_at: datetime | None = Field(description="When a pending delivery is tried next.")
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    last_attempt_at: datetime | None
    delivered_at: datetime | None
    payload: dict[str, Any]


class GuidelinesConfirmIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int | None = Field(default=None, ge=0, description=(
        "The project guidelines version you read (the project's guidelines_version); may be left out when you "
        "confirm only questions' guidelines."))
    questions: dict[str, int] = Field(default_factory=dict, description=(
        "Per question id, the version of its guidelines you read (GET …/guidelines lists them)."))


# ------------------------------------------------------------------ data: import, browse (imports.py, browse.py)

ColumnName = Annotated[str, Field(min_length=1, max_length=200)]


class ImportMapping(BaseModel):
    """Which column of the file is which part of a task."""

    model_config = ConfigDict(extra="forbid")

    prompt: ColumnName = Field(default="prompt", description="The prompt text (required in every row).")
    id: ColumnName | None = Field(default=None, description=(
        "The prompt's id; unset: sha256 of the prompt text (first 32 hex characters)."))
    candidates: ColumnName | None = Field(default=None, description=(
        "The candidates / rollouts shown to annotators: a list (in CSV a JSON array) of rollouts_per_prompt texts."))
    answers: ColumnName | None = Field(default=None, description=(
        "The rollouts' extracted final answers (math projects); unset: the candidates themselves."))
    gold: ColumnName | None = Field(default=None, description="The gold answer, stored in the hidden answer key.")
    metadata: list[ColumnName] = Field(default_factory=list, max_length=100, description=(
        "Columns kept with the prompt and exported back."))


class ImportRowStatus(BaseModel):
    row: int = Field(description="The row's position in the file, from 0 (JSONL: non-blank lines).")
    status: Literal["ok", "invalid_input"]
    prompt_id: str | None = None
    field: str | None = Field(default=None, description="The column (as the mapping names it) that is wrong.")
    message: str | None = None


class ImportOut(BaseModel):
    imported: int = Field(description="Tasks created (0 when an all_or_nothing import had a bad row).")
    rejected: int
    step: int | None = Field(description="The step the imported rollout groups were stored at.")
    rows: list[ImportRowStatus]
    budget: Budget


BrowseStatus = Literal["open", "labelled", "disputed", "adjudicated", "skipped"]


class BrowseRow(BaseModel):
    task_id: str
    prompt_id: str
    prompt: str = Field(description="The prompt text (the first 500 characters).")
    status: BrowseStatus = Field(description="open, disputed (waiting for adjudication), labelled (settled by "
                                             "agreement) or adjudicated; skipped: open and skipped by someone.")
    agreement: float | None
    annotators: list[str] = Field(description="Usernames of those who labelled it (undone labels left out).")
    skipped_by: list[str]
    final_values: dict[str, Any] | None
    metadata: dict[str, Any] | None
    created_at: datetime


# --------------------------------------------------- quality: honeypots, question guidelines (honeypots.py,
# question_guidelines.py)

MAX_HONEYPOTS_PER_CALL = 1000


class HoneypotIn(RolloutGroupIn):
    """A gold task: a prompt with its rollouts, as a trainer posts them, and its hidden answer."""

    prompt_text: Text = Field(min_length=1, max_length=200_000)
    gold: dict[str, Any] = Field(description=(
        "The right answer by question id, in the form a submission's `values` takes (a math answer as "
        "{\"answer\": \"…\"}, {\"candidate\": i} or {\"ambiguous\": true}). Only the questions given are graded; "
        "free text is never graded."))


class HoneypotsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[HoneypotIn] = Field(min_length=1, max_length=MAX_HONEYPOTS_PER_CALL)
    step: int | None = Field(default=None, ge=0, description=(
        "The step their rollout groups are stored at (default: the project's newest step, so they look like its "
        "tasks; a trainer may still post that step)."))


class HoneypotItemStatus(BaseModel):
    index: int
    prompt_id: str
    status: Literal["ok", "invalid_input", "conflict"]
    task_id: str | None = None
    field: str | None = Field(default=None, description="What is wrong, e.g. `items[2].gold.topic`.")
    message: str | None = None


class HoneypotsOut(BaseModel):
    created: int
    rejected: int
    step: int | None = Field(description="The step the good items were stored at (null: none stored).")
    items: list[HoneypotItemStatus]


class HoneypotOut(BaseModel):
    """One honeypot as its admin sees it (never its hidden answer)."""

    task_id: str
    prompt_id: str
    created_at: datetime
    served: int = Field(description="Leases of it so far (each annotator gets it at most once).")
    labelled: int = Field(description="Live labels on it.")
    correct: int = Field(description="Of those, the labels that match its hidden answer.")


class HoneypotsList(BaseModel):
    honeypot_rate: float
    data: list[HoneypotOut]


class QuestionGuidelinesIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    guidelines: StoredText = Field(max_length=20_000, description=(
        "The question's new guidelines (Markdown, KaTeX inside); a changed text is a new version."))


class QuestionGuidelinesVersion(BaseModel):
    version: int
    text: str
    created_at: datetime


class QuestionGuidelinesOut(BaseModel):
    question_id: str
    version: int = Field(description="The current version (0: the question never had guidelines).")
    guidelines: str
    versions: list[QuestionGuidelinesVersion] = Field(description="Every version, newest first.")


class QuestionGuidelinesState(BaseModel):
    question_id: str
    version: int
    guidelines: str
    confirmed_version: int | None = Field(description="The newest version you confirmed (null: none).")


class GuidelinesStateOut(BaseModel):
    """What the "read before labelling" gate asks of you: the project's and each question's guidelines."""

    guidelines_required: bool
    needs_confirmation: bool
    guidelines: str
    version: int
    confirmed_version: int | None
    questions: list[QuestionGuidelinesState] = Field(description="Questions that have guidelines.")
