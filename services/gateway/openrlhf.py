"""OpenRLHF-compatible `POST /get_reward`: `{query, prompts, labels}` → `{rewards, scores, extra_logs}`."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import ValidationError

from services.common.auth import Principal
from services.common.errors import ApiError, InvalidInput
from services.common.reward_api import RewardItem
from services.gateway import rewards
from services.gateway.schemas import OpenRLHFRewardRequest, OpenRLHFRewardResponse, RewardsRequest

# The assistant header each common chat template ends its generation prompt with (ChatML/Qwen, Llama 3,
# Phi/Zephyr, Gemma, DeepSeek, Mistral). OpenRLHF decodes the query with its special tokens kept.
ASSISTANT_MARKERS = ("<|im_start|>assistant\n", "<|start_header_id|>assistant<|end_header_id|>\n\n",
                     "<|assistant|>\n", "<start_of_turn>model\n", "<\uff5cAssistant\uff5c>", "[/INST]")
# A truncated prompt is cut on a token boundary, which can leave a few stray characters (half of a
# multi-byte character, a merged space) in front of the surviving part.
_LEAD_SLACK = 8
# Below this many characters a matching suffix proves nothing (a newline, a space, a period).
_MIN_OVERLAP = 24


def _overlap(suffix_of: str, prefix_of: str) -> int:
    """The length of the longest suffix of ``suffix_of`` that is a prefix of ``prefix_of`` (KMP)."""
    head = prefix_of[:len(suffix_of)]
    text = head + "\x00" + suffix_of
    fail = [0] * len(text)
    for i in range(1, len(text)):
        k = fail[i - 1]
        while k and text[i] != text[k]:
            k = fail[k - 1]
        if text[i] == text[k]:
            k += 1
        fail[i] = k
    return fail[-1] if text else 0


def completion_of(query: str, prompt: str | None) -> str | None:
    """The response inside OpenRLHF's ``query`` (its prompt tokens, possibly left-truncated, plus the
    response), or None when it cannot be told apart from the prompt.

    1. The query starts with the whole prompt: the rest.
    2. The prompt ends with a chat template's assistant header that the query contains: what follows its
       last occurrence in the query. The query is the prompt's tail (ending with that header) and then the
       response, so that text is always the model's.
    3. Else the query starts (after a few stray characters) with a long enough suffix of the prompt, the
       part that survived OpenRLHF's truncation: the rest.
    """
    if not prompt:
        return query
    if query.startswith(prompt):
        return query[len(prompt):]
    header_end = len(prompt.rstrip())
    for marker in ASSISTANT_MARKERS:
        if prompt[:header_end].endswith(marker.rstrip()):
            at = query.rfind(marker.rstrip())
            if at >= 0:
                rest = query[at + len(marker.rstrip()):]
                # The whitespace the template puts after its header is the prompt's, not the response's.
                return rest.removeprefix(prompt[header_end:])
            break
    needed = min(_MIN_OVERLAP, len(prompt))
    for lead in range(min(_LEAD_SLACK, len(query)) + 1):
        k = _overlap(prompt, query[lead:])
        if k >= needed:
            return query[lead + k:]
    return None


def _as_invalid_input(error: ValidationError) -> InvalidInput:
    """Name the OpenRLHF field behind a RewardsRequest error (``items[3].completion`` is ``query[3]``)."""
    first = error.errors()[0]
    loc = list(first["loc"])
    if len(loc) >= 2 and loc[0] == "items":
        field = f"query[{loc[1]}]"
    else:
        field = ".".join(str(part) for part in loc) or "body"
    return InvalidInput(f"{field}: {str(first['msg']).removeprefix('Value error, ')}", field=field)


async def get_reward(principal: Principal, body: OpenRLHFRewardRequest, spec_ref: str, project_id: str | None,
                     on_non_ok: Literal["zero", "error"], auth: str) -> OpenRLHFRewardResponse:
    prompts: list[str | None] = list(body.prompts) if body.prompts else [None] * len(body.query)
    labels = body.labels or [None] * len(body.query)
    # An item whose response cannot be found in its query is invalid_input: never the whole query graded,
    # since the prompt's own text (a few-shot answer, say) would then earn the reward.
    results: list[dict[str, Any] | None] = []
    items = []
    try:
        for i, (query, prompt, label) in enumerate(zip(body.query, prompts, labels, strict=True)):
            completion = completion_of(query, prompt)
            if completion is None:
                results.append({"id": str(i), "score": None, "status": "invalid_input",
                                "details": {"reason": f"query[{i}] does not contain prompts[{i}] or its tail, so "
                                                      "the response cannot be told apart from the prompt"}})
                continue
            results.append(None)
            items.append(RewardItem(id=str(i), prompt=prompt or "", completion=completion, ground_truth=label))
        request = RewardsRequest(project_id=project_id, spec_ref=spec_ref, items=items) if items else None
    except ValidationError as exc:
        raise _as_invalid_input(exc) from None
    if request is not None:
        response = await rewards.score(principal, request, auth, None)
        graded = {r["id"]: r for r in json.loads(bytes(response.body))["results"]}
        results = [r if r is not None else graded[str(i)] for i, r in enumerate(results)]
    final = [r for r in results if r is not None]
    non_ok = [r for r in final if r["status"] != "ok"]
    if non_ok and on_non_ok == "error":
        first = non_ok[0]
        raise ApiError(f"{len(non_ok)} of {len(final)} items could not be graded; first: item {first['id']} "
                       f"status {first['status']}: {first['details']}", field=f"query[{first['id']}]",
                       code="ungradeable_items", status_code=422)
    # OpenRLHF needs a number per sample (it builds tensors from `rewards` and `scores`): non-ok items
    # score 0.0 and are reported in extra_logs, which OpenRLHF logs, so the rate of ungradeable samples
    # is visible in the run's metrics.
    scores = [float(r["score"]) if r["status"] == "ok" and r["score"] is not None else 0.0 for r in final]
    extra_logs = {
        "reward_ok": [1.0 if r["status"] == "ok" else 0.0 for r in final],
        "reward_timeout": [1.0 if r["status"] == "timeout" else 0.0 for r in final],
        "reward_invalid_input": [1.0 if r["status"] == "invalid_input" else 0.0 for r in final],
        "reward_error": [1.0 if r["status"] == "error" else 0.0 for r in final],
    }
    return OpenRLHFRewardResponse(rewards=scores, scores=scores, extra_logs=extra_logs)
