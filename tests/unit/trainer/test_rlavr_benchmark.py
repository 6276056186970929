"""benchmarks/rlavr.py: its pure pieces by hand, and a smoke run at a tiny size that checks what must
hold whatever the results (the output format, the GT share each arm may use), not the results."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

from benchmarks import rlavr

REPO = Path(__file__).resolve().parents[3]
LINE = re.compile(r"^arm=(\w+) heldout_acc=(\d+\.\d{3})±(\d+\.\d{3}) gt_share=(\d+\.\d{3}) pseudo_acc=(\d+\.\d{3})$")
ACQUISITION_ARMS = ("random", "low_consensus", "care", "oracle_cag")


def test_operations_and_answers() -> None:
    assert rlavr.apply_op("+", 7, 3) == 10 and rlavr.apply_op("-", 7, 3) == 4
    problem = rlavr.Problem("p", "sum_of", 7, 3, "kft")
    assert problem.text == "kft: sum of 7 and 3 =" and problem.answer == "10"
    assert rlavr.Problem("p", "less", 7, 3).answer == "4"
    assert rlavr.answer_of_text(" 1 0 \n") == "10"


def test_digit_pairs_and_split() -> None:
    pairs = rlavr.digit_pairs()
    assert len(pairs) == 36 and all(9 >= a > b >= 1 for a, b in pairs)  # 8 + 7 + ... + 1
    train, held = rlavr.split_pairs()
    assert train == held == pairs
    train, held = rlavr.split_pairs(held_out_pairs=True)
    assert len(held) == 12 and len(train) == 24 and not set(train) & set(held)


def test_tags_are_unique_and_three_letters() -> None:
    assert rlavr.tag_of(0) == "bbb" and rlavr.tag_of(1) == "bbc" and rlavr.tag_of(20) == "bcb"
    assert rlavr.tag_of(8000) == "bbb"  # 20³ codes, then round again
    assert len({rlavr.tag_of(i) for i in range(8000)}) == 8000
    stream = rlavr.train_stream(0, 300)
    held = rlavr.held_out_problems()
    texts = [p.text for p in stream] + [p.text for p in held]
    assert len(set(texts)) == len(texts) == 300 + 6 * 36  # every text once: rows are told apart by their tokens
    assert len({p.prompt_id for p in stream}) == 300


def test_warmup_answer_mixture_by_hand() -> None:
    # sum_of: p = 0.3 right (10), SLIP = 0.1 off by one (9 or 11), the rest 0.6 the distractor 7 - 3 = 4.
    rng = random.Random(0)
    draws = [rlavr.warmup_answer(rng, "sum_of", 7, 3) for _ in range(20_000)]
    assert set(draws) == {10, 9, 11, 4}
    assert abs(draws.count(10) / 20_000 - 0.3) < 0.02 and abs(draws.count(4) / 20_000 - 0.6) < 0.02
    assert rlavr.majority_wrong_share("sum_of") == 1.0  # 0.6 > 0.3
    assert rlavr.majority_wrong_share("sym_plus") == 0.0  # 0.05 < 0.85


def test_budgets_and_rotation() -> None:
    assert rlavr.budget_for("share", 30, 10) == 60  # ⌈0.2 · 10⌉ = 2 a step
    assert rlavr.budget_for("share", 4, 7) == 8  # ⌈1.4⌉ = 2
    assert rlavr.budget_for("all", 30, 10) == 300 and rlavr.budget_for("none", 30, 10) == 0
    names = ["a", "b", "c"]
    assert rlavr.rotated(names, 0) == names and rlavr.rotated(names, 1) == ["b", "c", "a"]
    assert rlavr.rotated(names, 4) == ["b", "c", "a"]


def test_smoke_run_output_and_gt_shares(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env.update({"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "REWARDHUB_DATA_DIR": str(tmp_path / "d"),
                "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled"})
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.rlavr", "--seeds", "1", "--steps", "2", "--prompts", "5", "--group", "4",
         "--sft-steps", "40", "--sft-batch", "16", "--eval-every", "1", "--eval-samples", "1", "--out", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    rows = {m.group(1): m for m in (LINE.match(line) for line in lines) if m}
    assert list(rows) == ["full_gt", "ttrl", *ACQUISITION_ARMS]
    for match in rows.values():
        assert 0.0 <= float(match.group(2)) <= 1.0 and 0.0 <= float(match.group(5)) <= 1.0
    assert float(rows["full_gt"].group(4)) == 1.0  # every prompt bought and trained on its label
    assert float(rows["ttrl"].group(4)) == 0.0  # nothing bought
    for arm in ACQUISITION_ARMS:
        assert float(rows[arm].group(4)) <= 0.2 + 1e-9, arm
    ratios = [line for line in lines if line.startswith("care_vs_")]
    assert len(ratios) == 2 and re.fullmatch(r"care_vs_random=(\d+\.\d{3}|nan)", ratios[0]), ratios
    assert re.fullmatch(r"care_vs_ttrl=(\d+\.\d{3}|nan)", ratios[1]), ratios
    results = json.loads((out / "rlavr_results.json").read_text())
    for result in results["results"]:
        shares = result["gt_share"]
        assert len(shares) == 2
        if result["arm"] in ACQUISITION_ARMS:
            assert max(shares) <= 0.2 + 1e-9  # per step, not only on average
        assert len(result["curve"]) == 3  # step 0, 1, 2
    assert (out / "rlavr_curves.png").stat().st_size > 0
