"""Exact match and regular expressions, after configurable normalisation."""

from __future__ import annotations

import re
import string
from typing import Any

from rewardhub.reward_specs import ExactSpec, Normalisation, RegexSpec
from services.verifier.graders.extract import last_boxed
from services.verifier.graders.result import GradeResult, invalid_input, ok

_TEXT_CMD = re.compile(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}")


def normalise(text: str, options: Normalisation) -> str:
    if options.strip_latex_text:
        text = _TEXT_CMD.sub(r"\1", text).replace("$", "")
    if not options.case_sensitive:
        text = text.casefold()
    if options.strip_punctuation:
        text = text.translate(str.maketrans("", "", string.punctuation))
    if options.collapse_whitespace:
        text = " ".join(text.split())
    return text.strip()


def _extract(text: str, mode: str) -> str:
    if mode == "boxed_or_whole":
        boxed = last_boxed(text)
        return boxed if boxed is not None else text
    if mode == "last_line":
        lines = [line for line in text.strip().splitlines() if line.strip()]
        return lines[-1] if lines else ""
    return text


def grade_exact(spec: ExactSpec, completion: str, ground_truth: Any) -> GradeResult:
    if ground_truth is None:
        return invalid_input("ground_truth is required for exact match")
    golds = ground_truth if isinstance(ground_truth, list) else [ground_truth]
    predicted = normalise(_extract(completion, spec.extract), spec.normalisation)
    accepted = {normalise(str(g), spec.normalisation) for g in golds}
    return ok(1.0 if predicted in accepted else 0.0, extracted=predicted[:200])


def grade_regex(spec: RegexSpec, completion: str, ground_truth: Any) -> GradeResult:
    pattern_text = spec.pattern if spec.pattern is not None else (str(ground_truth) if ground_truth is not None else None)
    if not pattern_text:
        return invalid_input("no pattern: set spec.pattern or give the pattern as ground_truth")
    try:
        flags = 0 if spec.normalisation.case_sensitive else re.IGNORECASE
        pattern = re.compile(pattern_text, flags)
    except re.error as exc:
        return invalid_input(f"ground_truth is not a valid regular expression: {exc}")
    text = normalise(completion, spec.normalisation)
    match = pattern.fullmatch(text) if spec.full_match else pattern.search(text)
    return ok(1.0 if match else 0.0, matched=match.group(0)[:200] if match else None)
