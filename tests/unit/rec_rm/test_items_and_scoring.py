"""Catalog and log parsing (JSONL, CSV, Parquet), the format spec sent to the verifier, and the scorer
with a FakeFormatChecker (a TEST DOUBLE standing in for the verifier's HTTP route)."""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any

import pytest

from services.common.errors import InvalidInput
from services.rec_rm.config import RecConfig
from services.rec_rm.hybrid import DimensionResult
from services.rec_rm.items import Item, detect_format, parse_events, parse_items
from services.rec_rm.relevance import HashingEmbedder
from services.rec_rm.scoring import Request, Scorer, instruction_spec


def test_jsonl_csv_and_parquet_give_the_same_items() -> None:
    jsonl = b'{"item_id": "r1", "title": "Sushi Zen", "attributes": {"price": 25, "tags": ["a", "b"]}}\n\n' \
            b'{"item_id": 7, "title": "Taco", "cuisine": "mexican"}\n'
    csv_text = 'item_id,title,price,tags,cuisine\nr1,Sushi Zen,25,"[""a"", ""b""]",\n7,Taco,,,mexican\n'
    expected = [Item("r1", "Sushi Zen", {"price": 25, "tags": ["a", "b"]}), Item("7", "Taco", {"cuisine": "mexican"})]
    assert parse_items(jsonl, "jsonl") == expected
    assert parse_items(csv_text.encode(), "csv") == expected
    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.table({"item_id": ["r1", "7"], "title": ["Sushi Zen", "Taco"], "price": [25, None],
                             "tags": ['["a", "b"]', None], "cuisine": [None, "mexican"]}), buffer)
    assert parse_items(buffer.getvalue(), "parquet") == expected


@pytest.mark.parametrize(("data", "message"), [
    (b'{"title": "x"}', "line 1: item_id: is missing"),
    (b'{"item_id": "a", "title": "x"}\n{"item_id": "a", "title": "y"}', "line 2: item_id: 'a' appears twice"),
    (b'{"item_id": "a", "title": "x", "attributes": [1]}', "line 1: attributes: must be an object"),
    (b'not json', "line 1: is not JSON"),
    (b'', "holds no items"),
])
def test_bad_catalog_rows_name_the_line(data: bytes, message: str) -> None:
    with pytest.raises(InvalidInput, match=message) as info:
        parse_items(data, "jsonl")
    assert info.value.field == "file"


def test_events_and_timestamps() -> None:
    events = parse_events(b'user_id,item_id,event,timestamp,context\nu,r1,click,2026-01-01T10:00:00,"{""q"": 1}"\n'
                          b'u,r2,impression,1767261600,\n', "csv")
    assert [e.timestamp.isoformat() for e in events] == ["2026-01-01T10:00:00+00:00", "2026-01-01T10:00:00+00:00"]
    assert events[0].context == {"q": 1} and events[1].context == {}
    with pytest.raises(InvalidInput, match="line 2: timestamp: 'soon'"):
        parse_events(b"user_id,item_id,event,timestamp\nu,r1,click,soon\n", "csv")
    assert detect_format("logs.NDJSON", None) == "jsonl"
    with pytest.raises(InvalidInput) as info:
        detect_format("logs.txt", None)
    assert info.value.field == "format"


def test_instruction_spec_combines_schema_count_and_constraints() -> None:
    config = RecConfig.model_validate({"instruction": {"constraints": [
        {"kind": "word_count", "relation": "at_most", "value": 80}]}})
    spec = instruction_spec(config, Request(id="a", query="q", response="r", n_items=3))
    assert spec is not None and spec["type"] == "multi"
    count = spec["graders"]["schema"]["schema"]["allOf"][1]
    assert count["properties"]["recommendations"] == {"type": "array", "minItems": 3, "maxItems": 3}
    assert spec["graders"]["constraints"]["constraints"][0]["kind"] == "word_count"
    bare = RecConfig.model_validate({"instruction": {"schema": None}})
    assert instruction_spec(bare, Request(id="a", query="q", response="r")) is None


class FakeFormatChecker:
    """TEST DOUBLE for the verifier route: passes a reply that parses as JSON, fails any other."""

    def __init__(self) -> None:
        self.calls: list[list[tuple[str, dict[str, Any], str]]] = []

    async def __call__(self, planned: list[tuple[str, dict[str, Any], str]]) -> dict[str, DimensionResult]:
        self.calls.append(planned)
        out = {}
        for item_id, _spec, response in planned:
            try:
                json.loads(response)
                out[item_id] = DimensionResult("ok", 1.0)
            except ValueError:
                out[item_id] = DimensionResult("ok", 0.0)
        return out


