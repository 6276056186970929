"""The reward curve of a run as a PNG (matplotlib, no display needed)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def plot_reward_curve(history: Sequence[dict[str, Any]], path: Path, *, title: str = "reward") -> Path:
    """Mean reward per step (with ± one std band) and the share of non-ok rewards, saved to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [int(m["step"]) for m in history]
    mean = [float(m.get("reward_mean", math.nan)) for m in history]
    std = [float(m.get("reward_std", 0.0)) for m in history]
    non_ok = [float(m.get("non_ok_share", 0.0)) for m in history]
    figure, axis = plt.subplots(figsize=(7, 4), dpi=110)
    axis.plot(steps, mean, color="#1f77b4", label="reward mean")
    axis.fill_between(steps, [m - s for m, s in zip(mean, std, strict=True)],
                      [m + s for m, s in zip(mean, std, strict=True)], color="#1f77b4", alpha=0.15)
    if any(non_ok):
        axis.plot(steps, non_ok, color="#d62728", linestyle="--", label="non-ok share")
    axis.set_xlabel("step")
    axis.set_ylabel("reward")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend(loc="best")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path
