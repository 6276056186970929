"""Dispatch a spec to its grader."""

from __future__ import annotations

from typing import Any

from rewardhub.reward_specs import (
    CodeSpec,
    ExactSpec,
    InstructionSpec,
    JsonSchemaSpec,
    MathSpec,
    MultipleChoiceSpec,
    MultiSpec,
    NumericSpec,
    NutritionSpec,
    RecSpec,
    RegexSpec,
    RewardSpec,
    RubricSpec,
    ToolCallSpec,
)
from services.verifier.graders.choice import grade_choice
from services.verifier.graders.instruction import grade_instruction
from services.verifier.graders.json_schema import grade_json_schema
from services.verifier.graders.math import grade_math
from services.verifier.graders.multi import grade_multi
from services.verifier.graders.numeric import grade_numeric
from services.verifier.graders.nutrition import grade_nutrition
from services.verifier.graders.result import GradeResult, failed
from services.verifier.graders.text import grade_exact, grade_regex
from services.verifier.graders.tool_call import grade_tool_call


def grade(spec: RewardSpec, completion: str, ground_truth: Any) -> GradeResult:
    try:
        return _dispatch(spec, completion, ground_truth)
    except RecursionError:
        return GradeResult(score=0.0, status="timeout", details={"reason": "input too deeply nested"})
    except Exception as exc:  # a grader bug must surface as status error, never as a silent 0
        return failed(f"{type(exc).__name__}: {exc}"[:300])


def _dispatch(spec: RewardSpec, completion: str, ground_truth: Any) -> GradeResult:
    if isinstance(spec, MathSpec):
        return grade_math(spec, completion, ground_truth)
    if isinstance(spec, NumericSpec):
        return grade_numeric(spec, completion, ground_truth)
    if isinstance(spec, MultipleChoiceSpec):
        return grade_choice(spec, completion, ground_truth)
    if isinstance(spec, ExactSpec):
        return grade_exact(spec, completion, ground_truth)
    if isinstance(spec, RegexSpec):
        return grade_regex(spec, completion, ground_truth)
    if isinstance(spec, InstructionSpec):
        return grade_instruction(spec, completion, ground_truth)
    if isinstance(spec, JsonSchemaSpec):
        return grade_json_schema(spec, completion, ground_truth)
    if isinstance(spec, ToolCallSpec):
        return grade_tool_call(spec, completion, ground_truth)
    if isinstance(spec, NutritionSpec):
        return grade_nutrition(spec, completion, ground_truth)
    if isinstance(spec, MultiSpec):
        return grade_multi(spec, completion, ground_truth, grade)
    if isinstance(spec, RubricSpec):
        # An LLM judge over HTTP: grading.grade_batch sends it to graders.rubric, never to this sync path.
        return failed("rubric specs are judged by the rubric_rm service, not in the grader pool")
    if isinstance(spec, RecSpec):
        # Scored by the rec_rm service over HTTP: grading.grade_batch sends it to graders.rec.
        return failed("rec specs are scored by the rec_rm service, not in the grader pool")
    if isinstance(spec, CodeSpec):
        # Untrusted code runs in the sandbox service: grading.grade_batch sends it to graders.code.
        return failed("code specs are run by the sandbox service, not in the grader pool")
    raise TypeError(f"no grader for spec type {type(spec).__name__}")
