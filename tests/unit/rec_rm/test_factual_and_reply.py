"""Reply parsing and factual consistency against hand-computed values."""

from __future__ import annotations

import json

import pytest

from services.rec_rm.factual import Tolerance, check_claims, claim_agrees, first_number
from services.rec_rm.items import Item, title_key
from services.rec_rm.reply import parse_reply

SUSHI = Item("r1", "Sushi Zen", {"cuisine": "japanese", "price": 25, "rating": 4.6, "hours": "11:00-22:00",
                                 "tags": ["sushi", "quiet"], "vegan": False})
TACO = Item("r2", "Taco Loco", {"cuisine": "mexican", "price": 12})
BY_ID = {i.item_id: i for i in (SUSHI, TACO)}
BY_TITLE = {title_key(i.title): i for i in (SUSHI, TACO)}


def test_parse_reply_reads_json_fenced_and_lists() -> None:
    fenced = "Here you go:\n```json\n" + json.dumps({"recommendations": [{"item_id": "r1", "price": 25,
                                                                            "reason": "great fish"}]}) + "\n```"
    parsed = parse_reply(fenced)
    assert parsed.structured and [m.item_id for m in parsed.mentions] == ["r1"]
    assert parsed.mentions[0].claims == {"price": 25}  # "reason" is an explanation, not a claim
    as_list = parse_reply(json.dumps([{"title": "Taco Loco"}, "Sushi Zen"]))
    assert [(m.item_id, m.title) for m in as_list.mentions] == [(None, "Taco Loco"), ("Sushi Zen", "Sushi Zen")]
    assert parse_reply("Try Sushi Zen tonight.").structured is False
    missing = parse_reply(json.dumps({"picks": []}))
    assert missing.structured and "recommendations" in (missing.problem or "")
    nameless = parse_reply(json.dumps({"recommendations": [{"price": 3}, {"item_id": "r1"}]}))
    assert len(nameless.mentions) == 1 and "1 recommendation(s) name no item" in (nameless.problem or "")


def test_claim_rules() -> None:
    assert first_number("$12.50 per person") == 12.5
    # |24 - 25| = 1 <= max(0.05, 0.05 * 25 = 1.25): agrees; |23 - 25| = 2 > 1.25: does not.
    assert claim_agrees("$24", 25) and not claim_agrees(23, 25)
    # "4.9 stars" vs 4.6: |0.3| > max(0.05, 0.05 * 4.6 = 0.23) → does not agree.
    assert claim_agrees(4.6, 4.6) and not claim_agrees("4.9 stars", 4.6)
    assert claim_agrees("Japanese", "japanese") and not claim_agrees("thai", "japanese")
    assert claim_agrees("11:00 – 22:00", "11:00-22:00")
    assert claim_agrees(["Sushi"], ["sushi", "quiet"]) and not claim_agrees("loud", ["sushi", "quiet"])
    assert claim_agrees("no", False) and not claim_agrees("yes", False)
    assert claim_agrees(30, 25, Tolerance(abs_tol=5, rel_tol=0))


def test_rating_tolerance_is_relative() -> None:
    # 4.8 vs 4.6: |0.2| <= max(0.05, 0.05 * 4.6 = 0.23) → agrees; 4.9: 0.3 > 0.23 → does not.
    assert claim_agrees(4.8, 4.6) and not claim_agrees(4.9, 4.6)


def test_check_claims_scores_the_share_that_agree() -> None:
    reply = parse_reply(json.dumps({"recommendations": [
        {"item_id": "r1", "price": 25, "cuisine": "thai", "parking": "yes"},   # 1 of 2 agree, parking unverifiable
        {"title": "taco loco", "price": "$12"}]}))                             # 1 of 1 agrees
    outcome = check_claims(reply.mentions, BY_ID, BY_TITLE)
    # agreed / checked = (1 + 1) / (2 + 1) = 2/3
    assert outcome.status == "ok" and outcome.score == pytest.approx(2 / 3)
    strict = check_claims(reply.mentions, BY_ID, BY_TITLE, all_or_nothing=True)
    assert strict.score == 0.0 and strict.evidence["share_agreed"] == pytest.approx(2 / 3)  # one false claim: 0
    assert outcome.evidence["checked"] == 3 and outcome.evidence["agreed"] == 2
    assert outcome.evidence["unverifiable"] == [{"item_id": "r1", "attribute": "parking"}]
    assert outcome.evidence["wrong"][0]["attribute"] == "cuisine"


def test_a_hallucinated_item_scores_zero_and_no_item_is_invalid() -> None:
    reply = parse_reply(json.dumps({"recommendations": [{"item_id": "r1", "price": 25}, {"item_id": "ghost"}]}))
    outcome = check_claims(reply.mentions, BY_ID, BY_TITLE)
    assert (outcome.status, outcome.score) == ("ok", 0.0) and outcome.evidence["hallucinated"] == ["ghost"]
    assert check_claims([], BY_ID, BY_TITLE).status == "invalid_input"
    no_claims = check_claims(parse_reply(json.dumps(["r2"])).mentions, BY_ID, BY_TITLE)
    assert (no_claims.score, no_claims.evidence["checked"]) == (1.0, 0)
