"""Experiment trackers (``report_to``): TensorBoard, Weights & Biases (offline) and trackio.

Each tracker gets the run config once, as hyper-parameters, and then every step the same metrics
dict the loop writes to ``metrics.jsonl`` (numbers only; ``step`` is the x-axis). None is required:
each package is imported only when its tracker is listed, and a listed tracker whose package is
missing fails when the config is read, before anything is written.

Where each one writes:

- tensorboard: ``<output_dir>/tensorboard/`` (event files; ``tensorboard --logdir`` reads them).
- wandb: ``<output_dir>/wandb/``, offline (``WANDB_MODE=offline`` unless the environment sets a
  mode): nothing leaves the machine; ``wandb sync`` uploads it later if wanted. A resumed run
  continues the same W&B run (its id is kept in ``<output_dir>/wandb/run_id``).
- trackio: its local SQLite database in ``$TRACKIO_DIR`` (trackio's own default when unset),
  project ``tracking_project``; ``trackio show`` opens its dashboard.

A tracker that raises while the run goes on (disk full, a tracker bug) must not lose the run: the
error is logged once as a warning naming the tracker, that tracker is dropped for the rest of the
run, and training continues; ``metrics.jsonl`` stays the complete record.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

logger = logging.getLogger(__name__)

TRACKERS = ("tensorboard", "wandb", "trackio")
# The package each tracker imports (tensorboard: torch's SummaryWriter needs the tensorboard package).
PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio"}
EXTRA = "pip install 'rewardhub[tracking]'"


def check_trackers(names: Sequence[str]) -> list[str]:
    """``names`` if every one is a known tracker with its package installed; else ValueError naming it."""
    seen: set[str] = set()
    for name in names:
        if name not in TRACKERS:
            raise ValueError(f"{name!r} is not a tracker; use {', '.join(TRACKERS)}")
        if name in seen:
            raise ValueError(f"{name!r} is listed twice")
        seen.add(name)
        if importlib.util.find_spec(PACKAGES[name]) is None:
            raise ValueError(f"{name} needs the {PACKAGES[name]} package, which is not installed: {EXTRA} "
                             f"(or pip install {PACKAGES[name]})")
    return list(names)


class Tracker(Protocol):
    name: str

    def log(self, metrics: Mapping[str, float], step: int) -> None: ...

    def close(self) -> None: ...


def numeric_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The metrics a tracker plots: every number but ``step`` (the x-axis), as float (NaN kept)."""
    return {key: float(value) for key, value in metrics.items()
            if key != "step" and isinstance(value, int | float)}


def flat_hparams(config: Mapping[str, Any], prefix: str = "") -> dict[str, bool | int | float | str]:
    """Nested config sections as ``section.key``; values other than scalars as JSON text."""
    flat: dict[str, bool | int | float | str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flat_hparams(value, f"{name}."))
        elif isinstance(value, bool | int | float | str):
            flat[name] = value
        else:  # None, lists: TensorBoard's hparams take scalars and text only
            flat[name] = json.dumps(value)
    return flat


