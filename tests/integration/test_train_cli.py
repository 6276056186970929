"""`rewardhub train config.yaml` trains against a live reward API and writes metrics and the reward curve."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from rewardhub.cli import app
from tests.conftest import SQLITE_ONLY, LiveServer

pytestmark = pytest.mark.slow


def write_config(tmp_path: Path, url: str, **overrides: object) -> Path:
    (tmp_path / "digits.jsonl").write_text("\n".join(
        json.dumps({"prompt": [{"role": "user", "content": f"Say 7 ({i})"}], "reward_model": {"ground_truth": "7"}})
        for i in range(4)) + "\n")
    config = {"model": {"tiny": {"seed": 0}}, "dataset": "digits.jsonl", "output_dir": "run",
              "reward": {"spec": {"type": "regex", "pattern": r"\d"}, "url": url, "api_key_env": "RH_CLI_KEY"},
              "group_size": 4, "prompts_per_step": 2, "max_steps": 2, "max_completion_length": 4,
              "learning_rate": 1e-3, **overrides}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize("key_env", ["RH_CLI_KEY", None])
@SQLITE_ONLY
def test_train_writes_metrics_checkpoint_and_curve(live_server: LiveServer, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch, key_env: str | None) -> None:
    # The machine's owner may name the variable in the file (a local config), or rely on REWARDHUB_API_KEY.
    monkeypatch.setenv(key_env or "REWARDHUB_API_KEY", live_server.tenant.keys["trainer"])
    reward: dict[str, object] = {"spec": {"type": "regex", "pattern": r"\d"}, "url": live_server.url}
    if key_env is not None:
        reward["api_key_env"] = key_env
    result = CliRunner().invoke(app, ["train", str(write_config(tmp_path, live_server.url, reward=reward))])
    assert result.exit_code == 0, result.output
    run = tmp_path / "run"  # relative paths are taken from the config file's folder
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert (run / "reward_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run / "checkpoints" / "latest").read_text().strip() == "step-000002"


def test_bad_config_names_the_field(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["train", str(write_config(tmp_path, "http://127.0.0.1:1", group_size=1))])
    assert result.exit_code == 2
    assert "group_size" in result.output


def test_reward_outage_exits_non_zero_with_the_cause(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["train", str(write_config(
        tmp_path, "http://127.0.0.1:9", reward={"spec": {"type": "exact"}, "url": "http://127.0.0.1:9",
                                                "max_retries": 0})), ])
    assert result.exit_code == 1, result.output
    assert "127.0.0.1:9" in result.output


def test_num_gpus_needs_a_deepspeed_section(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["train", str(write_config(tmp_path, "http://127.0.0.1:1")), "--num-gpus", "2"])
    assert result.exit_code == 2
    assert "--num-gpus needs a deepspeed section" in result.output


def test_a_batch_that_does_not_split_over_the_gpus_fails_before_launching(tmp_path: Path) -> None:
    config = write_config(tmp_path, "http://127.0.0.1:1", deepspeed={"zero_stage": 2})  # 2 prompts per step
    result = CliRunner().invoke(app, ["train", str(config), "--num-gpus", "3"], env={"COLUMNS": "300"})
    assert result.exit_code == 2
    assert "prompts_per_step: 2 must be a multiple of the number of ranks (3)" in result.output
