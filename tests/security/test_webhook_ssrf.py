"""Webhook URLs may not reach loopback, private, link-local or reserved addresses (SSRF), at set-up
time and again at delivery; redirects are never followed; operators can allow internal receivers."""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from services.annotation import notifications
from services.annotation.app import create_app
from services.common.errors import InvalidInput
from services.common.settings import reset_settings_cache
from tests.conftest import Tenant, bearer

BASE = "/v1/annotation/projects"
REAL_GETADDRINFO = socket.getaddrinfo

REFUSED_URLS = [
    "http://127.0.0.1/hook", "http://127.1.2.3:8080/hook", "http://localhost:8000/hook", "http://[::1]/hook",
    "http://[::ffff:127.0.0.1]/hook", "http://[::ffff:7f00:1]/hook", "http://2130706433/", "http://0x7f000001/",
    "http://017700000001/", "http://0/", "http://0.0.0.0:9/", "http://[::]/", "http://169.254.169.254/latest/meta-data",
    "http://[fe80::1]/", "http://10.1.2.3/", "http://172.16.0.1/", "http://172.31.255.254/", "http://192.168.1.1/",
    "http://[fc00::1]/", "http://[fd12:3456::1]/", "http://100.64.0.1/", "http://224.0.0.1/", "http://[ff02::1]/",
    "http://240.0.0.1/", "http://255.255.255.255/", "http://[64:ff9b::a00:1]/", "http://[2002:7f00:1::]/",
    "http://192.0.2.10/", "http://[2001:db8::1]/",
]
BAD_SCHEMES = ["ftp://example.com/hook", "file:///etc/passwd", "gopher://example.com/", "javascript:alert(1)",
               "http:///nohost"]
PUBLIC = ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111", "::ffff:8.8.8.8"]


def fake_dns(mapping: dict[str, list[str]]) -> Any:
    """getaddrinfo that answers the given names from the mapping (others as usual)."""
    def lookup(host: str, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host in mapping:
            return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port or 0))
                    for a in mapping[host]]
        return REAL_GETADDRINFO(host, port, *args, **kwargs)
    return lookup


@pytest.fixture
def guarded(isolated_env: Path) -> Path:
    """The default: no operator allowance for private webhooks."""
    return isolated_env


def operator_allows(monkeypatch: pytest.MonkeyPatch, **env: str) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    reset_settings_cache()


# -------------------------------------------------------------------------------- the address rule


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass(address: str) -> None:
    assert notifications.is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["127.0.0.1", "10.0.0.1", "172.16.5.4", "192.168.0.1", "169.254.169.254",
                                     "0.0.0.0", "100.64.1.1", "224.0.0.251", "239.255.255.250", "240.0.0.1",
                                     "255.255.255.255", "::1", "::", "fe80::1", "fc00::1", "fd00::abcd",
                                     "ff02::1", "ff0e::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1",
                                     "::ffff:169.254.169.254", "64:ff9b::7f00:1", "2002:a00:1::1", "::7f00:1",
                                     "2001:db8::1", "fec0::1"])
def test_non_public_addresses_are_refused(address: str) -> None:
    assert not notifications.is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize("url", REFUSED_URLS)
def test_urls_reaching_internal_addresses_are_refused(guarded: Path, url: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        notifications.check_webhook_url(url)
    assert refused.value.field == "webhook_url" and refused.value.code == notifications.NOT_ALLOWED


@pytest.mark.parametrize("url", BAD_SCHEMES)
def test_only_http_and_https_are_accepted(guarded: Path, url: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        notifications.check_webhook_url(url)
    assert refused.value.field == "webhook_url"


def test_every_resolved_address_must_be_public(guarded: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", fake_dns({"mixed.example": ["93.184.216.34", "10.0.0.5"],
                                                         "public.example": ["93.184.216.34", "2606:4700::1"]}))
    with pytest.raises(InvalidInput, match=r"10\.0\.0\.5"):
        notifications.check_webhook_url("https://mixed.example/hook")
    assert [str(a) for a in notifications.check_webhook_url("https://public.example/hook")] == [
        "93.184.216.34", "2606:4700::1"]


def test_an_unresolvable_host_is_refused_with_its_own_code(guarded: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*_args: Any, **_kwargs: Any) -> Any:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", fail)
    with pytest.raises(InvalidInput) as refused:
        notifications.check_webhook_url("https://no-such-host.example/hook")
    assert refused.value.code == notifications.UNRESOLVABLE and refused.value.field == "webhook_url"


def test_operator_settings_allow_private_receivers(guarded: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", fake_dns({"hooks.internal": ["10.2.3.4"],
                                                         "other.internal": ["10.9.9.9"]}))
    operator_allows(monkeypatch, REWARDHUB_WEBHOOK_ALLOWED_HOSTS="hooks.internal, 192.168.7.0/24, ::1")
    assert notifications.check_webhook_url("http://hooks.internal/h") == []
    assert notifications.check_webhook_url("http://192.168.7.20/h") == [ipaddress.ip_address("192.168.7.20")]
    assert notifications.check_webhook_url("http://[::1]:8080/h") == [ipaddress.ip_address("::1")]
    for still_refused in ("http://other.internal/h", "http://192.168.8.1/h", "http://127.0.0.1/h"):
        with pytest.raises(InvalidInput):
            notifications.check_webhook_url(still_refused)
    operator_allows(monkeypatch, REWARDHUB_WEBHOOK_ALLOW_PRIVATE="true")
    assert notifications.check_webhook_url("http://127.0.0.1:9/hook") == []
    with pytest.raises(InvalidInput):  # the scheme rule holds even then
        notifications.check_webhook_url("file:///etc/passwd")


