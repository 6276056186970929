"""benchmarks/ziprl.py at a tiny size: one line per budget and arm, one per length and arm."""

from __future__ import annotations

import re

import pytest

from benchmarks import ziprl


def test_benchmark_prints_one_line_per_arm(capsys: pytest.CaptureFixture[str]) -> None:
    ziprl.main(["--seeds", "1", "--questions", "3", "--turns", "8", "--budgets", "100,400", "--lengths", "8,16",
                "--stress-questions", "2", "--stress-budget", "200"])
    out = capsys.readouterr().out
    budget_lines = re.findall(r"^budget=(\d+)\s+arm=(\w+)\s+evidence_recall=([\d.]+)", out, re.MULTILINE)
    assert sorted((int(b), a) for b, a, _ in budget_lines) == sorted(
        (b, a) for b in (100, 400) for a in ("uniform", "recency", "graded"))
    stress = re.findall(r"^turns=(\d+)\s+arm=(\w+)\s+accuracy=([\d.]+) peak_context_tokens=(\d+)", out, re.MULTILINE)
    assert sorted((int(t), a) for t, a, _, _ in stress) == sorted(
        (t, a) for t in (8, 16) for a in ("uniform", "recency", "graded", "full"))
    assert "at every length: True" in out
    assert all(0.0 <= float(r) <= 1.0 for _, _, r in budget_lines)
