"""Reward-scoped tokens: safe in a URL — they can score, and nothing else; revocable; rate-limited."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from rewardhub.embedded import build_embedded_app
from services.common import auth
from services.common.models import Role
from tests.conftest import Tenant, bearer, make_tenant

PROMPT = "What is 1 + 1?"
BODY = {"query": [PROMPT + " \\boxed{2}", PROMPT + " \\boxed{3}"], "prompts": [PROMPT, PROMPT], "labels": ["2", "2"]}


@pytest.fixture
def tenant(isolated_env: Path) -> Tenant:
    return make_tenant()


@pytest.fixture
def client(tenant: Tenant) -> Iterator[TestClient]:
    with TestClient(build_embedded_app()) as test_client:
        created = test_client.post(f"/v1/projects/{tenant.project_a}/reward-specs", headers=bearer(tenant.keys["trainer"]),
                                   json={"name": "m", "spec": {"type": "math"}})
        assert created.status_code == 201, created.text
        yield test_client


def reward_token(client: TestClient, tenant: Tenant) -> tuple[str, str]:
    made = client.post(f"/v1/projects/{tenant.project_a}/keys", json={"role": "reward", "name": "openrlhf"},
                       headers=bearer(tenant.keys["admin"]))
    assert made.status_code == 201, made.text
    return made.json()["id"], made.json()["key"]


def test_a_reward_token_in_the_path_scores(client: TestClient, tenant: Tenant) -> None:
    _, token = reward_token(client, tenant)
    response = client.post(f"/get_reward/{token}?spec_ref=m@1", json=BODY)
    assert response.status_code == 200, response.text
    assert response.json()["rewards"] == [1.0, 0.0]
    as_bearer = client.post("/v1/rewards", headers=bearer(token), json={
        "spec_ref": "m@1", "items": [{"id": "a", "completion": "\\boxed{2}", "ground_truth": "2"}]})
    assert as_bearer.status_code == 200 and as_bearer.json()["results"][0]["score"] == 1.0


@pytest.mark.parametrize(("method", "path", "body"), [
    ("POST", "/v1/projects", {"name": "stolen"}),
    ("POST", "/v1/projects/{A}/keys", {"role": "admin"}),
    ("GET", "/v1/projects/{A}/keys", None),
    ("POST", "/v1/projects/{A}/reward-specs", {"name": "x", "spec": {"type": "math"}}),
    ("POST", "/services/verifier/run_code", {"code": "print(1)", "language": "python"}),
    ("POST", "/services/rubric_rm/v1/rubrics/generate", {"instruction": "x", "responses": ["a", "b"]}),
])
def test_a_reward_token_administers_nothing(client: TestClient, tenant: Tenant, method: str, path: str,
                                            body: dict[str, object] | None) -> None:
    _, token = reward_token(client, tenant)
    response = client.request(method, path.replace("{A}", tenant.project_a), json=body, headers=bearer(token))
    assert response.status_code == 403, (path, response.status_code, response.text)
    assert "role" in response.json()["error"]["message"]


def test_only_reward_tokens_may_ride_in_a_url(client: TestClient, tenant: Tenant) -> None:
    for key in (tenant.keys["trainer"], tenant.keys["admin"]):
        response = client.post(f"/get_reward/{key}?spec_ref=m@1", json=BODY)
        assert response.status_code == 403 and response.json()["error"]["field"] == "token"
    assert client.post("/get_reward/rh_not-a-key-at-all?spec_ref=m@1", json=BODY).status_code == 401


def test_a_revoked_token_stops_working(client: TestClient, tenant: Tenant) -> None:
    key_id, token = reward_token(client, tenant)
    assert client.post(f"/get_reward/{token}?spec_ref=m@1", json=BODY).status_code == 200
    assert client.delete(f"/v1/keys/{key_id}", headers=bearer(tenant.keys["admin"])).status_code == 200
    assert client.post(f"/get_reward/{token}?spec_ref=m@1", json=BODY).status_code == 401


def test_a_token_is_rate_limited_with_retry_after(client: TestClient, tenant: Tenant,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from services.common.settings import reset_settings_cache

    monkeypatch.setenv("REWARDHUB_REWARD_TOKEN_REQUESTS_PER_S", "0.01")  # bursts of 1, then one per 100 s
    reset_settings_cache()
    _, token = reward_token(client, tenant)
    assert client.post(f"/get_reward/{token}?spec_ref=m@1", json=BODY).status_code == 200
    limited = client.post(f"/get_reward/{token}?spec_ref=m@1", json=BODY)
    assert limited.status_code == 429 and limited.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(limited.headers["retry-after"]) <= 100
    # A trainer key is not limited by the reward-token bucket.
    for _ in range(3):
        assert client.post("/get_reward?spec_ref=m@1", json=BODY, headers=bearer(tenant.keys["trainer"])).status_code == 200


def test_token_bucket_arithmetic(monkeypatch: pytest.MonkeyPatch) -> None:
    """rate 2/s → burst 4: four at once pass, the fifth waits 0.5 s; after 1 s two more pass."""
    now = [100.0]
    monkeypatch.setattr(auth.time, "monotonic", lambda: now[0])
    limiter = auth.RewardTokenLimiter()
    assert [limiter.take("k", 2.0) for _ in range(4)] == [0.0] * 4
    assert limiter.take("k", 2.0) == pytest.approx(0.5)
    now[0] += 1.0
    assert [limiter.take("k", 2.0) for _ in range(2)] == [0.0, 0.0]
    assert limiter.take("k", 2.0) > 0
    assert limiter.take("other", 2.0) == 0.0
    assert limiter.take("k", 0.0) == 0.0  # 0: no limit


def test_role_is_known() -> None:
    assert Role("reward") is Role.reward


def test_a_path_token_is_masked_in_log_lines() -> None:
    import logging

    from services.common.logging import SecretMaskingFilter, mask_url_credentials

    line = '127.0.0.1:5 - "POST /get_reward/rh_SeCrEt-token_123?spec_ref=m@1 HTTP/1.1" 200'
    assert "rh_SeCrEt" not in mask_url_credentials(line) and "/get_reward/***?spec_ref=m@1" in mask_url_credentials(line)
    record = logging.LogRecord("uvicorn.access", logging.INFO, "", 0, '%s - "%s %s HTTP/%s" %d',
                               ("127.0.0.1:5", "POST", "/get_reward/rh_SeCrEt-token_123?spec_ref=m@1", "1.1", 200), None)
    SecretMaskingFilter().filter(record)
    assert "rh_SeCrEt" not in record.getMessage()
