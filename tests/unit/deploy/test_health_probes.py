"""The probes the chart points the kubelet at: readiness checks only what a service needs per request,
liveness fails when the event loop is wedged (and only then)."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import APIRouter
from fastapi.testclient import TestClient

from services.common.app_factory import create_service_app
from services.common.health import READINESS_CHECKS, readiness_checks
from services.common.settings import reset_settings_cache
from tests.unit.deploy.test_helm import SERVICES_WITH_DATABASE

UNREACHABLE_REDIS = "redis://127.0.0.1:1/0"  # nothing listens on port 1: a broker outage


def client_for(service: str, monkeypatch: pytest.MonkeyPatch) -> TestClient:
    monkeypatch.setenv("REDIS_URL", UNREACHABLE_REDIS)
    reset_settings_cache()
    return TestClient(create_service_app(service, [], title=service), raise_server_exceptions=False)


@pytest.mark.parametrize("service", sorted(READINESS_CHECKS))
def test_a_broker_outage_leaves_every_service_ready(isolated_env: Path, monkeypatch: pytest.MonkeyPatch,
                                                    service: str) -> None:
    response = client_for(service, monkeypatch).get("/readyz")
    assert response.status_code == 200, response.json()
    assert response.json()["checks"] == {"database": "ok"}


def test_a_database_outage_makes_a_service_unready(isolated_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://nobody@127.0.0.1:1/none")
    response = client_for("gateway", monkeypatch).get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["database"].startswith("error: ")
    # Liveness checks no dependency: the pod is not restarted for the database's outage.
    assert client_for("gateway", monkeypatch).get("/livez").status_code == 200


def test_readiness_checks_per_service_match_the_charts_credentials() -> None:
    # Each service that gets DATABASE_URL in the chart checks the database; none checks the broker.
    assert {name for name, checks in READINESS_CHECKS.items() if "database" in checks} == SERVICES_WITH_DATABASE
    assert all("broker" not in checks for checks in READINESS_CHECKS.values())
    # Elsewhere (the embedded default, tests' own apps) the broker counts when one is configured.
    assert readiness_checks("embedded", "redis://x:6379/0") == ("database", "broker")
    assert readiness_checks("embedded", None) == ("database",)


# --- liveness against a wedged loop, on a real server -------------------------------------------

class Wedge:
    """A route that blocks the server's event loop until released (blocking code in an async route)."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def router(self) -> APIRouter:
        router = APIRouter()

        @router.get("/wedge")
        async def wedge() -> dict[str, str]:
            self.entered.set()
            self.release.wait()  # blocks the loop itself, as a sync call in an async route does
            return {"status": "released"}

        return router


@pytest.fixture
def wedged_server(isolated_env: Path) -> Iterator[tuple[str, Wedge]]:
    reset_settings_cache()
    wedge = Wedge()
    app = create_service_app("gateway", [wedge.router()], title="wedge")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)  # listening already: connections made before uvicorn starts wait in the backlog
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        yield url, wedge
    finally:
        wedge.release.set()
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def test_liveness_fails_while_the_loop_is_wedged_and_recovers(wedged_server: tuple[str, Wedge]) -> None:
    url, wedge = wedged_server
    assert httpx.get(url + "/livez", timeout=30).json() == {"status": "ok"}
    with httpx.Client() as blocked:
        # The wedging request runs in its own thread; its handler signals once it holds the loop.
        answer: list[httpx.Response] = []
        caller = threading.Thread(target=lambda: answer.append(blocked.get(url + "/wedge", timeout=60)))
        caller.start()
        assert wedge.entered.wait(timeout=30)
        # The kubelet's probe: an HTTP GET with timeoutSeconds. The loop cannot answer, so it times out.
        with pytest.raises(httpx.ReadTimeout):
            httpx.get(url + "/livez", timeout=1)
        wedge.release.set()
        caller.join(timeout=30)
    assert answer and answer[0].json() == {"status": "released"}
    assert httpx.get(url + "/livez", timeout=5).status_code == 200
