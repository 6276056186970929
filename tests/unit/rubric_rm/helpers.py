"""Shared test helpers: a real OpenAIChatClient wired to ScriptedLLMServer (a test double)."""

from __future__ import annotations

import json
import re
from typing import Any

from services.common.llm import OpenAIChatClient
from services.common.llm.scripted import ScriptedLLMServer, ScriptedReply, ScriptFn, last_user_text
from services.rubric_rm import prompts
from services.rubric_rm.schemas import HardRule, Principle, Rubric


def scripted_client(script: ScriptFn | list[ScriptedReply | str], **kw: Any) -> tuple[OpenAIChatClient, ScriptedLLMServer]:
    server = ScriptedLLMServer(script)
    kw.setdefault("max_retries", 0)
    kw.setdefault("backoff_initial_s", 0.001)
    client = OpenAIChatClient("http://scripted.local/v1", "judge", transport=server.transport(), **kw)
    return client, server


def system_text(request: dict[str, Any]) -> str:
    return next((m["content"] for m in request["messages"] if m["role"] == "system"), "")


def section(text: str, name: str) -> str:
    """The body of a ``[name]`` section of a prompt (up to the next ``[...]`` header)."""
    match = re.search(rf"\[{re.escape(name)}\]\n(.*?)(?:\n\n\[|\n\n(?:Check|For every|Write|Return)|\Z)", text, re.S)
    return match.group(1) if match else ""


def diagnosis_json(fails: int, *, extra_claim: str = "") -> str:
    findings = [{"criterion": "factual accuracy", "status": "fail", "severity": 2,
                 "claim": f"wrong fact {i} {extra_claim}".strip(), "evidence": f"quote {i}",
                 "instruction_anchor": "the question"} for i in range(fails)]
    findings.append({"criterion": "format compliance", "status": "pass", "severity": 0,
                     "claim": f"well formatted {extra_claim}".strip(), "evidence": "",
                     "instruction_anchor": "format"})
    return json.dumps({"criteria_candidates": ["factual accuracy", "format compliance"], "findings": findings})


def synthesis_json(predicts: str) -> str:
    return json.dumps({
        "hard_rules": [{"rule_id": "R1", "type": "must", "criterion": "states the correct fact",
                        "rationale": "accuracy decides", "test": "the stated fact matches the reference"}],
        "principles": [{"principle_id": "P1", "description": "clear and concise"}],
        "rubric_predicts": predicts})


def fails_in_diagnosis(diagnosis_text: str) -> int:
    return sum(1 for f in json.loads(diagnosis_text)["findings"] if f["status"] == "fail")


def example_rubric() -> Rubric:
    return Rubric(hard_rules=[HardRule(rule_id="R1", type="must", criterion="answers the question", test="an answer"),
                              HardRule(rule_id="R2", type="forbid", criterion="invents facts", test="no fabrication")],
                  principles=[Principle(principle_id="P1", description="concise")])


def judge_prompt_responses(request: dict[str, Any]) -> tuple[str, str]:
    text = last_user_text(request)
    return section(text, "Response A"), section(text, "Response B")


def is_prompt(request: dict[str, Any], system: str) -> bool:
    return system_text(request) == system


DIAGNOSE = prompts.DIAGNOSE_SYSTEM
SYNTHESISE = prompts.SYNTHESISE_SYSTEM
PAIRWISE = prompts.PAIRWISE_SYSTEM
POINTWISE = prompts.POINTWISE_SYSTEM
GENERATOR = prompts.GENERATOR_SYSTEM
