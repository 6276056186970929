"""benchmarks/self_distillation.py end to end at a toy size: every arm runs through GRPOTrainer's
self_distillation section and prints its line; the table, the JSON and the PNGs are written.

The numbers of so short a run mean nothing; this checks the plumbing (task, SFT start, in-process
teacher, the scripted reflector stand-in, the report)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest


def test_toy_run_prints_one_line_per_arm(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import self_distillation

    runs = self_distillation.main(["--steps", "2", "--steps-b", "2", "--sft-steps", "3", "--group", "4",
                                   "--prompts", "2", "--hidden", "32", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert re.search(r"^start seed=0 acc_student=\d\.\d\d acc_with_qcp=\d\.\d\d$", out, re.M)
    lines = [line for line in out.splitlines() if line.startswith("part=")]
    assert [line.split()[1] for line in lines] == ["arm=qcp", "arm=answer", "arm=none", "arm=grpo",
                                                   "arm=raw_reference", "arm=amr_sd"]
    assert "distill_kl=" in lines[0] and "modulated_share=" in lines[5] and "hints=" in lines[5]
    assert re.search(r"^qcp_vs_answer=\S+ qcp_vs_none=\S+ amr_vs_raw_late=\S+ amr_vs_grpo_late=\S+$", out, re.M)
    assert len(runs) == 6 and all(len(r.rewards) == 2 for r in runs)
    assert len(json.loads((tmp_path / "self_distillation_runs.json").read_text())) == 6
    assert (tmp_path / "table.md").read_text().count("\n") == 8
    for part in ("a", "b"):
        assert (tmp_path / f"self_distillation_{part}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
