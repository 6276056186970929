"""Pydantic I/O models of the rubric reward model (CDRRM): pairs, diagnoses, rubrics, judgments.

Two kinds of model live here: what the LLM must produce (``Diagnosis``, ``Rubric`` and their parts,
validated strictly so a malformed output is a parse failure, never a guess) and what the service
returns (``*Result`` models with a ``status`` next to every value).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from services.common.validation import StoredText, text_problem

Status = Literal["ok", "invalid_input", "timeout", "error"]
Side = Literal["A", "B"]
Verdict = Literal["A", "B", "tie"]

CANDIDATE_DIMENSIONS = (
    "instruction following", "content coverage", "factual accuracy", "format compliance",
    "logical consistency", "safety", "conciseness", "completeness",
)

MAX_TEXT_CHARS = 200_000


def _require_text(value: str, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{what} must be a non-empty string")
    if len(value) > MAX_TEXT_CHARS:
        raise ValueError(f"{what} is longer than {MAX_TEXT_CHARS} characters")
    problem = text_problem(value)
    if problem:
        raise ValueError(f"{what} {problem}")
    return value


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------
class PreferencePair(BaseModel):
    """A preference pair in canonical form: ``response_a``, ``response_b`` and which one won.

    Also accepts ``{instruction, chosen, rejected}`` (then A = chosen, B = rejected, winner = A).
    Positions here are the caller's labels; judging and export randomise presentation order.
    """

    model_config = ConfigDict(extra="forbid")

    instruction: str
    response_a: str
    response_b: str
    winner: Side
    instruction_id: str | None = None
    pair_id: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _accept_chosen_rejected(cls, data: Any) -> Any:
        if isinstance(data, dict) and ("chosen" in data or "rejected" in data):
            if "response_a" in data or "response_b" in data or "winner" in data:
                raise ValueError("give either chosen/rejected or response_a/response_b/winner, not both")
            data = dict(data)
            if "chosen" not in data:
                raise ValueError("chosen: field required when rejected is given")
            if "rejected" not in data:
                raise ValueError("rejected: field required when chosen is given")
            data["response_a"] = data.pop("chosen")
            data["response_b"] = data.pop("rejected")
            data["winner"] = "A"
        return data

    @field_validator("instruction", "response_a", "response_b")
    @classmethod
    def _non_empty(cls, value: str, info: Any) -> str:
        return _require_text(value, info.field_name)

    @property
    def chosen(self) -> str:
        return self.response_a if self.winner == "A" else self.response_b

    @property
    def rejected(self) -> str:
        return self.response_b if self.winner == "A" else self.response_a


# ---------------------------------------------------------------------------------------------
# What the LLM produces
# ---------------------------------------------------------------------------------------------
class Finding(BaseModel):
    """One diagnosed criterion of one response. A failed finding must quote evidence."""

    criterion: str
    status: Literal["pass", "fail", "partial", "not_applicable"]
    severity: int = Field(ge=0, le=3)
    claim: str
    evidence: str = ""
    instruction_anchor: str = ""

    @field_validator("status", mode="before")
    @classmethod
    def _normalise_status(cls, value: Any) -> Any:
        return value.strip().lower().replace(" ", "_").replace("-", "_") if isinstance(value, str) else value

    @model_validator(mode="after")
    def _fail_needs_evidence(self) -> Finding:
        if self.status == "fail" and not self.evidence.strip():
            raise ValueError("evidence: a failed finding must quote evidence from the response")
        return self


class Diagnosis(BaseModel):
    """The structured diagnosis of one response (CDRRM step 1)."""

    criteria_candidates: list[str] = Field(default_factory=list)
    findings: list[Finding]


class HardRule(BaseModel):
    """An atomic pass/fail rule checkable on a single answer."""

    rule_id: str
    type: Literal["must", "forbid"]
    criterion: str
    rationale: str = ""
    test: str

    @field_validator("type", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("rule_id", "criterion", "test")
    @classmethod
    def _non_empty(cls, value: str, info: Any) -> str:
        if not value.strip():
            raise ValueError(f"{info.field_name} must not be empty")
        return value


class Principle(BaseModel):
    """A soft quality principle; used only to break ties between responses."""

    principle_id: str
    description: str

    @field_validator("principle_id", "description")
    @classmethod
    def _non_empty(cls, value: str, info: Any) -> str:
        if not value.strip():
            raise ValueError(f"{info.field_name} must not be empty")
        return value


class PairConsistencyCheck(BaseModel):
    """Whether a pair's rubric predicts the known winner (``expected_winner`` is set by the pipeline)."""

    expected_winner: Side | None = None
    rubric_predicts: Verdict

    @property
    def consistent(self) -> bool:
        return self.expected_winner is not None and self.rubric_predicts == self.expected_winner


