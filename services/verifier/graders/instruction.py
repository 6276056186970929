"""IFEval-style verifiable instruction constraints; each constraint is a pass/fail sub-score."""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import TypeAdapter, ValidationError

from rewardhub.reward_specs import (
    Constraint,
    CountConstraint,
    FormatConstraint,
    InstructionSpec,
    KeywordConstraint,
    PhraseConstraint,
)
from services.verifier.graders.result import GradeResult, invalid_input

_CONSTRAINTS: TypeAdapter[list[Constraint]] = TypeAdapter(list[Constraint])
_SENTENCE_END = re.compile(r"[.!?]+(?=\s|$)")
_BULLET = re.compile(r"^\s*(?:[*\-•]|\d+[.)])\s+", re.MULTILINE)


def count(kind: str, text: str, section_marker: str = "Section") -> int:
    if kind == "word_count":
        return len(re.findall(r"\b[\w'-]+\b", text))
    if kind == "sentence_count":
        return len(_SENTENCE_END.findall(text.strip())) or (1 if text.strip() else 0)
    if kind == "paragraph_count":
        return len([p for p in re.split(r"\n\s*\n", text.strip()) if p.strip()])
    if kind == "bullet_count":
        return len(_BULLET.findall(text))
    if kind == "section_count":
        return len(re.findall(rf"^\s*#*\s*{re.escape(section_marker)}\s+\w+", text, re.MULTILINE | re.IGNORECASE))
    raise ValueError(kind)


def _compare(value: int, relation: str, target: int) -> bool:
    return {"at_least": value >= target, "at_most": value <= target, "exactly": value == target}[relation]


def check(constraint: Constraint, text: str) -> bool:
    if isinstance(constraint, CountConstraint):
        return _compare(count(constraint.kind, text, constraint.section_marker), constraint.relation, constraint.value)
    if isinstance(constraint, KeywordConstraint):
        haystack = text if constraint.case_sensitive else text.casefold()
        present = [
            re.search(rf"\b{re.escape(k if constraint.case_sensitive else k.casefold())}\b", haystack) is not None
            for k in constraint.keywords]
        return all(present) if constraint.kind == "include_keywords" else not any(present)
    if isinstance(constraint, PhraseConstraint):
        stripped = text.strip()
        if constraint.kind == "starts_with":
            return stripped.startswith(constraint.phrase)
        return stripped.endswith(constraint.phrase)
    if isinstance(constraint, FormatConstraint):
        if constraint.kind == "json_format":
            body = re.sub(r"^```(?:json)?\s*|\s*```$", "", text.strip())
            try:
                json.loads(body)
            except (json.JSONDecodeError, ValueError):
                return False
            return True
        if constraint.kind == "all_lowercase":
            return text == text.lower()
        if constraint.kind == "all_uppercase":
            return text == text.upper()
        return "," not in text
    raise TypeError(type(constraint).__name__)


def _name(index: int, constraint: Constraint) -> str:
    return f"{index}:{constraint.kind}"


def grade_instruction(spec: InstructionSpec, completion: str, ground_truth: Any) -> GradeResult:
    constraints = list(spec.constraints)
    if not constraints:
        try:
            constraints = _CONSTRAINTS.validate_python(ground_truth if ground_truth is not None else [])
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            return invalid_input(f"ground_truth constraints are malformed at {where}: {first['msg']}")
    if not constraints:
        return invalid_input("no constraints: give them in the spec or as ground_truth")
    passed = {_name(i, c): float(check(c, completion)) for i, c in enumerate(constraints)}
    fraction = sum(passed.values()) / len(passed)
    score = float(fraction == 1.0) if spec.all_or_nothing else fraction
    return GradeResult(score=score, sub_scores=passed, details={"passed": int(sum(passed.values())),
                                                                "total": len(passed)})
