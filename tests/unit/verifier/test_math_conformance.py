"""Our `math` grader agrees with math-verify on every conformance case; disagreements with the
expected labels are exactly the documented ones (see data/math_conformance_disagreements.md).

A case may carry a ``spec`` (MathSpec options); math-verify is then called with the same
extraction targets and comparison options, the way its own documentation shows.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify
from pydantic import TypeAdapter

from rewardhub.reward_specs import MathSpec, RewardSpec
from services.verifier.graders.registry import grade

DATA = Path(__file__).parent / "data" / "math_conformance.jsonl"
CASES: list[dict[str, Any]] = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
ORIGINAL_CASES = 209  # rows 209+ are math-verify-style cases (see the .md)
# Rows where math-verify (and so our grader) differs from the expected label, each justified in the .md.
DOCUMENTED_DISAGREEMENTS = {138, 163, 171, 174, 232, 233, 236, 241, 245, 251}
SPECS: TypeAdapter[Any] = TypeAdapter(RewardSpec)


def spec_of(case: dict[str, Any]) -> MathSpec:
    spec = SPECS.validate_python({"type": "math", **case.get("spec", {})})
    assert isinstance(spec, MathSpec)
    return spec


def boxed_gold(gold: str) -> str:
    """The gold as math-verify's examples pass it: inside \\boxed{} unless it has a box already.

    Written out here rather than imported from the grader, so that a bug there cannot reach the oracle.
    """
    gold = gold.strip()
    return gold if "\\boxed" in gold else "\\boxed{" + gold + "}"


def math_verify_direct(case: dict[str, Any]) -> bool:
    """math-verify's own parse + verify, configured like the case's spec (no boxed_then_any here:
    math-verify has no such mode)."""
    spec = spec_of(case)
    latex = LatexExtractionConfig(boxed_match_priority=spec.boxed_match_priority)
    targets: dict[str, list[Any]] = {"latex_and_expr": [latex, ExprExtractionConfig()], "latex_only": [latex],
                                     "expr_only": [ExprExtractionConfig()]}
    prediction_targets = targets[spec.extraction]
    if spec.gold_extraction == "boxed_latex":
        gold = parse(boxed_gold(str(case["gold"])), extraction_config=[LatexExtractionConfig()])
    elif spec.gold_extraction == "same":
        gold = parse(case["gold"], extraction_config=prediction_targets)
    else:
        gold = parse(case["gold"], extraction_config=[latex if t == "latex" else ExprExtractionConfig()
                                                      for t in spec.gold_extraction])
    return bool(verify(gold, parse(case["prediction"], extraction_config=prediction_targets),
                       float_rounding=spec.float_rounding, strict=spec.strict,
                       allow_set_relation_comp=spec.allow_set_relation_comp))


def test_the_set_is_large_and_mixed() -> None:
    assert len(CASES) >= 270
    assert sum(c["expected"] for c in CASES) > 50 and sum(not c["expected"] for c in CASES) > 50
    styled = CASES[ORIGINAL_CASES:]
    for topic in ("$-delimited", "long CoT", "clock time", "relation", "unit", "thousands separator",
                  "decimal comma", "\\text"):
        assert sum(topic in c["note"] for c in styled) >= 2, topic
    assert sum("allow_set_relation_comp" in c.get("spec", {}) for c in styled) >= 4
    assert sum(c.get("spec", {}).get("extraction") == "expr_only" for c in styled) >= 4


def test_the_documented_rows_are_the_documented_ones() -> None:
    table = (DATA.parent / "math_conformance_disagreements.md").read_text()
    listed = {int(line.split("|")[1]) for line in table.splitlines() if line.startswith("| ") and line[2].isdigit()}
    assert listed == DOCUMENTED_DISAGREEMENTS


@pytest.mark.parametrize("row", range(len(CASES)))
def test_case(row: int) -> None:
    case = CASES[row]
    result = grade(spec_of(case), case["prediction"], case["gold"])
    assert result.status == "ok", result
    ours = result.score == 1.0
    assert ours == math_verify_direct(case), f"disagrees with math-verify: {case}"
    if row in DOCUMENTED_DISAGREEMENTS:
        assert ours != case["expected"], f"row {row} now matches its label: remove it from the documented list"
    else:
        assert ours == case["expected"], f"undocumented disagreement at row {row}: {case}"
