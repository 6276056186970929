"""The reward API's wire contract, shared by the gateway (public side) and the verifier (grading side)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from services.common.reward_specs import RewardSpec
from services.common.settings import get_settings
from services.common.validation import StoredText

Status = Literal["ok", "invalid_input", "timeout", "error"]
STATUSES: tuple[Status, ...] = ("ok", "invalid_input", "timeout", "error")


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: StoredText
    content: StoredText | list[Any] | None = None


class RewardItem(BaseModel):
    """One model output to score."""

    model_config = ConfigDict(extra="forbid")

    id: StoredText = Field(min_length=1, max_length=200, description="Caller's id, echoed in the result.")
    prompt: StoredText | list[ChatMessage] = Field(default="", description="Text, or chat messages.")
    completion: StoredText = Field(description="The model output to grade.")
    ground_truth: Any = Field(default=None, description="Reference answer; its form depends on the grader.")
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("completion", "prompt")
    @classmethod
    def _cap_length(cls, value: Any) -> Any:
        limit = get_settings().max_item_chars
        if isinstance(value, str) and len(value) > limit:
            raise ValueError(f"is {len(value)} characters long; the limit is {limit}")
        return value


def cap_batch(items: list[RewardItem]) -> list[RewardItem]:
    limit = get_settings().max_batch_items
    if len(items) > limit:
        raise ValueError(f"has {len(items)} items; the limit is {limit} per request")
    return items


class GradeRequest(BaseModel):
    """Verifier-side request: a resolved spec and a batch."""

    model_config = ConfigDict(extra="forbid")

    spec: RewardSpec
    items: list[RewardItem] = Field(min_length=1)
    deadline_s: float | None = Field(default=None, gt=0, le=3600,
                                     description="Whole-batch deadline; unfinished items return status timeout.")
    stream: bool = Field(default=False, description="Answer NDJSON, one result per line as items finish.")

    @field_validator("items")
    @classmethod
    def _cap_items(cls, items: list[RewardItem]) -> list[RewardItem]:
        return cap_batch(items)


class ItemResult(BaseModel):
    id: str
    score: float | None = Field(description="The reward; null unless status is ok.")
    status: Status
    sub_scores: dict[str, float] = Field(default_factory=dict)
    details: dict[str, Any] = Field(default_factory=dict)
    elapsed_ms: float = 0.0


class BatchSummary(BaseModel):
    n: int
    by_status: dict[str, int]
    mean_score: float | None = Field(description="Mean over items with status ok.")


class GradeResponse(BaseModel):
    results: list[ItemResult]
    summary: BatchSummary
    elapsed_ms: float


def summarise(results: list[ItemResult]) -> BatchSummary:
    by_status = {status: 0 for status in STATUSES}
    scores: list[float] = []
    for result in results:
        by_status[result.status] += 1
        if result.status == "ok" and result.score is not None:
            scores.append(result.score)
    return BatchSummary(n=len(results), by_status=by_status,
                        mean_score=sum(scores) / len(scores) if scores else None)
