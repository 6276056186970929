"""Every service commits a request's writes before its response starts, and a failed commit is never a 2xx.

The client transport below hands the response back as soon as its last body byte is sent, while
the app may still be running what comes after (as a real server does; httpx's ASGITransport would
wait for the whole app call and hide the race). With the old commit-in-teardown dependency, a read
sent right after a create regularly missed the row; with the unit of work it never does.

``REWARDHUB_CREATE_READ_PAIRS`` sets the number of create-then-read pairs per service (default 200;
1000 is the acceptance count: ``REWARDHUB_CREATE_READ_PAIRS=1000 pytest -m slow ...``).
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import event, func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from rewardhub.service_map import build_service_app
from tests.conftest import Tenant, bearer

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

PAIRS = int(os.environ.get("REWARDHUB_CREATE_READ_PAIRS", "200"))


class EarlyReturnTransport(httpx.AsyncBaseTransport):
    """Call the ASGI app like a server: the response is complete when its last byte is sent."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.running: set[asyncio.Task[None]] = set()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": request.method,
                 "scheme": "http", "path": request.url.path, "raw_path": request.url.raw_path.split(b"?")[0],
                 "query_string": request.url.query, "root_path": "",
                 "headers": [(k.lower(), v) for k, v in request.headers.raw],
                 "client": ("127.0.0.1", 1234), "server": ("testserver", 80)}
        sent_request = False
        finished = asyncio.Event()
        status: list[int] = []
        headers: list[tuple[bytes, bytes]] = []
        chunks: list[bytes] = []

        async def receive() -> dict[str, Any]:
            nonlocal sent_request
            if not sent_request:
                sent_request = True
                return {"type": "http.request", "body": body, "more_body": False}
            await finished.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
                headers.extend(message.get("headers", []))
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    finished.set()

        task = asyncio.create_task(self.app(scope, receive, send))
        self.running.add(task)
        task.add_done_callback(self.running.discard)
        waiter = asyncio.create_task(finished.wait())
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if not finished.is_set():
            waiter.cancel()
            task.result()  # the app failed without answering: raise its error
        return httpx.Response(status[0], headers=headers, content=b"".join(chunks))

    async def drain(self) -> None:
        if self.running:
            await asyncio.gather(*self.running, return_exceptions=True)


async def _run_pairs(app: Any, create: Callable[[httpx.AsyncClient, int], Awaitable[httpx.Response]],
                     read: Callable[[httpx.AsyncClient, httpx.Response], Awaitable[httpx.Response]]) -> list[str]:
    transport = EarlyReturnTransport(app)
    misses: list[str] = []
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        for i in range(PAIRS):
            created = await create(client, i)
            assert created.status_code in (200, 201, 202), created.text
            got = await read(client, created)
            if got.status_code != 200:
                misses.append(f"pair {i}: {got.status_code} {got.text[:200]}")
        await transport.drain()
    return misses


@pytest.fixture
def pg(postgres_tenant: Tenant) -> Tenant:
    return postgres_tenant


def test_gateway_reward_spec_create_then_read(pg: Tenant) -> None:
    app = build_service_app("gateway")
    auth = bearer(pg.keys["trainer"])
    base = f"/v1/projects/{pg.project_a}/reward-specs"

    async def create(client: httpx.AsyncClient, i: int) -> httpx.Response:
        return await client.post(base, json={"name": f"s{i}", "spec": {"type": "exact"}}, headers=auth)

    async def read(client: httpx.AsyncClient, created: httpx.Response) -> httpx.Response:
        return await client.get(f"{base}/{created.json()['name']}@{created.json()['version']}", headers=auth)

    assert asyncio.run(_run_pairs(app, create, read)) == []


def test_gateway_project_create_then_read(pg: Tenant) -> None:
    app = build_service_app("gateway")
    auth = bearer(pg.keys["root"])

    async def create(client: httpx.AsyncClient, i: int) -> httpx.Response:
        return await client.post("/v1/projects", json={"name": f"p-{uuid.uuid4().hex[:12]}"}, headers=auth)

    async def read(client: httpx.AsyncClient, created: httpx.Response) -> httpx.Response:
        return await client.get(f"/v1/projects/{created.json()['id']}", headers=auth)

    assert asyncio.run(_run_pairs(app, create, read)) == []


def test_annotation_project_create_then_read(pg: Tenant) -> None:
    app = build_service_app("annotation")
    auth = bearer(pg.keys["admin"])

    async def create(client: httpx.AsyncClient, i: int) -> httpx.Response:
        return await client.post("/v1/annotation/projects", headers=auth, json={
            "project_id": pg.project_a, "name": f"a{i}", "label_budget": 10, "rollouts_per_prompt": 2})

    async def read(client: httpx.AsyncClient, created: httpx.Response) -> httpx.Response:
        return await client.get(f"/v1/annotation/projects/{created.json()['id']}", headers=auth)

    assert asyncio.run(_run_pairs(app, create, read)) == []


def test_rubric_rm_job_create_then_read(pg: Tenant, monkeypatch: pytest.MonkeyPatch) -> None:
    from services.rubric_rm import tasks

    monkeypatch.setattr(tasks, "submit_job", lambda job_id: job_id)  # record the job; do not run it
    app = build_service_app("rubric_rm")
    auth = bearer(pg.keys["trainer"])
    item = {"instruction": "2+2?", "response": "4", "rubric_text": "1. [Hard Rule] says 4"}

    async def create(client: httpx.AsyncClient, i: int) -> httpx.Response:
        return await client.post("/v1/jobs", json={"kind": "judge_pointwise", "items": [item]}, headers=auth)

    async def read(client: httpx.AsyncClient, created: httpx.Response) -> httpx.Response:
        return await client.get(f"/v1/jobs/{created.json()['id']}", headers=auth)

    assert asyncio.run(_run_pairs(app, create, read)) == []


