"""Structured-output parsing: JSON in prose and fences, safe repairs, validation, counted failures."""

from __future__ import annotations

from pydantic import BaseModel, Field

from services.common.llm.structured import (
    extract_json_candidates,
    loads_lenient,
    parse_stats,
    parse_structured,
    reset_parse_stats,
)


class Verdict(BaseModel):
    winner: str
    confidence: float = Field(ge=0, le=1)
    reasons: list[str] = []


def test_plain_json() -> None:
    out = parse_structured('{"winner": "A", "confidence": 0.9}', Verdict)
    assert out.ok and out.value is not None and out.value.winner == "A" and not out.repaired


def test_json_in_prose_and_code_fence() -> None:
    text = "Let me think.\n```json\n{\"winner\": \"B\", \"confidence\": 0.5}\n```\nThat is my answer."
    out = parse_structured(text, Verdict)
    assert out.value is not None and out.value.winner == "B"
    bare = 'Sure! Here it is: {"winner": "A", "confidence": 1} -- hope that helps {not json}'
    assert parse_structured(bare, Verdict).value.winner == "A"  # type: ignore[union-attr]


def test_trailing_commas_single_quotes_and_json_names_are_repaired() -> None:
    text = "{'winner': 'A', 'confidence': 0.75, 'reasons': ['it\\'s right', \"no errors\",],}"
    out = parse_structured(text, Verdict)
    assert out.value is not None and out.repaired
    assert out.value.reasons == ["it's right", "no errors"]
    value, repaired = loads_lenient('{"a": true, "b": null, "c": [1, 2,],}')
    assert value == {"a": True, "b": None, "c": [1, 2]} and repaired


def test_braces_inside_strings_do_not_split_the_object() -> None:
    text = 'Answer: {"winner": "A", "confidence": 0.5, "reasons": ["uses } and { in text"]}'
    assert extract_json_candidates(text) == ['{"winner": "A", "confidence": 0.5, "reasons": ["uses } and { in text"]}']


def test_last_valid_candidate_wins() -> None:
    text = ('Example format: {"winner": "X", "confidence": 2}\n'
            'My verdict: {"winner": "B", "confidence": 0.6}')
    assert parse_structured(text, Verdict).value.winner == "B"  # type: ignore[union-attr]


def test_unparseable_outputs_are_failures_with_reasons() -> None:
    cases = {
        "": "empty",
        "I think A is better.": "no JSON",
        '{"winner": "A", "confidence": ': "no JSON",          # truncated: unbalanced, nothing to read
        '{"winner": "A"}': "confidence",                      # missing field
        '{"winner": "A", "confidence": 7}': "confidence",     # out of range
        "{'winner': __import__('os')}": "safe literal",       # never evaluates code
    }
    for text, reason in cases.items():
        out = parse_structured(text, Verdict)
        assert out.value is None, text
        assert out.error is not None and reason in out.error, (text, out.error)


def test_parse_outcomes_are_counted() -> None:
    reset_parse_stats()
    parse_structured('{"winner": "A", "confidence": 1}', Verdict, schema_name="VerdictCount")
    parse_structured("{'winner': 'A', 'confidence': 1,}", Verdict, schema_name="VerdictCount")
    parse_structured("garbage", Verdict, schema_name="VerdictCount")
    parse_structured("more garbage", Verdict, schema_name="VerdictCount")
    assert parse_stats()["VerdictCount"] == {"ok": 1, "repaired": 1, "failed": 2}

    from prometheus_client import REGISTRY

    failed = REGISTRY.get_sample_value("rewardhub_llm_parse_total",
                                       {"schema": "VerdictCount", "outcome": "failed"})
    assert failed is not None and failed >= 2
