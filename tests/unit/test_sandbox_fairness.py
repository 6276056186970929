"""Per-project run slots: one project flooding the sandbox leaves room for another project's runs.

First the slots alone (``runner.RunSlots``), then real sandboxed runs through the sandbox app,
two projects naming themselves in ``X-Rewardhub-Project`` (as the verifier does for its keys).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from services.common.settings import Settings, get_settings
from services.sandbox import runner


async def _hold_until(slots: runner.RunSlots, project: str, entered: asyncio.Event, release: asyncio.Event) -> None:
    async with slots.hold(project):
        entered.set()
        await release.wait()


def test_a_flooding_project_takes_only_its_share_of_the_slots() -> None:
    async def scenario() -> None:
        slots = runner.RunSlots(total=4, per_project=2)
        release = asyncio.Event()
        flood = [asyncio.Event() for _ in range(6)]
        tasks = [asyncio.create_task(_hold_until(slots, "a", event, release)) for event in flood]
        await asyncio.wait_for(asyncio.gather(flood[0].wait(), flood[1].wait()), timeout=5)
        other = asyncio.Event()
        tasks.append(asyncio.create_task(_hold_until(slots, "b", other, release)))
        await asyncio.wait_for(other.wait(), timeout=5)  # b starts while a's other four still wait
        assert sum(event.is_set() for event in flood) == 2
        assert slots.running("a") == 6 and slots.running("b") == 1
        release.set()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=5)
        assert slots.running("a") == 0 and slots.running("b") == 0  # forgotten once idle

    asyncio.run(scenario())


def test_the_total_still_bounds_all_projects_together() -> None:
    async def scenario() -> None:
        slots = runner.RunSlots(total=3, per_project=2)
        release = asyncio.Event()
        events = {name: [asyncio.Event(), asyncio.Event()] for name in ("a", "b")}
        tasks = [asyncio.create_task(_hold_until(slots, name, event, release))
                 for name, pair in events.items() for event in pair]
        deadline = time.monotonic() + 5
        while sum(e.is_set() for pair in events.values() for e in pair) < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)  # a condition polled with a deadline
        await asyncio.sleep(0)  # one more turn: a fourth entry would have happened by now
        assert sum(e.is_set() for pair in events.values() for e in pair) == 3
        release.set()
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=5)

    asyncio.run(scenario())


def test_the_cap_comes_from_the_settings() -> None:
    settings = get_settings().model_copy(update={"sandbox_max_runs_per_project": 7})
    assert runner.runs_per_project(settings) == 7
    plain = get_settings()
    if "sandbox_max_runs_per_project" not in type(plain).model_fields:
        assert runner.runs_per_project(plain) == runner.DEFAULT_RUNS_PER_PROJECT


@pytest.fixture
def small_sandbox(isolated_env: Path) -> Iterator[tuple[object, Settings]]:
    from tests.unit.sandbox.conftest import require_namespaces

    require_namespaces()
    from services.sandbox import deps
    from services.sandbox.app import create_app

    settings = get_settings().model_copy(update={"sandbox_max_concurrent_runs": 3,
                                                 "sandbox_max_runs_per_project": 2})
    app = create_app()
    app.dependency_overrides[deps._settings] = lambda: settings
    yield app, settings


def test_another_projects_run_starts_while_one_project_floods(small_sandbox: tuple[object, Settings]) -> None:
    """3 slots, 2 per project: project A sends 4 runs, project B one; B's run gets a slot while A's
    first two hold theirs (with one global queue A's runs would fill all 3 and B would wait).

    A's runs keep their slots until B has its answer (the slots' ``hold`` is wrapped to wait for it),
    so the order is fixed by construction, not by how long a sleep takes on this machine.
    """
    app, settings = small_sandbox

    async def scenario() -> tuple[list[str], dict[str, int], int]:
        slot_set = runner.slots(settings)  # this loop's slots, the ones the app's runs take
        real_hold = slot_set.hold
        holding = {"project-a": 0, "project-b": 0}
        peak = dict(holding)
        a_holding_when_b_ran: list[int] = []
        b_answered = asyncio.Event()

        @contextlib.asynccontextmanager
        async def observed_hold(project: str | None) -> AsyncIterator[None]:
            assert project in holding
            async with real_hold(project):
                holding[project] += 1
                peak[project] = max(peak[project], holding[project])
                try:
                    if project == "project-a":
                        await b_answered.wait()
                    else:
                        a_holding_when_b_ran.append(holding["project-a"])
                    yield
                finally:
                    holding[project] -= 1

        slot_set.hold = observed_hold  # type: ignore[method-assign]
        transport = httpx.ASGITransport(app=app)  # type: ignore[arg-type]
        async with httpx.AsyncClient(transport=transport, base_url="http://sandbox", timeout=60) as client:
            async def run(project: str, code: str) -> str:
                response = await client.post("/run_code", headers={runner.PROJECT_HEADER: project},
                                             json={"code": code, "language": "python", "run_timeout": 10})
                assert response.status_code == 200, response.text
                return str(response.json()["status"])

            flood = [asyncio.create_task(run("project-a", "print('a ran')")) for _ in range(4)]
            deadline = time.monotonic() + 30
            while slot_set.running("project-a") < 4 or holding["project-a"] < 2:
                assert time.monotonic() < deadline, "project A's runs never took their slots"
                await asyncio.sleep(0.01)  # a condition polled with a deadline
            # A hang here (the guard's timeout) would mean B waits behind A's flood.
            status_b = await asyncio.wait_for(run("project-b", "print('b ran')"), timeout=120)
            assert not any(task.done() for task in flood)
            b_answered.set()
            statuses = [status_b, *await asyncio.gather(*flood)]
            return statuses, peak, a_holding_when_b_ran[0]

    statuses, peak, a_holding_when_b_ran = asyncio.run(scenario())
    assert statuses == ["Success"] * 5
    assert a_holding_when_b_ran == 2, "project B's run did not start beside A's two"
    assert peak == {"project-a": 2, "project-b": 1}, "project A ran more than its 2 slots at once"
