"""The AMR-SD hint leak filter: a hint may guide, never give the answer away.

A hint is rejected, with the first reason that applies, when it

- ``empty``: has no visible text;
- ``length``: is longer than the cap (characters);
- ``boxed``: contains any ``\\boxed{…}`` (a hint never states a boxed result);
- ``final_answer``: contains a guarded answer as text once LaTeX markup, case, punctuation and all
  white space (line breaks too) are removed — so ``Pa ris``, ``\\text{Paris}`` or ``pa-\\nris`` match
  ``Paris``; an answer of fewer than 3 such characters must match as a whole word instead;
- ``numeric_answer``: holds a number equal to a numeric answer (``\\frac{1}{2}``, ``1/2``, ``0.50``,
  ``1,000``, digits split by spaces or line breaks), or, for an answer of two digits or more, the
  answer's digits anywhere in it once white space is removed (``the 1 2 th``, ``x = 123`` for 12);
- ``answer_in_words``: spells a whole-number or simple-fraction answer in English words (``forty-two``,
  ``one hundred and five``, ``tw elve``, ``three quarters``, ``half``: spellings of 5+ letters are
  found even split by white space or hyphens, shorter ones as whole words).

The guarded answers are the request's ``answer`` and every ``\\boxed{}`` content of the reference.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction

_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
         "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_SCALES = [(1_000_000_000, "billion"), (1_000_000, "million"), (1_000, "thousand")]
WORDS_UP_TO = 999_999_999_999


@dataclass(frozen=True)
class Verdict:
    """The filter's answer: ``ok``, or the ``reason`` (one of the names above) and what matched."""

    ok: bool
    reason: str | None = None
    detail: str | None = None


def boxed_contents(text: str) -> list[str]:
    """The contents of every ``\\boxed{…}`` (and ``\\fbox{…}``) in ``text``, braces balanced."""
    out: list[str] = []
    for match in re.finditer(r"\\(?:boxed|fbox)\s*\{", text):
        depth, start = 1, match.end()
        i = start
        while i < len(text) and depth:
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
            i += 1
        if depth == 0:
            out.append(text[start:i - 1])
    return out


def _strip_latex(text: str) -> str:
    """LaTeX reduced to plain text: ``\\frac{a}{b}`` → ``(a)/(b)``, ``\\text{x}`` → ``x``, spacing commands dropped."""
    s = text
    for _ in range(4):  # nested fractions
        s = re.sub(r"\\[dt]?frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}", r"(\1)/(\2)", s)
        s = re.sub(r"\\[dt]?frac\s*(\d)\s*(\d)", r"\1/\2", s)
    s = re.sub(r"\\(?:text|mathrm|mathbf|textbf|mathit|operatorname|mbox)\s*\{([^{}]*)\}", r"\1", s)
    s = re.sub(r"\\(?:left|right|displaystyle|[,;:! ]|quad|qquad)", " ", s)
    s = s.replace("\\cdot", "*").replace("\\times", "*").replace("\\%", "%")
    s = re.sub(r"\\[A-Za-z]+", " ", s)
    return s.replace("$", " ").replace("{", "").replace("}", "")


def _compact(text: str) -> str:
    """Lower-case letters and digits only (markup, punctuation and white space removed)."""
    return re.sub(r"[^0-9a-z]", "", _strip_latex(text).lower())


def parse_number(text: str) -> Fraction | None:
    """A numeric answer's value (``12``, ``-3.5``, ``1,000``, ``3/4``, ``\\frac{3}{4}``, ``50\\%``→50), or None."""
    s = re.sub(r"\s+", "", _strip_latex(text)).rstrip(".").removesuffix("%")
    s = s.replace("(", "").replace(")", "")
    if re.fullmatch(r"[-+]?\d{1,3}(,\d{3})+(\.\d+)?", s):
        s = s.replace(",", "")
    m = re.fullmatch(r"([-+]?\d+(?:\.\d+)?)(?:/(\d+(?:\.\d+)?))?", s)
    if not m:
        return None
    value = Fraction(m.group(1))
    if m.group(2) is not None:
        denominator = Fraction(m.group(2))
        if denominator == 0:
            return None
        value /= denominator
    return value


