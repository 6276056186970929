"""The LLM options (claim extraction for free text, the relevance judge) with ScriptedChat, a TEST DOUBLE
that answers canned text and records the prompts; backend failures become statuses, never a 0."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

import pytest

from services.common.llm.types import ChatMessage, ChatResult, LLMBackendError
from services.rec_rm.config import RecConfig
from services.rec_rm.hybrid import DimensionResult
from services.rec_rm.items import Item
from services.rec_rm.judges import parse_claims, parse_rating
from services.rec_rm.scoring import Request, Scorer

ITEMS = [Item("r1", "Sushi Zen", {"cuisine": "japanese", "price": 25}), Item("r2", "Taco Loco", {"price": 12})]


class ScriptedChat:
    """TEST DOUBLE of a ChatBackend: replies in order (an LLMBackendError is raised instead of returned)."""

    def __init__(self, *replies: str | LLMBackendError) -> None:
        self.replies = list(replies)
        self.prompts: list[str] = []

    async def chat(self, messages: Sequence[ChatMessage], **opts: Any) -> ChatResult:
        self.prompts.append(str(messages[-1]["content"]))
        reply = self.replies.pop(0)
        if isinstance(reply, LLMBackendError):
            raise reply
        return ChatResult(text=reply)


async def _no_format(planned: list[tuple[str, dict[str, Any], str]]) -> dict[str, DimensionResult]:
    return {item_id: DimensionResult("ok", 1.0) for item_id, _, _ in planned}


def scorer(config: dict[str, Any], dims: list[str], llm: ScriptedChat) -> Scorer:
    return Scorer(RecConfig.model_validate(config), dims, lookup=None, catalog_key=None, format_checker=_no_format,
                  behaviour=None, llm=llm)


def test_parsers() -> None:
    mentions = parse_claims('[{"item": "Sushi Zen", "attribute": "price", "value": 25},'
                            ' {"item": "Sushi Zen", "attribute": "cuisine", "value": "japanese"},'
                            ' {"item": "Taco Loco", "attribute": null}]')
    assert [(m.label, m.claims) for m in mentions] == [("Sushi Zen", {"price": 25, "cuisine": "japanese"}),
                                                       ("Taco Loco", {})]
    assert parse_rating("Reasoning...\nScore: 7") == 0.7
    with pytest.raises(ValueError):
        parse_rating("I like it")


def test_free_text_claims_are_extracted_by_the_llm_and_checked_by_the_rules() -> None:
    extracted = json.dumps([{"item": "Sushi Zen", "attribute": "price", "value": "$40"},
                            {"item": "taco loco", "attribute": "price", "value": 12}])
    llm = ScriptedChat(extracted, json.dumps([{"item": "Pizza Planet", "attribute": None}]), "no json at all")
    run = scorer({"factual": {"judge": "llm", "all_or_nothing": False}}, ["factual"], llm)
    results = asyncio.run(run.score([Request(f"t{k}", "dinner", "Sushi Zen ($40) or Taco Loco ($12).",
                                             context_items=ITEMS) for k in range(3)]))
    # $40 vs 25 is wrong, 12 vs 12 agrees: 1/2
    assert results[0].dimensions["factual"].score == pytest.approx(0.5)
    assert "cuisine" in llm.prompts[0] and "price" in llm.prompts[0]  # the attribute names are offered
    assert results[1].dimensions["factual"].score == 0.0 and results[1].hybrid.vetoed_by == ["factual"]
    assert results[2].dimensions["factual"].status == "error"
    assert "unparseable" in results[2].dimensions["factual"].evidence["reason"]


def test_relevance_judge_and_backend_failures() -> None:
    llm = ScriptedChat("Score: 8", "Score: 4", LLMBackendError("slow", kind="timeout"))
    run = scorer({"relevance": {"judge": "llm"}}, ["relevance"], llm)
    reply = json.dumps(["r1", "r2"])
    first, second = asyncio.run(run.score([Request("a", "sushi", reply, context_items=ITEMS),
                                           Request("b", "sushi", json.dumps(["r1"]), context_items=ITEMS)]))
    # (0.8 + 0.4) / 2 = 0.6
    assert first.dimensions["relevance"].score == pytest.approx(0.6)
    assert second.dimensions["relevance"].status == "timeout" and second.hybrid.score is None
    no_llm = Scorer(RecConfig.model_validate({"relevance": {"judge": "llm"}}), ["relevance"], lookup=None,
                    catalog_key=None, format_checker=_no_format, behaviour=None, llm=None)
    [missing] = asyncio.run(no_llm.score([Request("c", "sushi", reply, context_items=ITEMS)]))
    assert missing.dimensions["relevance"].status == "invalid_input"
