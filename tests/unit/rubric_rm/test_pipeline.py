"""CDRRM pipeline (diagnose → synthesise → consistency filter) through the real HTTP client and a
scripted OpenAI-compatible test double."""

from __future__ import annotations

import asyncio
import json
import re
import socket
from typing import Any

import pytest

from services.common.llm import OpenAIChatClient
from services.common.llm.scripted import ScriptedReply, last_user_text
from services.rubric_rm.pipeline import (
    consistency_filter,
    diagnose_response,
    generate_rubric,
    rubric_cache_key,
    run_cdrrm_pipeline,
    synthesise_rubric,
)
from services.rubric_rm.schemas import Diagnosis, PairConsistencyCheck, PreferencePair, Rubric, RubricExample
from services.rubric_rm.scrub import find_winner_hints
from tests.unit.rubric_rm.helpers import (
    DIAGNOSE,
    GENERATOR,
    SYNTHESISE,
    diagnosis_json,
    example_rubric,
    fails_in_diagnosis,
    is_prompt,
    scripted_client,
    section,
    synthesis_json,
)

LEAK_TERMS = ("chosen", "rejected", "winner", "preferred", "response a", "response b", "better response")


def test_diagnose_ok_and_prompt_carries_the_response() -> None:
    client, server = scripted_client([diagnosis_json(1)])
    result = asyncio.run(diagnose_response(client, "What year?", "It was 1999."))
    assert result.status == "ok" and result.diagnosis is not None
    assert [f.status for f in result.diagnosis.findings] == ["fail", "pass"]
    prompt = last_user_text(server.requests[0])
    assert "It was 1999." in prompt and "What year?" in prompt
    assert server.requests[0]["temperature"] == 0.0


def test_diagnose_unparseable_is_invalid_input_with_raw_output() -> None:
    client, _ = scripted_client(["I think the response is decent overall."])
    result = asyncio.run(diagnose_response(client, "q", "r"))
    assert result.status == "invalid_input" and result.diagnosis is None
    assert "unparseable" in (result.error or "") and result.raw_output


def test_diagnose_backend_failures_map_to_status() -> None:
    client, _ = scripted_client([ScriptedReply(text="late", delay_s=30)], timeout_s=0.2)
    assert asyncio.run(diagnose_response(client, "q", "r")).status == "timeout"
    client, _ = scripted_client([ScriptedReply.error(400, "context too long")])
    result = asyncio.run(diagnose_response(client, "q", "r"))
    assert result.status == "error" and "400" in (result.error or "")


@pytest.mark.timeout(20)
def test_unreachable_backend_is_error_not_hang() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = OpenAIChatClient(f"http://127.0.0.1:{port}/v1", "m", max_retries=1, backoff_initial_s=0.001)
    result = asyncio.run(diagnose_response(client, "q", "r"))
    assert result.status == "error" and "cannot connect" in (result.error or "")


def _leaky_diagnosis(fails: int) -> Diagnosis:
    text = diagnosis_json(fails, extra_claim="- the chosen response, Response A is the winner and preferred")
    return Diagnosis.model_validate_json(text)


def test_synthesis_prompt_has_no_winner_hints_and_order_is_random() -> None:
    requests: list[dict[str, Any]] = []

    def script(request: dict[str, Any]) -> str:
        requests.append(request)
        return synthesis_json("1")

    client, _ = scripted_client(script)
    chosen_diag, rejected_diag = _leaky_diagnosis(0), _leaky_diagnosis(2)
    first_positions = []
    for key in range(12):
        result = asyncio.run(synthesise_rubric(client, "Name the year.", chosen_diag, rejected_diag,
                                               expected_winner="A", order_key=f"pair-{key}"))
        assert result.status == "ok" and result.rubric is not None
        prompt = last_user_text(requests[-1])
        for term in LEAK_TERMS:
            assert not re.search(rf"\b{term}\b", prompt, re.IGNORECASE), (term, prompt)
        shown_first = section(prompt, "Diagnosis of Response 1")
        first_positions.append("chosen" if fails_in_diagnosis(shown_first) == 0 else "rejected")
        # "1" means whatever was shown first: mapped back to A/B through the presentation order.
        check = result.rubric.pair_consistency_check
        assert check is not None and check.rubric_predicts == result.presented_order[0]
        assert check.expected_winner == "A"
        assert find_winner_hints(result.rubric.model_dump_json(exclude={"pair_consistency_check"})) == []
    assert {"chosen", "rejected"} <= set(first_positions), first_positions


def test_synthesised_rubric_text_is_scrubbed() -> None:
    leaky = json.loads(synthesis_json("tie"))
    leaky["hard_rules"][0]["criterion"] = "must match Response A's use of the chosen formula"
    client, _ = scripted_client([json.dumps(leaky)])
    result = asyncio.run(synthesise_rubric(client, "q", _leaky_diagnosis(0), _leaky_diagnosis(1)))
    assert result.rubric is not None
    assert find_winner_hints(result.rubric.hard_rules[0].criterion) == []


