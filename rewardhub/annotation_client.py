"""Python client for the rewardhub annotation API (sync and async): the annotation SDK.

Everything an admin, an annotator, a reviewer or a trainer does over ``/v1/annotation``:

- admin: annotation projects (create with a label schema, get, update, list), budgets, answer keys,
  annotator and reviewer accounts, API keys for scripted annotators (the gateway's
  ``POST /v1/projects/{id}/keys``), queue stats, quality (agreement, per-annotator accuracy);
- annotator: ``next_task`` / ``submit`` / ``later`` / ``never`` / ``undo`` / ``renew``, guidelines;
- reviewer: the adjudication queue and ``adjudicate``;
- trainer: prompts, steps, purchases (how tasks enter the queue), the ledger, the label feed, the
  preference-pair export (JSONL, streamed).

Payloads are plain dicts, typed with ``TypedDict`` (no pydantic: this is the light client).

Retries. A request is sent again, after a back-off (``backoff_s · 2^attempt``, at most ``max_backoff_s``,
and never sooner than the answer's ``Retry-After``, itself capped at ``max_retry_after_s``), when:

- the answer is 429 or 503: the server did nothing (``commit_failed``, rate limits, not ready);
- the connection could not be made (nothing was sent);
- for requests that are *replay-safe* only: a 502/504, a dropped connection or a read timeout after the
  request went out, and 409 ``idempotency_in_progress``. Replay-safe are reads, ``PUT``/``PATCH``, the
  writes that the server deduplicates by their ``Idempotency-Key`` (steps, purchases, submit, undo),
  prompt registration (idempotent by id) and guideline confirmation. Other writes (create a project or
  an account, adjudicate, later, never) are not retried once they may have reached the server.

Every write carries an ``Idempotency-Key`` (yours, or a fresh ``uuid4`` per call), the same on every
retry of that call. Errors are raised as :class:`AnnotationError` (status, code, message, field,
Retry-After); a transport failure that outlives its retries is raised as httpx raised it.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import inspect
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import update_wrapper
from typing import (
    Any,
    BinaryIO,
    Concatenate,
    Generic,
    Literal,
    NotRequired,
    ParamSpec,
    TypedDict,
    TypeVar,
    cast,
)

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"
EMBEDDED_PREFIX = "/services/annotation"  # where the embedded default (`rewardhub up`) mounts the service
ALWAYS_RETRIED = frozenset({429, 503})  # the server did nothing: safe to send again whatever the request
RETRIED_IF_REPLAY_SAFE = frozenset({502, 504})  # a proxy's answer: the request may have been processed

P = ParamSpec("P")
T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)
Item = TypeVar("Item")


# --------------------------------------------------------------------------------------- errors


class AnnotationError(Exception):
    """An error answer from the API: ``{"error": {"code", "message", "field"}}`` and its HTTP status."""

    def __init__(self, status_code: int, code: str, message: str, field: str | None = None,
                 retry_after: float | None = None, body: Any = None) -> None:
        super().__init__(f"{status_code} {code}: {message}" + (f" (field: {field})" if field else ""))
        self.status_code, self.code, self.message, self.field = status_code, code, message, field
        self.retry_after = retry_after
        self.body = body  # the whole JSON answer (an import's per-row statuses), or None


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """A ``Retry-After`` header as seconds: delta-seconds (``"2"``) or an HTTP date; None if absent or
    unreadable. A date in the past is 0."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def error_from(response: httpx.Response) -> AnnotationError:
    """The typed error for a 4xx/5xx answer (any body: a proxy's HTML page becomes ``http_error``)."""
    retry_after = retry_after_seconds(response.headers.get("retry-after"))
    try:
        body = response.json()
        error = body["error"]
        return AnnotationError(response.status_code, str(error["code"]), str(error["message"]), error.get("field"),
                               retry_after, body)
    except (ValueError, KeyError, TypeError):
        return AnnotationError(response.status_code, "http_error", response.text[:500], None, retry_after)


# --------------------------------------------------------------------------------------- payloads


class Budget(TypedDict):
    total: int
    spent: int
    left: int


class Question(TypedDict, total=False):
    """One question of a label schema (docs/label_schemas.md). ``id`` and ``type`` are required; the rest
    depends on the type: ``choices`` (single_label, multi_label), ``min``/``max``/``step``/``labels``/
    ``level`` (rating), ``items`` (ranking), ``max_length`` (free_text), ``allow_tie``/``rationale``/
    ``rubric_hints``/``source`` (preference_pair), ``free_form``/``candidates``/``ambiguous`` (math_answer)."""

    id: str
    type: Literal["math_answer", "single_label", "multi_label", "rating", "ranking", "free_text",
                  "preference_pair"]
    prompt: str
    required: bool
    guidelines: str
    choices: list[str]
    min_selected: int
    max_selected: int | None
    min: float
    max: float
    step: float
    labels: dict[str, str]
    level: Literal["ordinal", "interval"]
    items: list[str] | None
    max_length: int
    allow_tie: bool
    rationale: Literal["off", "optional", "required"]
    rubric_hints: list[str]
    source: Literal["completions", "candidates"]
    free_form: bool
    candidates: bool
    ambiguous: bool


class LabelSchema(TypedDict):
    questions: list[Question]


class AnnotationProject(TypedDict):
    id: str
    project_id: str
    name: str
    description: str
    budget: Budget
    label_schema: LabelSchema
    overlap_k: int
    lease_seconds: int
    rollouts_per_prompt: int
    policy: str
    care_params: dict[str, Any]
    answer_source: str
    answer_key_entries: int
    webhook_url: str | None
    last_step: int | None
    label_cursor: int
    guidelines: str
    guidelines_version: int
    guidelines_required: bool
    label_edit_window_s: int
    honeypot_rate: NotRequired[float]
    created_at: str
    webhook_secret: NotRequired[str]  # only in the answer to create


class Page(TypedDict, Generic[Item]):
    """The list envelope: pass ``next_cursor`` back as ``cursor`` (null on the last page)."""

    data: list[Item]
    next_cursor: str | None


class Annotator(TypedDict):
    id: str
    username: str
    role: Literal["annotator", "reviewer", "admin"]
    display_name: str
    created_at: str


class ApiKey(TypedDict):
    id: str
    name: str
    prefix: str
    role: str
    all_projects: bool
    project_ids: list[str]
    created_at: str
    key: str  # shown only once


class Candidate(TypedDict):
    index: int
    answer: str
    count: int


class Pair(TypedDict):
    a: str
    b: str


class Task(TypedDict):
    """A leased task, as an annotator sees it (``queue/next``)."""

    assignment_id: str
    task_id: str
    annotation_project_id: str
    prompt_id: str
    prompt_text: str
    step: int
    n: int
    unparseable: int
    candidates: list[Candidate]
    completions: list[str] | None
    label_schema: LabelSchema
    pairs: dict[str, Pair]
    priority: float
    overlap_k: int
    leased_at: str
    lease_expires_at: str
    resumed: bool


class Annotation(TypedDict):
    id: str
    task_id: str
    assignment_id: str
    submission_id: str
    kind: str
    answer: str | None
    candidate_index: int | None
    rationale: str | None
    values: dict[str, Any] | None
    created_at: str
    undone: bool
    task_status: str
    replayed: bool


class Released(TypedDict):
    """The answer to ``later`` and ``never``: the assignment handed back."""

    assignment_id: str
    task_id: str
    state: str


class Undone(TypedDict):
    undone: Annotation
    task: Task
    label_retracted: bool


class AnnotationSummary(TypedDict):
    annotator_id: str
    username: str
    kind: str
    answer: str | None
    rationale: str | None
    values: dict[str, Any] | None


class Dispute(TypedDict):
    """A task waiting for adjudication, with every annotator's label."""

    task_id: str
    prompt_id: str
    prompt_text: str
    candidates: list[Candidate]
    annotations: list[AnnotationSummary]
    agreement: float | None
    pairs: dict[str, Pair]


class Adjudication(TypedDict):
    id: str
    task_id: str
    adjudicator_id: str
    kind: str
    answer: str | None
    values: dict[str, Any] | None
    created_at: str


