"""report_to: the real trackers (tensorboard, wandb offline, trackio) get the loop's metrics and the run
config; a missing package fails when the config is read; a tracker that raises mid-run is dropped."""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import re
import sqlite3
import struct
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from trainer import tracking
from trainer.config import ConfigError, parse_config

REPO = Path(__file__).resolve().parents[3]
STEPS = [{"step": 1, "reward_mean": 0.5, "loss": -0.25, "lr": 1e-3, "skipped_update": 1.0},
         {"step": 2, "reward_mean": 0.75, "loss": 0.125, "lr": 5e-4, "non_ok_share": 0.0}]
HPARAMS = {"learning_rate": 1e-3, "group_size": 4, "model": {"tiny": {"seed": 0}}, "reward": None,
           "report_to": ["tensorboard"]}


def base_config(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"model": {"tiny": {}}, "dataset": str(tmp_path / "d.jsonl"),
                            "output_dir": str(tmp_path / "out")}
    data.update(overrides)
    return data


# ---------------------------------------------------------------- config


def test_missing_tracker_package_fails_at_config_time_naming_package_and_extra(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError) as error:
        parse_config(base_config(tmp_path, report_to=["tensorboard", "wandb"]))
    assert str(error.value) == ("report_to: wandb needs the wandb package, which is not installed: "
                                "pip install 'rewardhub[tracking]' (or pip install wandb)")
    assert "\n" not in str(error.value)
    assert not (tmp_path / "out").exists()  # nothing was created


def test_unknown_and_repeated_trackers_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^report_to\.0: Input should be 'tensorboard', 'wandb' or 'trackio'"):
        parse_config(base_config(tmp_path, report_to=["mlflow"]))
    with pytest.raises(ConfigError, match=r"^report_to: 'tensorboard' is listed twice$"):
        parse_config(base_config(tmp_path, report_to=["tensorboard", "tensorboard"]))
    assert parse_config(base_config(tmp_path)).report_to == []  # none by default


def test_hparams_mask_a_reward_urls_password(tmp_path: Path) -> None:
    config = parse_config(base_config(tmp_path, reward={"spec": {"type": "regex", "pattern": "7"},
                                                        "url": "https://bob:s3cret@rewards.example/api"}))
    assert tracking.run_hparams(config)["reward"]["url"] == "https://***@rewards.example/api"
    assert tracking.flat_hparams({"a": {"b": 1, "c": None}, "d": ["x"]}) == {"a.b": 1, "a.c": "null", "d": '["x"]'}


# ---------------------------------------------------------------- tensorboard


def read_tensorboard(log_dir: Path) -> Any:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(log_dir))
    accumulator.Reload()
    return accumulator


def test_tensorboard_event_files_hold_the_metrics_and_the_config(tmp_path: Path) -> None:
    run = tracking.start_tracking(["tensorboard"], output_dir=tmp_path, hparams=HPARAMS, project="p", run_name="r")
    for metrics in STEPS:
        run.log(metrics)
    run.close()

    events = read_tensorboard(tmp_path / "tensorboard")
    assert [(e.step, e.value) for e in events.Scalars("reward_mean")] == [(1, 0.5), (2, 0.75)]
    assert [(e.step, e.value) for e in events.Scalars("loss")] == [(1, -0.25), (2, 0.125)]
    assert [e.step for e in events.Scalars("skipped_update")] == [1]
    assert "step" not in events.Tags()["scalars"]  # it is the x-axis
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = events.PluginTagToContent("hparams")
    start = next(plugin_data_pb2.HParamsPluginData.FromString(c) for c in content.values()
                 if plugin_data_pb2.HParamsPluginData.FromString(c).HasField("session_start_info"))
    recorded = start.session_start_info.hparams
    assert recorded["learning_rate"].number_value == 1e-3
    assert recorded["model.tiny.seed"].number_value == 0
    assert recorded["report_to"].string_value == '["tensorboard"]'


# ---------------------------------------------------------------- wandb (offline)


