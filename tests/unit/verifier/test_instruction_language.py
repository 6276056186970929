"""The instruction grader's ``response_language`` constraint (langdetect, seeded), on hand-picked texts."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import TypeAdapter, ValidationError

from rewardhub.reward_specs import LANGUAGE_CODES, LanguageConstraint, RewardSpec
from services.verifier.graders import instruction
from services.verifier.graders.registry import grade
from tests.conftest import Tenant, bearer

SPECS: TypeAdapter[Any] = TypeAdapter(RewardSpec)

# One sentence per language, each saying the same thing (a quiet restaurant, good sushi, kind staff).
TEXTS = {
    "en": "This quiet little restaurant serves excellent sushi, and the staff are friendly and attentive.",
    "fr": "Ce petit restaurant tranquille sert d'excellents sushis, et le personnel est aimable et attentionné.",
    "de": "Dieses ruhige kleine Restaurant serviert ausgezeichnetes Sushi, und das Personal ist freundlich.",
    "es": "Este pequeño restaurante tranquilo sirve un sushi excelente, y el personal es amable y atento.",
    "zh": "这家安静的小餐厅提供非常好的寿司，服务员也很友好周到。",
    "ja": "この静かな小さなレストランでは美味しい寿司が食べられ、スタッフもとても親切です。",
}


def spec_of(*constraints: dict[str, Any], all_or_nothing: bool = False) -> Any:
    return SPECS.validate_python({"type": "instruction", "constraints": list(constraints),
                                  "all_or_nothing": all_or_nothing})


def language(code: str, **more: Any) -> dict[str, Any]:
    return {"kind": "response_language", "language": code, **more}


@pytest.mark.parametrize("code", sorted(TEXTS))
def test_each_text_passes_its_own_language_and_fails_every_other(code: str) -> None:
    for expected in TEXTS:
        result = grade(spec_of(language(expected)), TEXTS[code], None)
        assert result.status == "ok"
        assert result.sub_scores == {"0:response_language": float(expected == code)}, (code, expected)
        evidence = result.details["language"]["0:response_language"]
        assert evidence["detected"] == code and evidence["expected"] == expected
        assert evidence["probability"] > 0.9


def test_the_detected_language_is_the_same_every_time() -> None:
    # A two-language text is the borderline case where unseeded langdetect can flip between runs.
    mixed = "Bonjour, the table is ready. Merci beaucoup pour votre patience, see you soon."
    first = instruction.detect_language(mixed)
    assert first is not None
    assert [instruction.detect_language(mixed) for _ in range(20)] == [first] * 20
    c = LanguageConstraint(kind="response_language", language="fr")
    verdicts = {instruction.check_language(c, TEXTS["fr"]) for _ in range(20)}
    assert len(verdicts) == 1 and next(iter(verdicts)).passed


def test_empty_or_letterless_text_fails_with_the_reason() -> None:
    for text, reason in [("", "no natural-language text to detect the language of"),
                         ("   \n ", "no natural-language text to detect the language of"),
                         ("12345 !!! 3.14", "the language is undetectable: the text has no letters langdetect reads"),
                         ('{"price": 12, "rating": 4.5}', "no natural-language text to detect the language of")]:
        result = grade(spec_of(language("en")), text, None)
        assert (result.status, result.score, result.sub_scores) == ("ok", 0.0, {"0:response_language": 0.0}), text
        assert result.details["language"]["0:response_language"] == {"expected": "en", "detected": None,
                                                                       "reason": reason}


def test_short_ambiguous_text_is_decided_as_langdetect_reads_it() -> None:
    # Documented behaviour, not a goal: no minimum length (as IFEval), and langdetect is confidently
    # wrong on one or two words. These pin what it says, so a change of library or rule shows up here.
    def top(text: str) -> str:
        found = instruction.detect_language(text)
        assert found is not None
        return found[0]

    assert (top("ok"), top("Hola"), top("Gracias amigo")) == ("sk", "tr", "es")
    assert grade(spec_of(language("es")), "Hola", None).score == 0.0
    assert grade(spec_of(language("de")), "Das ist gut.", None).score == 1.0


def test_code_blocks_and_json_keys_are_not_read() -> None:
    fenced = f"{TEXTS['fr']}\n```python\nfor item in items:\n    print(item.name, item.price)\n```\nUse `print()`."
    assert instruction.language_text(fenced) == TEXTS["fr"] + " Use ."
    # A JSON reply: its string values, never its keys (English keys, French text).
    reply = json.dumps({"recommendations": [{"item_id": "r1", "reason": TEXTS["fr"], "price": 25}]})
    assert instruction.language_text(reply) == "r1\n" + TEXTS["fr"]
    assert grade(spec_of(language("fr")), reply, None).score == 1.0
    # json_fields: only the strings under those keys, at any depth, case-folded.
    titled = json.dumps({"summary": [TEXTS["de"]], "items": [{"title": "Tokyo Sushi Bar", "Reason": TEXTS["de"]}]})
    assert instruction.language_text(titled, ["reason", "summary"]) == TEXTS["de"] + "\n" + TEXTS["de"]
    # A fenced JSON block inside prose: the prose and the block's strings.
    wrapped = f"Voici:\n```json\n{json.dumps({'reason': TEXTS['fr']})}\n```"
    assert instruction.language_text(wrapped, ["reason"]) == "Voici:\n" + TEXTS["fr"]
    one_line = f"Voici: ```json {json.dumps({'reason': TEXTS['fr']})}``` et `code`"
    assert instruction.language_text(one_line, ["reason"]) == "Voici: et\n" + TEXTS["fr"]
    none_under = grade(spec_of(language("fr", json_fields=["reason"])), '{"title": "Chez Paul"}', None)
    assert none_under.details["language"]["0:response_language"]["reason"] == (
        "no natural-language text under reason to detect the language of")


def test_language_counts_with_the_other_constraints() -> None:
    spec = spec_of({"kind": "word_count", "relation": "at_most", "value": 5}, language("en"))
    result = grade(spec, TEXTS["en"], None)  # 14 words > 5: 0; English: 1 → (0 + 1) / 2 = 0.5
    assert result.sub_scores == {"0:word_count": 0.0, "1:response_language": 1.0}
    assert result.score == 0.5 and result.details["passed"] == 1 and result.details["total"] == 2
    assert "language" not in grade(spec_of({"kind": "all_lowercase"}), "abc", None).details
    # From ground_truth too, like every constraint.
    assert grade(SPECS.validate_python({"type": "instruction"}), TEXTS["ja"], [language("ja")]).score == 1.0


def test_codes_are_validated_and_normalised() -> None:
    assert LanguageConstraint(kind="response_language", language=" FR ").language == "fr"
    with pytest.raises(ValidationError, match="'xx' is not a supported ISO 639-1 code"):
        LanguageConstraint(kind="response_language", language="xx")
    with pytest.raises(ValidationError):
        LanguageConstraint(kind="response_language", language="zh-cn")  # ISO 639-1 only: zh
    bad = grade(SPECS.validate_python({"type": "instruction"}), "x", [language("english")])
    assert bad.status == "invalid_input" and "0.response_language.language" in bad.details["reason"]


def test_the_supported_codes_are_langdetects_profiles() -> None:
    from langdetect.detector_factory import PROFILES_DIRECTORY

    assert {name.split("-")[0] for name in os.listdir(PROFILES_DIRECTORY)} == LANGUAGE_CODES


def test_an_unknown_code_is_a_422_naming_the_field(sqlite_tenant: Tenant) -> None:
    from services.verifier.app import create_app

    body = {"spec": {"type": "instruction", "constraints": [{"kind": "word_count", "relation": "at_most", "value": 9},
                                                            language("xx")]},
            "items": [{"id": "a", "completion": TEXTS["en"]}]}
    with TestClient(create_app(), raise_server_exceptions=False) as client:
        response = client.post("/v1/grade", json=body, headers=bearer(sqlite_tenant.keys["trainer"]))
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    # The house naming keeps the union tags (as spec.regex.pattern): spec.<type>.constraints[N].<kind>.language.
    assert error["field"] == "spec.instruction.constraints[1].response_language.language"
    assert "'xx' is not a supported ISO 639-1 code" in error["message"]