MAX_HARD_RULES = 12
MAX_PRINCIPLES = 12


class Rubric(BaseModel):
    """Hard rules (decide first), principles (break ties), and the pair consistency check."""

    hard_rules: list[HardRule] = Field(default_factory=list, max_length=MAX_HARD_RULES)
    principles: list[Principle] = Field(default_factory=list, max_length=MAX_PRINCIPLES)
    pair_consistency_check: PairConsistencyCheck | None = None

    @model_validator(mode="after")
    def _non_empty_unique(self) -> Rubric:
        if not self.hard_rules and not self.principles:
            raise ValueError("hard_rules: a rubric needs at least one hard rule or principle")
        ids = [r.rule_id for r in self.hard_rules]
        if len(set(ids)) != len(ids):
            raise ValueError("hard_rules: rule_id values must be unique")
        pids = [p.principle_id for p in self.principles]
        if len(set(pids)) != len(pids):
            raise ValueError("principles: principle_id values must be unique")
        return self


class SynthesisOutput(BaseModel):
    """What the synthesiser LLM returns: a rubric plus its prediction over the two presented responses.

    ``rubric_predicts`` refers to the neutral presentation labels ("1", "2"), never to which won.
    """

    hard_rules: list[HardRule] = Field(default_factory=list, max_length=MAX_HARD_RULES)
    principles: list[Principle] = Field(default_factory=list, max_length=MAX_PRINCIPLES)
    rubric_predicts: Literal["1", "2", "tie"]

    @field_validator("rubric_predicts", mode="before")
    @classmethod
    def _label(cls, value: Any) -> Any:
        if isinstance(value, int | float) and value in (1, 2):
            return str(int(value))
        if isinstance(value, str):
            cleaned = value.strip().lower().removeprefix("response").strip()
            return cleaned
        return value


class RuleCheck(BaseModel):
    """The pointwise judge's verdict on one hard rule (``passed``: the response complies)."""

    rule_id: str
    passed: bool
    reason: str = ""


class PrincipleCheck(BaseModel):
    """The pointwise judge's degree of satisfaction of one principle, in [0, 1]."""

    principle_id: str
    score: float = Field(ge=0, le=1)


class PointwiseOutput(BaseModel):
    """What the pointwise judge returns."""

    rules: list[RuleCheck] = Field(default_factory=list)
    principles: list[PrincipleCheck] = Field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------
class DiagnosisResult(BaseModel):
    status: Status
    diagnosis: Diagnosis | None = None
    dropped_findings: int = 0
    error: str | None = None
    raw_output: str | None = None


class SynthesisResult(BaseModel):
    status: Status
    rubric: Rubric | None = None
    presented_order: list[Side] = Field(default_factory=list, description="Which response was shown as 1, 2.")
    error: str | None = None
    raw_output: str | None = None


class RubricResult(BaseModel):
    """A rubric for a new pair, from the generator model or from diagnose + synthesise."""

    status: Status
    rubric: Rubric | None = None
    method: Literal["generator", "diagnose_synthesise"]
    error: str | None = None
    raw_output: str | None = None


class RubricExample(BaseModel):
    """One pair with its synthesised rubric (a candidate SFT example before the consistency filter)."""

    pair: PreferencePair
    rubric: Rubric | None = None
    status: Status = "ok"
    error: str | None = None

    @property
    def group_key(self) -> str:
        return self.pair.instruction_id or self.pair.instruction


class FilterReport(BaseModel):
    kept: list[RubricExample]
    dropped: list[RubricExample]
    dropped_instructions: list[str]


class OrderJudgment(BaseModel):
    """One presentation order: ``order`` "AB" shows response_a first; "BA" shows response_b first.

    ``winner`` is mapped back to the caller's labels (A = response_a), whatever the position.
    """

    order: Literal["AB", "BA"]
    status: Status
    winner: Verdict | None = None
    error: str | None = None
    raw_output: str | None = None