def numbers_in(text: str) -> list[Fraction]:
    """Every number in ``text``: decimals, ``a/b`` fractions (and each part), thousands separators, and
    digits split only by white space joined (``1 2`` → 12, ``3\\n4`` → 34, each part counted as well)."""
    plain = _strip_latex(text).replace("(", " ").replace(")", " ")
    found: list[Fraction] = []
    for candidate in (plain, re.sub(r"(?<=\d)\s+(?=\d)", "", plain)):
        for m in re.finditer(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?(?:\s*/\s*\d+(?:\.\d+)?)?", candidate):
            token = m.group(0).replace(",", "").replace(" ", "")
            parts = token.split("/")
            found.extend(Fraction(p) for p in parts)
            if len(parts) == 2 and Fraction(parts[1]) != 0:
                found.append(Fraction(parts[0]) / Fraction(parts[1]))
            start = m.start()
            if start > 0 and candidate[start - 1] == "-":
                found.extend(-Fraction(p) for p in parts)
    return found


def number_words(n: int) -> list[str]:
    """English spellings of a whole number 0 ≤ n ≤ 10¹² − 1, compact (no spaces or hyphens): with and
    without "and" after hundreds (``onehundredfive``, ``onehundredandfive``)."""
    if not 0 <= n <= WORDS_UP_TO:
        return []

    def below_thousand(x: int, with_and: bool) -> str:
        hundreds, rest = divmod(x, 100)
        out = f"{_ONES[hundreds]}hundred" if hundreds else ""
        if rest:
            if hundreds and with_and:
                out += "and"
            out += _ONES[rest] if rest < 20 else _TENS[rest // 10] + (_ONES[rest % 10] if rest % 10 else "")
        return out

    def spell(x: int, with_and: bool) -> str:
        if x == 0:
            return "zero"
        out = ""
        for scale, name in _SCALES:
            if x >= scale:
                out += spell(x // scale, with_and) + name
                x %= scale
        return out + (below_thousand(x, with_and) if x else "")

    return sorted({spell(n, False), spell(n, True)})


_DENOMINATORS = {2: ("half", "halves"), 3: ("third", "thirds"), 4: ("quarter", "quarters", "fourth", "fourths"),
                 5: ("fifth", "fifths"), 6: ("sixth", "sixths"), 7: ("seventh", "sevenths"), 8: ("eighth", "eighths"),
                 9: ("ninth", "ninths"), 10: ("tenth", "tenths")}


def spellings(value: Fraction) -> list[str]:
    """Compact English spellings of a numeric answer: whole numbers (:func:`number_words`), and simple
    fractions p/q with q ≤ 10 and 0 < p < 20 (``onehalf``, ``half``, ``threequarters``, ``twothirds``)."""
    value = abs(value)
    if value.denominator == 1:
        return number_words(value.numerator)
    p, q = value.numerator, value.denominator
    if q not in _DENOMINATORS or not 0 < p < 20:
        return []
    out = [_ONES[p] + name for name in _DENOMINATORS[q]]
    if p == 1:
        out += ["a" + _DENOMINATORS[q][0], _DENOMINATORS[q][0]]
    return out


def _word_pattern(words: str) -> re.Pattern[str]:
    # A short spelling ("one", "six", "ten") only as a whole word, letters allowed to be split by hyphens.
    letters = r"[\s\-]*".join(re.escape(ch) for ch in words)
    return re.compile(rf"(?<![a-z]){letters}(?![a-z])")


def _whole_word(needle: str, text: str) -> bool:
    return re.search(rf"(?<![0-9a-z]){re.escape(needle)}(?![0-9a-z])", text) is not None


def check_hint(hint: str, answers: Iterable[str], *, max_chars: int) -> Verdict:
    """Whether ``hint`` may be shown to the teacher; see the module docstring for the checks, in order."""
    if not hint.strip():
        return Verdict(False, "empty", "the hint has no text")
    if len(hint) > max_chars:
        return Verdict(False, "length", f"{len(hint)} characters; the cap is {max_chars}")
    if re.search(r"\\(?:boxed|fbox)\b", hint):
        return Verdict(False, "boxed", "the hint contains \\boxed{}")
    hint_compact = _compact(hint)
    hint_lower = _strip_latex(hint).lower()
    hint_numbers: list[Fraction] | None = None
    hint_digits = re.sub(r"\s+", "", _strip_latex(hint))
    hint_letters = re.sub(r"[^a-z]", "", hint_lower)
    for answer in answers:
        answer = answer.strip()
        if not answer:
            continue
        value = parse_number(answer)
        if value is not None:
            if hint_numbers is None:
                hint_numbers = numbers_in(hint)
            if any(v == value for v in hint_numbers):
                return Verdict(False, "numeric_answer", f"the hint contains the answer's value {answer!r}")
            digits = re.sub(r"\D", "", answer.split(".")[0]) if value.denominator == 1 else ""
            if len(digits) >= 2 and digits in hint_digits:
                return Verdict(False, "numeric_answer", f"the hint contains the answer's digits {digits!r}")
            for spelled in spellings(value):
                if len(spelled) >= 5 and spelled in hint_letters:
                    return Verdict(False, "answer_in_words", f"the hint spells the answer ({spelled})")
                if len(spelled) < 5 and _word_pattern(spelled).search(hint_lower):
                    return Verdict(False, "answer_in_words", f"the hint spells the answer ({spelled})")
            continue
        compact = _compact(answer)
        if not compact:
            continue
        if len(compact) >= 3 and compact in hint_compact:
            return Verdict(False, "final_answer", f"the hint contains the answer {answer!r}")
        if len(compact) < 3 and _whole_word(compact, hint_lower):
            return Verdict(False, "final_answer", f"the hint contains the answer {answer!r} as a word")
    return Verdict(True)


def guarded_answers(answer: str | None, reference: str | None) -> list[str]:
    """What the filter guards: ``answer`` and every ``\\boxed{}`` content of ``reference`` (duplicates dropped)."""
    out: list[str] = []
    for candidate in ([answer] if answer else []) + (boxed_contents(reference) if reference else []):
        if candidate.strip() and candidate.strip() not in out:
            out.append(candidate.strip())
    return out