class Review(TypedDict):
    """A reviewer's accept or reject of one label."""

    id: str
    annotation_id: str
    task_id: str
    reviewer_id: str
    reviewer: str
    decision: Literal["accepted", "rejected"]
    comment: str | None
    created_at: str
    task_status: str
    label_retracted: bool
    replayed: bool


class LabelValue(TypedDict):
    kind: str
    answer: str | None
    candidate_index: int | None
    rationale: str | None
    values: dict[str, Any] | None


class HistoryEvent(TypedDict):
    type: Literal["label", "edit", "undo", "review", "adjudication"]
    at: str
    actor_id: str
    actor: str
    annotation_id: str | None
    label: LabelValue | None
    previous: LabelValue | None
    decision: Literal["accepted", "rejected"] | None
    comment: str | None


class TaskHistory(TypedDict):
    task_id: str
    prompt_id: str
    prompt_text: str
    status: str
    overlap_k: int
    agreement: float | None
    final: LabelValue | None
    events: list[HistoryEvent]


class MyLabel(TypedDict):
    annotation_id: str
    task_id: str
    prompt_id: str
    prompt_text: str
    label: LabelValue
    created_at: str
    edited_at: str | None
    edits: int
    review: Literal["accepted", "rejected"] | None
    review_comment: str | None
    task_status: str
    editable: bool
    editable_until: str | None
    not_editable_because: str | None


class Membership(Annotator):
    added: bool


class Label(TypedDict):
    """One entry of the label feed; ``seq`` is its position (pass the last one back as ``cursor``)."""

    seq: int
    event: Literal["labelled", "retracted"]
    purchase_id: str
    prompt_id: str
    step: int
    policy: str
    score: float | None
    label_kind: str | None
    label: str | None
    values: dict[str, Any] | None
    labelled_by: list[str]
    labelled_at: str | None


class Prompt(TypedDict):
    id: str
    text: str


class PromptsRegistered(TypedDict):
    created: int
    existing: int


class RolloutGroup(TypedDict, total=False):
    """One prompt's n rollouts at a step: ``prompt_id`` and ``answers`` are required."""

    prompt_id: str
    prompt_text: str
    answers: list[str | None]
    completions: list[str]
    response_lengths: list[int]
    mean_token_probs: list[float]
    prompt_features: list[float]
    rollout_features: list[list[float]]


class Purchase(TypedDict):
    id: str
    prompt_id: str
    step: int
    policy: str
    score: float | None
    source: str
    status: str
    label_kind: str | None
    label: str | None
    labelled_by: list[str]
    adjudicator_id: str | None
    purchased_at: str
    labelled_at: str | None


class Purchases(TypedDict):
    purchases: list[Purchase]
    budget: Budget


class Ledger(Page[Purchase]):
    budget: Budget


class StepResult(TypedDict):
    """The answer to a step: per group its pseudo-label, whether it was bought, its advantage weight."""

    annotation_project_id: str
    step: int
    policy: str
    groups: list[dict[str, Any]]
    purchased: int
    budget: Budget
    budget_exhausted: bool
    label_cursor: int


class AnswerKeyStored(TypedDict):
    entries: int


class AgreementFigure(TypedDict):
    value: float | None
    items: int
    labels: int
    note: str | None


class AnnotatorQuality(TypedDict):
    annotator_id: str
    username: str
    labels: int
    gold_accuracy: float | None
    gold_n: int
    adjudicated_accuracy: float | None
    adjudicated_n: int
    honeypot_accuracy: NotRequired[float | None]
    honeypot_n: NotRequired[int]


class QuestionAgreement(TypedDict):
    question_id: str
    type: str
    level: str | None
    krippendorff_alpha: AgreementFigure


class Quality(TypedDict):
    annotation_project_id: str
    krippendorff_alpha: AgreementFigure
    cohen_kappa: AgreementFigure
    fleiss_kappa: AgreementFigure
    annotators: list[AnnotatorQuality]
    questions: list[QuestionAgreement]
    honeypots: NotRequired[int]


class PreferencePair(TypedDict):
    """One line of the preference-pair export (rubric_rm's ``PreferencePair``)."""

    instruction: str
    response_a: str
    response_b: str
    winner: Literal["A", "B"]
    instruction_id: str
    pair_id: str


class ImportMapping(TypedDict, total=False):
    """Which column of an imported file is which part of a task (docs/annotation_data.md)."""

    prompt: str  # default "prompt"
    id: str | None
    candidates: str | None
    answers: str | None
    gold: str | None
    metadata: list[str]


class ImportRowStatus(TypedDict):
    row: int
    status: Literal["ok", "invalid_input"]
    prompt_id: str | None
    field: str | None
    message: str | None


class ImportResult(TypedDict):
    imported: int
    rejected: int
    step: int | None
    rows: list[ImportRowStatus]
    budget: Budget


class TaskRow(TypedDict):
    """One task in the browser (``list_tasks``)."""

    task_id: str
    prompt_id: str
    prompt: str
    status: Literal["open", "labelled", "disputed", "adjudicated", "skipped"]
    agreement: float | None
    annotators: list[str]
    skipped_by: list[str]
    final_values: dict[str, Any] | None
    metadata: dict[str, Any] | None
    created_at: str


TaskStatus = Literal["open", "labelled", "disputed", "adjudicated", "skipped"]


class TaskFilters(TypedDict, total=False):
    """The task browser's filters, which the exports also apply (see ``list_tasks``)."""

    q: str
    status: TaskStatus
    annotator: str
    max_agreement: float
    question: str
    value: str


