"""Pydantic I/O models of the rubric reward model (CDRRM): pairs, diagnoses, rubrics, judgments.

Two kinds of model live here: what the LLM must produce (``Diagnosis``, ``Rubric`` and their parts,
validated strictly so a malformed output is a parse failure, never a guess) and what the service
returns (``*Result`` models with a ``status`` next to every value).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

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
    return value


NonEmptyText = Annotated[str, AfterValidator(_check_text)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DiagnoseRequest(_Request):
    instruction: NonEmptyText
    response: NonEmptyText


class GenerateRubricRequest(_Request):
    """A rubric for a new pair; ``method`` picks the trained generator or diagnose + synthesise."""

    instruction: NonEmptyText
    response_a: NonEmptyText
    response_b: NonEmptyText
    method: Literal["generator", "diagnose_synthesise"] = "generator"
    seed: int = 0


class PairwiseJudgeRequest(_Request):
    """Judge a pair in both orders; without ``rubric`` one is generated first."""

    instruction: NonEmptyText
    response_a: NonEmptyText
    response_b: NonEmptyText
    rubric: Rubric | None = None


class PointwiseJudgeRequest(_Request):
    """Score one response against a rubric (a scalar reward in [0, 1])."""

    instruction: NonEmptyText
    response: NonEmptyText
    rubric: Rubric


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
