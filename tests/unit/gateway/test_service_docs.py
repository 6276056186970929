"""The gateway serves every other service's API docs, as in compose and Helm where only it is published."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient

from services.common.registry import build_service_app, services
from services.common.service_client import unregister_local_apps
from services.common.settings import reset_settings_cache
from tests.conftest import _free_port


@pytest.fixture
def verifier_url(isolated_env: Path) -> Iterator[str]:
    """The real verifier app alone behind a real uvicorn, as its own service on the internal network."""
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(build_service_app("verifier"), host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)  # waiting for a server to come up, not timing anything
    assert server.started, "verifier did not start"
    yield url
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def gateway(isolated_env: Path, verifier_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    unregister_local_apps()  # nothing in-process: every other service is reached at its URL
    monkeypatch.setenv("REWARDHUB_VERIFIER_URL", verifier_url)
    monkeypatch.setenv("REWARDHUB_SANDBOX_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    reset_settings_cache()
    with TestClient(build_service_app("gateway")) as client:
        yield client
    reset_settings_cache()


def test_the_gateway_docs_list_every_other_service(gateway: TestClient) -> None:
    description = gateway.get("/openapi.json").json()["info"]["description"]
    for name in services():
        if name != "gateway":
            assert f"(/docs/services/{name})" in description, name


def test_a_service_description_is_fetched_from_the_service_itself(gateway: TestClient, verifier_url: str) -> None:
    document = gateway.get("/docs/services/verifier/openapi.json")
    assert document.status_code == 200
    body = document.json()
    assert body["info"]["title"] == httpx.get(verifier_url + "/openapi.json").json()["info"]["title"]
    assert "/v1/grade" in body["paths"]
    assert body["servers"] == [{"url": verifier_url, "description": "verifier (internal network)"}]
    page = gateway.get("/docs/services/verifier")
    assert page.status_code == 200 and "/docs/services/verifier/openapi.json" in page.text
    assert "/docs/assets/swagger-ui-bundle.js" in page.text and "cdn" not in page.text.lower()


def test_an_unreachable_service_is_a_503_naming_it(gateway: TestClient) -> None:
    response = gateway.get("/docs/services/sandbox/openapi.json")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "upstream_unavailable"
    assert "'sandbox'" in response.json()["error"]["message"]


@pytest.mark.parametrize(("name", "status"), [("gateway", 404), ("nosuch", 404), ("http:", 422)])
def test_only_other_registered_services_are_fetched(gateway: TestClient, name: str, status: int) -> None:
    response = gateway.get(f"/docs/services/{name}/openapi.json")
    assert response.status_code == status, response.text
    assert response.json()["error"]["field"] == "name"


def test_a_path_that_climbs_out_is_no_service(gateway: TestClient) -> None:
    assert gateway.get("/docs/services/..%2F..%2Fhealthz/openapi.json").status_code == 404