def test_trainer_run_create_then_read(pg: Tenant, monkeypatch: pytest.MonkeyPatch) -> None:
    from services.trainer import runs

    monkeypatch.setattr(runs, "launch", lambda *args, **kwargs: None)  # record the run; start no worker
    from services.common.settings import get_settings

    # A run's dataset is a file inside its project's area (<data_dir>/projects/<id>/datasets/).
    datasets = get_settings().data_dir / "projects" / pg.project_a / "datasets"
    datasets.mkdir(parents=True, exist_ok=True)
    (datasets / "d.jsonl").write_text(json.dumps({"prompt": "Say 7.", "reward_model": {"ground_truth": "7"}}) + "\n")
    config = {"model": {"tiny": {"seed": 0}}, "dataset": "d.jsonl",
              "reward": {"spec": {"type": "regex", "pattern": r"\d"}},
              "group_size": 2, "prompts_per_step": 1, "max_steps": 1}
    app = build_service_app("trainer")
    auth = bearer(pg.keys["trainer"])

    async def create(client: httpx.AsyncClient, i: int) -> httpx.Response:
        return await client.post("/v1/runs", json={"name": f"r{i}", "config": config}, headers=auth)

    async def read(client: httpx.AsyncClient, created: httpx.Response) -> httpx.Response:
        return await client.get(f"/v1/runs/{created.json()['id']}", headers=auth)

    assert asyncio.run(_run_pairs(app, create, read)) == []


# ------------------------------------------------------------------------------- a failed commit


@pytest.fixture
def failing_commit() -> Iterator[list[int]]:
    """The commit of a session that wrote a reward spec raises, as a lost connection would."""
    from services.gateway.models import RewardSpecRecord

    failures: list[int] = []

    def after_flush(session: Session, _context: object) -> None:
        if any(isinstance(obj, RewardSpecRecord) for obj in session.new):
            session.info["wrote_spec"] = True

    def before_commit(session: Session) -> None:
        if session.info.pop("wrote_spec", False):
            failures.append(1)
            raise OperationalError("COMMIT", {}, Exception("server closed the connection unexpectedly"))

    event.listen(Session, "after_flush", after_flush)
    event.listen(Session, "before_commit", before_commit)
    try:
        yield failures
    finally:
        event.remove(Session, "before_commit", before_commit)
        event.remove(Session, "after_flush", after_flush)


def _spec_count(project_id: str) -> int:
    from services.common.db import session_scope
    from services.gateway.models import RewardSpecRecord

    with session_scope() as session:
        return int(session.scalar(select(func.count()).select_from(RewardSpecRecord).where(
            RewardSpecRecord.project_id == project_id)) or 0)


def test_failed_commit_is_a_retryable_503_and_stores_nothing(pg: Tenant, failing_commit: list[int]) -> None:
    app = build_service_app("gateway")
    auth = bearer(pg.keys["trainer"])
    base = f"/v1/projects/{pg.project_a}/reward-specs"

    async def scenario() -> tuple[httpx.Response, httpx.Response]:
        transport = EarlyReturnTransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            created = await client.post(base, json={"name": "lost", "spec": {"type": "exact"}}, headers=auth)
            await transport.drain()
            read = await client.get(f"{base}/lost", headers=auth)
            await transport.drain()
        return created, read

    created, read = asyncio.run(scenario())
    assert failing_commit, "the injected failure never fired"
    assert created.status_code == 503, created.text
    assert created.headers["retry-after"] == "1"
    assert created.json()["error"]["code"] == "commit_failed"
    assert read.status_code == 404
    assert _spec_count(pg.project_a) == 0


def test_streaming_route_commits_before_the_first_byte(pg: Tenant) -> None:
    """A route that writes and then streams: the write is visible to others before the stream starts."""
    from fastapi import APIRouter, Depends
    from fastapi.responses import StreamingResponse

    from services.common.app_factory import create_service_app
    from services.common.db import get_session, session_scope
    from services.gateway.models import RewardSpecRecord

    router = APIRouter()
    seen: list[int] = []

    @router.post("/stream-after-write")
    def stream_after_write(session: Session = Depends(get_session)) -> StreamingResponse:
        session.add(RewardSpecRecord(project_id=pg.project_a, name="streamed", version=1, spec={"type": "exact"}))
        session.flush()

        async def body() -> AsyncIterator[bytes]:
            with session_scope() as other:  # another connection: sees only committed rows
                seen.append(int(other.scalar(select(func.count()).select_from(RewardSpecRecord).where(
                    RewardSpecRecord.name == "streamed")) or 0))
            yield b"ok\n"

        return StreamingResponse(body(), media_type="text/plain")

    app = create_service_app("stream-test", [router], title="stream test")

    async def scenario() -> httpx.Response:
        transport = EarlyReturnTransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            response = await client.post("/stream-after-write")
            await transport.drain()
        return response

    response = asyncio.run(scenario())
    assert response.status_code == 200 and response.text == "ok\n"
    assert seen == [1]
