"""Tool calls: well-formed, to declared tools, with arguments valid against each tool's schema.

Accepted forms: Hermes/Qwen ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` blocks,
or a JSON object / list of objects with ``name`` and ``arguments`` (OpenAI-style ``function``
wrappers too).
"""

from __future__ import annotations

import json
import re
from typing import Any

from jsonschema import Draft202012Validator

from rewardhub.reward_specs import ToolCallSpec
from services.verifier.graders.extract import parse_json_lenient
from services.verifier.graders.result import GradeResult, invalid_input

_TAGGED = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)


def _normalise_call(raw: Any) -> dict[str, Any] | None:
    if not isinstance(raw, dict):
        return None
    if "function" in raw and isinstance(raw["function"], dict):
        raw = raw["function"]
    name = raw.get("name")
    arguments = raw.get("arguments", raw.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return None
    if not isinstance(name, str) or not isinstance(arguments, dict):
        return None
    return {"name": name, "arguments": arguments}


def extract_calls(text: str) -> tuple[list[dict[str, Any]], list[str]]:
    """(calls, problems): every call found, and what was malformed."""
    problems: list[str] = []
    raws: list[Any] = []
    tagged = _TAGGED.findall(text)
    if tagged:
        for i, block in enumerate(tagged):
            try:
                raws.append(json.loads(block))
            except json.JSONDecodeError as exc:
                problems.append(f"tool_call block {i} is not valid JSON: {exc.msg}")
    else:
        value, found = parse_json_lenient(text)
        if found:
            raws.extend(value if isinstance(value, list) else [value])
    calls = []
    for i, raw in enumerate(raws):
        call = _normalise_call(raw)
        if call is None:
            problems.append(f"call {i} lacks a string name and object arguments")
        else:
            calls.append(call)
    return calls, problems


def _canonical(call: dict[str, Any]) -> str:
    return json.dumps(call, sort_keys=True)


def grade_tool_call(spec: ToolCallSpec, completion: str, ground_truth: Any) -> GradeResult:
    tools = {tool.name: Draft202012Validator(tool.parameters) for tool in spec.tools}
    calls, problems = extract_calls(completion)
    for i, call in enumerate(calls):
        validator = tools.get(call["name"])
        if validator is None:
            problems.append(f"call {i} names an undeclared tool {call['name']!r}")
            continue
        for error in validator.iter_errors(call["arguments"]):
            problems.append(f"call {i} ({call['name']}) arguments: {error.message}"[:200])
    if spec.require_calls and not calls and not problems:
        problems.append("no tool call found")
    well_formed = float(not problems)
    sub_scores = {"well_formed": well_formed}
    score = well_formed
    if spec.match_ground_truth:
        expected = ground_truth if isinstance(ground_truth, list) else [ground_truth]
        gold = [_normalise_call(g) for g in expected]
        if any(g is None for g in gold):
            return invalid_input("ground_truth must be a call or list of calls with name and arguments")
        matches = sorted(map(_canonical, calls)) == sorted(_canonical(g) for g in gold if g is not None)
        sub_scores["matches_ground_truth"] = float(matches)
        score = well_formed * float(matches)
    return GradeResult(score=score, sub_scores=sub_scores, details={"calls": len(calls), "problems": problems[:10]})
