"""Pools sized to the container's CPU limit (services/common/cpu.py), read from fake cgroup trees."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.common import cpu
from services.common.db import postgres_pool_args
from services.common.settings import Settings


def cgroup(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


@pytest.mark.parametrize(("text", "expected"), [
    ("400000 100000\n", 4),     # limits.cpu: "4"
    ("150000 100000\n", 2),     # 1500m: part of a second CPU, so 2 workers
    ("50000 100000\n", 1),      # 500m
    ("max 100000\n", None),     # no limit
])
def test_cgroup_v2_cpu_max(tmp_path: Path, text: str, expected: int | None) -> None:
    assert cpu.cgroup_cpus(cgroup(tmp_path, {"cpu.max": text})) == expected


@pytest.mark.parametrize(("quota", "period", "expected"), [
    ("800000", "100000", 8),
    ("250000", "100000", 3),
    ("-1", "100000", None),     # v1's "no quota"
])
def test_cgroup_v1_cfs_quota(tmp_path: Path, quota: str, period: str, expected: int | None) -> None:
    root = cgroup(tmp_path, {"cpu,cpuacct/cpu.cfs_quota_us": quota, "cpu,cpuacct/cpu.cfs_period_us": period})
    assert cpu.cgroup_cpus(root) == expected


def test_no_cgroup_files_or_garbage_mean_no_limit(tmp_path: Path) -> None:
    assert cpu.cgroup_cpus(tmp_path) is None
    assert cpu.cgroup_cpus(cgroup(tmp_path, {"cpu.max": "lots of cpus"})) is None


def test_available_cpus_is_the_smaller_of_limit_and_affinity(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # A 64-core node, a pod limited to 4 CPUs: 4 workers, not 64.
    monkeypatch.setattr("os.sched_getaffinity", lambda _pid: set(range(64)))
    assert cpu.available_cpus(cgroup(tmp_path / "a", {"cpu.max": "400000 100000"})) == 4
    # A cpuset of 2 cores under a quota of 8: the cores bound it.
    monkeypatch.setattr("os.sched_getaffinity", lambda _pid: {0, 1})
    assert cpu.available_cpus(cgroup(tmp_path / "b", {"cpu.max": "800000 100000"})) == 2
    # No limit: the affinity mask.
    assert cpu.available_cpus(cgroup(tmp_path / "c", {"cpu.max": "max 100000"})) == 2


@pytest.mark.parametrize(("cap", "per_cpu", "cpus", "expected"), [
    (128, 0, 64, 128),   # per_cpu 0: the cap alone (the setting's default)
    (128, 8, 4, 32),     # 8 runs per CPU × 4 CPUs
    (20, 8, 4, 20),      # capped
    (128, 8, 0, 1),      # never 0
])
def test_sized_pool(cap: int, per_cpu: int, cpus: int, expected: int) -> None:
    assert cpu.sized_pool(cap, per_cpu, cpus) == expected


def test_verifier_pool_follows_the_cgroup_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    from services.verifier import grading

    started: list[int] = []

    class FakePool:
        def __init__(self, workers: int, preload: tuple[str, ...]) -> None:
            started.append(workers)

        def shutdown(self) -> None:
            pass

    monkeypatch.setattr(grading, "GraderPool", FakePool)
    monkeypatch.setattr(grading, "available_cpus", lambda: 3)
    monkeypatch.setattr(grading, "get_settings", lambda: Settings(verifier_workers=0))
    monkeypatch.setattr(grading, "_POOL", None)
    grading.get_pool()
    monkeypatch.setattr(grading, "_POOL", None)
    monkeypatch.setattr(grading, "get_settings", lambda: Settings(verifier_workers=7))
    grading.get_pool()
    monkeypatch.setattr(grading, "_POOL", None)
    assert started == [3, 7]


def test_postgres_pool_arguments_come_from_settings() -> None:
    assert postgres_pool_args(Settings(db_pool_size=3, db_max_overflow=2, db_pool_timeout_s=7.0)) == {
        "pool_size": 3, "max_overflow": 2, "pool_timeout": 7.0}
    bouncer = postgres_pool_args(Settings(db_pgbouncer=True))
    assert bouncer["poolclass"].__name__ == "NullPool"
    assert bouncer["connect_args"] == {"prepare_threshold": None}


def test_a_bad_pool_size_names_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REWARDHUB_DB_POOL_SIZE", "0")
    with pytest.raises(ValueError, match="db_pool_size"):
        Settings()


def test_sandbox_run_slots_follow_the_cgroup_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    from services.sandbox import runner

    monkeypatch.setattr(runner, "available_cpus", lambda: 4)

    async def capacity(settings: Settings) -> int:
        return runner.slots(settings).total._value  # the semaphore's free slots, none taken yet

    # 8 runs per CPU of a 4-CPU limit: 32, under the cap of 128.
    assert asyncio.run(capacity(Settings(sandbox_runs_per_cpu=8, sandbox_max_concurrent_runs=128))) == 32
    # 0 runs per CPU (the default): the configured cap, whatever the CPUs.
    assert asyncio.run(capacity(Settings(sandbox_runs_per_cpu=0, sandbox_max_concurrent_runs=100))) == 100


def test_postgres_engine_pool_is_sized_by_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from services.common import db
    from services.common.settings import reset_settings_cache

    monkeypatch.setenv("REWARDHUB_DB_POOL_SIZE", "3")
    monkeypatch.setenv("REWARDHUB_DB_MAX_OVERFLOW", "4")
    reset_settings_cache()
    try:
        engine = db.make_engine("postgresql+psycopg://postgres@127.0.0.1:5432/test")  # not connected
        assert (engine.pool.size(), engine.pool._max_overflow) == (3, 4)  # type: ignore[attr-defined]
        engine.dispose()
    finally:
        reset_settings_cache()
