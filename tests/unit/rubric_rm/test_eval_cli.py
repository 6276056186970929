"""`rewardhub eval rm` on the scripted backend (ScriptedLLMServer, a TEST DOUBLE replaying canned replies)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from typer.testing import CliRunner

from rewardhub.eval_cli import comparisons, eval_app
from tests.unit.rubric_rm.helpers import diagnosis_json, synthesis_json

cli = typer.Typer()
cli.add_typer(eval_app, name="eval")


def _write(path: Path, lines: list[object]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_rmb_metrics_count_unparseable_as_wrong(tmp_path: Path) -> None:
    rows = _write(tmp_path / "rmb.jsonl", [
        {"id": "1", "prompt": "2+2?", "chosen": "4", "rejected": "5", "category": "math"},
        {"id": "2", "prompt": "Capital of France?", "chosen": "Paris", "rejected": "Rome", "category": "geo"}])
    # Per comparison: two diagnoses, one synthesis, then the judge in order AB and in order BA.
    replies = [diagnosis_json(0), diagnosis_json(2), synthesis_json("1"), "Winner: Response A", "Winner: Response B",
               diagnosis_json(0), diagnosis_json(2), synthesis_json("1"), "no verdict here", "Winner: Response B"]
    script = _write(tmp_path / "script.jsonl", replies)
    report_path = tmp_path / "report.json"
    result = CliRunner().invoke(cli, ["eval", "rm", "--format", "rmb", str(rows), "--backend", "scripted",
                                      "--script", str(script), "--output", str(report_path)])
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    assert report["overall"] == {"n": 2, "n_parseable": 1, "n_correct": 1, "acc_all": 0.5, "acc_parseable": 1.0,
                                 "parse_rate": 0.5}
    assert report["rmb"]["categories"] == {"geo": 0.0, "math": 1.0}
    assert "acc_all" in result.output and "parse_rate" in result.output


def test_bad_rows_and_options_fail_before_any_call(tmp_path: Path) -> None:
    rows = _write(tmp_path / "bad.jsonl", [{"prompt": "q", "chosen": "a"}])
    result = CliRunner().invoke(cli, ["eval", "rm", "--format", "rmb", str(rows), "--backend", "scripted",
                                      "--script", str(rows)])
    assert result.exit_code == 2 and "rejected" in result.output
    result = CliRunner().invoke(cli, ["eval", "rm", "--format", "helm", str(rows)])
    assert result.exit_code == 2 and "rewardbench" in result.output


def test_rmbench_makes_nine_comparisons_per_item() -> None:
    assert comparisons("rmbench", [{}, {}]) == 18 and comparisons("rewardbench", [{}, {}]) == 2
