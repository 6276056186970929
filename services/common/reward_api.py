"""The reward API's wire contract, shared by the gateway (public side) and the verifier (grading side).

Model outputs are arbitrary text, so a problem inside one item (a NUL character, a lone surrogate,
an oversized field, a ground truth nested too deep or holding NaN) is that item's
``invalid_input`` result, never the whole batch's error: :func:`item_problem` names the field, and
:func:`screen` splits a batch into the items to grade and the results of those it cannot.
Problems of the request itself (duplicate ids, a bad spec) stay request-level 4xx errors.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator

from rewardhub.reward_specs import RewardSpec
from services.common.settings import get_settings
from services.common.validation import StoredText, text_problem

Status = Literal["ok", "invalid_input", "timeout", "error"]
STATUSES: tuple[Status, ...] = ("ok", "invalid_input", "timeout", "error")


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[Any] | None = None


class RewardItem(BaseModel):
    """One model output to score. Its text is taken as sent; :meth:`problem` says whether it can be graded."""

    model_config = ConfigDict(extra="forbid")

    id: StoredText = Field(min_length=1, max_length=200, description="Caller's id, echoed in the result.")
    prompt: str | list[ChatMessage] = Field(default="", description="Text, or chat messages.")
    completion: str = Field(description="The model output to grade.")
    ground_truth: Any = Field(default=None, description="Reference answer; its form depends on the grader.")
    metadata: dict[str, Any] = Field(default_factory=dict)

    _problem: tuple[str | None] | None = PrivateAttr(default=None)

    def problem(self) -> str | None:
        """Why this item cannot be graded (``"completion: contains a NUL character at position 17"``), or None."""
        if self._problem is None:
            self._problem = (item_problem(self),)
        return self._problem[0]

    def fingerprint_dump(self) -> dict[str, Any]:
        """The item as JSON for an idempotency fingerprint; an ungradeable one as its id and a digest,
        since it may not even serialise (nested too deep)."""
        if self.problem() is None:
            return self.model_dump(mode="json")
        prompt = self.prompt if isinstance(self.prompt, str) else [
            {"role": m.role, "content": m.content, **(m.model_extra or {})} for m in self.prompt]
        return {"id": self.id, "invalid_input": digest([prompt, self.completion, self.ground_truth, self.metadata])}


# --- item-level problems --------------------------------------------------------------------------

def _child(path: str, key: object) -> str:
    return f"{path}[{key}]" if isinstance(key, int) else f"{path}.{key}"


def json_problem(value: Any, path: str, *, max_depth: int, check_nul: bool = True) -> str | None:
    """The first problem in a JSON value, as ``"<path>: <problem>"``: nesting deeper than ``max_depth``
    containers, a non-finite number, a key or string with NUL (when ``check_nul``) or a lone surrogate,
    or a value JSON cannot carry. Iterative, so no depth can exhaust the stack."""
    found = locate_json_problem(value, path, max_depth=max_depth, check_nul=check_nul)
    return f"{found[0]}: {found[1]}" if found else None


def locate_json_problem(value: Any, path: str, *, max_depth: int,
                        check_nul: bool = True) -> tuple[str, str] | None:
    """:func:`json_problem` as ``(where, problem)``."""
    stack: list[tuple[str, Any, int]] = [(path, value, 0)]
    while stack:
        where, node, depth = stack.pop()
        if isinstance(node, str):
            reason = text_problem(node) if check_nul else _surrogate_problem(node)
            if reason:
                return where, reason
        elif isinstance(node, bool) or node is None or isinstance(node, int):
            continue
        elif isinstance(node, float):
            if not math.isfinite(node):
                return where, f"{node!r} is not a finite number (JSON has no NaN or Infinity)"
        elif isinstance(node, dict | list | tuple):
            if depth >= max_depth:
                return path, f"is nested more than {max_depth} levels deep; the limit is {max_depth}"
            if isinstance(node, dict):
                children: list[tuple[str, Any, int]] = []
                for key, child in node.items():
                    if not isinstance(key, str):
                        return where, f"has a key that is not a string ({type(key).__name__})"
                    reason = text_problem(key) if check_nul else _surrogate_problem(key)
                    if reason:
                        return where, f"a key {reason}"
                    children.append((_child(where, key), child, depth + 1))
            else:
                children = [(_child(where, i), child, depth + 1) for i, child in enumerate(node)]
            stack.extend(reversed(children))
        else:
            return where, f"a {type(node).__name__} is not a JSON value"
    return None


def _surrogate_problem(value: str) -> str | None:
    return text_problem(value.replace("\x00", " "))


def _json_bytes(value: Any) -> int:
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))


def _text_chars(value: Any) -> int:
    """Characters of all the strings in a (checked, so bounded-depth) JSON value."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(_text_chars(v) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(_text_chars(v) for v in value)
    return 0


