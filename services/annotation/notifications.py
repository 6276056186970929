"""Telling trainers that labels arrived: a signed webhook and a Server-Sent-Events stream.

A label change with a webhook configured writes a delivery row in the label's own transaction
(the outbox in ``services/annotation/webhooks.py``): a rolled-back label is never announced and a
committed one survives restarts; senders retry it with backoff (``services/annotation/tasks.py``).
This module holds what every attempt does: sign, check the URL (SSRF guard) and POST once. The
label feed (``GET …/labels?cursor=``) stays the record a client catches up from. The SSE stream
reads that same feed, woken at once by commits in this process and by a short poll for commits
made by other replicas.

Webhook signature: ``X-Rewardhub-Signature: sha256=<hex HMAC-SHA256(secret, f"{timestamp}." + body)>``
with ``X-Rewardhub-Timestamp`` (Unix seconds); check it with ``verify_signature``. Each delivery
carries ``X-Rewardhub-Delivery`` (the same on every attempt: receivers deduplicate on it) and
``X-Rewardhub-Delivery-Attempt`` (1, 2, ...).

Where a webhook may point (SSRF guard). A webhook URL is chosen by a project admin but fetched
from inside the platform's network, so it could aim at the metadata service (169.254.169.254),
a database on loopback or anything on the private network. ``check_webhook_url`` refuses non-
http(s) schemes and every host that resolves to a non-public address (loopback, private, link-
local, unique-local, unspecified, multicast, reserved, documentation, CGNAT; IPv4-mapped, NAT64
and 6to4 IPv6 forms are judged by the IPv4 address inside). It runs when the URL is set and again
before every delivery, since DNS can change; the delivery then connects to the address that was
checked (the host name still goes in ``Host`` and TLS SNI), so a second lookup cannot swap in
another one, and redirects are never followed. Operators who do want internal receivers set
``REWARDHUB_WEBHOOK_ALLOW_PRIVATE=true`` or list hosts/CIDRs in ``REWARDHUB_WEBHOOK_ALLOWED_HOSTS``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from sqlalchemy import event
from sqlalchemy.orm import Session

from services.common.errors import InvalidInput
from services.common.settings import get_settings

log = logging.getLogger("rewardhub.annotation.notifications")

_SESSION_KEY = "annotation_label_changes"
SIGNATURE_HEADER = "X-Rewardhub-Signature"
TIMESTAMP_HEADER = "X-Rewardhub-Timestamp"
# The same on every attempt of one delivery, so a receiver can drop a repeat it already processed.
DELIVERY_HEADER = "X-Rewardhub-Delivery"
ATTEMPT_HEADER = "X-Rewardhub-Delivery-Attempt"


# ------------------------------------------------------------------------------------- signing


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """``sha256=`` + hex HMAC-SHA256 of ``f"{timestamp}."`` + body under the project's webhook secret."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify_signature(secret: str, timestamp: str | int, body: bytes, signature: str, *,
                     tolerance_s: float = 300.0, now: float | None = None) -> bool:
    """A receiver's check: right signature, and a timestamp within ``tolerance_s`` (no replays)."""
    try:
        ts = int(timestamp)
    except (TypeError, ValueError):
        return False
    if abs((now if now is not None else time.time()) - ts) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, ts, body), signature)


# ------------------------------------------------------------------------------ URL checking

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# Not every non-public range is flagged by ``ipaddress`` on every Python version (3.11 calls
# 224.0.0.1 and ff0e::1 "global"), so these are refused explicitly as well.
_BLOCKED_NETWORKS: tuple[IPNetwork, ...] = tuple(ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16", "198.18.0.0/15", "198.51.100.0/24",
    "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4", "255.255.255.255/32",
    "::/128", "::1/128", "::/96", "64:ff9b:1::/48", "100::/64", "2001::/23", "2001:db8::/32", "fc00::/7",
    "fe80::/10", "fec0::/10", "ff00::/8"))
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
UNRESOLVABLE = "webhook_host_unresolvable"
NOT_ALLOWED = "webhook_url_not_allowed"


@dataclass(frozen=True)
class WebhookTarget:
    """Where one delivery goes: the URL to connect to (host pinned to a checked address, or
    unchanged) and the ``Host`` header and SNI name that keep the original host name."""

    url: str
    headers: dict[str, str] = field(default_factory=dict)
    extensions: dict[str, Any] = field(default_factory=dict)