class TensorBoardTracker:
    name = "tensorboard"

    def __init__(self, log_dir: Path, hparams: Mapping[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        self.writer = SummaryWriter(log_dir=str(log_dir))
        flat = flat_hparams(hparams)
        # Written into this run's own event file (SummaryWriter.add_hparams would start a sub-run).
        file_writer = self.writer._get_file_writer()  # type: ignore[no-untyped-call]
        for summary in hparams_summary(flat, {}):  # type: ignore[no-untyped-call]
            file_writer.add_summary(summary)
        self.writer.add_text("run_config", f"```\n{json.dumps(dict(hparams), indent=2)}\n```")

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, global_step=step)
        self.writer.flush()  # a crash later loses no logged step

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    name = "wandb"

    def __init__(self, directory: Path, hparams: Mapping[str, Any], *, project: str, run_name: str) -> None:
        # Offline unless the user chose a mode: a run never reaches the network on its own.
        os.environ.setdefault("WANDB_MODE", "offline")
        import wandb

        directory.mkdir(parents=True, exist_ok=True)
        id_file = directory / "run_id"
        run_id = id_file.read_text().strip() if id_file.exists() else secrets.token_hex(4)
        self.run = wandb.init(project=project, name=run_name, id=run_id, resume="allow", dir=str(directory),
                              config=dict(hparams), settings=wandb.Settings(console="off", save_code=False))
        id_file.write_text(run_id)

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        self.run.log(dict(metrics), step=step)

    def close(self) -> None:
        import wandb

        self.run.finish()
        # wandb-core completes the run's .wandb file only when its service stops (else at interpreter
        # exit): stop it now, so a long-lived process (the trainer worker) leaves complete run files.
        if wandb.run is None:  # unless the process has another run of its own going
            wandb.teardown()


class TrackioTracker:
    name = "trackio"

    def __init__(self, hparams: Mapping[str, Any], *, project: str, run_name: str) -> None:
        import trackio

        self.trackio = trackio
        # resume="allow": a resumed training run continues the same trackio run.
        self.run = trackio.init(project=project, name=run_name, config=dict(hparams), resume="allow")

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        # trackio stores JSON: NaN (a step whose rewards all failed) is left out rather than written as text.
        self.run.log({key: value for key, value in metrics.items() if math.isfinite(value)}, step=step)

    def close(self) -> None:
        self.run.finish()  # type: ignore[no-untyped-call]


class Tracking:
    """The run's trackers behind one ``log``; a tracker that raises is warned about once and dropped."""

    def __init__(self, trackers: list[Tracker]) -> None:
        self.trackers = list(trackers)
        self.failed: dict[str, str] = {}  # tracker -> the error that dropped it

    def log(self, metrics: Mapping[str, Any]) -> None:
        if not self.trackers:
            return
        step = int(metrics["step"])
        values = numeric_metrics(metrics)
        for tracker in list(self.trackers):
            try:
                tracker.log(values, step)
            except Exception as exc:  # a tracker's failure must not stop training
                self._drop(tracker, exc, f"step {step}")

    def _drop(self, tracker: Tracker, exc: Exception, when: str) -> None:
        self.trackers.remove(tracker)
        self.failed[tracker.name] = f"{type(exc).__name__}: {exc}"
        logger.warning("report_to: %s failed at %s (%s); it gets no more metrics this run, training goes on "
                       "(metrics.jsonl has every step)", tracker.name, when, self.failed[tracker.name])

    def close(self) -> None:
        for tracker in list(self.trackers):
            try:
                tracker.close()
            except Exception as exc:  # closing is the last thing a run does: report, do not fail it
                self._drop(tracker, exc, "close")
        self.trackers = []


def run_hparams(config: Any) -> dict[str, Any]:
    """The run config as trackers record it; a reward URL's user and password are masked."""
    data: dict[str, Any] = config.model_dump(mode="json")
    reward = data.get("reward")
    if isinstance(reward, dict) and isinstance(reward.get("url"), str):
        reward["url"] = _mask_userinfo(reward["url"])
    return data


def _mask_userinfo(url: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]))


def start_tracking(names: Sequence[str], *, output_dir: Path, hparams: Mapping[str, Any], project: str,
                   run_name: str) -> Tracking:
    """The trackers ``names`` asks for, started (on the main rank only: the caller decides)."""
    trackers: list[Tracker] = []
    for name in check_trackers(names):
        if name == "tensorboard":
            trackers.append(TensorBoardTracker(output_dir / "tensorboard", hparams))
        elif name == "wandb":
            trackers.append(WandbTracker(output_dir / "wandb", hparams, project=project, run_name=run_name))
        else:
            trackers.append(TrackioTracker(hparams, project=project, run_name=run_name))
    return Tracking(trackers)