def item_problem(item: RewardItem) -> str | None:
    """Why ``item`` cannot be graded, naming the field (``completion: contains a NUL character at
    position 17``), or None. The limits are the ``max_item_chars``, ``max_ground_truth_bytes``,
    ``max_metadata_bytes`` and ``max_json_depth`` settings."""
    settings = get_settings()
    depth = settings.max_json_depth
    reason = text_problem(item.completion, settings.max_item_chars)
    if reason:
        return f"completion: {reason}"
    if isinstance(item.prompt, str):
        reason = text_problem(item.prompt, settings.max_item_chars)
        if reason:
            return f"prompt: {reason}"
    else:
        messages = [{"role": m.role, "content": m.content, **(m.model_extra or {})} for m in item.prompt]
        found = json_problem(messages, "prompt", max_depth=depth + 1)
        if found:
            return found
        chars = _text_chars(messages)
        if chars > settings.max_item_chars:
            return f"prompt: its messages hold {chars} characters of text; the limit is {settings.max_item_chars}"
    for name, value, limit in (("ground_truth", item.ground_truth, settings.max_ground_truth_bytes),
                               ("metadata", item.metadata, settings.max_metadata_bytes)):
        found = json_problem(value, name, max_depth=depth)
        if found:
            return found
        size = _json_bytes(value)
        if size > limit:
            return f"{name}: is {size} bytes as JSON; the limit is {limit}"
    return None


def invalid_result(item_id: str, reason: str) -> ItemResult:
    return ItemResult(id=item_id, score=None, status="invalid_input", details={"reason": reason})


def screen(items: list[RewardItem]) -> tuple[list[RewardItem], dict[str, ItemResult]]:
    """Split a batch: the items to grade, and the ``invalid_input`` results of the others by id."""
    gradable: list[RewardItem] = []
    invalid: dict[str, ItemResult] = {}
    for item in items:
        reason = item.problem()
        if reason is None:
            gradable.append(item)
        else:
            invalid[item.id] = invalid_result(item.id, reason)
    return gradable, invalid


def merge(items: list[RewardItem], invalid: Mapping[str, Any], graded: list[Any]) -> list[Any]:
    """The batch's results in its items' order: ``graded`` (in the order the gradable items were
    sent) filled in around the screened-out ones."""
    if not invalid:
        return list(graded)
    rest = iter(graded)
    return [invalid[item.id] if item.id in invalid else next(rest) for item in items]


def digest(value: Any) -> str:
    """A stable hash of any JSON-like value, whatever its depth or text (lone surrogates included)."""
    h = hashlib.sha256()
    stack: list[Any] = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            data = node.encode("utf-8", "surrogatepass")
            h.update(b"s%d:" % len(data) + data)
        elif isinstance(node, dict):
            h.update(b"d%d:" % len(node))
            for key in sorted(node, key=str, reverse=True):
                stack.extend((node[key], str(key)))
        elif isinstance(node, list | tuple):
            h.update(b"l%d:" % len(node))
            stack.extend(reversed(node))
        else:
            h.update(b"v" + repr(node).encode("utf-8", "surrogatepass") + b";")
    return h.hexdigest()


def cap_batch(items: list[RewardItem]) -> list[RewardItem]:
    limit = get_settings().max_batch_items
    if len(items) > limit:
        raise ValueError(f"has {len(items)} items; the limit is {limit} per request")
    seen: set[str] = set()
    duplicates: list[str] = []
    for item in items:
        if item.id in seen and item.id not in duplicates:
            duplicates.append(item.id)
        seen.add(item.id)
    if duplicates:
        shown = ", ".join(duplicates[:20]) + (f" and {len(duplicates) - 20} more" if len(duplicates) > 20 else "")
        raise ValueError(f"duplicate ids: {shown} (each item's id must be unique in its batch)")
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
