"""benchmarks/ziprl_rl.py (part b) at a tiny size: one line per arm, the arms' token costs ordered."""

from __future__ import annotations

import re

import pytest

from benchmarks import ziprl_rl


def test_the_rl_benchmark_prints_one_line_per_arm(capsys: pytest.CaptureFixture[str]) -> None:
    results = ziprl_rl.main(["--seeds", "1", "--steps", "1", "--warmup-steps", "2", "--questions", "4",
                             "--eval-questions", "2", "--eval-samples", "1", "--prompts", "2", "--group", "2",
                             "--arms", "full,ziprl"])
    out = capsys.readouterr().out
    lines = re.findall(r"^arm=(\w+) acc=([\d.]+)±([\d.]+) tokens_per_episode=([\d.]+)", out, re.MULTILINE)
    assert [name for name, *_ in lines] == ["full", "ziprl"]
    assert all(0.0 <= float(acc) <= 1.0 for _, acc, _, _ in lines)
    # The scripted teacher under each memory: the full history loses nothing (every chain is answerable).
    assert results["full"][0]["acc_scripted"] == 1.0
    assert all(0.0 <= r[0]["acc_scripted"] <= 1.0 for r in results.values())


def test_the_reward_reads_the_last_answer() -> None:
    assert ziprl_rl.score("search: x of y\nanswer: Foo Bar", "foo bar") == 1.0
    assert ziprl_rl.score("search: x of yanswer: Baz", "foo") == 0.0
    assert ziprl_rl.score("no answer here", "foo") == 0.0
