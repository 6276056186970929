"""`rewardhub eval model`: a checkpoint written by a 1-step run, evaluated through the live reward API
(its scores checked against the recorded completions), and configuration mistakes in one line."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from rewardhub.cli import app
from tests.conftest import SQLITE_ONLY, LiveServer
from trainer.config import parse_config
from trainer.grpo import GRPOTrainer
from trainer.rewards import CallableRewards, RewardItem

pytestmark = pytest.mark.slow
K = 4
DIGIT = {"type": "regex", "pattern": "[0-9]"}


def letter_share(completion: str, _truth: Any, _item: RewardItem) -> float:
    chars = [c for c in completion if not c.isspace()]
    return sum(c.isalpha() for c in chars) / len(chars) if chars else 0.0


def write_rows(path: Path) -> Path:
    rows = [{"data_source": "math" if i % 2 else "words", "reward_model": {"ground_truth": str(i)},
             "prompt": [{"role": "user", "content": f"What is {i} + {i}?"}]} for i in range(4)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def one_step_checkpoint(tmp_path: Path) -> Path:
    """A checkpoint without hf/ (export_hf: none): the CLI exports its model.pt on the fly."""
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"prompt": f"Say something ({i}).", "reward_model": {"ground_truth": "x"}})
                             + "\n" for i in range(4)))
    config = parse_config({"model": {"tiny": {"seed": 0}}, "dataset": str(train), "group_size": 2,
                           "prompts_per_step": 2, "max_steps": 1, "max_completion_length": 4, "seed": 0,
                           "export_hf": "none", "output_dir": str(tmp_path / "run")})
    outcome = GRPOTrainer(config, rewards=CallableRewards(letter_share)).train()
    assert outcome.checkpoint is not None and not (Path(outcome.checkpoint) / "hf").exists()
    return Path(outcome.checkpoint)


@SQLITE_ONLY
def test_eval_model_on_a_checkpoint_through_the_live_reward_api(live_server: LiveServer, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REWARDHUB_API_KEY", live_server.tenant.keys["trainer"])
    checkpoint = one_step_checkpoint(tmp_path)
    out = tmp_path / "eval"
    result = CliRunner().invoke(app, [
        "eval", "model", str(tmp_path / "run"), "--data", str(write_rows(tmp_path / "rows.jsonl")),
        "--spec", json.dumps(DIGIT), "-k", str(K), "--out", str(out), "--url", live_server.url,
        "--max-new-tokens", "6", "--temperature", "1.5", "--seed", "2"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["model"] == str(checkpoint)  # the run folder's latest checkpoint
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 4 * K and {s["status"] for s in samples} == {"ok"}
    for s in samples:  # the server's regex grader, recomputed on the recorded completion
        assert s["score"] == (1.0 if re.search("[0-9]", s["completion"]) else 0.0), s
    for source in ("math", "words"):
        mine = [s for s in samples if s["data_source"] == source]
        per_prompt = [[s["score"] for s in mine if s["prompt_index"] == p] for p in sorted({s["prompt_index"]
                                                                                            for s in mine})]
        stats = report["sources"][source]
        assert stats["avg@4"] == pytest.approx(sum(sum(p) / K for p in per_prompt) / len(per_prompt))
        assert stats["pass@4"] == pytest.approx(sum(1.0 in p for p in per_prompt) / len(per_prompt))
        assert stats["pass@4_prompts"] == 2 and stats["non_ok_count"] == 0
    assert report["temperature"] == 1.5 and report["seed"] == 2 and report["ks"] == [1, 2, 4]
    assert "avg@4" in result.output and "pass@4" in result.output


def one_line_error(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert lines[0].startswith("rewardhub eval model: ") and "Traceback" not in output
    return lines[0]


@pytest.mark.parametrize(("args", "named"), [
    (["--spec", json.dumps(DIGIT)], "--data"),
    (["--data", "rows.jsonl"], "--spec"),
    (["--data", "rows.jsonl", "--spec", '{"type": "nope"}'], "--spec"),
    (["--data", "rows.jsonl", "--spec", "{not json"], "--spec: not valid JSON"),
    (["--data", "rows.jsonl", "--spec", json.dumps(DIGIT), "-k", "0"], "k: must be at least 1"),
    (["--data", "rows.jsonl", "--spec", json.dumps(DIGIT), "-k", "4", "--ks", "1,8"], "ks:"),
    (["--data", "missing.jsonl", "--spec", json.dumps(DIGIT)], "--data: dataset file"),
    (["--data", "rows.jsonl", "--spec", json.dumps(DIGIT), "--temperature", "0"], "temperature"),
])
def test_eval_model_config_errors_are_one_line_and_create_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], named: str) -> None:
    monkeypatch.chdir(tmp_path)
    write_rows(tmp_path / "rows.jsonl")
    model = tmp_path / "model"
    (model).mkdir()
    (model / "config.json").write_text("{}")  # looks like a model folder: the options fail first
    result = CliRunner().invoke(app, ["eval", "model", str(model), "--out", str(tmp_path / "out"), *args])
    assert result.exit_code == 2
    assert named in one_line_error(result.output)
    assert not (tmp_path / "out").exists() and not (model / "eval").exists()


def test_eval_model_names_a_path_that_is_no_model(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["eval", "model", str(tmp_path), "--data", str(write_rows(tmp_path / "r.jsonl")),
                                      "--spec", json.dumps(DIGIT)])
    assert result.exit_code == 2
    assert "is neither a model folder" in one_line_error(result.output)
    assert not (tmp_path / "eval").exists()
