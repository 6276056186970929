"""benchmarks/sts.py end to end at its --small size: every stage runs and the report lines are printed.

The small run's numbers mean nothing (a few training steps); this checks the plumbing: tokenizer
and tiny model built offline, pretraining, SAE, STS scores, real fine-tunes, Pearson, table, PNG.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from tests.conftest import require_module


def test_small_run_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    require_module("sae_lens", "a training dependency (rewardhub[train])")
    from benchmarks import sts

    result = sts.main(["--small", "--out", str(tmp_path), "--seeds", "2", "--threads", "1"])
    out = capsys.readouterr().out
    assert re.search(r"^sts_pearson=(nan|-?\d\.\d{3}) p=\S+ n_pairs=6 top_k=8 ", out, re.M)
    assert "per_seed_r median=" in out and "top_k_sweep k=8:r=" in out
    rows = [line for line in out.splitlines() if line.rstrip().endswith("(in-domain)")]
    assert len(rows) == 3  # three domains: one in-domain row each, beside six off-diagonal rows
    png = tmp_path / "sts_scatter.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((tmp_path / "sts_results.json").read_text())
    assert len(saved["pairs"]) == 9 and saved["n_pairs"] == 6
    for pair in saved["pairs"]:
        assert pair["score"] >= 0.0  # a mean of squares
        assert math.isclose(pair["delta"], pair["after"] - pair["before"], abs_tol=1e-9)
        assert -1.0 <= pair["delta"] <= 1.0
    assert result["n_pairs"] == 6