def embedded_ipv4(address: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 form stands for (mapped, NAT64, 6to4), else the address itself."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address in _NAT64:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if address.sixtofour is not None:
            return address.sixtofour
    return address


def is_public(address: IPAddress) -> bool:
    """True for a globally reachable unicast address; False for every range an SSRF would aim at."""
    address = embedded_ipv4(address)
    if any(address in network for network in _BLOCKED_NETWORKS if network.version == address.version):
        return False
    return address.is_global and not (address.is_multicast or address.is_reserved or address.is_loopback
                                      or address.is_link_local or address.is_private or address.is_unspecified)


def _allowlist() -> tuple[set[str], list[IPNetwork]]:
    """The operator's ``webhook_allowed_hosts``: host names (lower case) and networks."""
    names: set[str] = set()
    networks: list[IPNetwork] = []
    for entry in (e.strip() for e in get_settings().webhook_allowed_hosts.split(",")):
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            names.add(entry.lower().rstrip("."))
    return names, networks


def _resolve(host: str, port: int, field_name: str) -> list[IPAddress]:
    """Every address the host resolves to, the way the HTTP client's connect would resolve it."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, OSError) as exc:
        raise InvalidInput(f"{field_name}: the host {host!r} does not resolve ({exc})", field=field_name,
                           code=UNRESOLVABLE) from exc
    found: list[IPAddress] = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if address not in found:
            found.append(address)
    return found


def check_webhook_url(url: str, *, field_name: str = "webhook_url") -> list[IPAddress]:
    """Refuse a webhook URL that is not http(s) or whose host resolves to any non-public address.

    Returns the checked addresses (empty where the operator's settings let the host through by
    name or allow private addresses). Raises ``InvalidInput`` naming ``field_name``.
    """
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise InvalidInput(f"{field_name}: not a valid URL ({exc})", field=field_name, code=NOT_ALLOWED) from exc
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise InvalidInput(f"{field_name}: webhooks must be http:// or https:// URLs with a host",
                           field=field_name, code=NOT_ALLOWED)
    settings = get_settings()
    names, networks = _allowlist()
    host = parsed.host.lower().rstrip(".")
    if settings.webhook_allow_private or host in names:
        return []
    addresses = _resolve(host, parsed.port or (443 if parsed.scheme == "https" else 80), field_name)
    for address in addresses:
        if not is_public(address) and not any(embedded_ipv4(address) in n or address in n for n in networks):
            raise InvalidInput(f"{field_name}: the host {parsed.host!r} resolves to {address}, which is not a "
                               "public address; webhooks may not reach loopback, private, link-local or "
                               "reserved addresses (an operator can allow them with "
                               "REWARDHUB_WEBHOOK_ALLOW_PRIVATE or REWARDHUB_WEBHOOK_ALLOWED_HOSTS)",
                               field=field_name, code=NOT_ALLOWED)
    return addresses


def webhook_target(url: str) -> WebhookTarget:
    """Check the URL now and pin the connection to the address that passed the check."""
    addresses = check_webhook_url(url)
    parsed = httpx.URL(url)
    try:
        ipaddress.ip_address(parsed.host)
        return WebhookTarget(url)  # a literal address: nothing to pin
    except ValueError:
        pass
    if not addresses:
        return WebhookTarget(url)
    pinned = parsed.copy_with(host=str(addresses[0]))
    host_header = parsed.host if parsed.port is None else f"{parsed.host}:{parsed.port}"
    extensions = {"sni_hostname": parsed.host} if parsed.scheme == "https" else {}
    return WebhookTarget(str(pinned), {"Host": host_header}, extensions)


# ------------------------------------------------------------------------------------- webhook


class WebhookRejected(Exception):
    """The receiver answered with a status that retrying will not fix, or the URL is not allowed."""

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class WebhookUnavailable(Exception):
    """The receiver answered 5xx or 429: the same delivery is tried again later."""

    def __init__(self, message: str, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code


def encode_payload(payload: dict[str, Any]) -> bytes:
    """The exact bytes that are signed and sent (compact JSON)."""
    return json.dumps(payload, separators=(",", ":"), default=str).encode()


def post_webhook(url: str, secret: str, body: bytes, *, delivery_id: str, event_type: str, attempt: int,
                 client: httpx.Client) -> int:
    """One signed delivery attempt; returns the receiver's 2xx status.

    The URL is checked again (SSRF guard) and the connection goes to the checked address. Raises
    :class:`WebhookRejected` for what a retry will not fix (the URL is refused, a 4xx other than 429,
    a redirect), :class:`WebhookUnavailable` for 5xx/429, and ``httpx.TransportError`` (a failed
    lookup included) when the receiver could not be reached. Messages never contain the URL, which
    may carry credentials.
    """
    target = _delivery_target(url)
    timestamp = int(time.time())
    response = client.post(target.url, content=body, follow_redirects=False, extensions=target.extensions, headers={
        **target.headers, "Content-Type": "application/json", "User-Agent": "rewardhub-annotation",
        "X-Rewardhub-Event": event_type, DELIVERY_HEADER: delivery_id, ATTEMPT_HEADER: str(attempt),
        TIMESTAMP_HEADER: str(timestamp), SIGNATURE_HEADER: sign(secret, timestamp, body)})
    status = response.status_code
    if status >= 500 or status == 429:
        raise WebhookUnavailable(f"the receiver answered {status}", status)
    if response.is_redirect or 300 <= status < 400:
        raise WebhookRejected(f"the receiver answered a redirect ({status}); webhook deliveries do not follow "
                              "redirects", status)
    if status >= 400:
        raise WebhookRejected(f"the receiver answered {status}", status)
    return status


def _delivery_target(url: str) -> WebhookTarget:
    """The checked target of one delivery attempt: a refused URL is final, a failed lookup is retried."""
    try:
        return webhook_target(url)
    except InvalidInput as exc:
        if exc.code == UNRESOLVABLE:
            raise httpx.ConnectError(exc.message) from exc
        raise WebhookRejected(exc.message) from exc


def wait_for_webhooks(timeout_s: float = 30.0) -> None:
    """Block until the sends this process started so far have finished (tests, graceful shutdown)."""
    from services.annotation.tasks import wait_for_local_sends  # imported here: tasks imports this module

    wait_for_local_sends(timeout_s)


# --------------------------------------------------------------------------------- broadcaster


class LabelBroadcaster:
    """Wakes SSE streams of a project when a label commits in this process (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: dict[str, set[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = {}

    def subscribe(self, annotation_project_id: str) -> asyncio.Event:
        wake = asyncio.Event()
        with self._lock:
            self._waiters.setdefault(annotation_project_id, set()).add((asyncio.get_running_loop(), wake))
        return wake

    def unsubscribe(self, annotation_project_id: str, wake: asyncio.Event) -> None:
        with self._lock:
            waiters = self._waiters.get(annotation_project_id, set())
            for item in [w for w in waiters if w[1] is wake]:
                waiters.discard(item)
            if not waiters:
                self._waiters.pop(annotation_project_id, None)

    def notify(self, annotation_project_id: str) -> None:
        with self._lock:
            waiters = list(self._waiters.get(annotation_project_id, ()))
        for loop, wake in waiters:
            try:
                loop.call_soon_threadsafe(wake.set)
            except RuntimeError:  # that stream's loop has closed
                self.unsubscribe(annotation_project_id, wake)


broadcaster = LabelBroadcaster()


# -------------------------------------------------------------------- after-commit collection


def label_changed(session: Session, annotation_project_id: str, label: dict[str, Any] | None, *,
                  webhook_url: str | None, webhook_secret: str) -> None:
    """A label changed in this session's transaction.

    With a webhook configured, the label joins this transaction's delivery row for the project (the
    outbox, written and committed or rolled back with the label; ``webhook_secret`` is not stored
    there, each attempt reads the project's current one). SSE streams are woken after the commit.
    """
    from services.annotation.webhooks import add_label  # imported here: webhooks imports this module

    projects: set[str] | None = session.info.get(_SESSION_KEY)
    if projects is None:
        projects = session.info[_SESSION_KEY] = set()
        if not event.contains(session, "after_commit", _after_commit):
            event.listen(session, "after_commit", _after_commit)
            event.listen(session, "after_soft_rollback", _after_rollback)
    projects.add(annotation_project_id)
    if webhook_url and label is not None:
        add_label(session, annotation_project_id, label)


def _after_rollback(session: Session, previous_transaction: Any) -> None:
    if previous_transaction.parent is None:  # the whole transaction: nothing of it will commit
        session.info.pop(_SESSION_KEY, None)


def _after_commit(session: Session) -> None:
    for annotation_project_id in session.info.pop(_SESSION_KEY, None) or ():
        broadcaster.notify(annotation_project_id)


# ------------------------------------------------------------------------------------------ SSE


def sse_event(event_name: str, data: dict[str, Any], event_id: int | None = None) -> bytes:
    lines = []
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines.append(f"event: {event_name}")
    lines.append("data: " + json.dumps(data, separators=(",", ":"), default=str))
    return ("\n".join(lines) + "\n\n").encode()


async def label_stream(annotation_project_id: str, cursor: int,
                       fetch: Callable[[int], list[dict[str, Any]]], *, limit: int | None = None,
                       poll_s: float = 2.0, heartbeat_s: float = 15.0) -> AsyncIterator[bytes]:
    """SSE: each label change after ``cursor`` as an ``event: label`` with ``id: <seq>``.

    ``fetch(cursor)`` returns feed entries after the cursor (run in a thread). Ends after
    ``limit`` events when given; otherwise runs until the client goes away.
    """
    wake = broadcaster.subscribe(annotation_project_id)
    sent = 0
    idle = 0.0
    try:
        yield b"retry: 2000\n\n"
        while True:
            wake.clear()  # before reading, so a commit during the read is not missed
            batch = await asyncio.to_thread(fetch, cursor)
            for label in batch:
                cursor = int(label["seq"])
                yield sse_event("label", label, cursor)
                sent += 1
                if limit is not None and sent >= limit:
                    return
            if batch:
                idle = 0.0
                continue
            try:
                await asyncio.wait_for(wake.wait(), timeout=poll_s)
            except TimeoutError:
                idle += poll_s
                if idle >= heartbeat_s:
                    idle = 0.0
                    yield b": keep-alive\n\n"
    finally:
        broadcaster.unsubscribe(annotation_project_id, wake)
