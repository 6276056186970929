"""IFEval-style verifiable instruction constraints; each constraint is a pass/fail sub-score.

``response_language`` (IFEval's language constraint) uses langdetect, as IFEval does, made
deterministic: one detector factory per process with its profiles loaded in sorted file order and
``seed = 0`` (langdetect samples n-grams at random; unseeded, a borderline text can flip between
runs). It is detected on the reply's natural-language text, :func:`language_text`: a JSON reply (the
whole text, or a fenced block that parses) contributes its string values, never its keys or its
syntax (with ``json_fields``: only the strings under those keys); other fenced code blocks and
`inline code` are dropped; the prose left is kept. Passed when the most probable language is the
expected one (IFEval's rule; zh-cn and zh-tw both count as zh). No text to read, or text with no
letters langdetect can use (digits, punctuation), fails: sub-score 0 with the reason in
``details["language"]``, never an exception. Short texts are decided as they come, with no minimum
length (IFEval has none): langdetect is unreliable under a few words ("ok" reads as Slovak, "Hola"
as Turkish) — the detected language and its probability are in the details.
"""

from __future__ import annotations

import json
import os
import re
import threading
from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter, ValidationError

from rewardhub.reward_specs import (
    Constraint,
    CountConstraint,
    FormatConstraint,
    InstructionSpec,
    KeywordConstraint,
    LanguageConstraint,
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


_FENCED = re.compile(r"```[\w+.-]*[ \t]*\n?(.*?)```", re.DOTALL)  # an info string (json, python), then the body
_INLINE_CODE = re.compile(r"`[^`\n]+`")
_DETECTOR: Any = None
_DETECTOR_LOCK = threading.Lock()


@dataclass(frozen=True)
class LanguageVerdict:
    passed: bool
    detected: str | None = None
    probability: float | None = None
    reason: str | None = None

    def evidence(self, expected: str) -> dict[str, Any]:
        out: dict[str, Any] = {"expected": expected, "detected": self.detected}
        if self.probability is not None:
            out["probability"] = round(self.probability, 4)
        if self.reason is not None:
            out["reason"] = self.reason
        return out


def _strings(value: Any, fields: frozenset[str] | None, inside: bool) -> list[str]:
    """The string values of a JSON value (never its keys): all of them, or those under ``fields``."""
    if isinstance(value, str):
        return [value] if inside or fields is None else []
    if isinstance(value, dict):
        return [s for k, v in value.items()
                for s in _strings(v, fields, inside or (fields is not None and str(k).casefold() in fields))]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v, fields, inside)]
    return []


def _json(body: str) -> tuple[bool, Any]:
    try:
        return True, json.loads(body)
    except (json.JSONDecodeError, ValueError):
        return False, None


def language_text(text: str, json_fields: list[str] | None = None) -> str:
    """The natural-language text of a reply, the text its language is detected on.

    The whole reply as JSON -> its string values; otherwise the prose with fenced code blocks and
    inline code removed, followed by the string values of the fenced blocks that are JSON. With
    ``json_fields``, only the strings under those keys (at any depth, case-folded) are read from JSON.
    """
    fields = frozenset(f.casefold() for f in json_fields) if json_fields else None
    parsed, value = _json(text.strip())
    if parsed:
        parts = _strings(value, fields, False)
    else:
        parts = [_INLINE_CODE.sub(" ", _FENCED.sub(" ", text))]
        for block in _FENCED.findall(text):
            parsed, value = _json(block.strip())
            if parsed:
                parts.extend(_strings(value, fields, False))
    return "\n".join(" ".join(p.split()) for p in parts if p.strip())


def _detector_factory() -> Any:
    """langdetect's factory, loaded once per process: profiles in sorted order, seed 0."""
    global _DETECTOR
    with _DETECTOR_LOCK:
        if _DETECTOR is None:
            from langdetect.detector_factory import PROFILES_DIRECTORY, DetectorFactory

            factory = DetectorFactory()
            profiles = []
            for name in sorted(os.listdir(PROFILES_DIRECTORY)):
                with open(os.path.join(PROFILES_DIRECTORY, name), encoding="utf-8") as handle:
                    profiles.append(handle.read())
            factory.load_json_profile(profiles)
            factory.seed = 0
            _DETECTOR = factory
        return _DETECTOR


def detect_language(text: str) -> tuple[str, float] | None:
    """langdetect's most probable language of ``text`` as an ISO 639-1 code and its probability;
    None when the text has nothing langdetect can read."""
    from langdetect.lang_detect_exception import LangDetectException

    detector = _detector_factory().create()
    detector.append(text)
    try:
        best = detector.get_probabilities()
    except LangDetectException:
        return None
    if not best:
        return None
    code = str(best[0].lang).split("-")[0]  # zh-cn, zh-tw -> zh
    return code, float(best[0].prob)


def check_language(constraint: LanguageConstraint, text: str) -> LanguageVerdict:
    body = language_text(text, constraint.json_fields)
    if not body.strip():
        where = f" under {', '.join(constraint.json_fields)}" if constraint.json_fields else ""
        return LanguageVerdict(False, reason=f"no natural-language text{where} to detect the language of")
    found = detect_language(body)
    if found is None:
        return LanguageVerdict(False, reason="the language is undetectable: the text has no letters langdetect reads")
    code, probability = found
    return LanguageVerdict(code == constraint.language, code, probability)


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
    if isinstance(constraint, LanguageConstraint):
        return check_language(constraint, text).passed
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
    passed: dict[str, float] = {}
    language: dict[str, dict[str, Any]] = {}
    for i, c in enumerate(constraints):
        if isinstance(c, LanguageConstraint):
            verdict = check_language(c, completion)
            passed[_name(i, c)] = float(verdict.passed)
            language[_name(i, c)] = verdict.evidence(c.language)
        else:
            passed[_name(i, c)] = float(check(c, completion))
    fraction = sum(passed.values()) / len(passed)
    score = float(fraction == 1.0) if spec.all_or_nothing else fraction
    details: dict[str, Any] = {"passed": int(sum(passed.values())), "total": len(passed)}
    if language:
        details["language"] = language
    return GradeResult(score=score, sub_scores=passed, details=details)
