"""Web-UI login rate limiting: per account and per address, kept in the database, 429 + Retry-After."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from services.annotation import login_throttle
from services.annotation.app import create_app
from services.annotation.deps import request_time
from services.common.settings import get_settings, reset_settings_cache
from tests.conftest import REPO_ROOT, Tenant
from tests.unit.annotation.test_api import T0, Clock, create
from tests.unit.annotation.test_webui_routes import PASSWORD, add_account, csrf_of

ATTACKER = ("203.0.113.7", 40000)
OTHER = ("198.51.100.9", 40001)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def app(sqlite_tenant: Tenant, clock: Clock) -> Any:
    made = create_app()
    made.dependency_overrides[request_time] = clock
    return made


def browser(app: Any, address: tuple[str, int] = ATTACKER) -> TestClient:
    return TestClient(app, client=address)


@pytest.fixture
def client(app: Any) -> Iterator[TestClient]:
    with browser(app) as test_client:
        yield test_client


@pytest.fixture
def pid(client: TestClient, sqlite_tenant: Tenant) -> str:
    project = create(client, sqlite_tenant)
    add_account(project["id"], "alice")
    return str(project["id"])


def attempt(client: TestClient, username: str, password: str) -> Any:
    page = client.get("/ui/login")
    return client.post("/ui/login", data={"username": username, "password": password,
                                          "csrf_token": csrf_of(page.text)}, follow_redirects=False)


def test_five_wrong_passwords_lock_the_account_even_for_the_right_one(client: TestClient, pid: str,
                                                                       clock: Clock) -> None:
    for _ in range(5):
        assert attempt(client, "alice", "wrong password!").status_code == 401
    locked = attempt(client, "alice", PASSWORD)
    assert locked.status_code == 429
    assert int(locked.headers["Retry-After"]) == 900
    assert "Too many failed login attempts" in locked.text and "try again in 15 minutes" in locked.text
    assert 'id="login-error"' in locked.text

    clock.now = T0 + timedelta(minutes=10)
    again = attempt(client, "alice", PASSWORD)
    assert again.status_code == 429 and int(again.headers["Retry-After"]) == 300

    clock.now = T0 + timedelta(minutes=15, seconds=1)
    assert attempt(client, "alice", PASSWORD).status_code == 303


def test_refused_attempts_do_not_extend_the_lock(client: TestClient, pid: str, clock: Clock) -> None:
    for _ in range(5):
        attempt(client, "alice", "wrong password!")
    for minute in range(1, 15):
        clock.now = T0 + timedelta(minutes=minute)
        assert attempt(client, "alice", "wrong password!").status_code == 429
    clock.now = T0 + timedelta(minutes=15, seconds=1)
    assert attempt(client, "alice", PASSWORD).status_code == 303


def test_a_successful_login_resets_the_account_counter(client: TestClient, pid: str) -> None:
    for _ in range(4):
        assert attempt(client, "alice", "wrong password!").status_code == 401
    assert attempt(client, "alice", PASSWORD).status_code == 303
    assert login_throttle.failures(login_throttle.ACCOUNT, "alice", now=T0) == 0
    for _ in range(4):
        assert attempt(client, "alice", "wrong password!").status_code == 401
    assert attempt(client, "alice", PASSWORD).status_code == 303


def test_the_account_limit_holds_from_every_address(app: Any, client: TestClient, pid: str) -> None:
    for _ in range(5):
        attempt(client, "alice", "wrong password!")
    with browser(app, OTHER) as elsewhere:
        assert attempt(elsewhere, "alice", PASSWORD).status_code == 429
        # Usernames differ only in case and surrounding blanks: the same account.
        assert attempt(elsewhere, " ALICE ", PASSWORD).status_code == 429


def test_unknown_accounts_lock_the_same_way_and_count_for_the_address(app: Any, client: TestClient, pid: str,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REWARDHUB_LOGIN_MAX_FAILURES_PER_ADDRESS", "8")
    reset_settings_cache()
    # A name that does not exist gives the same answers as one that does: no account discovery.
    for _ in range(5):
        assert attempt(client, "nobody-here", "wrong password!").status_code == 401
    unknown = attempt(client, "nobody-here", "wrong password!")
    assert unknown.status_code == 429 and unknown.headers["Retry-After"] == "900"
    assert login_throttle.failures(login_throttle.ADDRESS, ATTACKER[0], now=T0) == 5
    # Three more names fill the address's 8: now even alice's right password is refused here...
    for name in ("mallory", "trudy", "eve-x"):
        assert attempt(client, name, "wrong password!").status_code == 401
    assert attempt(client, "alice", PASSWORD).status_code == 429
    # ...but not from another address, since alice's own count is zero.
    with browser(app, OTHER) as elsewhere:
        assert attempt(elsewhere, "alice", PASSWORD).status_code == 303


def test_a_success_does_not_reset_the_address_counter(client: TestClient, pid: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REWARDHUB_LOGIN_MAX_FAILURES_PER_ADDRESS", "3")
    reset_settings_cache()
    for name in ("mallory", "trudy"):
        attempt(client, name, "wrong password!")
    assert attempt(client, "alice", PASSWORD).status_code == 303
    assert attempt(client, "trudy", "wrong password!").status_code == 401
    assert attempt(client, "alice", PASSWORD).status_code == 429


def test_wrong_admin_keys_count_for_the_address(client: TestClient, pid: str, sqlite_tenant: Tenant,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REWARDHUB_LOGIN_MAX_FAILURES_PER_ADDRESS", "3")
    reset_settings_cache()
    for _ in range(3):
        page = client.get("/ui/login")
        wrong = client.post("/ui/login/key", data={"api_key": "rh_guess", "csrf_token": csrf_of(page.text)})
        assert wrong.status_code == 401
    page = client.get("/ui/login")
    refused = client.post("/ui/login/key", data={"api_key": sqlite_tenant.keys["admin"],
                                                 "csrf_token": csrf_of(page.text)}, follow_redirects=False)
    assert refused.status_code == 429 and "Retry-After" in refused.headers


def test_state_lives_in_the_database_so_replicas_agree(app: Any, client: TestClient, pid: str) -> None:
    for _ in range(5):
        attempt(client, "alice", "wrong password!")
    # Another replica: a second app object, and a separate OS process, on the same database.
    replica = create_app()
    replica.dependency_overrides[request_time] = app.dependency_overrides[request_time]
    with browser(replica, OTHER) as other:
        assert attempt(other, "alice", PASSWORD).status_code == 429
    script = ("import json; from datetime import datetime; from services.annotation import login_throttle as t; "
              f"a = t.begin('alice', '192.0.2.1', now=datetime.fromisoformat({T0.isoformat()!r})); "
              "print(json.dumps({'refused': a.refused, 'retry_after': a.retry_after_s}))")
    env = {**os.environ, "REWARDHUB_DATA_DIR": str(get_settings().data_dir)}
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                         timeout=120, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"refused": True, "retry_after": 900}


def test_a_parallel_burst_gets_at_most_the_limit_through(pid: str) -> None:
    def one(_: int) -> bool:
        started = login_throttle.begin("alice", "203.0.113.99", now=T0)
        return not started.refused

    with ThreadPoolExecutor(max_workers=8) as pool:
        admitted = sum(pool.map(one, range(24)))
    # Every attempt is recorded before it is judged, so racing requests cannot all see "under the limit";
    # the refused ones take their rows back and the admitted ones stay as (unfinished = failed) attempts.
    assert admitted <= 5
    assert login_throttle.failures(login_throttle.ACCOUNT, "alice", now=T0) == admitted


def test_the_table_stores_neither_usernames_nor_addresses(client: TestClient, pid: str) -> None:
    from services.annotation.models import LoginAttempt
    from services.common.db import session_scope

    attempt(client, "my-password-typed-here", "wrong password!")
    with session_scope() as session:
        subjects = {row.subject for row in session.query(LoginAttempt)}
    assert subjects and not any("my-password" in s or ATTACKER[0] in s for s in subjects)
    assert all(len(s) == 64 for s in subjects)


def test_client_address_comes_from_the_asgi_scope_not_a_header(client: TestClient, pid: str) -> None:
    for _ in range(5):
        page = client.get("/ui/login")
        client.post("/ui/login", data={"username": f"user{_}x", "password": "wrong password!",
                                       "csrf_token": csrf_of(page.text)}, headers={"X-Forwarded-For": f"10.0.0.{_}"})
    assert login_throttle.failures(login_throttle.ADDRESS, ATTACKER[0], now=T0) == 5


@pytest.mark.postgres
def test_the_limits_hold_on_postgres_under_a_parallel_burst(postgres_tenant: Tenant) -> None:
    def one(_: int) -> bool:
        return not login_throttle.begin("alice", "203.0.113.50", now=T0).refused

    with ThreadPoolExecutor(max_workers=8) as pool:
        admitted = sum(pool.map(one, range(24)))
    assert admitted <= 5
    assert login_throttle.failures(login_throttle.ACCOUNT, "alice", now=T0) == admitted
    while login_throttle.failures(login_throttle.ACCOUNT, "alice", now=T0) < 5:
        login_throttle.begin("alice", f"198.51.100.{admitted}", now=T0)
        admitted += 1
    refused = login_throttle.begin("alice", "192.0.2.77", now=T0 + timedelta(minutes=1))
    assert refused.refused and refused.retry_after_s == 840
    success = login_throttle.begin("bob", "192.0.2.77", now=T0)
    login_throttle.finish(success, succeeded=True)
    assert login_throttle.failures(login_throttle.ADDRESS, "192.0.2.77", now=T0) == 0
