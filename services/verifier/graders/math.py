"""Math equivalence with math-verify: gold wrapped as ``\\boxed{gt}`` (by default), gold first in ``verify``.

Each (gold, prediction) pair math-verify extracted is compared on its own, so that one pair that
raises (``12:00`` parses as ``12/0 = zoo``, which sympy cannot evaluate) does not decide the item
when another pair (the strings ``12:00`` and ``12:00``) can be compared.
"""

from __future__ import annotations

import math
import threading
from itertools import product
from typing import Any

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify
from math_verify.errors import TimeoutException
from sympy import Basic, MatrixBase

from rewardhub.reward_specs import MathSpec
from services.verifier.graders.extract import all_boxed
from services.verifier.graders.result import GradeResult, invalid_input, ok, timed_out

_EXPR = ExprExtractionConfig()
_GOLD_LATEX = LatexExtractionConfig()  # the default gold reading: math-verify's own defaults
_BOXES_LATEX = LatexExtractionConfig(boxed_match_priority=0)


def _latex(spec: MathSpec) -> LatexExtractionConfig:
    return LatexExtractionConfig(boxed_match_priority=spec.boxed_match_priority)


def answer_source(spec: MathSpec, text: str) -> tuple[str, list[Any]]:
    """What math-verify reads for an answer under ``spec.extraction``: the text and the targets."""
    if spec.extraction == "latex_only":
        return text, [_latex(spec)]
    if spec.extraction == "expr_only":
        return text, [_EXPR]
    if spec.extraction == "boxed_then_any":
        boxes = all_boxed(text)
        if boxes:  # only the boxes count, read as LaTeX (several boxes: math-verify's reading of them)
            return " ".join(f"\\boxed{{{box}}}" for box in boxes), [_BOXES_LATEX]
    return text, [_latex(spec), _EXPR]


def gold_text(ground_truth: Any) -> str:
    gold = str(ground_truth).strip()
    return gold if "\\boxed" in gold else f"\\boxed{{{gold}}}"


def gold_source(spec: MathSpec, ground_truth: Any) -> tuple[str, list[Any]]:
    """What math-verify reads for the ground truth under ``spec.gold_extraction``."""
    if spec.gold_extraction == "boxed_latex":
        return gold_text(ground_truth), [_GOLD_LATEX]
    if spec.gold_extraction == "same":
        return answer_source(spec, str(ground_truth).strip())
    return str(ground_truth).strip(), [_latex(spec) if t == "latex" else _EXPR for t in spec.gold_extraction]


def _timeouts(spec: MathSpec) -> tuple[int | None, int | None]:
    # math-verify times out with signal.alarm, which only works in the main thread; elsewhere the
    # caller's process-level hard timeout is what bounds the work.
    if threading.current_thread() is not threading.main_thread():
        return None, None
    seconds = max(1, math.ceil(spec.timeout_s))
    return seconds, seconds


def _kind(value: Any) -> str | None:
    if isinstance(value, str):
        return "str"
    return "sympy" if isinstance(value, (Basic, MatrixBase)) else None


def _found(gold: list[Any], prediction: list[Any]) -> dict[str, str]:
    # Only once decided: str() of a huge sympy value can itself take long (usually these are the
    # extracted strings, math-verify's fallbacks).
    return {"extracted": str(prediction[-1])[:200], "gold": str(gold[-1])[:200]}


def _compare(spec: MathSpec, gold: list[Any], prediction: list[Any], verify_timeout: int | None) -> GradeResult:
    """Pair by pair, in math-verify's order: 1 if any pair verifies, 0 if every pair that could be
    compared is unequal, ``error`` if every one raised, ``timeout`` if one ran out and none verified."""
    raised: list[Exception] = []
    compared = 0
    ran_out: str | None = None
    for g, p in product(gold, prediction):
        kind = _kind(g)
        # math-verify only compares like with like (str with str, sympy with sympy); anything else
        # is False without a comparison, so it is neither evidence of a wrong answer nor a cost.
        if kind is None or kind != _kind(p) or (ran_out is not None and kind == "sympy"):
            continue  # after a pair ran out, only the (instant) string pairs are still tried
        try:
            # raise_on_error=True so that math-verify's timeouts reach us instead of reading as unequal.
            if verify(g, p, float_rounding=spec.float_rounding, strict=spec.strict,
                      allow_set_relation_comp=spec.allow_set_relation_comp,
                      timeout_seconds=verify_timeout, raise_on_error=True):
                return ok(1.0, **_found(gold, prediction), **({"raised_pairs": len(raised)} if raised else {}))
            compared += 1
        except TimeoutException:  # derives from BaseException, not Exception
            ran_out = f"comparing the answers exceeded {spec.timeout_s}s"
        except RecursionError:
            ran_out = "the expressions are too deeply nested to compare"
        except Exception as exc:
            raised.append(exc)
    counts = {"raised_pairs": len(raised)} if raised else {}
    if ran_out is not None:  # the pair that ran out might have been the equal one
        return GradeResult(score=0.0, status="timeout", details={"reason": ran_out, **counts})
    if raised and not compared:
        reason = f"math-verify could not compare the answers: {type(raised[0]).__name__}: {raised[0]}"
        return GradeResult(score=0.0, status="error", details={"reason": reason[:300], **counts})
    return ok(0.0, **_found(gold, prediction), **counts)


def grade_math(spec: MathSpec, completion: str, ground_truth: Any) -> GradeResult:
    if ground_truth is None or str(ground_truth).strip() == "":
        return invalid_input("ground_truth is empty")
    parse_timeout, verify_timeout = _timeouts(spec)
    # raise_on_error=True so that math-verify's timeouts reach us instead of becoming an empty
    # parse (which would read as a wrong answer).
    gold_input, gold_targets = gold_source(spec, ground_truth)
    try:
        gold = parse(gold_input, extraction_config=gold_targets,
                     parsing_timeout=parse_timeout, raise_on_error=True)
    except TimeoutException:  # derives from BaseException, not Exception
        return timed_out(f"parsing the ground truth exceeded {spec.timeout_s}s")
    except Exception as exc:
        return invalid_input(f"math-verify cannot parse the ground truth: {type(exc).__name__}",
                             ground_truth=str(ground_truth)[:200])
    if not gold:
        return invalid_input("math-verify could not parse the ground truth", ground_truth=str(ground_truth)[:200])
    answer_input, answer_targets = answer_source(spec, completion)
    try:
        prediction = parse(answer_input, extraction_config=answer_targets,
                           parsing_timeout=parse_timeout, raise_on_error=True)
    except TimeoutException:
        return timed_out(f"parsing the completion exceeded {spec.timeout_s}s")
    except RecursionError:
        return timed_out("the completion is too deeply nested to parse")
    except Exception as exc:  # an unparseable answer is a wrong answer, and we say why
        return GradeResult(score=0.0, details={"extracted": None, "reason": f"unparseable: {type(exc).__name__}"})
    if not prediction:
        return GradeResult(score=0.0, details={"extracted": None, "reason": "no answer found"})
    return _compare(spec, gold, prediction, verify_timeout)
