"""`rewardhub eval rm` on the scripted backend (ScriptedLLMServer, a TEST DOUBLE replaying canned replies)."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from rewardhub.eval_cli import comparisons, eval_app
from services.rubric_rm.evaluation import chosen_position_for
from tests.unit.rubric_rm.helpers import diagnosis_json, synthesis_json

cli = typer.Typer()
cli.add_typer(eval_app, name="eval")


def _write(path: Path, lines: Sequence[object]) -> Path:
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


# ------------------------------------------------------------------ the fixture benchmarks, end to end
FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "rm_eval"
RUBRIC = json.dumps({"hard_rules": [{"rule_id": "R1", "type": "must", "criterion": "answers correctly",
                                     "rationale": "accuracy", "test": "the answer is correct"}],
                     "principles": [{"principle_id": "P1", "description": "concise"}]})


def _quality(text: str) -> float:
    """The fixtures' ground truth: an answer marked "[ok]" is good; RM-Bench answers carry "score=x"."""
    match = re.search(r"score=([0-9.]+)", text)
    return float(match.group(1)) if match else float("[ok]" in text)


def _winner(first: str, second: str) -> str:
    # A content-following judge that keeps the first position when it cannot separate the answers.
    return "Winner: Response " + ("B" if _quality(second) > _quality(first) else "A")


def _comparisons(fmt: str, rows: list[dict[str, Any]]) -> list[tuple[str, str, str, str]]:
    """(key, prompt, chosen, rejected) per comparison, in the order the harness judges them."""
    if fmt != "rmbench":
        return [(row["id"], row["prompt"], row["chosen"], row["rejected"]) for row in rows]
    return [(f"{row['id']}:{i}:{j}", row["prompt"], row["chosen"][i], row["rejected"][j])
            for row in rows for i in range(3) for j in range(3)]


def _script(fmt: str, rows: list[dict[str, Any]], *, swap: bool, seed: int) -> list[str]:
    """Canned replies for the test double, one comparison at a time (the CLI runs scripted judges serially):
    the generator's rubric, then the judge in order AB and in order BA; an UNPARSEABLE prompt gets prose
    where the rubric should be, so its comparison ends unparsed after one call."""
    replies: list[str] = []
    for key, prompt, chosen, rejected in _comparisons(fmt, rows):
        if "UNPARSEABLE" in prompt:
            replies.append("I would rather not write a rubric.")
            continue
        a, b = (chosen, rejected) if chosen_position_for(key, swap=swap, seed=seed) == "A" else (rejected, chosen)
        replies += [RUBRIC, _winner(a, b), _winner(b, a)]
    return replies


def _run(tmp_path: Path, fmt: str, *extra: str, swap: bool = False, seed: int = 0) -> tuple[dict[str, Any], str]:
    file = FIXTURES / f"{fmt}_small.jsonl"
    rows = [json.loads(line) for line in file.read_text().splitlines() if line.strip()]
    script = _write(tmp_path / f"{fmt}-{swap}-{seed}.script.jsonl", _script(fmt, rows, swap=swap, seed=seed))
    report_path = tmp_path / f"{fmt}-{swap}-{seed}.report.json"
    args = ["eval", "rm", "--format", fmt, str(file), "--backend", "scripted", "--script", str(script),
            "--method", "generator", "--seed", str(seed), "--output", str(report_path), *extra]
    result = CliRunner().invoke(cli, [*args, "--swap"] if swap else args)
    assert result.exit_code == 0, result.output
    return json.loads(report_path.read_text()), result.output


def test_rewardbench_fixture(tmp_path: Path) -> None:
    report, output = _run(tmp_path, "rewardbench")
    # rb1 rb2 rb4 rb7 rb8 right; rb3 (both good) a tie; rb5 wrong; rb6 unparseable
    assert report["overall"] == pytest.approx({"n": 8, "n_parseable": 7, "n_correct": 5, "acc_all": 5 / 8,
                                               "acc_parseable": 5 / 7, "parse_rate": 7 / 8})
    sections = report["rewardbench"]["sections"]
    # chat: alpacaeval-easy 2/2 (weight 100), mt-bench-easy 0/1 (weight 28)
    assert sections == pytest.approx({"chat": 100 / 128, "chat_hard": 0.5, "safety": 0.0, "reasoning": 1.0})
    assert report["rewardbench"]["score"] == pytest.approx((100 / 128 + 0.5 + 0.0 + 1.0) / 4)
    for name in ("acc_all", "acc_parseable", "parse_rate", "chat_hard", "length-balanced acc"):
        assert name in output


def test_rmbench_fixture(tmp_path: Path) -> None:
    report, output = _run(tmp_path, "rmbench")
    # r1: chosen (.5 .7 .9) vs rejected (.4 .6 .8); r2: chosen .6 vs (.5 .55 .7); r3 unparseable. Mean matrix:
    # [[2/3, 1/3, 0], [2/3, 2/3, 0], [2/3, 2/3, 1/3]] → hard 1/9, normal 5/9, easy 2/3
    bench = report["rmbench"]
    assert (bench["hard"], bench["normal"], bench["easy"]) == pytest.approx((1 / 9, 5 / 9, 2 / 3))
    assert bench["avg"] == pytest.approx(4 / 9)
    assert report["overall"]["n"] == 27 and report["overall"]["parse_rate"] == pytest.approx(2 / 3)
    assert report["overall"]["acc_parseable"] == pytest.approx(2 / 3)
    assert "hard" in output and "easy" in output


