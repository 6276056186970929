"""Many sessions over a run: created, used and closed, they leave no process behind and bounded memory."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from services.sandbox import sessions
from tests.unit.sandbox.conftest import require_namespaces

CONCURRENT = 8  # sessions open at once (as a trainer's rollout group holds them)
# Growth of this (the service's) process's resident set allowed over the 200 sessions. The registry
# holds about a kilobyte a session; this is allocator noise, far below one session's ~20 MB sandbox.
RSS_GROWTH_LIMIT_MB = 16


def _rss_mb() -> float:
    fields = Path("/proc/self/status").read_text().split("VmRSS:")[1].split()
    return int(fields[0]) / 1024


def _children() -> list[int]:
    """Live (not zombie) direct children of this process: a session's bwrap would be one."""
    found = []
    me = str(os.getpid())
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if stat[1] == me and stat[0] != "Z":
                found.append(int(entry))
    return found


def _processes_with(marker: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if marker.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                    found.append(int(entry))
            except OSError:
                continue
    return found


@pytest.fixture
def client(isolated_env: Path) -> Iterator[TestClient]:
    require_namespaces()
    from services.sandbox.app import create_app

    with TestClient(create_app()) as client:
        yield client


# 200 as the issue asks (about 40 s on a loaded 2-core machine: marked slow), and a small unmarked
# counterpart with the same assertions.
@pytest.mark.parametrize("count", [pytest.param(200, marks=pytest.mark.slow), 40])
def test_sessions_created_and_closed_leave_no_processes_and_bounded_memory(client: TestClient, count: int) -> None:
    registry: sessions.SessionRegistry = client.app.state.sessions  # type: ignore[attr-defined]
    marker = f"rh-session-child-{uuid.uuid4().hex[:12]}"
    children_before = set(_children())
    # Every session starts a child process of its own that would outlive a sloppy close.
    # (a shell named by the marker that says "ready" once it runs, as only then is its cmdline settled,
    # then waits in the read builtin, forking nothing: one process carries the marker)
    code = (f"import subprocess\nchild = subprocess.Popen([{marker!r}, '-c', 'echo ready; read x; :'], "
            "executable='/bin/sh', stdin=subprocess.PIPE, stdout=subprocess.PIPE)\n"
            "assert child.stdout.readline() == b'ready\\n'\nprint('ok')")

    async def one(http: httpx.AsyncClient) -> None:
        created = await http.post("/v1/sessions", json={"ttl_s": 60})
        assert created.status_code == 201, created.text
        sid = created.json()["session_id"]
        ran = await http.post(f"/v1/sessions/{sid}/execute", json={"code": code})
        assert ran.status_code == 200 and ran.json()["stdout"] == "ok\n", ran.text
        assert (await http.delete(f"/v1/sessions/{sid}")).status_code == 204

    async def run_all(count: int) -> None:
        import asyncio

        transport = httpx.ASGITransport(app=client.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://sandbox") as http:
            for start in range(0, count, CONCURRENT):
                await asyncio.gather(*(one(http) for _ in range(min(CONCURRENT, count - start))))

    # The marker is visible while a session holds its child (else the check after the run proves nothing).
    probe = client.post("/v1/sessions", json={"ttl_s": 60}).json()["session_id"]
    assert client.post(f"/v1/sessions/{probe}/execute", json={"code": code}).json()["stdout"] == "ok\n"
    assert len(_processes_with(marker)) == 1
    assert client.delete(f"/v1/sessions/{probe}").status_code == 204
    assert _processes_with(marker) == []
    client.portal.call(run_all, CONCURRENT - 1)  # type: ignore[union-attr]  # warm-up: imports, first allocations
    rss_before = _rss_mb()
    client.portal.call(run_all, count)  # type: ignore[union-attr]
    rss_after = _rss_mb()

    assert registry.live_count() == 0
    assert _processes_with(marker) == [], "a session's process outlived its DELETE"
    assert set(_children()) - children_before == set(), "a session's sandbox outlived its DELETE"
    assert rss_after - rss_before < RSS_GROWTH_LIMIT_MB, (rss_before, rss_after)
    # The ended sessions' records are small and forgotten after the retention.
    assert len(registry.records) == count + CONCURRENT
    client.portal.call(registry.sweep, registry.clock() + 3601)  # type: ignore[union-attr]
    assert registry.records == {}
    print(f"\n{count} sessions ({CONCURRENT} at a time): service RSS {rss_before:.1f} -> {rss_after:.1f} MB")
