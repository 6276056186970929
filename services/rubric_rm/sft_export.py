"""Export the rubric generator's SFT set as chat JSONL, with A/B positions balanced.

The research data always put the chosen answer first, which teaches a position shortcut. Here a
seeded shuffle assigns exactly half of the examples (the first ⌈n/2⌉ after shuffling) the chosen
answer as "Response A" and the rest as "Response B". The prompt is the one the generator sees at
serving time (:func:`prompts.generator_messages`); the target is the rubric's rules and
principles only (the consistency check, which names the winner, is not part of the target).
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.common.errors import ApiError, UpstreamUnavailable
from services.rubric_rm import prompts
from services.rubric_rm.schemas import RubricExample

# How long a client should wait before retrying an export the LLM backend could not serve.
LLM_RETRY_AFTER_S = 5


@dataclass(frozen=True)
class SftExport:
    records: list[dict[str, Any]]
    chosen_first: int
    chosen_second: int
    skipped: int


def export_generator_sft(examples: Sequence[RubricExample], *, seed: int = 0, path: Path | None = None) -> SftExport:
    """Chat records ``{"messages": [system, user, assistant]}``; written as JSONL when ``path`` is given.

    Examples without a rubric are skipped (and counted). Record order follows ``examples``.
    """
    usable = [ex for ex in examples if ex.rubric is not None]
    order = list(range(len(usable)))
    random.Random(seed).shuffle(order)
    chosen_first_idx = set(order[: (len(usable) + 1) // 2])
    records: list[dict[str, Any]] = []
    for index, ex in enumerate(usable):
        assert ex.rubric is not None
        pair = ex.pair
        if index in chosen_first_idx:
            first, second = pair.chosen, pair.rejected
        else:
            first, second = pair.rejected, pair.chosen
        messages = prompts.generator_messages(pair.instruction, first, second)
        messages.append({"role": "assistant", "content": prompts.rubric_target_json(ex.rubric)})
        records.append({"messages": messages})
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return SftExport(records=records, chosen_first=len(chosen_first_idx),
                     chosen_second=len(usable) - len(chosen_first_idx), skipped=len(examples) - len(usable))


def raise_for_llm_failures(examples: Sequence[RubricExample]) -> None:
    """An export built through the LLM fails as a whole when the LLM did: never a 200 with missing records.

    A backend that did not answer (timeout, unreachable, 5xx after its retries) is a 503 with
    ``Retry-After``: the same request can be sent again. Output that could not be parsed for every
    pair is a 502: the backend answered, but nothing usable, and retrying as is will not help.
    """
    failed = [ex for ex in examples if ex.rubric is None and ex.status in ("timeout", "error")]
    if failed:
        raise UpstreamUnavailable(f"the LLM backend failed for {len(failed)} of {len(examples)} pairs "
                                  f"(first: {failed[0].error}); nothing was exported",
                                  field="llm", retry_after_s=LLM_RETRY_AFTER_S)
    if examples and all(ex.rubric is None for ex in examples):
        raise ApiError(f"the LLM's output could not be used for any of the {len(examples)} pairs "
                       f"(first: {examples[0].error}); nothing was exported",
                       field="llm", code="upstream_bad_output", status_code=502)
