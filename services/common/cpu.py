"""How many CPUs this process may really use: the container's CPU limit, not the node's core count.

``os.cpu_count()`` is the node's: a pod limited to 4 CPUs on a 64-core node sees 64 and a pool sized
from it starts 64 workers (each ~77 MB preloaded) inside a 4 GiB memory limit. The limit lives in the
cgroup: ``cpu.max`` (v2: ``"<quota> <period>"`` or ``"max <period>"``) or ``cpu.cfs_quota_us`` and
``cpu.cfs_period_us`` (v1; a quota of -1 is no limit). The affinity mask (cpusets, ``taskset``) is
the other bound. Kubernetes sets both from ``resources.limits.cpu``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def quota_cpus(quota_us: int, period_us: int) -> int | None:
    """CPUs a CFS quota allows: ``ceil(quota / period)``, at least 1; None for no quota.

    A fractional limit (1500m = 150000/100000) rounds up: the pod may use part of a second CPU, and a
    pool of 1 would leave it idle.
    """
    if quota_us <= 0 or period_us <= 0:
        return None
    return max(1, math.ceil(quota_us / period_us))


def parse_cpu_max(text: str) -> int | None:
    """CPUs allowed by a cgroup v2 ``cpu.max`` line (``"max 100000"``: no limit)."""
    fields = text.split()
    if len(fields) != 2 or fields[0] == "max":
        return None
    return quota_cpus(int(fields[0]), int(fields[1]))


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def cgroup_cpus(root: Path = CGROUP_ROOT) -> int | None:
    """The CPU limit of the cgroup mounted at ``root`` (v2, then v1), or None when it sets none."""
    v2 = _read(root / "cpu.max")
    if v2 is not None:
        try:
            return parse_cpu_max(v2)
        except ValueError:
            return None
    for v1_dir in (root / "cpu", root / "cpu,cpuacct", root):
        quota, period = _read(v1_dir / "cpu.cfs_quota_us"), _read(v1_dir / "cpu.cfs_period_us")
        if quota is not None and period is not None:
            try:
                return quota_cpus(int(quota), int(period))
            except ValueError:
                return None
    return None


def affinity_cpus() -> int:
    """CPUs this process may be scheduled on (its affinity mask), else the machine's count."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def available_cpus(root: Path = CGROUP_ROOT) -> int:
    """``min(cgroup limit, affinity)``: the CPUs a pool should be sized to (at least 1)."""
    affinity = affinity_cpus()
    limit = cgroup_cpus(root)
    return affinity if limit is None else min(limit, affinity)


def sized_pool(cap: int, per_cpu: int, cpus: int) -> int:
    """``min(cap, per_cpu × cpus)`` when ``per_cpu > 0``, else ``cap``; at least 1."""
    if per_cpu <= 0:
        return max(1, cap)
    return max(1, min(cap, per_cpu * cpus))
