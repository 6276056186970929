"""Math equivalence with math-verify: gold wrapped as ``\\boxed{gt}``, gold first in ``verify``."""

from __future__ import annotations

import math
import threading
from typing import Any

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify
from math_verify.errors import TimeoutException

from services.common.reward_specs import MathSpec
from services.verifier.graders.result import GradeResult, failed, invalid_input, ok, timed_out


def _prediction_config(spec: MathSpec) -> list[Any]:
    latex = LatexExtractionConfig(boxed_match_priority=spec.boxed_match_priority)
    if spec.extraction == "latex_only":
        return [latex]
    if spec.extraction == "expr_only":
        return [ExprExtractionConfig()]
    return [latex, ExprExtractionConfig()]


def gold_text(ground_truth: Any) -> str:
    gold = str(ground_truth).strip()
    return gold if "\\boxed" in gold else f"\\boxed{{{gold}}}"


def _timeouts(spec: MathSpec) -> tuple[int | None, int | None]:
    # math-verify times out with signal.alarm, which only works in the main thread; elsewhere the
    # caller's process-level hard timeout is what bounds the work.
    if threading.current_thread() is not threading.main_thread():
        return None, None
    seconds = max(1, math.ceil(spec.timeout_s))
    return seconds, seconds


def grade_math(spec: MathSpec, completion: str, ground_truth: Any) -> GradeResult:
    if ground_truth is None or str(ground_truth).strip() == "":
        return invalid_input("ground_truth is empty")
    parse_timeout, verify_timeout = _timeouts(spec)
    # raise_on_error=True so that math-verify's timeouts reach us instead of becoming an empty
    # parse (which would read as a wrong answer).
    try:
        gold = parse(gold_text(ground_truth), extraction_config=[LatexExtractionConfig()],
                     parsing_timeout=parse_timeout, raise_on_error=True)  # type: ignore[arg-type]
    except TimeoutException:  # derives from BaseException, not Exception
        return timed_out(f"parsing the ground truth exceeded {spec.timeout_s}s")
    except Exception as exc:
        return invalid_input(f"math-verify cannot parse the ground truth: {type(exc).__name__}",
                             ground_truth=str(ground_truth)[:200])
    if not gold:
        return invalid_input("math-verify could not parse the ground truth", ground_truth=str(ground_truth)[:200])
    try:
        prediction = parse(completion, extraction_config=_prediction_config(spec),
                           parsing_timeout=parse_timeout, raise_on_error=True)  # type: ignore[arg-type]
    except TimeoutException:
        return timed_out(f"parsing the completion exceeded {spec.timeout_s}s")
    except RecursionError:
        return timed_out("the completion is too deeply nested to parse")
    except Exception as exc:  # an unparseable answer is a wrong answer, and we say why
        return GradeResult(score=0.0, details={"extracted": None, "reason": f"unparseable: {type(exc).__name__}"})
    if not prediction:
        return GradeResult(score=0.0, details={"extracted": None, "reason": "no answer found"})
    try:
        equal = verify(gold, prediction, float_rounding=spec.float_rounding, strict=spec.strict,
                       timeout_seconds=verify_timeout, raise_on_error=True)
    except TimeoutException:
        return timed_out(f"comparing the answers exceeded {spec.timeout_s}s")
    except RecursionError:
        return timed_out("the expressions are too deeply nested to compare")
    except Exception as exc:
        return failed(f"math-verify could not compare the answers: {type(exc).__name__}: {exc}"[:300])
    return ok(1.0 if equal else 0.0, extracted=str(prediction[-1])[:200], gold=str(gold[-1])[:200])