# --------------------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class Call(Generic[T_co]):
    """One API request, described once and sent by either client.

    ``replay_safe``: sending it twice cannot do the work twice (a read, a PUT/PATCH, or a write the server
    deduplicates by its Idempotency-Key), so it is retried even when it may have reached the server.
    ``service``: ``annotation`` (the annotation root) or ``gateway`` (the platform root)."""

    method: str
    path: str
    body: Any = None
    parse: Callable[[Any], T_co] = field(default=lambda data: data)
    params: Mapping[str, Any] = field(default_factory=dict)
    replay_safe: bool = False
    idempotency_key: str | None = None
    service: Literal["annotation", "gateway"] = "annotation"
    upload: tuple[str, bytes, Mapping[str, str]] | None = None  # (file name, bytes, form fields): multipart

    def headers(self) -> dict[str, str]:
        """The request's headers; a write's Idempotency-Key is fixed here, once, for every retry."""
        headers = {"Accept": "application/json"}
        if self.method != "GET":
            headers["Idempotency-Key"] = self.idempotency_key or uuid.uuid4().hex
        return headers

    def content(self) -> bytes | None:
        if self.body is None:
            return None
        return json.dumps(self.body, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def _none(_: Any) -> None:
    return None


def _maybe_task(data: Any) -> Task | None:
    return None if data is None else cast(Task, data)


def _params(**values: Any) -> dict[str, Any]:
    return {name: value for name, value in values.items() if value is not None}


def _project(annotation_project_id: str) -> str:
    if not annotation_project_id:
        raise ValueError("annotation_project_id: must not be empty")
    return f"/v1/annotation/projects/{annotation_project_id}"


def _filters(q: str | None, status: TaskStatus | None, annotator: str | None, max_agreement: float | None,
             question: str | None, value: str | None) -> dict[str, Any]:
    """The browser's filters as query parameters (the exports take the same)."""
    return _params(q=q, status=status, annotator=annotator, max_agreement=max_agreement, question=question,
                   value=value)


def _task_filters(filters: TaskFilters | None) -> dict[str, Any]:
    given: TaskFilters = filters or {}
    return _filters(given.get("q"), given.get("status"), given.get("annotator"), given.get("max_agreement"),
                    given.get("question"), given.get("value"))


def _file(file: bytes | str | os.PathLike[str], filename: str | None) -> tuple[str, bytes]:
    if isinstance(file, bytes):
        if not filename:
            raise ValueError("filename: give the file's name (its suffix is the format) when sending bytes")
        return filename, file
    path = os.fspath(file)
    with open(path, "rb") as handle:
        return filename or os.path.basename(path), handle.read()


def _given(**fields: Any) -> dict[str, Any]:
    """The fields that were given (None means "leave as it is")."""
    return {name: value for name, value in fields.items() if value is not None}


class Calls:
    """Every endpoint as a :class:`Call` builder; both clients send them (``client.send(Calls.stats(id))``)."""

    # Admin: projects, budgets, answer keys, accounts, API keys, stats, quality -----------------------

    @staticmethod
    def create_project(project_id: str, name: str, *, label_budget: int, label_schema: LabelSchema | None = None,
                       description: str = "", overlap_k: int = 1, lease_seconds: int = 600, rollouts_per_prompt: int = 8,
                       policy: str = "care", care_params: Mapping[str, Any] | None = None,
                       answer_source: Literal["human", "answer_key"] = "human", webhook_url: str | None = None,
                       guidelines: str = "", guidelines_required: bool = False,
                       label_edit_window_s: int | None = None,
                       idempotency_key: str | None = None) -> Call[AnnotationProject]:
        """Create an annotation project in tenancy project ``project_id`` (admin). The answer carries the
        ``webhook_secret``, shown only here. ``policy``: ``care``, ``random``, ``low_consensus``, ``entropy``,
        ``low_token_prob``, ``oracle_cag`` (CARE policies need a math_answer question). Not retried once sent:
        a second create would make a second project."""
        body = {"project_id": project_id, "name": name, "description": description, "label_budget": label_budget,
                "overlap_k": overlap_k, "lease_seconds": lease_seconds, "rollouts_per_prompt": rollouts_per_prompt,
                "policy": policy, "care_params": dict(care_params or {}), "answer_source": answer_source,
                "guidelines": guidelines, "guidelines_required": guidelines_required,
                **_given(label_schema=label_schema, webhook_url=webhook_url, label_edit_window_s=label_edit_window_s)}
        return Call("POST", "/v1/annotation/projects", body, idempotency_key=idempotency_key)


    @staticmethod
    def get_project(annotation_project_id: str) -> Call[AnnotationProject]:
        """One annotation project, with its budget, label schema and guidelines."""
        return Call("GET", _project(annotation_project_id), replay_safe=True)


    @staticmethod
    def update_project(annotation_project_id: str, *, description: str | None = None, label_budget: int | None = None,
                       label_schema: LabelSchema | None = None, overlap_k: int | None = None,
                       lease_seconds: int | None = None, policy: str | None = None,
                       care_params: Mapping[str, Any] | None = None, webhook_url: str | None = None,
                       clear_webhook: bool = False, guidelines: str | None = None,
                       guidelines_required: bool | None = None,
                       label_edit_window_s: int | None = None) -> Call[AnnotationProject]:
        """Change what is given (admin; None leaves a field as it is). ``overlap_k`` applies to new tasks; a
        changed ``guidelines`` text is a new version; ``label_schema`` replaces the questions."""
        body = _given(description=description, label_budget=label_budget, label_schema=label_schema,
                      overlap_k=overlap_k, lease_seconds=lease_seconds, policy=policy,
                      care_params=None if care_params is None else dict(care_params), webhook_url=webhook_url,
                      guidelines=guidelines, guidelines_required=guidelines_required,
                      label_edit_window_s=label_edit_window_s)
        if clear_webhook:
            body["clear_webhook"] = True
        return Call("PATCH", _project(annotation_project_id), body, replay_safe=True)


    @staticmethod
    def set_budget(annotation_project_id: str, total: int) -> Call[AnnotationProject]:
        """Set the project's label budget (labels that may be bought in all, spent ones included)."""
        return Calls.update_project(annotation_project_id, label_budget=total)


    @staticmethod
    def list_projects(*, project_id: str | None = None, cursor: str | None = None,
                      limit: int | None = None) -> Call[Page[AnnotationProject]]:
        """One page of the annotation projects the key sees, oldest first (``project_id``: of one tenancy project)."""
        return Call("GET", "/v1/annotation/projects",
                    params=_params(project_id=project_id, cursor=cursor, limit=limit), replay_safe=True)


    @staticmethod
    def put_answer_key(annotation_project_id: str, answers: Mapping[str, str]) -> Call[AnswerKeyStored]:
        """Store hidden answers by prompt id (admin; insert or replace). They are never returned; they answer
        ``answer_key`` projects' purchases and score annotators' gold accuracy."""
        entries = [{"prompt_id": prompt_id, "answer": answer} for prompt_id, answer in answers.items()]
        return Call("PUT", f"{_project(annotation_project_id)}/answer-key", {"entries": entries},
                    replay_safe=True)


    @staticmethod
    def create_annotator(annotation_project_id: str, username: str, password: str, *,
                         role: Literal["annotator", "reviewer", "admin"] = "annotator",
                         display_name: str = "") -> Call[Annotator]:
        """Create a web-UI login account, member of this project (admin). ``role="reviewer"`` may also
        adjudicate. A username that is taken is 409 (field ``username``)."""
        body = {"username": username, "password": password, "role": role, "display_name": display_name}
        return Call("POST", f"{_project(annotation_project_id)}/annotators", body)


    @staticmethod
    def create_reviewer(annotation_project_id: str, username: str, password: str, *,
                        display_name: str = "") -> Call[Annotator]:
        """Create a reviewer account (``create_annotator`` with ``role="reviewer"``)."""
        return Calls.create_annotator(annotation_project_id, username, password, role="reviewer", display_name=display_name)


    @staticmethod
    def list_annotators(annotation_project_id: str, *, cursor: str | None = None,
                        limit: int | None = None) -> Call[Page[Annotator]]:
        """One page of the project's member accounts, by username (admin)."""
        return Call("GET", f"{_project(annotation_project_id)}/annotators",
                    params=_params(cursor=cursor, limit=limit), replay_safe=True)


    @staticmethod
    def create_api_key(project_id: str, role: Literal["admin", "trainer", "annotator", "reward"], *,
                       name: str = "") -> Call[ApiKey]:
        """A new API key on tenancy project ``project_id`` (the gateway's ``POST /v1/projects/{id}/keys``, admin):
        an ``annotator`` key labels through this SDK as an account of its own. ``key`` is shown only here."""
        return Call("POST", f"/v1/projects/{project_id}/keys", {"role": role, "name": name},
                    service="gateway")


    @staticmethod
    def stats(annotation_project_id: str) -> Call[dict[str, Any]]:
        """Budget, queue depth, leases, adjudication backlog, agreement, throughput per annotator."""
        return Call("GET", f"{_project(annotation_project_id)}/stats", replay_safe=True)


    @staticmethod
    def quality(annotation_project_id: str) -> Call[Quality]:
        """Krippendorff's alpha, Cohen's and Fleiss' kappa (where they apply), per question and per annotator
        accuracy against the answer key and against adjudications (admin)."""
        return Call("GET", f"{_project(annotation_project_id)}/quality", replay_safe=True)


    @staticmethod
    def rotate_webhook_secret(annotation_project_id: str) -> Call[str]:
        """Replace the secret that signs webhook messages; returns the new one (shown only here)."""
        return Call("POST", f"{_project(annotation_project_id)}/webhook-secret",
                    parse=lambda data: str(data["webhook_secret"]))


    @staticmethod
    def list_webhook_deliveries(annotation_project_id: str, *,
                                state: Literal["pending", "delivering", "delivered", "failed"] | None = None,
                                cursor: str | None = None, limit: int | None = None) -> Call[Page[dict[str, Any]]]:
        """One page of the project's webhook deliveries, oldest first: state, attempts, last status (admin)."""
        return Call("GET", f"{_project(annotation_project_id)}/webhook-deliveries",
                    params=_params(state=state, cursor=cursor, limit=limit), replay_safe=True)

    @staticmethod
    def redeliver_webhook(annotation_project_id: str, delivery_id: str) -> Call[dict[str, Any]]:
        """Send a failed webhook delivery again (409 ``delivery_not_failed`` otherwise)."""
        return Call("POST", f"{_project(annotation_project_id)}/webhook-deliveries/{delivery_id}/redeliver")

    # Trainer: prompts, steps, purchases (how tasks are made), the ledger, the label feed -------------

    @staticmethod
    def register_prompts(annotation_project_id: str, prompts: Mapping[str, str]) -> Call[PromptsRegistered]:
        """Register prompts (id → text) before their first step; a known id with the same text is kept."""
        body = {"prompts": [{"id": prompt_id, "text": text} for prompt_id, text in prompts.items()]}
        return Call("POST", f"{_project(annotation_project_id)}/prompts", body, replay_safe=True)


    @staticmethod
    def post_step(annotation_project_id: str, step: int, groups: Iterable[RolloutGroup], *,
                  idempotency_key: str | None = None) -> Call[StepResult]:
        """A training step's rollout groups: pseudo-labels, the prompts the project's policy buys (within
        budget; each bought prompt becomes an annotation task) and advantage weights. Give your own
        ``idempotency_key`` (e.g. ``run-7-step-12``) to make a re-run of the step answer the same."""
        return Call("POST", f"{_project(annotation_project_id)}/steps",
                    {"step": step, "groups": [dict(g) for g in groups]}, replay_safe=True,
                    idempotency_key=idempotency_key)


    @staticmethod
    def purchase(annotation_project_id: str, step: int, prompt_ids: Iterable[str], *,
                 idempotency_key: str | None = None) -> Call[Purchases]:
        """Buy labels for chosen prompts of a posted step, outside the policy: each becomes an annotation task
        (or is answered at once by the answer key). Over budget is 409."""
        return Call("POST", f"{_project(annotation_project_id)}/purchases",
                    {"step": step, "prompt_ids": list(prompt_ids)}, replay_safe=True, idempotency_key=idempotency_key)


    @staticmethod
    def ledger(annotation_project_id: str, *, cursor: str | None = None, limit: int | None = None) -> Call[Ledger]:
        """One page of every purchase in the order bought, with the budget."""
        return Call("GET", f"{_project(annotation_project_id)}/ledger",
                    params=_params(cursor=cursor, limit=limit), replay_safe=True)


    @staticmethod
    def labels(annotation_project_id: str, *, cursor: str | int | None = None,
               limit: int | None = None) -> Call[Page[Label]]:
        """Label-feed changes after ``cursor`` (a feed position, 0 or None for the start). The feed has no last
        page: ``next_cursor`` is where the next poll starts, never null."""
        return Call("GET", f"{_project(annotation_project_id)}/labels",
                    params=_params(cursor=None if cursor is None else str(cursor), limit=limit), replay_safe=True)


    @staticmethod
    def import_tasks(annotation_project_id: str, file: bytes | str | os.PathLike[str], *,
                     filename: str | None = None, format: Literal["jsonl", "csv", "parquet"] | None = None,
                     mapping: ImportMapping | None = None, mode: Literal["all_or_nothing", "partial"] = "all_or_nothing",
                     step: int | None = None, idempotency_key: str | None = None) -> Call[ImportResult]:
        """Create a task per row of a JSONL, CSV or Parquet file (a path, or bytes with ``filename``), uploaded
        (multipart). ``mapping`` names the columns. ``all_or_nothing``: a bad row stores nothing and raises
        422, whose ``AnnotationError.body["rows"]`` holds every row's status; ``partial``: the good rows are
        stored. Deduplicated by its Idempotency-Key, so a retry imports once."""
        name, data = _file(file, filename)
        form = _given(mapping=json.dumps(dict(mapping or {})), format=format, mode=mode,
                      step=None if step is None else str(step))
        return Call("POST", f"{_project(annotation_project_id)}/imports", upload=(name, data, form),
                    replay_safe=True, idempotency_key=idempotency_key)

    @staticmethod
    def import_tasks_from_path(annotation_project_id: str, source_path: str, *, split: str | None = None,
                               mapping: ImportMapping | None = None,
                               mode: Literal["all_or_nothing", "partial"] = "all_or_nothing", step: int | None = None,
                               idempotency_key: str | None = None) -> Call[ImportResult]:
        """Admins: import a file or a ``datasets`` folder (``save_to_disk``, or Parquet files) that is on the
        server, under ``<data_dir>/imports`` (``source_path`` relative to it)."""
        body = {"source_path": source_path, "mapping": dict(mapping or {}), "mode": mode,
                **_given(split=split, step=step)}
        return Call("POST", f"{_project(annotation_project_id)}/imports/from-path", body, replay_safe=True,
                    idempotency_key=idempotency_key)

    @staticmethod
    def list_tasks(annotation_project_id: str, *, q: str | None = None, status: TaskStatus | None = None,
                   annotator: str | None = None, max_agreement: float | None = None, question: str | None = None,
                   value: str | None = None, cursor: str | None = None,
                   limit: int | None = None) -> Call[Page[TaskRow]]:
        """One page of the task browser, oldest first: ``q`` searches the prompt text; filters by ``status``,
        ``annotator`` (username), ``max_agreement`` (0.99 keeps every disagreement), a ``question``'s final
        ``value``."""
        return Call("GET", f"{_project(annotation_project_id)}/tasks",
                    params={**_filters(q, status, annotator, max_agreement, question, value),
                            **_params(cursor=cursor, limit=limit)}, replay_safe=True)

    # Annotator: the queue ------------------------------------------------------------------------------

    @staticmethod
    def next_task(annotation_project_id: str) -> Call[Task | None]:
        """Lease the next task (or get back your live lease); None when nothing is left to label. A project
        whose guidelines must be read first answers 409 ``guidelines_unconfirmed``."""
        return Call("POST", f"{_project(annotation_project_id)}/queue/next", parse=_maybe_task, replay_safe=True)


    @staticmethod
    def current_task(annotation_project_id: str) -> Call[Task | None]:
        """Your live lease, or None."""
        return Call("GET", f"{_project(annotation_project_id)}/queue/current", parse=_maybe_task, replay_safe=True)


    @staticmethod
    def submit(annotation_project_id: str, assignment_id: str, values: Mapping[str, Any] | None = None, *,
               answer: str | None = None, candidate: int | None = None, ambiguous: bool = False,
               rationale: str | None = None, idempotency_key: str | None = None) -> Call[Annotation]:
        """Answer a leased task: ``values`` by question id (see the label schema), and/or a math answer
        (``answer``, ``candidate`` or ``ambiguous``). Retried with the same Idempotency-Key, a submit is
        stored once (the answer then says ``replayed``)."""
        body: dict[str, Any] = _given(answer=answer, candidate=candidate, rationale=rationale,
                                      values=None if values is None else dict(values))
        if ambiguous:
            body["kind"] = "ambiguous"
        return Call("POST", f"{_project(annotation_project_id)}/assignments/{assignment_id}/submit",
                    body, replay_safe=True, idempotency_key=idempotency_key)


    @staticmethod
    def later(annotation_project_id: str, assignment_id: str) -> Call[Released]:
        """Come back later: hand the lease back; the task is offered to you again once no other is left."""
        return Call("POST", f"{_project(annotation_project_id)}/assignments/{assignment_id}/later")


    @staticmethod
    def never(annotation_project_id: str, assignment_id: str) -> Call[Released]:
        """Never show this task again (to you): hand it back for good."""
        return Call("POST", f"{_project(annotation_project_id)}/assignments/{assignment_id}/skip")


    @staticmethod
    def renew(annotation_project_id: str, assignment_id: str) -> Call[Task]:
        """Extend a live lease (a heartbeat while working on a long task)."""
        return Call("POST", f"{_project(annotation_project_id)}/assignments/{assignment_id}/renew",
                    replay_safe=True)


    @staticmethod
    def undo(annotation_project_id: str, *, idempotency_key: str | None = None) -> Call[Undone]:
        """Take back your last submission; its task is leased to you again. The Idempotency-Key makes a
        retried undo take back one submission, not two."""
        return Call("POST", f"{_project(annotation_project_id)}/queue/undo", replay_safe=True,
                    idempotency_key=idempotency_key)


    @staticmethod
    def confirm_guidelines(annotation_project_id: str, version: int) -> Call[None]:
        """Say you read the project's guidelines at ``version`` (its ``guidelines_version``)."""
        return Call("POST", f"{_project(annotation_project_id)}/guidelines/confirm", {"version": version}, parse=_none,
                    replay_safe=True)


    # Reviewer: adjudication ----------------------------------------------------------------------------

    @staticmethod
    def adjudications(annotation_project_id: str, *, cursor: str | None = None,
                      limit: int | None = None) -> Call[Page[Dispute]]:
        """One page of the tasks whose annotators disagreed, highest priority first (reviewer or admin)."""
        return Call("GET", f"{_project(annotation_project_id)}/adjudications",
                    params=_params(cursor=cursor, limit=limit), replay_safe=True)


    @staticmethod
    def adjudicate(annotation_project_id: str, task_id: str, values: Mapping[str, Any] | None = None, *,
                   answer: str | None = None, candidate: int | None = None, ambiguous: bool = False,
                   rationale: str | None = None) -> Call[Adjudication]:
        """Settle a disputed task (reviewer or admin); the decision becomes the label. A second decision is 409
        ``not_in_adjudication``, so it is not retried once it may have reached the server."""
        body: dict[str, Any] = _given(answer=answer, candidate=candidate, rationale=rationale,
                                      values=None if values is None else dict(values))
        if ambiguous:
            body["kind"] = "ambiguous"
        return Call("POST", f"{_project(annotation_project_id)}/tasks/{task_id}/adjudication", body)


    @staticmethod
    def review_label(annotation_project_id: str, annotation_id: str, decision: Literal["accept", "reject"], *,
                     comment: str | None = None) -> Call[Review]:
        """Accept or reject one label (reviewer or admin; never your own). A rejected label stops counting and
        its task goes back to the queue when it has fewer than k labels. The same decision again is a no-op, so
        it is retried; another decision on a reviewed label is 409 ``already_reviewed``."""
        return Call("POST", f"{_project(annotation_project_id)}/annotations/{annotation_id}/review",
                    {"decision": decision, **_given(comment=comment)}, replay_safe=True)


    @staticmethod
    def accept(annotation_project_id: str, annotation_id: str, *, comment: str | None = None) -> Call[Review]:
        """``review_label(..., "accept")``."""
        return Calls.review_label(annotation_project_id, annotation_id, "accept", comment=comment)


    @staticmethod
    def reject(annotation_project_id: str, annotation_id: str, *, comment: str | None = None) -> Call[Review]:
        """``review_label(..., "reject")``."""
        return Calls.review_label(annotation_project_id, annotation_id, "reject", comment=comment)


    @staticmethod
    def task_history(annotation_project_id: str, task_id: str) -> Call[TaskHistory]:
        """A task's labels, edits, undos, reviews and adjudication, oldest first (reviewer or admin)."""
        return Call("GET", f"{_project(annotation_project_id)}/tasks/{task_id}/history", replay_safe=True)


    # Annotator: one's own past labels --------------------------------------------------------------------

    @staticmethod
    def my_labels(annotation_project_id: str, *, cursor: str | None = None,
                  limit: int | None = None) -> Call[Page[MyLabel]]:
        """One page of your labels in the project, newest first, each saying whether you may still edit it."""
        return Call("GET", f"{_project(annotation_project_id)}/my-labels", params=_params(cursor=cursor, limit=limit),
                    replay_safe=True)


    @staticmethod
    def my_label(annotation_project_id: str, annotation_id: str) -> Call[MyLabel]:
        """One of your labels."""
        return Call("GET", f"{_project(annotation_project_id)}/my-labels/{annotation_id}", replay_safe=True)


    @staticmethod
    def edit_label(annotation_project_id: str, annotation_id: str, values: Mapping[str, Any] | None = None, *,
                   answer: str | None = None, candidate: int | None = None, ambiguous: bool = False,
                   rationale: str | None = None) -> Call[Annotation]:
        """Replace your label's value (as in ``submit``) while the project's ``label_edit_window_s`` allows and no
        review or adjudication settled it (else 409 ``not_editable``). The old value stays in the task's history;
        sending the same value again changes nothing, so it is retried."""
        body: dict[str, Any] = _given(answer=answer, candidate=candidate, rationale=rationale,
                                      values=None if values is None else dict(values))
        if ambiguous:
            body["kind"] = "ambiguous"
        return Call("PUT", f"{_project(annotation_project_id)}/my-labels/{annotation_id}", body, replay_safe=True)


    # Admin: existing accounts in more projects -------------------------------------------------------------

    @staticmethod
    def add_member(annotation_project_id: str, *, username: str | None = None,
                   annotator_id: str | None = None) -> Call[Membership]:
        """Add an existing login account (by username or id) to this project (admin). Your key must see the
        account (a member of a project in its scope). Adding a member again is a no-op (``added: false``)."""
        return Call("POST", f"{_project(annotation_project_id)}/members",
                    _given(username=username, annotator_id=annotator_id), replay_safe=True)


    @staticmethod
    def remove_member(annotation_project_id: str, annotator_id: str) -> Call[None]:
        """Take an account out of this project (admin); its labels stay. Removing a non-member is a no-op."""
        return Call("DELETE", f"{_project(annotation_project_id)}/members/{annotator_id}", parse=_none,
                    replay_safe=True)


# ----------------------------------------------------- quality: honeypots and per-question guidelines


class HoneypotItem(TypedDict):
    """One gold task to add: a prompt with its rollouts (as a step's group) and its hidden answer."""

    prompt_id: str
    prompt_text: str
    answers: list[str | None]
    gold: dict[str, Any]
    completions: NotRequired[list[str]]


class HoneypotStatus(TypedDict):
    index: int
    prompt_id: str
    status: Literal["ok", "invalid_input", "conflict"]
    task_id: str | None
    field: str | None
    message: str | None


class HoneypotsAdded(TypedDict):
    created: int
    rejected: int
    step: int | None
    items: list[HoneypotStatus]


class Honeypot(TypedDict):
    task_id: str
    prompt_id: str
    created_at: str
    served: int
    labelled: int
    correct: int


class Honeypots(TypedDict):
    honeypot_rate: float
    data: list[Honeypot]


class GuidelinesVersion(TypedDict):
    version: int
    text: str
    created_at: str


class QuestionGuidelines(TypedDict):
    question_id: str
    version: int
    guidelines: str
    versions: list[GuidelinesVersion]


class QuestionGuidelinesState(TypedDict):
    question_id: str
    version: int
    guidelines: str
    confirmed_version: int | None


class GuidelinesState(TypedDict):
    guidelines_required: bool
    needs_confirmation: bool
    guidelines: str
    version: int
    confirmed_version: int | None
    questions: list[QuestionGuidelinesState]


class QualityCalls:
    """Builders for the honeypot and per-question guidelines endpoints (both clients have a method of each
    name; ``client.send(QualityCalls.list_honeypots(id))`` works too)."""

    @staticmethod
    def set_honeypot_rate(annotation_project_id: str, rate: float) -> Call[AnnotationProject]:
        """The share (0 to 1) of annotators' leases that serve a honeypot (admin)."""
        return Call("PATCH", _project(annotation_project_id), {"honeypot_rate": rate}, replay_safe=True)

    @staticmethod
    def add_honeypots(annotation_project_id: str, items: Iterable[HoneypotItem], *,
                      step: int | None = None) -> Call[HoneypotsAdded]:
        """Add gold tasks with hidden answers (admin); each item gets a status, the good ones are stored. Not
        retried once sent: a repeat would answer ``conflict`` for every item already stored."""
        return Call("POST", f"{_project(annotation_project_id)}/honeypots",
                    {"items": list(items), **_given(step=step)})

    @staticmethod
    def list_honeypots(annotation_project_id: str) -> Call[Honeypots]:
        """Every honeypot with how often it was served, labelled and answered right (admin; never the answers)."""
        return Call("GET", f"{_project(annotation_project_id)}/honeypots", replay_safe=True)

    @staticmethod
    def question_guidelines(annotation_project_id: str, question_id: str) -> Call[QuestionGuidelines]:
        """A question's current guidelines and every earlier version, newest first."""
        return Call("GET", f"{_project(annotation_project_id)}/questions/{question_id}/guidelines", replay_safe=True)

    @staticmethod
    def set_question_guidelines(annotation_project_id: str, question_id: str,
                                guidelines: str) -> Call[QuestionGuidelines]:
        """Replace one question's guidelines (admin); a changed text is a new version, the old one is kept."""
        return Call("PUT", f"{_project(annotation_project_id)}/questions/{question_id}/guidelines",
                    {"guidelines": guidelines}, replay_safe=True)

    @staticmethod
    def guidelines(annotation_project_id: str) -> Call[GuidelinesState]:
        """What the "read before labelling" gate asks of you: the project's and each question's guidelines,
        their versions and the versions you confirmed."""
        return Call("GET", f"{_project(annotation_project_id)}/guidelines", replay_safe=True)

    @staticmethod
    def confirm_question_guidelines(annotation_project_id: str, questions: Mapping[str, int], *,
                                    version: int | None = None) -> Call[None]:
        """Say you read these questions' guidelines at these versions (and the project's at ``version``)."""
        return Call("POST", f"{_project(annotation_project_id)}/guidelines/confirm",
                    {"questions": dict(questions), **_given(version=version)}, parse=_none, replay_safe=True)



# --------------------------------------------------------------------------------------- sending


@dataclass
class RetryPolicy:
    """How often and how long to wait: ``backoff_s · 2^attempt`` (≤ ``max_backoff_s``), never less than the
    answer's Retry-After (≤ ``max_retry_after_s``)."""

    max_retries: int = 3
    backoff_s: float = 0.3
    max_backoff_s: float = 10.0
    max_retry_after_s: float = 60.0

    def delay(self, attempt: int, error: BaseException) -> float:
        backoff = min(self.max_backoff_s, self.backoff_s * 2.0 ** attempt)
        after = error.retry_after if isinstance(error, AnnotationError) else None
        return backoff if after is None else max(backoff, min(after, self.max_retry_after_s))


def retryable(error: BaseException, replay_safe: bool) -> bool:
    """Whether a failed attempt may be sent again (see the module docstring)."""
    if isinstance(error, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout):
        return True  # the request never went out
    if isinstance(error, httpx.TransportError):
        return replay_safe
    if isinstance(error, AnnotationError):
        if error.status_code in ALWAYS_RETRIED:
            return True
        return replay_safe and (error.status_code in RETRIED_IF_REPLAY_SAFE or error.code == "idempotency_in_progress")
    return False


def _answer(call: Call[T], response: httpx.Response) -> T:
    if response.status_code >= 400:
        raise error_from(response)
    if response.status_code == 204 or not response.content:
        return call.parse(None)
    return call.parse(response.json())


def _urls(base_url: str | None, annotation_url: str | None) -> dict[str, str]:
    platform = (base_url or os.environ.get("REWARDHUB_URL") or DEFAULT_URL).rstrip("/")
    annotation = annotation_url or os.environ.get("REWARDHUB_ANNOTATION_URL") or platform + EMBEDDED_PREFIX
    return {"gateway": platform, "annotation": annotation.rstrip("/")}


def _auth(api_key: str | None) -> dict[str, str]:
    key = api_key if api_key is not None else os.environ.get("REWARDHUB_API_KEY", "")
    return {"Authorization": f"Bearer {key}"} if key else {}


def _method_signature(method: Callable[..., Any], build: Callable[..., Any], returns: str) -> None:
    """Make ``help()`` and ``inspect`` show the method as it is called: ``self``, the builder's parameters,
    and what the client returns (``returns`` wraps the builder's ``Call[X]`` result type, e.g. ``Iterator[{}]``)."""
    update_wrapper(method, build)
    signature = inspect.signature(build)
    result = str(signature.return_annotation)
    inner = result[len("Call["):-1] if result.startswith("Call[") else result
    if returns == "{}" or not inner.startswith("Page["):
        shown = returns.format(inner)
    else:
        shown = returns.format(inner[len("Page["):-1])
    self_param = inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY)
    method.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[self_param, *signature.parameters.values()], return_annotation=shown)


