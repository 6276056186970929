"""JSON output validated against a JSON Schema (jsonschema, draft 2020-12)."""

from __future__ import annotations

import json
from typing import Any

from jsonschema import Draft202012Validator

from rewardhub.reward_specs import JsonSchemaSpec
from services.verifier.graders.extract import parse_json_lenient
from services.verifier.graders.result import GradeResult, ok


def grade_json_schema(spec: JsonSchemaSpec, completion: str, ground_truth: Any) -> GradeResult:
    if spec.extract == "whole":
        try:
            value, found = json.loads(completion), True
        except (json.JSONDecodeError, ValueError):
            value, found = None, False
    else:
        value, found = parse_json_lenient(completion)
    if not found:
        return GradeResult(score=0.0, details={"reason": "no JSON found in the completion"})
    errors = sorted(Draft202012Validator(spec.json_schema).iter_errors(value), key=lambda e: list(e.path))
    if errors:
        first = errors[0]
        path = "/".join(str(p) for p in first.path) or "(root)"
        return GradeResult(score=0.0, details={"reason": f"schema violation at {path}: {first.message}"[:300],
                                               "violations": len(errors)})
    return ok(1.0)