class PairwiseJudgment(BaseModel):
    """An order-invariant pairwise verdict: both orders judged, agreement reported.

    ``verdict`` is the winner when both orders agree and ``tie`` when they disagree (position
    bias); ``None`` when an order could not be judged (see ``status`` and ``error``).
    ``score_a`` is 1, 0.5 or 0 for response_a (None without a verdict).
    """

    status: Status
    verdict: Verdict | None = None
    agreement: bool | None = None
    score_a: float | None = None
    orders: list[OrderJudgment] = Field(default_factory=list)
    error: str | None = None


class PointwiseJudgment(BaseModel):
    """A scalar reward in [0, 1] for one response against a rubric (see ``pointwise_score``)."""

    status: Status
    score: float | None = Field(default=None, ge=0, le=1)
    rules_passed: int | None = None
    rules_total: int | None = None
    principle_score: float | None = None
    rule_checks: list[RuleCheck] = Field(default_factory=list)
    error: str | None = None
    raw_output: str | None = None


class EvalMetrics(BaseModel):
    """``acc_all`` counts an unparseable judgment as wrong; ``acc_parseable`` leaves it out."""

    n: int
    n_parseable: int
    n_correct: int
    acc_all: float | None
    acc_parseable: float | None
    parse_rate: float | None


# ---------------------------------------------------------------------------------------------
# Request bodies (for the routes; every text field is validated non-empty and bounded)
# ---------------------------------------------------------------------------------------------
def _check_text(value: str) -> str:
    if not value.strip():
        raise ValueError("must be a non-empty string")
    if len(value) > MAX_TEXT_CHARS:
        raise ValueError(f"is longer than {MAX_TEXT_CHARS} characters")
    problem = text_problem(value)  # NUL (PostgreSQL text cannot hold it) or a lone surrogate: name the field
    if problem:
        raise ValueError(problem)
    return value


