"""Remove every hint of which response won before the rubric synthesiser sees a diagnosis.

CDRRM synthesises rubrics "with every hint of which response won removed": the synthesiser must
derive criteria from the diagnoses, not copy a label. Diagnoses are made one response at a time,
but an LLM can still write "the chosen response", "Response A is the winner" or "preferred"; this
module rewrites such phrases to neutral ones. The trade-off is deliberate: a quoted answer that
itself contains a word like "winner" is redacted too, because leaking the label costs more than
losing one word of evidence. The same scrub keeps pair-specific labels out of rubric rules, which
must be checkable on a single answer.
"""

from __future__ import annotations

import re

from services.rubric_rm.schemas import Diagnosis, Rubric

NEUTRAL = "this response"
REDACTED = "[redacted]"

_NOUN = r"(?:responses?|answers?|outputs?|completions?|replies|reply|generations?|candidates?|ones?|options?)"
# Comparative words only: "an incorrect answer" describes one response and is kept.
_OUTCOME_ADJ = (r"(?:chosen|rejected|winning|losing|preferred|dispreferred|non-preferred|unpreferred|"
                r"better|worse|superior|inferior)")

# "the chosen response", "the better answer", "the rejected one"
_OUTCOME_PHRASE = re.compile(rf"\b(?:the\s+|a\s+|this\s+|that\s+)?{_OUTCOME_ADJ}\s+{_NOUN}\b", re.IGNORECASE)
# "Response A", "answer (B)", "Assistant 2", "output #1"
_LABELLED = re.compile(r"\b(?:the\s+)?(?:response|answer|assistant|output|completion|candidate|model)\s*"
                       r"(?:#\s*)?[(\[]?\s*(?:[AB12])\s*[)\]]?(?![\w])", re.IGNORECASE)
# bare outcome words and verbs
_OUTCOME_WORD = re.compile(r"\b(?:chosen|rejected|winners?|losers?|winning|losing|preferred|dispreferred|"
                           r"preferable|wins|loses)\b", re.IGNORECASE)

LEAK_PATTERNS = (_OUTCOME_PHRASE, _LABELLED, _OUTCOME_WORD)


def scrub_winner_hints(text: str) -> str:
    """``text`` with outcome phrases → "this response", labels → "this response", outcome words → "[redacted]"."""
    text = _OUTCOME_PHRASE.sub(NEUTRAL, text)
    text = _LABELLED.sub(NEUTRAL, text)
    return _OUTCOME_WORD.sub(REDACTED, text)


def find_winner_hints(text: str) -> list[str]:
    """Every phrase in ``text`` that would reveal an outcome or a pair label (empty = clean)."""
    return [m.group(0) for pattern in LEAK_PATTERNS for m in pattern.finditer(text)]


def scrub_diagnosis(diagnosis: Diagnosis) -> Diagnosis:
    """A copy of ``diagnosis`` with every free-text field scrubbed (statuses and severities unchanged)."""
    return Diagnosis(
        criteria_candidates=[scrub_winner_hints(c) for c in diagnosis.criteria_candidates],
        findings=[f.model_copy(update={
            "criterion": scrub_winner_hints(f.criterion), "claim": scrub_winner_hints(f.claim),
            "evidence": scrub_winner_hints(f.evidence),
            "instruction_anchor": scrub_winner_hints(f.instruction_anchor)}) for f in diagnosis.findings],
    )


def scrub_rubric(rubric: Rubric) -> Rubric:
    """A copy of ``rubric`` whose rule and principle texts name no pair label or outcome."""
    return rubric.model_copy(update={
        "hard_rules": [r.model_copy(update={
            "criterion": scrub_winner_hints(r.criterion), "rationale": scrub_winner_hints(r.rationale),
            "test": scrub_winner_hints(r.test)}) for r in rubric.hard_rules],
        "principles": [p.model_copy(update={"description": scrub_winner_hints(p.description)})
                       for p in rubric.principles],
    })
