"""Parsing judge and pipeline outputs, robust to what real models write.

- Pairwise verdicts: the judge must end with ``Winner: Response A|B``. Models also write
  ``**Winner:** B``, ``Final verdict: Response A``, quote a verdict inside their reasoning before
  the real one, or answer with JSON. The rule: the LAST verdict in the text is the judge's answer;
  a final verdict line that names both sides is ambiguous; no verdict at all is a parse failure
  (``None``), never a guess.
- Diagnoses: JSON (prose and fences tolerated, safe repairs); a finding that breaks the schema
  (e.g. "fail" without quoted evidence) is dropped and counted, not patched.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from services.common.llm.structured import extract_json_candidates, loads_lenient, parse_structured
from services.rubric_rm.schemas import Diagnosis, Finding, Verdict

_VERDICT = re.compile(
    r"(?:final\s+verdict|final\s+answer|winner|verdict)\s*(?:is\s*)?[*_]*\s*[:：=]?\s*[*_\s\[(\"'`]*"
    r"(?:(?:response|assistant|answer)\s*(?P<labelled>[ab])|(?P<bare>(?-i:[AB]))|(?P<tie>tie|draw))"
    r"(?![\w])",
    re.IGNORECASE,
)
# "Winner: Response A or Response B", "Winner: A/B": a verdict immediately followed by the other side.
_ALTERNATIVE = re.compile(r"\s*[*_\])\"'`]*\s*(?:or|and|/|\||&)\s*[*_\[(\"'`]*\s*"
                          r"(?:(?:response|assistant|answer)\s*(?P<side>[ab])|(?P<bare>(?-i:[AB])))(?![\w])",
                          re.IGNORECASE)


@dataclass(frozen=True)
class VerdictParse:
    """``winner`` is "A", "B" or "tie" as positioned in the prompt; ``None`` with ``error`` if unparseable."""

    winner: Verdict | None
    error: str | None = None


def _side(match: re.Match[str]) -> Verdict:
    if match.group("tie"):
        return "tie"
    letter = match.group("labelled") or match.group("bare")
    return "A" if letter.upper() == "A" else "B"


def _json_verdict(text: str) -> Verdict | None:
    for candidate in reversed(extract_json_candidates(text)):
        try:
            data, _ = loads_lenient(candidate)
        except ValueError:
            continue
        if not isinstance(data, dict):
            continue
        for key in ("winner", "verdict", "better_response", "preferred"):
            value = data.get(key)
            if isinstance(value, str):
                cleaned = value.strip().lower().removeprefix("response").removeprefix("assistant").strip()
                if cleaned in ("a", "b"):
                    return "A" if cleaned == "a" else "B"
                if cleaned in ("tie", "draw"):
                    return "tie"
    return None


def parse_pairwise_verdict(text: str | None) -> VerdictParse:
    """The final verdict of a pairwise judge output; see the module docstring for the rules."""
    if not text or not text.strip():
        return VerdictParse(None, "empty judge output")
    matches = list(_VERDICT.finditer(text))
    if matches:
        last = matches[-1]
        winner = _side(last)
        alternative = _ALTERNATIVE.match(text, last.end())
        if alternative is not None:
            other = (alternative.group("side") or alternative.group("bare")).upper()
            if other != winner:
                return VerdictParse(None, f"ambiguous final verdict: {text[last.start(): alternative.end()]!r}")
        return VerdictParse(winner)
    from_json = _json_verdict(text)
    if from_json is not None:
        return VerdictParse(from_json)
    return VerdictParse(None, "no final verdict ('Winner: Response A|B') in the judge output")


class _LooseDiagnosis(BaseModel):
    """A diagnosis before each finding is checked on its own."""

    criteria_candidates: list[str] = Field(default_factory=list)
    findings: list[Any]


@dataclass(frozen=True)
class DiagnosisParse:
    diagnosis: Diagnosis | None
    dropped_findings: int = 0
    error: str | None = None


def parse_diagnosis(text: str | None) -> DiagnosisParse:
    """A :class:`Diagnosis` from model output; invalid findings are dropped and counted.

    A diagnosis with no valid finding left is a parse failure.
    """
    outcome = parse_structured(text, _LooseDiagnosis, schema_name="Diagnosis")
    if outcome.value is None:
        return DiagnosisParse(None, 0, outcome.error)
    findings: list[Finding] = []
    problems: list[str] = []
    for index, raw in enumerate(outcome.value.findings):
        try:
            findings.append(Finding.model_validate(raw))
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = ".".join(str(p) for p in first.get("loc", ())) or "finding"
            problems.append(f"findings[{index}].{loc}: {first.get('msg', 'invalid')}")
    dropped = len(outcome.value.findings) - len(findings)
    if not findings:
        reason = "; ".join(problems[:3]) if problems else "findings is empty"
        return DiagnosisParse(None, dropped, f"no valid finding in the diagnosis ({reason})")
    criteria = [c for c in outcome.value.criteria_candidates if isinstance(c, str) and c.strip()]
    return DiagnosisParse(Diagnosis(criteria_candidates=criteria, findings=findings), dropped)