def test_scorer_vetoes_and_weighs_with_context_items() -> None:
    items = [Item("r1", "Sushi Zen", {"cuisine": "japanese", "price": 25}), Item("r2", "Taco Loco", {"price": 12})]
    good = json.dumps({"recommendations": [{"item_id": "r1", "price": 25}, {"title": "Taco Loco", "price": 15}]})
    ghost = json.dumps({"recommendations": [{"item_id": "nope"}]})
    checker = FakeFormatChecker()
    config = RecConfig.model_validate({"weights": {"instruction": 1, "factual": 1, "relevance": 0, "behaviour": 0}})
    scorer = Scorer(config, ["instruction", "factual"], lookup=None, catalog_key=None, format_checker=checker,
                    behaviour=None, embedder=HashingEmbedder())
    scored = asyncio.run(scorer.score([Request("good", "sushi", good, context_items=items),
                                       Request("ghost", "sushi", ghost, context_items=items),
                                       Request("prose", "sushi", "Sushi Zen is nice", context_items=items)]))
    by_id = {s.id: s for s in scored}
    # price 25 = 25 agrees; 15 vs 12: |3| > max(0.05, 0.6) → wrong: 1 of 2 agree, all-or-nothing → factual 0;
    # hybrid = (1 + 0) / 2 = 0.5
    assert by_id["good"].dimensions["factual"].score == 0.0
    assert by_id["good"].dimensions["factual"].evidence["share_agreed"] == pytest.approx(0.5)
    assert by_id["good"].hybrid.score == pytest.approx(0.5)
    assert (by_id["ghost"].hybrid.score, by_id["ghost"].hybrid.vetoed_by) == (0.0, ["factual"])
    # Free text fails the format gate (1.0): vetoed, although its factual dimension could not decide.
    assert by_id["prose"].dimensions["factual"].status == "invalid_input"
    assert (by_id["prose"].hybrid.score, by_id["prose"].hybrid.vetoed_by) == (0.0, ["instruction"])
    assert len(checker.calls) == 1 and len(checker.calls[0]) == 3


def test_relevance_and_behaviour_statuses_without_items_or_model() -> None:
    scorer = Scorer(RecConfig(), ["relevance", "behaviour"], lookup=None, catalog_key=None,
                    format_checker=FakeFormatChecker(), behaviour=None, embedder=HashingEmbedder())
    reply = json.dumps(["r1"])
    [found] = asyncio.run(scorer.score([Request("a", "sushi place", reply, context_items=[Item("r1", "Sushi bar")])]))
    assert found.dimensions["relevance"].status == "ok" and 0 <= (found.dimensions["relevance"].score or 0) <= 1
    assert found.dimensions["behaviour"].status == "invalid_input"
    assert "no behaviour model" in found.dimensions["behaviour"].evidence["reason"]
    assert found.hybrid.status == "invalid_input" and found.hybrid.score is None


def test_evaluation_report_counts_by_hand() -> None:
    from services.rec_rm.evaluation import parse_record, report
    from services.rec_rm.hybrid import HybridResult
    from services.rec_rm.scoring import Scored

    rows = [{"id": "a", "dimension": "factual", "response": "{}", "label": 1},
            {"id": "b", "dimension": "factual", "response": "{}", "label": 0},
            {"id": "c", "dimension": "factual", "response": "{}", "label": True},
            {"id": "d", "dimension": "overall", "response": "{}", "label": 0,
             "context": {"items": [{"item_id": "r1", "title": "Sushi"}]}, "user": {"id": 5}}]
    records = [parse_record(row, i) for i, row in enumerate(rows)]
    assert records[3].request.user_id == "5" and records[3].request.context_items[0].title == "Sushi"

    def scored(score: float | None, status: str = "ok") -> Scored:
        return Scored("", HybridResult(status, score), {"factual": DimensionResult(status, score)})

    results = {"a": scored(0.9), "b": scored(0.7), "c": scored(None, "error"), "d": scored(0.2)}
    out = report(records, results)
    factual = out["dimensions"]["factual"]
    # a: predicted 1, label 1 → tp; b: predicted 1, label 0 → fp; c: undecided. accuracy = 1/3, decided 1/2
    assert factual["confusion"] == {"tp": 1, "fp": 1, "tn": 0, "fn": 0, "undecided": 1}
    assert factual["accuracy"] == pytest.approx(1 / 3) and factual["accuracy_decided"] == pytest.approx(0.5)
    assert out["hybrid_agreement"] == 1.0  # d: 0.2 < 0.5 → predicted 0 = label 0
    with pytest.raises(ValueError, match=r"record 0 .*label"):
        parse_record({"id": "x", "dimension": "factual", "response": "", "label": 2}, 0)