def wandb_records(run_dir: Path) -> list[Any]:
    """The records of an offline run's ``.wandb`` file, read independently of wandb's own reader.

    The file is a LevelDB-style log: a 7-byte header (``:W&B``, 0xBEE1, version 0), then 32 KiB
    blocks of chunks ``crc32c (4) | length (2, LE) | type (1: full, 2: first, 3: middle, 4: last) | data``;
    a block's tail shorter than a chunk header is padding. Each whole record is a protobuf ``Record``.
    """
    from wandb.proto import wandb_internal_pb2

    data = next(run_dir.glob("*.wandb")).read_bytes()
    assert data[:4] == b":W&B"
    block, pos, records, pending = 32768, 7, [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        length, kind = struct.unpack_from("<HB", data, pos + 4)
        if length == 0 and kind == 0:
            break  # zero padding after the last record
        chunk = data[pos + 7: pos + 7 + length]
        pos += 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            records.append(wandb_internal_pb2.Record.FromString(pending))  # type: ignore[attr-defined]
    return records


def test_wandb_runs_offline_and_its_run_dir_holds_the_metrics(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tracking.start_tracking(["wandb"], output_dir=tmp_path, hparams=HPARAMS, project="p", run_name="r")
    assert os.environ["WANDB_MODE"] == "offline"
    for metrics in STEPS:
        run.log(metrics)
    run.close()

    run_id = (tmp_path / "wandb" / "run_id").read_text()
    (run_dir,) = (tmp_path / "wandb" / "wandb").glob(f"offline-run-*-{run_id}")
    records = wandb_records(run_dir)
    history = []
    for record in records:
        if record.WhichOneof("record_type") == "history":
            items = {item.key or "/".join(item.nested_key): json.loads(item.value_json)
                     for item in record.history.item}
            history.append({k: v for k, v in items.items() if not k.startswith("_")}
                           | {"step": record.history.step.num})
    assert history == [{"reward_mean": 0.5, "loss": -0.25, "lr": 1e-3, "skipped_update": 1.0, "step": 1},
                       {"reward_mean": 0.75, "loss": 0.125, "lr": 5e-4, "non_ok_share": 0.0, "step": 2}]
    (started,) = [record.run for record in records if record.WhichOneof("record_type") == "run"]
    assert (started.run_id, started.project, started.display_name) == (run_id, "p", "r")
    config = {item.key: json.loads(item.value_json) for item in started.config.update}
    assert config["learning_rate"] == 1e-3 and config["model"] == {"tiny": {"seed": 0}}


def test_a_resumed_run_continues_the_same_wandb_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    for metrics in STEPS:  # two starts of the same output_dir, one step each
        run = tracking.start_tracking(["wandb"], output_dir=tmp_path, hparams=HPARAMS, project="p", run_name="r")
        run.log(metrics)
        run.close()
    run_id = (tmp_path / "wandb" / "run_id").read_text()
    run_dirs = sorted((tmp_path / "wandb" / "wandb").glob("offline-run-*"))
    # wandb names a run's folder offline-run-<time>-<run id>, adding -N when two start in the same second.
    pattern = re.compile(rf"offline-run-\d{{8}}_\d{{6}}-{re.escape(run_id)}(-\d+)?")
    assert len(run_dirs) == 2 and all(pattern.fullmatch(d.name) for d in run_dirs), run_dirs


def test_wandb_mode_the_user_set_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tracking.start_tracking(["wandb"], output_dir=tmp_path, hparams=HPARAMS, project="p", run_name="r")
    run.log(STEPS[0])
    run.close()
    assert os.environ["WANDB_MODE"] == "disabled"
    assert not list((tmp_path / "wandb").glob("wandb/offline-run-*"))


# ---------------------------------------------------------------- trackio


TRACKIO_SCRIPT = """
import json, sys
from pathlib import Path
from trainer import tracking
run = tracking.start_tracking(["trackio"], output_dir=Path(sys.argv[1]), hparams=json.loads(sys.argv[2]),
                              project="rh-test", run_name="run-a")
for metrics in json.loads(sys.argv[3]):
    run.log(metrics)
run.close()
"""


def test_trackio_local_database_holds_the_metrics_and_the_config(tmp_path: Path) -> None:
    # trackio fixes its folder (TRACKIO_DIR) at import: a fresh process gets this test's folder.
    steps = [*STEPS, {"step": 3, "reward_mean": math.nan, "loss": 0.0}]
    env = {**os.environ, "TRACKIO_DIR": str(tmp_path / "trackio"), "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", TRACKIO_SCRIPT, str(tmp_path), json.dumps(HPARAMS), json.dumps(steps)],
                   check=True, env=env, cwd=tmp_path, timeout=120, capture_output=True)

    with sqlite3.connect(tmp_path / "trackio" / "rh-test.db") as db:
        rows = db.execute("SELECT run_name, step, metrics FROM metrics ORDER BY step").fetchall()
        (config,) = db.execute("SELECT config FROM configs WHERE run_name = 'run-a'").fetchone()
    assert [(name, step, json.loads(values)) for name, step, values in rows] == [
        ("run-a", 1, {"reward_mean": 0.5, "loss": -0.25, "lr": 1e-3, "skipped_update": 1.0}),
        ("run-a", 2, {"reward_mean": 0.75, "loss": 0.125, "lr": 5e-4, "non_ok_share": 0.0}),
        ("run-a", 3, {"loss": 0.0}),  # NaN is left out
    ]
    assert json.loads(config)["learning_rate"] == 1e-3


# ---------------------------------------------------------------- a tracker that fails mid-run


class Recorder:
    def __init__(self, name: str, fail_at: int | None = None) -> None:
        self.name, self.fail_at, self.steps = name, fail_at, []  # type: ignore[var-annotated]

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        if step == self.fail_at:
            raise OSError("disk full")
        self.steps.append(step)

    def close(self) -> None:
        pass


def test_a_tracker_that_raises_is_warned_about_once_and_dropped(caplog: pytest.LogCaptureFixture) -> None:
    failing, healthy = Recorder("wandb", fail_at=2), Recorder("tensorboard")
    run = tracking.Tracking([failing, healthy])
    with caplog.at_level(logging.WARNING, logger="trainer.tracking"):
        for step in (1, 2, 3, 4):
            run.log({"step": step, "loss": 0.0})
    run.close()
    assert failing.steps == [1] and healthy.steps == [1, 2, 3, 4]
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == ["report_to: wandb failed at step 2 (OSError: disk full); it gets no more metrics this "
                        "run, training goes on (metrics.jsonl has every step)"]
    assert run.failed == {"wandb": "OSError: disk full"}