NonEmptyText = Annotated[str, AfterValidator(_check_text)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DiagnoseRequest(_Request):
    instruction: NonEmptyText
    response: NonEmptyText


ProjectId = Annotated[str | None, Field(default=None, pattern=r"^[0-9a-f]{32}$",
                                       description="The project to act in; optional when the key has one project.")]
RubricId = Annotated[str | None, Field(default=None, pattern=r"^[0-9a-f]{32}$", description="A stored rubric's id.")]
RubricText = Annotated[Annotated[StoredText, Field(min_length=1, max_length=MAX_TEXT_CHARS)] | None, Field(default=None, description=(
    "A rubric as text: JSON, the judge's numbered rendering, or one rule per line (see rubric_text.py)."))]
GenerateMethod = Literal["generator", "diagnose_synthesise"]


def field_error(title: str, field: str, message: str) -> ValidationError:
    """A validation error located at ``field`` (a model-level check otherwise reports the whole body)."""
    return ValidationError.from_exception_data(title, [InitErrorDetails(
        type=PydanticCustomError("value_error", message), loc=(field,), input=None)])


def _one_rubric_source(model: BaseModel, names: tuple[str, ...]) -> None:
    given = [name for name in names if getattr(model, name) is not None]
    if len(given) > 1:
        raise field_error(type(model).__name__, given[1], f"give only one of {', '.join(names)}")


class GenerateRubricRequest(_Request):
    """A rubric for a new pair; ``method`` picks the trained generator or diagnose + synthesise.

    The rubric is stored (versioned) and, with ``use_cache``, reused for the same instruction and
    generator version instead of calling the LLM again.
    """

    instruction: NonEmptyText
    response_a: NonEmptyText
    response_b: NonEmptyText
    method: GenerateMethod = "generator"
    seed: int = 0
    use_cache: bool = Field(default=True, description="Reuse the newest stored rubric for this instruction.")
    project_id: ProjectId = None


class PairwiseJudgeRequest(_Request):
    """Judge a pair in both orders; without ``rubric``, ``rubric_text`` or ``rubric_id`` one is generated
    first (and cached like /v1/rubrics/generate)."""

    instruction: NonEmptyText
    response_a: NonEmptyText
    response_b: NonEmptyText
    rubric: Rubric | None = None
    rubric_text: RubricText = None
    rubric_id: RubricId = None
    method: GenerateMethod = Field(default="generator", description="How a missing rubric is generated.")
    seed: int = 0
    use_cache: bool = True
    project_id: ProjectId = None

    @model_validator(mode="after")
    def _at_most_one_rubric(self) -> PairwiseJudgeRequest:
        _one_rubric_source(self, ("rubric", "rubric_text", "rubric_id"))
        return self


class PointwiseJudgeRequest(_Request):
    """Score one response against a rubric (a scalar reward in [0, 1])."""

    instruction: NonEmptyText
    response: NonEmptyText
    rubric: Rubric | None = None
    rubric_text: RubricText = None
    rubric_id: RubricId = None
    project_id: ProjectId = None

    @model_validator(mode="after")
    def _one_rubric(self) -> PointwiseJudgeRequest:
        _one_rubric_source(self, ("rubric", "rubric_text", "rubric_id"))
        if self.rubric is None and self.rubric_text is None and self.rubric_id is None:
            raise field_error("PointwiseJudgeRequest", "rubric", "field required (or give rubric_text or rubric_id)")
        return self


class SynthesiseRequest(_Request):
    """Synthesise a rubric from two diagnoses (CDRRM step 2); ``expected_winner`` only fills the check."""

    instruction: NonEmptyText
    diagnosis_a: Diagnosis
    diagnosis_b: Diagnosis
    expected_winner: Side | None = None
    seed: int = 0
    max_rules: int = Field(default=6, ge=1, le=MAX_HARD_RULES)
    max_principles: int = Field(default=4, ge=0, le=MAX_PRINCIPLES)
    store: bool = Field(default=False, description="Store the rubric (method diagnose_synthesise).")
    project_id: ProjectId = None


class FilterRequest(_Request):
    """CDRRM step 3. ``pairs``: diagnose and synthesise each, then filter; ``examples``: filter only."""

    pairs: list[PreferencePair] | None = Field(default=None, min_length=1, max_length=10_000)
    examples: list[RubricExample] | None = Field(default=None, min_length=1, max_length=100_000)
    seed: int = 0

    @model_validator(mode="after")
    def _one_source(self) -> FilterRequest:
        if (self.pairs is None) == (self.examples is None):
            raise field_error(type(self).__name__, "pairs", "give exactly one of pairs or examples")
        return self


class SftExportRequest(FilterRequest):
    """The generator's SFT set as chat JSONL: ``examples`` as given (already filtered), or ``pairs``
    run through diagnose → synthesise → filter first."""


class GeneratedRubric(RubricResult):
    """A rubric result with where it is stored; ``cached`` = reused without an LLM call."""

    rubric_id: str | None = None
    version: int | None = None
    generator_version: str | None = None
    cached: bool = False


class SynthesisOut(SynthesisResult):
    rubric_id: str | None = None
    version: int | None = None


class PairwiseJudgeResponse(PairwiseJudgment):
    """The order-invariant verdict with the rubric it used (and its stored id, when it has one)."""

    rubric: Rubric | None = None
    rubric_id: str | None = None
    rubric_cached: bool | None = None


class PointwiseJudgeResponse(PointwiseJudgment):
    rubric_id: str | None = None


class StoredRubricOut(BaseModel):
    id: str
    project_id: str
    instruction_hash: str
    generator_version: str
    version: int
    instruction: str
    rubric: Rubric
    method: str
    created_at: datetime


JobKind = Literal["judge_pairwise", "judge_pointwise", "generate"]


class JobRequest(_Request):
    """A large batch run by a worker: each item is the body of the matching single route."""

    kind: JobKind
    items: list[dict[str, Any]] = Field(min_length=1, max_length=100_000)
    max_concurrency: int = Field(default=8, ge=1, le=256)
    project_id: ProjectId = None


class JobOut(BaseModel):
    id: str
    project_id: str
    kind: str
    state: Literal["queued", "running", "succeeded", "failed"]
    total: int
    done: int
    progress: float = Field(description="done / total")
    summary: dict[str, Any] | None = None
    results: list[dict[str, Any]] | None = Field(default=None, description="In item order, once succeeded.")
    error: str | None = None
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None


class PipelineRequest(_Request):
    """Run diagnose → synthesise → consistency filter over preference pairs."""

    pairs: list[PreferencePair] = Field(min_length=1, max_length=10_000)
    seed: int = 0


class EvalRequest(_Request):
    """Evaluate the rubric reward model on benchmark rows of one format."""

    format: Literal["rewardbench", "rmbench", "rmb"]
    rows: list[dict[str, Any]] = Field(min_length=1)
    swap: bool = False
    seed: int = 0