def _sync(build: Callable[P, Call[T]]) -> Callable[Concatenate[AnnotationClient, P], T]:
    def method(self: AnnotationClient, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return self.send(build(*args, **kwargs))
    _method_signature(method, build, "{}")
    return method


def _async(build: Callable[P, Call[T]]) -> Callable[Concatenate[AsyncAnnotationClient, P], Coroutine[Any, Any, T]]:
    async def method(self: AsyncAnnotationClient, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await self.send(build(*args, **kwargs))
    _method_signature(method, build, "Coroutine[Any, Any, {}]")
    return method


def _pages(build: Callable[P, Call[Page[Item]]]) -> Callable[Concatenate[AnnotationClient, P], Iterator[Item]]:
    """An iterator over every item of a list, page by page (``next_cursor`` → ``cursor``); it stops at a null
    cursor or an empty page (the label feed's end for now)."""
    def method(self: AnnotationClient, /, *args: P.args, **kwargs: P.kwargs) -> Iterator[Item]:
        params = cast(dict[str, Any], kwargs)
        while True:
            page = self.send(build(*args, **cast(Any, params)))
            yield from page["data"]
            if page["next_cursor"] is None or not page["data"]:
                return
            params = {**params, "cursor": page["next_cursor"]}
    _method_signature(method, build, "Iterator[{}]")
    method.__doc__ = f"Every item, page by page. {build.__doc__}"
    return method


def _async_pages(build: Callable[P, Call[Page[Item]]]
                 ) -> Callable[Concatenate[AsyncAnnotationClient, P], AsyncIterator[Item]]:
    async def method(self: AsyncAnnotationClient, /, *args: P.args, **kwargs: P.kwargs) -> AsyncIterator[Item]:
        params = cast(dict[str, Any], kwargs)
        while True:
            page = await self.send(build(*args, **cast(Any, params)))
            for item in page["data"]:
                yield item
            if page["next_cursor"] is None or not page["data"]:
                return
            params = {**params, "cursor": page["next_cursor"]}
    _method_signature(method, build, "AsyncIterator[{}]")
    method.__doc__ = f"Every item, page by page. {build.__doc__}"
    return method


def _labels_export_call(annotation_project_id: str, format: str, kind: str, filters: dict[str, Any]) -> Call[None]:
    return Call("GET", f"{_project(annotation_project_id)}/exports/labels", parse=_none,
                params={"format": format, "kind": kind, **filters}, replay_safe=True)


def _verl_export_call(annotation_project_id: str, question_id: str | None, data_source: str | None, ability: str,
                      split: str, filters: dict[str, Any]) -> Call[None]:
    return Call("GET", f"{_project(annotation_project_id)}/exports/verl", parse=_none,
                params={**_params(question_id=question_id, data_source=data_source), "ability": ability,
                        "split": split, **filters}, replay_safe=True)


Destination = str | os.PathLike[str] | BinaryIO


def _remove_part(part: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(part)


def _export_call(annotation_project_id: str, question_id: str | None) -> Call[None]:
    return Call("GET", f"{_project(annotation_project_id)}/exports/preference-pairs", parse=_none,
                params=_params(question_id=question_id), replay_safe=True)


def _pair(line: str) -> PreferencePair:
    return cast(PreferencePair, json.loads(line))


class _Endpoints:
    """The endpoints' shared configuration: URLs, headers, timeouts, retries."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name, value in vars(cls).items():  # a wrapped builder is named after its attribute (iter_labels)
            if callable(value) and getattr(value, "__wrapped__", None) is not None:
                value.__name__, value.__qualname__ = name, f"{cls.__name__}.{name}"

    def __init__(self, base_url: str | None, api_key: str | None, annotation_url: str | None, timeout_s: float,
                 connect_timeout_s: float, retry: RetryPolicy | None) -> None:
        self.urls = _urls(base_url, annotation_url)
        self.headers = _auth(api_key)
        self.timeout = httpx.Timeout(timeout_s, connect=connect_timeout_s)
        self.retry = retry or RetryPolicy()

    def request(self, call: Call[Any], headers: dict[str, str]) -> dict[str, Any]:
        request: dict[str, Any] = {"method": call.method, "url": self.urls[call.service] + call.path,
                                   "params": dict(call.params), "headers": dict(headers)}
        if call.upload is not None:
            name, data, form = call.upload
            request["files"] = {"file": (name, data)}
            request["data"] = dict(form)
        elif call.body is not None:
            request["content"] = call.content()
            request["headers"]["Content-Type"] = "application/json"
        return request


class AnnotationClient(_Endpoints):
    """Synchronous annotation client. ``base_url`` is the platform (``REWARDHUB_URL``); the annotation service
    is at ``annotation_url`` (``REWARDHUB_ANNOTATION_URL``), by default ``base_url + /services/annotation``
    (the embedded default). ``transport`` lets tests call an app in-process or a scripted double;
    ``sleep`` is how the client waits between retries (a test passes one that records instead)."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *, annotation_url: str | None = None,
                 timeout_s: float = 30.0, connect_timeout_s: float = 5.0, max_retries: int = 3,
                 retry: RetryPolicy | None = None, transport: httpx.BaseTransport | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        super().__init__(base_url, api_key, annotation_url, timeout_s, connect_timeout_s,
                         retry or RetryPolicy(max_retries=max_retries))
        self._sleep = sleep
        self._http = httpx.Client(headers=self.headers, timeout=self.timeout, transport=transport)

    def send(self, call: Call[T]) -> T:
        """Send one call, retrying what may be retried with the same Idempotency-Key."""
        headers = call.headers()
        for attempt in range(self.retry.max_retries + 1):
            try:
                return _answer(call, self._http.request(**self.request(call, headers)))
            except (httpx.TransportError, AnnotationError) as error:
                if attempt == self.retry.max_retries or not retryable(error, call.replay_safe):
                    raise
                self._sleep(self.retry.delay(attempt, error))
        raise AssertionError("unreachable")

    def _stream(self, call: Call[Any], *, lines: bool) -> Iterator[Any]:
        """The answer's lines (non-blank) or byte chunks as they arrive. Retried like :meth:`send` until the
        stream starts; a stream cut off midway raises (its lines so far were already yielded)."""
        headers = call.headers()
        for attempt in range(self.retry.max_retries + 1):
            started = False
            try:
                with self._http.stream(**self.request(call, headers)) as response:
                    if response.status_code >= 400:
                        response.read()
                        raise error_from(response)
                    started = True
                    if lines:
                        yield from (line for line in response.iter_lines() if line.strip())
                    else:
                        yield from response.iter_bytes()
                    return
            except (httpx.TransportError, AnnotationError) as error:
                if started or attempt == self.retry.max_retries or not retryable(error, call.replay_safe):
                    raise
                self._sleep(self.retry.delay(attempt, error))

    def _download(self, call: Call[Any], to: Destination) -> int:
        """Write the streamed answer to a binary file object, or to a path as ``<path>.part`` renamed once the
        whole stream has arrived (a download cut off midway leaves no file that looks complete)."""
        if not isinstance(to, str | os.PathLike):
            return sum(to.write(chunk) for chunk in self._stream(call, lines=False))
        part, size = os.fspath(to) + ".part", 0
        try:
            with open(part, "wb") as handle:
                for chunk in self._stream(call, lines=False):
                    size += handle.write(chunk)
        except BaseException:
            _remove_part(part)
            raise
        os.replace(part, to)
        return size

    def export_preference_pairs(self, annotation_project_id: str, *,
                                question_id: str | None = None) -> Iterator[PreferencePair]:
        """The final preference labels, one pair per line as it streams (rubric_rm's ``PreferencePair``;
        ties are left out; ``question_id`` only when the schema has several preference questions)."""
        for line in self._stream(_export_call(annotation_project_id, question_id), lines=True):
            yield _pair(line)

    def iter_exported_labels(self, annotation_project_id: str, *, kind: Literal["final", "raw"] = "final",
                             filters: TaskFilters | None = None) -> Iterator[dict[str, Any]]:
        """The label export's records (JSONL, streamed): ``final``, one per labelled task; ``raw``, every
        annotation, then every adjudication. ``filters`` are the task browser's."""
        call = _labels_export_call(annotation_project_id, "jsonl", kind, _task_filters(filters))
        for line in self._stream(call, lines=True):
            yield cast(dict[str, Any], json.loads(line))

    def export_labels(self, annotation_project_id: str, to: Destination, *,
                      format: Literal["jsonl", "csv", "parquet", "datasets"] = "jsonl",
                      kind: Literal["final", "raw"] = "final", filters: TaskFilters | None = None) -> int:
        """Download the label export to a path or a binary file; returns its size in bytes. CSV and Parquet
        have one column per question; ``datasets`` is the Parquet file ``datasets.Dataset.from_parquet``
        loads. A path is written as ``<path>.part`` and renamed once complete."""
        return self._download(_labels_export_call(annotation_project_id, format, kind, _task_filters(filters)), to)

    def export_verl(self, annotation_project_id: str, to: Destination, *,
                    question_id: str | None = None, data_source: str | None = None, ability: str = "math",
                    split: str = "train", filters: TaskFilters | None = None) -> int:
        """Download the final answers as a veRL parquet (data_source, prompt as a chat list, ability,
        reward_model {style: rule, ground_truth}, extra_info); returns its size in bytes."""
        call = _verl_export_call(annotation_project_id, question_id, data_source, ability, split,
                                 _task_filters(filters))
        return self._download(call, to)

    # admin
    create_project = _sync(Calls.create_project)
    get_project = _sync(Calls.get_project)
    update_project = _sync(Calls.update_project)
    set_budget = _sync(Calls.set_budget)
    list_projects = _sync(Calls.list_projects)
    iter_projects = _pages(Calls.list_projects)
    put_answer_key = _sync(Calls.put_answer_key)
    create_annotator = _sync(Calls.create_annotator)
    create_reviewer = _sync(Calls.create_reviewer)
    list_annotators = _sync(Calls.list_annotators)
    iter_annotators = _pages(Calls.list_annotators)
    create_api_key = _sync(Calls.create_api_key)
    stats = _sync(Calls.stats)
    quality = _sync(Calls.quality)
    rotate_webhook_secret = _sync(Calls.rotate_webhook_secret)
    list_webhook_deliveries = _sync(Calls.list_webhook_deliveries)
    iter_webhook_deliveries = _pages(Calls.list_webhook_deliveries)
    redeliver_webhook = _sync(Calls.redeliver_webhook)
    # trainer
    register_prompts = _sync(Calls.register_prompts)
    post_step = _sync(Calls.post_step)
    purchase = _sync(Calls.purchase)
    ledger = _sync(Calls.ledger)
    iter_ledger = _pages(Calls.ledger)
    labels = _sync(Calls.labels)
    iter_labels = _pages(Calls.labels)
    import_tasks = _sync(Calls.import_tasks)
    import_tasks_from_path = _sync(Calls.import_tasks_from_path)
    list_tasks = _sync(Calls.list_tasks)
    iter_tasks = _pages(Calls.list_tasks)
    # annotator
    next_task = _sync(Calls.next_task)
    current_task = _sync(Calls.current_task)
    submit = _sync(Calls.submit)
    later = _sync(Calls.later)
    never = _sync(Calls.never)
    renew = _sync(Calls.renew)
    undo = _sync(Calls.undo)
    confirm_guidelines = _sync(Calls.confirm_guidelines)
    # reviewer
    adjudications = _sync(Calls.adjudications)
    iter_adjudications = _pages(Calls.adjudications)
    adjudicate = _sync(Calls.adjudicate)
    review_label = _sync(Calls.review_label)
    accept = _sync(Calls.accept)
    reject = _sync(Calls.reject)
    task_history = _sync(Calls.task_history)
    my_labels = _sync(Calls.my_labels)
    iter_my_labels = _pages(Calls.my_labels)
    my_label = _sync(Calls.my_label)
    edit_label = _sync(Calls.edit_label)
    add_member = _sync(Calls.add_member)
    remove_member = _sync(Calls.remove_member)
    set_honeypot_rate = _sync(QualityCalls.set_honeypot_rate)
    add_honeypots = _sync(QualityCalls.add_honeypots)
    list_honeypots = _sync(QualityCalls.list_honeypots)
    question_guidelines = _sync(QualityCalls.question_guidelines)
    set_question_guidelines = _sync(QualityCalls.set_question_guidelines)
    guidelines = _sync(QualityCalls.guidelines)
    confirm_question_guidelines = _sync(QualityCalls.confirm_question_guidelines)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> AnnotationClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class AsyncAnnotationClient(_Endpoints):
    """Asynchronous client with the same methods and behaviour as :class:`AnnotationClient` (awaitables,
    and async iterators for ``iter_*`` and ``export_preference_pairs``)."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *, annotation_url: str | None = None,
                 timeout_s: float = 30.0, connect_timeout_s: float = 5.0, max_retries: int = 3,
                 retry: RetryPolicy | None = None, transport: httpx.AsyncBaseTransport | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        super().__init__(base_url, api_key, annotation_url, timeout_s, connect_timeout_s,
                         retry or RetryPolicy(max_retries=max_retries))
        self._sleep = sleep
        self._http = httpx.AsyncClient(headers=self.headers, timeout=self.timeout, transport=transport)

    async def send(self, call: Call[T]) -> T:
        """Send one call, retrying what may be retried with the same Idempotency-Key."""
        headers = call.headers()
        for attempt in range(self.retry.max_retries + 1):
            try:
                return _answer(call, await self._http.request(**self.request(call, headers)))
            except (httpx.TransportError, AnnotationError) as error:
                if attempt == self.retry.max_retries or not retryable(error, call.replay_safe):
                    raise
                await self._sleep(self.retry.delay(attempt, error))
        raise AssertionError("unreachable")

    async def _stream(self, call: Call[Any], *, lines: bool) -> AsyncIterator[Any]:
        """See :meth:`AnnotationClient._stream`."""
        headers = call.headers()
        for attempt in range(self.retry.max_retries + 1):
            started = False
            try:
                async with self._http.stream(**self.request(call, headers)) as response:
                    if response.status_code >= 400:
                        await response.aread()
                        raise error_from(response)
                    started = True
                    if lines:
                        async for line in response.aiter_lines():
                            if line.strip():
                                yield line
                    else:
                        async for chunk in response.aiter_bytes():
                            yield chunk
                    return
            except (httpx.TransportError, AnnotationError) as error:
                if started or attempt == self.retry.max_retries or not retryable(error, call.replay_safe):
                    raise
                await self._sleep(self.retry.delay(attempt, error))

    async def _download(self, call: Call[Any], to: Destination) -> int:
        """See :meth:`AnnotationClient._download`."""
        if not isinstance(to, str | os.PathLike):
            return sum([to.write(chunk) async for chunk in self._stream(call, lines=False)])
        part, size = os.fspath(to) + ".part", 0
        try:
            with open(part, "wb") as handle:
                async for chunk in self._stream(call, lines=False):
                    size += handle.write(chunk)
        except BaseException:
            _remove_part(part)
            raise
        os.replace(part, to)
        return size

    async def export_preference_pairs(self, annotation_project_id: str, *,
                                      question_id: str | None = None) -> AsyncIterator[PreferencePair]:
        """The final preference labels as they stream (see :meth:`AnnotationClient.export_preference_pairs`)."""
        async for line in self._stream(_export_call(annotation_project_id, question_id), lines=True):
            yield _pair(line)

    async def iter_exported_labels(self, annotation_project_id: str, *, kind: Literal["final", "raw"] = "final",
                                   filters: TaskFilters | None = None) -> AsyncIterator[dict[str, Any]]:
        """See :meth:`AnnotationClient.iter_exported_labels`."""
        call = _labels_export_call(annotation_project_id, "jsonl", kind, _task_filters(filters))
        async for line in self._stream(call, lines=True):
            yield cast(dict[str, Any], json.loads(line))

    async def export_labels(self, annotation_project_id: str, to: Destination, *,
                            format: Literal["jsonl", "csv", "parquet", "datasets"] = "jsonl",
                            kind: Literal["final", "raw"] = "final", filters: TaskFilters | None = None) -> int:
        """See :meth:`AnnotationClient.export_labels`."""
        return await self._download(
            _labels_export_call(annotation_project_id, format, kind, _task_filters(filters)), to)

    async def export_verl(self, annotation_project_id: str, to: Destination, *,
                          question_id: str | None = None, data_source: str | None = None, ability: str = "math",
                          split: str = "train", filters: TaskFilters | None = None) -> int:
        """See :meth:`AnnotationClient.export_verl`."""
        call = _verl_export_call(annotation_project_id, question_id, data_source, ability, split,
                                 _task_filters(filters))
        return await self._download(call, to)

    create_project = _async(Calls.create_project)
    get_project = _async(Calls.get_project)
    update_project = _async(Calls.update_project)
    set_budget = _async(Calls.set_budget)
    list_projects = _async(Calls.list_projects)
    iter_projects = _async_pages(Calls.list_projects)
    put_answer_key = _async(Calls.put_answer_key)
    create_annotator = _async(Calls.create_annotator)
    create_reviewer = _async(Calls.create_reviewer)
    list_annotators = _async(Calls.list_annotators)
    iter_annotators = _async_pages(Calls.list_annotators)
    create_api_key = _async(Calls.create_api_key)
    stats = _async(Calls.stats)
    quality = _async(Calls.quality)
    rotate_webhook_secret = _async(Calls.rotate_webhook_secret)
    list_webhook_deliveries = _async(Calls.list_webhook_deliveries)
    iter_webhook_deliveries = _async_pages(Calls.list_webhook_deliveries)
    redeliver_webhook = _async(Calls.redeliver_webhook)
    register_prompts = _async(Calls.register_prompts)
    post_step = _async(Calls.post_step)
    purchase = _async(Calls.purchase)
    ledger = _async(Calls.ledger)
    iter_ledger = _async_pages(Calls.ledger)
    labels = _async(Calls.labels)
    iter_labels = _async_pages(Calls.labels)
    import_tasks = _async(Calls.import_tasks)
    import_tasks_from_path = _async(Calls.import_tasks_from_path)
    list_tasks = _async(Calls.list_tasks)
    iter_tasks = _async_pages(Calls.list_tasks)
    next_task = _async(Calls.next_task)
    current_task = _async(Calls.current_task)
    submit = _async(Calls.submit)
    later = _async(Calls.later)
    never = _async(Calls.never)
    renew = _async(Calls.renew)
    undo = _async(Calls.undo)
    confirm_guidelines = _async(Calls.confirm_guidelines)
    adjudications = _async(Calls.adjudications)
    iter_adjudications = _async_pages(Calls.adjudications)
    adjudicate = _async(Calls.adjudicate)
    review_label = _async(Calls.review_label)
    accept = _async(Calls.accept)
    reject = _async(Calls.reject)
    task_history = _async(Calls.task_history)
    my_labels = _async(Calls.my_labels)
    iter_my_labels = _async_pages(Calls.my_labels)
    my_label = _async(Calls.my_label)
    edit_label = _async(Calls.edit_label)
    add_member = _async(Calls.add_member)
    remove_member = _async(Calls.remove_member)
    set_honeypot_rate = _async(QualityCalls.set_honeypot_rate)
    add_honeypots = _async(QualityCalls.add_honeypots)
    list_honeypots = _async(QualityCalls.list_honeypots)
    question_guidelines = _async(QualityCalls.question_guidelines)
    set_question_guidelines = _async(QualityCalls.set_question_guidelines)
    guidelines = _async(QualityCalls.guidelines)
    confirm_question_guidelines = _async(QualityCalls.confirm_question_guidelines)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncAnnotationClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

