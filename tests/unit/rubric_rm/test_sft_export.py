"""Generator SFT export: chat JSONL, balanced and seeded A/B positions, no outcome in the target."""

from __future__ import annotations

import json
from pathlib import Path

from services.rubric_rm.prompts import GENERATOR_SYSTEM
from services.rubric_rm.schemas import PairConsistencyCheck, PreferencePair, RubricExample
from services.rubric_rm.sft_export import export_generator_sft
from tests.unit.rubric_rm.helpers import example_rubric, section


def _examples(n: int) -> list[RubricExample]:
    rubric = example_rubric().model_copy(update={"pair_consistency_check": PairConsistencyCheck(
        expected_winner="A", rubric_predicts="A")})
    out = [RubricExample(pair=PreferencePair(instruction=f"q{i}", chosen=f"GOOD-{i}", rejected=f"BAD-{i}"),
                         rubric=rubric) for i in range(n)]
    out.append(RubricExample(pair=PreferencePair(instruction="qx", chosen="c", rejected="r"), status="error",
                             error="backend down"))
    return out


def _chosen_first(record: dict[str, object]) -> bool:
    user = record["messages"][1]["content"]  # type: ignore[index]
    return section(user, "Response A").startswith("GOOD")


def test_positions_are_balanced_and_seeded(tmp_path: Path) -> None:
    path = tmp_path / "sft" / "generator.jsonl"
    export = export_generator_sft(_examples(9), seed=3, path=path)
    assert (export.chosen_first, export.chosen_second, export.skipped) == (5, 4, 1)
    flags = [_chosen_first(r) for r in export.records]
    assert sum(flags) == 5
    # Same seed → same assignment; another seed → (for this data) a different one.
    assert [_chosen_first(r) for r in export_generator_sft(_examples(9), seed=3).records] == flags
    assert [_chosen_first(r) for r in export_generator_sft(_examples(9), seed=4).records] != flags

    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 9
    record = json.loads(lines[0])
    roles = [m["role"] for m in record["messages"]]
    assert roles == ["system", "user", "assistant"] and record["messages"][0]["content"] == GENERATOR_SYSTEM
    target = json.loads(record["messages"][2]["content"])
    assert set(target) == {"hard_rules", "principles"}  # the consistency check (the outcome) is not a target
