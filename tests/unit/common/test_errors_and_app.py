"""The contracts every service app keeps: error model, body cap, health, metrics."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi import APIRouter
from fastapi.testclient import TestClient
from pydantic import BaseModel

from services.common.app_factory import create_service_app
from services.common.errors import Conflict, UpstreamUnavailable


class Item(BaseModel):
    name: str
    count: int


def _app(isolated_env: Path, monkeypatch: pytest.MonkeyPatch, max_bytes: int = 10_000) -> TestClient:
    from services.common.settings import reset_settings_cache

    monkeypatch.setenv("REWARDHUB_MAX_REQUEST_BYTES", str(max_bytes))
    reset_settings_cache()
    router = APIRouter()

    @router.post("/items")
    def create(items: list[Item]) -> dict[str, int]:
        return {"n": len(items)}

    @router.post("/conflict")
    def conflict() -> None:
        raise Conflict("already there", field="name")

    @router.get("/boom")
    def boom() -> None:
        raise RuntimeError("secret internals")

    @router.get("/upstream")
    def upstream() -> None:
        raise UpstreamUnavailable("the verifier service is unreachable", retry_after_s=3)

    return TestClient(create_service_app("test", [router], title="t"), raise_server_exceptions=False)


def test_validation_error_names_the_field(isolated_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    client = _app(isolated_env, monkeypatch)
    response = client.post("/items", json=[{"name": "a", "count": 1}, {"name": "b", "count": "many"}])
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid_input"
    assert error["field"] == "[1].count"
    assert "[1].count" in error["message"]


def test_missing_field_and_api_error_shape(isolated_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    client = _app(isolated_env, monkeypatch)
    missing = client.post("/items", json=[{"name": "a"}]).json()["error"]
    assert missing["field"] == "[0].count" and "required" in missing["message"].lower()
    assert client.post("/conflict").json() == {
        "error": {"code": "conflict", "message": "already there", "field": "name"}}
    assert client.get("/nowhere").json()["error"]["code"] == "not_found"


def test_an_unreachable_upstream_is_a_503_saying_when_to_retry(isolated_env: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    response = _app(isolated_env, monkeypatch).get("/upstream")
    assert response.status_code == 503 and response.headers["retry-after"] == "3"
    assert response.json()["error"]["code"] == "upstream_unavailable"


def test_body_over_cap_is_413_and_never_reaches_handler(isolated_env: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    client = _app(isolated_env, monkeypatch, max_bytes=200)
    big = [{"name": "x" * 50, "count": i} for i in range(10)]
    response = client.post("/items", json=big)
    assert response.status_code == 413
    assert response.json()["error"] == {"code": "payload_too_large",
                                        "message": "request body exceeds the limit of 200 bytes",
                                        "field": "body"}

    def chunks():  # no Content-Length: the cap must hold on the streamed body too
        for _ in range(10):
            yield b"x" * 50

    streamed = client.post("/items", content=chunks(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413


def test_unexpected_error_is_500_without_internals(isolated_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    response = _app(isolated_env, monkeypatch).get("/boom")
    assert response.status_code == 500
    assert "secret" not in response.text
    assert response.json()["error"]["code"] == "internal_error"


def test_health_ready_metrics(isolated_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    client = _app(isolated_env, monkeypatch)
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"database": "ok"}
    client.post("/items", json=[])
    text = client.get("/metrics").text
    assert 'rewardhub_http_requests_total{method="POST",route="/items",service="test",status="200"}' in text
    assert response_has_request_id(client)


def response_has_request_id(client: TestClient) -> bool:
    response = client.get("/healthz", headers={"x-request-id": "abc123"})
    return response.headers.get("x-request-id") == "abc123"


def test_readiness_reports_an_unreachable_broker(isolated_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    client = _app(isolated_env, monkeypatch)
    response = client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["broker"].startswith("error: ")