# ------------------------------------------------------------------------------------------- API


@pytest.fixture
def client(sqlite_tenant: Tenant) -> Iterator[TestClient]:
    with TestClient(create_app()) as test_client:
        yield test_client


def _create(client: TestClient, tenant: Tenant, name: str, url: str) -> Any:
    return client.post(BASE, headers=bearer(tenant.keys["admin"]), json={
        "project_id": tenant.project_a, "name": name, "label_budget": 1, "rollouts_per_prompt": 4,
        "policy": "random", "webhook_url": url})


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/hook", "http://[::ffff:127.0.0.1]/hook", "http://2130706433/",
                                 "http://169.254.169.254/latest", "http://10.0.0.8/hook", "http://[fe80::1]/hook"])
def test_create_and_update_refuse_internal_webhooks_naming_the_field(client: TestClient, sqlite_tenant: Tenant,
                                                                      url: str) -> None:
    made = _create(client, sqlite_tenant, "p", url)
    assert made.status_code == 422, made.text
    assert made.json()["error"]["field"] == "webhook_url" and "not a public address" in made.json()["error"]["message"]
    project = client.post(BASE, headers=bearer(sqlite_tenant.keys["admin"]), json={
        "project_id": sqlite_tenant.project_a, "name": "q", "label_budget": 1, "rollouts_per_prompt": 4,
        "policy": "random"}).json()
    patched = client.patch(f"{BASE}/{project['id']}", headers=bearer(sqlite_tenant.keys["admin"]),
                           json={"webhook_url": url})
    assert patched.status_code == 422 and patched.json()["error"]["field"] == "webhook_url"
    got = client.get(f"{BASE}/{project['id']}", headers=bearer(sqlite_tenant.keys["admin"])).json()
    assert got["webhook_url"] is None


def test_the_operator_setting_lets_a_loopback_receiver_in(client: TestClient, sqlite_tenant: Tenant,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    operator_allows(monkeypatch, REWARDHUB_WEBHOOK_ALLOW_PRIVATE="true")
    assert _create(client, sqlite_tenant, "p", "http://127.0.0.1:9/hook").status_code == 201


# -------------------------------------------------------------------------------------- delivery


class Receiver:
    """A loopback HTTP server that records POSTs and answers with a fixed status and headers."""

    def __init__(self, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self.requests: list[dict[str, str]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver.requests.append({k.lower(): v for k, v in self.headers.items()})
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def send_once(url: str) -> int:
    """One delivery attempt, as the durable sender makes each (services/annotation/webhooks.py)."""
    with httpx.Client(timeout=5) as client:
        return notifications.post_webhook(url, "s", b'{"event":"labels"}', delivery_id="d" * 32,
                                          event_type="labels", attempt=1, client=client)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


def test_delivery_checks_again_so_a_dns_change_cannot_reach_loopback(guarded: Path, receiver: Receiver,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"http://rebind.example:{receiver.port}/hook"
    monkeypatch.setattr(socket, "getaddrinfo", fake_dns({"rebind.example": ["93.184.216.34"]}))
    notifications.check_webhook_url(url)  # accepted when it was set...
    monkeypatch.setattr(socket, "getaddrinfo", fake_dns({"rebind.example": ["127.0.0.1"]}))
    with pytest.raises(notifications.WebhookRejected, match="not a public address"):  # ...refused when sent
        send_once(url)
    assert receiver.requests == []


def test_a_stored_loopback_url_is_not_delivered_without_the_setting(guarded: Path, receiver: Receiver) -> None:
    with pytest.raises(notifications.WebhookRejected):
        send_once(receiver.url)
    assert receiver.requests == []


def test_delivery_connects_to_the_checked_address_with_the_host_name_kept(guarded: Path, receiver: Receiver,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "getaddrinfo", fake_dns({"hooks.internal": ["127.0.0.1"]}))
    operator_allows(monkeypatch, REWARDHUB_WEBHOOK_ALLOWED_HOSTS="127.0.0.0/8")
    target = notifications.webhook_target(f"https://hooks.internal:{receiver.port}/hook")
    assert target.url == f"https://127.0.0.1:{receiver.port}/hook"
    assert target.headers == {"Host": f"hooks.internal:{receiver.port}"}
    assert target.extensions == {"sni_hostname": "hooks.internal"}
    status = send_once(f"http://hooks.internal:{receiver.port}/hook")
    assert status == 200 and receiver.requests[0]["host"] == f"hooks.internal:{receiver.port}"


def test_redirects_are_not_followed(guarded: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    operator_allows(monkeypatch, REWARDHUB_WEBHOOK_ALLOW_PRIVATE="true")
    inner = Receiver()
    bouncer = Receiver(302, {"Location": inner.url})
    try:
        with pytest.raises(notifications.WebhookRejected, match="redirect"):
            send_once(bouncer.url)
        assert len(bouncer.requests) == 1 and inner.requests == []
    finally:
        inner.close()
        bouncer.close()


def test_a_failed_lookup_at_delivery_is_retried_as_a_connection_error(guarded: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def fail(host: str, *_args: Any, **_kwargs: Any) -> Any:
        calls.append(host)
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", fail)
    for _attempt in range(3):  # every attempt looks the host up again
        with pytest.raises(httpx.ConnectError):  # a transport error: the durable sender retries it
            send_once("https://flaky.example/hook")
    assert calls == ["flaky.example"] * 3