def test_rmb_fixture_with_seeded_swap(tmp_path: Path) -> None:
    plain, _ = _run(tmp_path, "rmb")
    # helpfulness/chat 2/3 (m3 picks the wrong one), harmlessness/S1 1/1, helpfulness/code 1/2 (m6 unparseable)
    assert plain["rmb"]["categories"] == pytest.approx({"helpfulness/chat": 2 / 3, "harmlessness/S1": 1.0,
                                                        "helpfulness/code": 0.5})
    assert plain["rmb"]["weighted"] == pytest.approx(4 / 6)
    assert plain["overall"]["parse_rate"] == pytest.approx(5 / 6)
    # A judge that follows content, not position, scores the same when A/B are swapped by a seeded coin.
    swapped, _ = _run(tmp_path, "rmb", swap=True, seed=7)
    positions = [chosen_position_for(f"m{i}", swap=True, seed=7) for i in range(1, 7)]
    assert "A" in positions and "B" in positions  # the coin did move some chosen answers to B
    assert swapped["swap"] is True and swapped["seed"] == 7
    assert swapped["overall"] == plain["overall"] and swapped["rmb"] == plain["rmb"]


def test_native_rmb_directory_with_best_of_n_and_both_protocols(tmp_path: Path) -> None:
    from tests.unit.rubric_rm.test_evaluation_protocols import BON, PAIRWISE, _rmb_tree

    root = _rmb_tree(tmp_path / "rmb")
    # The harness judges the pairs first (file order), then each best-of-N item against its losers in order.
    comps = [(p["conversation_input"][-1]["content"], p["chosen"]["answer"], p["reject"]["answer"]) for p in PAIRWISE]
    comps += [(b["conversation_input"][-1]["content"], b["bon_best"]["answer"], loser["answer"])
              for b in BON for loser in b["loser_list"]]
    replies: list[str] = []
    for prompt, chosen, rejected in comps:
        replies += (["I would rather not write a rubric."] if "UNPARSEABLE" in prompt
                    else [RUBRIC, _winner(chosen, rejected), _winner(rejected, chosen)])
    script = _write(tmp_path / "script.jsonl", replies)
    report_path = tmp_path / "report.json"
    result = CliRunner().invoke(cli, ["eval", "rm", "--format", "rmb", str(root), "--backend", "scripted",
                                      "--script", str(script), "--method", "generator", "--output", str(report_path)])
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    # As in test_evaluation_protocols: pairs 2/3 (size-weighted); best-of-N b1 and b4 of 5 → 2/5.
    assert report["rmb"]["weighted"] == pytest.approx(2 / 3)
    assert report["rmb"]["bon"]["weighted"] == pytest.approx(2 / 5)
    assert report["rmb"]["bon"]["overall"]["parse_rate"] == pytest.approx(4 / 5)
    # Single order counts only the first call, and this judge names the first position when it cannot
    # separate the answers: the ties of b2 (vs "Blue [ok]") and b3 (both losers) become wins there, so
    # best-of-N Helpfulness/Chat/Discussion is 3/3 and the size-weighted best-of-N 4/5; pairs are unchanged.
    single = report["single_order"]["rmb"]
    assert single["weighted"] == pytest.approx(2 / 3)
    assert single["bon"]["categories"] == pytest.approx({"Harmlessness/S1": 0.5, "Helpfulness/Chat/Discussion": 1.0})
    assert single["bon"]["weighted"] == pytest.approx(4 / 5)
    assert "single-order" in result.output and "BoN weighted" in result.output
    assert comparisons("rmb", [*BON, *PAIRWISE]) == 2 + 2 + 2 + 1 + 1 + 3


def test_always_first_judge_through_the_cli_both_protocols(tmp_path: Path) -> None:
    file = FIXTURES / "rmb_small.jsonl"
    rows = [json.loads(line) for line in file.read_text().splitlines() if line.strip()]
    replies: list[str] = []
    for row in rows:  # a judge that always names the first position
        replies += (["I would rather not write a rubric."] if "UNPARSEABLE" in row["prompt"]
                    else [RUBRIC, "Winner: Response A", "Winner: Response A"])
    script = _write(tmp_path / "script.jsonl", replies)
    report_path = tmp_path / "report.json"
    result = CliRunner().invoke(cli, ["eval", "rm", "--format", "rmb", str(file), "--backend", "scripted",
                                      "--script", str(script), "--method", "generator", "--output", str(report_path)])
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    # 6 pairs, m6 unparseable (no rubric): both orders 0/6 (5 ties); single order 5/6 (chosen shown first).
    assert report["overall"]["n_correct"] == 0 and report["overall"]["n_parseable"] == 5
    assert report["single_order"]["overall"]["n_correct"] == 5
    assert report["single_order"]["overall"]["acc_all"] == pytest.approx(5 / 6)