def test_synthesis_with_missing_fields_is_invalid_input() -> None:
    client, _ = scripted_client(['{"hard_rules": [{"rule_id": "R1", "type": "must"}], "rubric_predicts": "1"}'])
    result = asyncio.run(synthesise_rubric(client, "q", _leaky_diagnosis(0), _leaky_diagnosis(1)))
    assert result.status == "invalid_input" and result.rubric is None


def _example(instruction_id: str, winner: str, predicts: str | None) -> RubricExample:
    pair = PreferencePair(instruction="q" + instruction_id, response_a="a", response_b="b", winner=winner,  # type: ignore[arg-type]
                          instruction_id=instruction_id)
    if predicts is None:
        return RubricExample(pair=pair, status="invalid_input", error="unparseable")
    rubric = example_rubric().model_copy(update={"pair_consistency_check": PairConsistencyCheck(
        expected_winner=winner, rubric_predicts=predicts)})  # type: ignore[arg-type]
    return RubricExample(pair=pair, rubric=rubric)


def test_consistency_filter_drops_whole_instruction() -> None:
    examples = [_example("i1", "A", "A"), _example("i1", "B", "B"),      # consistent instruction: kept
                _example("i2", "A", "A"), _example("i2", "B", "A"),      # one wrong → both dropped
                _example("i3", "A", "tie"),                              # tie is wrong
                _example("i4", "A", "A"), _example("i4", "B", None)]     # failed example dropped alone
    report = consistency_filter(examples)
    assert [(e.pair.instruction_id, e.pair.winner) for e in report.kept] == [("i1", "A"), ("i1", "B"), ("i4", "A")]
    assert report.dropped_instructions == ["i2", "i3"]
    assert len(report.dropped) == 4


def _pipeline_script(wrong_for: str) -> Any:
    """Diagnoses count the '[bad]' markers; the synthesiser favours the diagnosis with fewer fails,
    except for the instruction containing ``wrong_for``, where it favours the other one."""

    def script(request: dict[str, Any]) -> str:
        prompt = last_user_text(request)
        if is_prompt(request, DIAGNOSE):
            return diagnosis_json(section(prompt, "Answer").count("[bad]"))
        assert is_prompt(request, SYNTHESISE)
        fails_1 = fails_in_diagnosis(section(prompt, "Diagnosis of Response 1"))
        fails_2 = fails_in_diagnosis(section(prompt, "Diagnosis of Response 2"))
        favoured = "1" if fails_1 < fails_2 else "2"
        if wrong_for in section(prompt, "Instruction"):
            favoured = "2" if favoured == "1" else "1"
        return synthesis_json(favoured)

    return script


def test_pipeline_end_to_end_filters_inconsistent_instruction() -> None:
    client, server = scripted_client(_pipeline_script(wrong_for="capital"))
    pairs = [
        PreferencePair(instruction="What is 2+2?", chosen="4", rejected="5 [bad]", pair_id="p1"),
        PreferencePair(instruction="What is 2+2?", response_a="22 [bad] [bad]", response_b="Four", winner="B",
                       pair_id="p2"),
        PreferencePair(instruction="Name the capital of France.", chosen="Paris", rejected="Lyon [bad]",
                       pair_id="p3"),
    ]
    report = asyncio.run(run_cdrrm_pipeline(client, pairs, seed=7))
    assert [e.pair.pair_id for e in report.kept] == ["p1", "p2"]
    assert report.dropped_instructions == ["Name the capital of France."]
    assert len(server.requests) == 9  # 2 diagnoses + 1 synthesis per pair


def test_generate_rubric_with_generator_and_without() -> None:
    rubric = example_rubric().model_dump(mode="json", exclude={"pair_consistency_check"})
    client, server = scripted_client([f"Sure:\n```json\n{json.dumps(rubric)}\n```"])
    result = asyncio.run(generate_rubric("q", "answer one", "answer two", generator=client))
    assert result.status == "ok" and result.method == "generator" and result.rubric == Rubric.model_validate(rubric)
    assert is_prompt(server.requests[0], GENERATOR)
    assert "answer one" in last_user_text(server.requests[0])

    client, _ = scripted_client(_pipeline_script(wrong_for="\x00"))
    result = asyncio.run(generate_rubric("q", "good", "bad [bad]", diagnoser=client))
    assert result.status == "ok" and result.method == "diagnose_synthesise" and result.rubric is not None
    check = result.rubric.pair_consistency_check
    assert check is not None and check.expected_winner is None and check.rubric_predicts == "A"

    client, _ = scripted_client(["no rubric here"])
    assert asyncio.run(generate_rubric("q", "a", "b", generator=client)).status == "invalid_input"
    with pytest.raises(ValueError, match="generator or a diagnoser"):
        asyncio.run(generate_rubric("q", "a", "b"))


def test_rubric_cache_key_is_stable_and_versioned() -> None:
    key = rubric_cache_key("Name the year.", "gen-v1")
    assert key == rubric_cache_key("Name the year.", "gen-v1")
    assert key.endswith(":gen-v1") and len(key.split(":")[0]) == 64
    assert key != rubric_cache_key("Name the year.", "gen-v2")
