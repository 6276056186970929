"""Request and response models of the teacher service."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from services.common.validation import ID_PATTERN, StoredText
from services.teacher.registry import NAME_PATTERN, DType, Kind

ItemStatus = Literal["ok", "invalid_input", "timeout", "error"]
ProjectId = Annotated[str | None, Field(default=None, pattern=ID_PATTERN, description=(
    "The project; optional when the key has only one."))]
ModelName = Annotated[str, Field(pattern=NAME_PATTERN, description="A teacher model registered in the project.")]
ItemId = Annotated[str, Field(min_length=1, max_length=200)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ------------------------------------------------------------------------------------------ models


class TeacherModelIn(Strict):
    kind: Kind = Field(default="local", description="local: the folder as it is; ema: a copy the trainer pushes "
                       "weights into (PUT …/weights).")
    path: StoredText = Field(min_length=1, max_length=1000,
                             description="A Hugging Face model folder, relative to teacher_models_dir.")
    dtype: DType = Field(default="float32", description="The dtype the model is loaded in (the trainer's model.dtype).")


class TeacherModelOut(BaseModel):
    project_id: str
    name: str
    kind: Kind
    path: str
    dtype: DType
    version: int = Field(description="Weight pushes so far (0: the folder's own weights).")
    revision: str = Field(description="Changes with every push and re-registration.")
    created_at: str
    updated_at: str
    last_tau: float | None
    loaded: bool = Field(description="Whether this process holds the model in memory now.")


class WeightsPushOut(BaseModel):
    model: TeacherModelOut
    tensors: int
    elements: int
    mode: Literal["replace", "ema"]
    tau: float | None


# ------------------------------------------------------------------------------------------- score


class ScoreItem(Strict):
    id: ItemId
    context_ids: list[int] | None = Field(default=None, description="The context as token ids (x and the "
                                          "privileged context c, already templated).")
    context: StoredText | None = Field(default=None, max_length=1_000_000, description="The context as text, tokenised by the teacher's "
                                "tokenizer without special tokens; give this or context_ids.")
    continuation_ids: list[int] = Field(description="The token ids to score (the student's rollout y).")


class ScoreRequest(Strict):
    project_id: ProjectId = None
    model: ModelName
    items: list[ScoreItem] = Field(min_length=1)
    top_k: int = Field(default=0, ge=0, description="Top-k log-probs per position (0: none); at most "
                       "REWARDHUB_TEACHER_MAX_TOP_K.")
    temperature: float = Field(default=1.0, gt=0, le=100, allow_inf_nan=False,
                               description="log softmax(logits / temperature), as the trainer's.")
    deadline_s: float | None = Field(default=None, gt=0, le=3600, allow_inf_nan=False, description=(
        "Items not scored by then are status timeout."))


class TopK(BaseModel):
    ids: list[list[int]] = Field(description="Per position, the k most likely ids, most likely first.")
    logprobs: list[list[float]]
    tail_logprobs: list[float] = Field(description="Per position, log(1 − Σ top-k probabilities): the lumped tail.")


class ScoreResult(BaseModel):
    id: str
    status: ItemStatus
    logprobs: list[float] | None = None
    top_k: TopK | None = None
    context_tokens: int | None = None
    error: str | None = None


class ScoreResponse(BaseModel):
    model: str
    revision: str
    backend: Literal["transformers", "vllm"]
    kl_approximation: str
    results: list[ScoreResult]


# ------------------------------------------------------------------------------------------ reflect


class DiagnosticSignal(Strict):
    kind: Literal["verifier", "peer", "reference"] = Field(description=(
        "verifier: an outcome or error message; peer: a successful rollout from the same group; "
        "reference: a reference solution."))
    text: StoredText = Field(min_length=1, max_length=50_000)


class ReflectItem(Strict):
    id: ItemId
    question: StoredText = Field(min_length=1, max_length=50_000)
    response: StoredText = Field(max_length=200_000, description="The student's attempt.")
    signal: DiagnosticSignal
    reference: StoredText | None = Field(default=None, max_length=200_000, description=(
        "A reference solution: its \\boxed{} contents are guarded by the leak filter."))
    answer: StoredText | None = Field(default=None, max_length=10_000, description="The final answer to guard.")


class ReflectRequest(Strict):
    project_id: ProjectId = None
    model: ModelName | None = Field(default=None, description=(
        "A registered teacher model writes the hints; unset: the configured LLM backend (REWARDHUB_LLM_*)."))
    items: list[ReflectItem] = Field(min_length=1)
    max_hint_chars: int | None = Field(default=None, ge=16, le=20_000, description=(
        "Length cap of a hint (default REWARDHUB_TEACHER_MAX_HINT_CHARS)."))
    max_attempts: int = Field(default=2, ge=1, le=5, description="Hints asked for per item until one passes.")
    temperature: float = Field(default=0.0, ge=0, le=2, allow_inf_nan=False)
    max_tokens: int = Field(default=160, ge=8, le=2048)
    timeout_s: float = Field(default=60.0, gt=0, le=600, allow_inf_nan=False, description="Per item.")


class Rejection(BaseModel):
    reason: str
    detail: str | None = None


class ReflectResult(BaseModel):
    id: str
    status: Literal["ok", "rejected", "invalid_input", "timeout", "error"]
    hint: str | None = None
    hint_chars: int | None = None
    attempts: int = 0
    rejections: list[Rejection] = Field(default_factory=list)
    error: str | None = None


class ReflectSummary(BaseModel):
    hints: int
    items_rejected: int
    rejected_hints: int
    rejections_by_reason: dict[str, int]
    mean_hint_chars: float | None


class ReflectResponse(BaseModel):
    results: list[ReflectResult]
    summary: ReflectSummary


# ----------------------------------------------------------------------------------------- modulate


class ModulateParams(Strict):
    alpha0: float = Field(ge=0, le=1e6, allow_inf_nan=False, description="α before annealing.")
    tau_plus: float = Field(default=0.0, allow_inf_nan=False, description="τ₊: CIG threshold for A > 0.")
    tau_minus: float = Field(default=0.0, allow_inf_nan=False, description="τ₋: −CIG threshold for A < 0.")
    schedule: Literal["constant", "linear", "cosine"] = "linear"
    step: int = Field(default=0, ge=0)
    total_steps: int = Field(default=1, ge=1)
    max_weight: float | None = Field(default=None, ge=1, allow_inf_nan=False, description="Cap of w (optional).")


class ModulateItem(Strict):
    id: ItemId
    advantage: float = Field(description="The rollout's outcome advantage A_i.")
    teacher_logprobs: list[float] = Field(description="log π(y_t | x, hint, y_<t).")
    student_logprobs: list[float] = Field(description="log π(y_t | x, y_<t).")


class ModulateRequest(Strict):
    params: ModulateParams
    items: list[ModulateItem] = Field(min_length=1)


class ModulateResult(BaseModel):
    id: str
    status: ItemStatus
    advantages: list[float] | None = None
    cig: list[float] | None = None
    weights: list[float] | None = None
    modulated_share: float | None = None
    mean_abs_cig: float | None = None
    error: str | None = None


class ModulateResponse(BaseModel):
    alpha: float
    results: list[ModulateResult]
    modulated_share: float = Field(description="Over every ok item's tokens.")
    mean_abs_cig: float


# ----------------------------------------------------------------------------------------- examiner


class ExaminerSeed(Strict):
    id: ItemId
    hops: int = Field(ge=1, le=8, description="Hops of the question-construction path.")
    evidence: list[StoredText] = Field(default_factory=list, max_length=32, description=(
        "Documents to build from (e.g. retrieval results); empty: the examiner's own knowledge."))
    topic: StoredText | None = Field(default=None, max_length=2000)
    seed: int | None = None


class ExaminerTasksRequest(Strict):
    project_id: ProjectId = None
    model: ModelName | None = Field(default=None, description="A registered teacher model; unset: the LLM backend.")
    items: list[ExaminerSeed] = Field(min_length=1)
    temperature: float = Field(default=0.0, ge=0, le=2, allow_inf_nan=False)
    max_tokens: int = Field(default=512, ge=16, le=4096)
    timeout_s: float = Field(default=60.0, gt=0, le=600, allow_inf_nan=False)


class PathStep(BaseModel):
    hop: int
    evidence: str
    step: str


class ExaminerTask(BaseModel):
    question: str
    path: list[PathStep] = Field(description="The question-construction path c (evidence to question).")
    answer: str
    hops: int
    privileged_context: str = Field(description="c as text, ready to put in the teacher's context.")


class ExaminerTaskResult(BaseModel):
    id: str
    status: ItemStatus
    task: ExaminerTask | None = None
    format_ok: bool = False
    format_problem: str | None = None
    text: str | None = Field(default=None, description="The examiner's raw output (its rollout).")
    error: str | None = None


class ExaminerTasksResponse(BaseModel):
    results: list[ExaminerTaskResult]
    format_ok_rate: float


class ExaminerRewardItem(Strict):
    id: ItemId
    hops: int = Field(ge=0, le=64)
    passed: int = Field(description="k: student samples that were correct.")
    samples: int = Field(description="n: student samples drawn.")
    format_reward: float = Field(default=0.0, description="r_format of this generation.")


class ExaminerRewardsRequest(Strict):
    items: list[ExaminerRewardItem] = Field(min_length=1)
    eps: float = Field(default=1e-6, gt=0, le=1, allow_inf_nan=False)


class ExaminerRewardResult(BaseModel):
    id: str
    status: ItemStatus
    reward: float | None = None
    advantage: float | None = None
    error: str | None = None


class ExaminerRewardsResponse(BaseModel):
    results: list[ExaminerRewardResult]
    difficulty_histogram: dict[str, int] = Field(description="Items by pass rate k/n: solved_by_none, "
                                                 "solved_by_all, and quartiles of the rest.")
