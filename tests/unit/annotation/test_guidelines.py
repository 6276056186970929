"""Project guidelines: safe Markdown with math kept for KaTeX, versions, the API fields, and the
"read before labelling" gate on the task page."""

from __future__ import annotations

import re
from typing import Any

import pytest
from fastapi.testclient import TestClient

from services.annotation.app import create_app, request_time
from services.annotation.ui_pages import render_markdown, safe_link
from tests.conftest import Tenant
from tests.unit.annotation.test_api import BASE, Clock, h
from tests.unit.annotation.test_webui_routes import add_account, csrf_of, login, project_with_tasks


@pytest.fixture
def client(sqlite_tenant: Tenant) -> Any:
    app = create_app()
    app.dependency_overrides[request_time] = Clock()
    with TestClient(app) as test_client:
        yield test_client


# ------------------------------------------------------------------------------- rendering


def test_markdown_is_rendered_with_raw_html_escaped() -> None:
    html = str(render_markdown("# Rules\n\nGive **one** answer.\n\n<script>alert(1)</script>\n\n"
                               '<img src=x onerror="alert(2)">'))
    assert "<h1>Rules</h1>" in html and "<strong>one</strong>" in html
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<img" not in html and "&lt;img src=x onerror=&quot;alert(2)&quot;&gt;" in html


def test_links_only_to_http_or_relative_paths() -> None:
    html = str(render_markdown("[a](https://example.org/x) [b](/ui/queue) [c](notes.html#part) "
                               "[d](javascript:alert(1)) [e](JaVaScRiPt:alert(1)) [f](data:text/html,hi) "
                               "[g](file:///etc/passwd) [h](vbscript:x) ![i](data:image/svg+xml,x)"))
    assert re.findall(r'href="([^"]*)"', html) == ["https://example.org/x", "/ui/queue", "notes.html#part"]
    assert "<img" not in html and "[d](javascript:alert(1))" in html  # a refused link stays plain text
    assert [u for u in ("http://a", "https://a", "/a", "a/b", "#top", "?q=1", "./a", "../a") if safe_link(u)] == \
        ["http://a", "https://a", "/a", "a/b", "#top", "?q=1", "./a", "../a"]
    assert not any(safe_link(u) for u in ("javascript:x", " javascript:x", "mailto:a@b", "ftp://a", "data:,x"))


def test_math_is_kept_for_katex() -> None:
    html = str(render_markdown("Write $x_1 < y_2$ as is; it costs $5 and $6.\n\n$$\n\\frac{1}{2}\n$$\n"))
    # Untouched by emphasis or escaping rules, so math.js typesets exactly what was written.
    assert '<span class="math inline">x_1 &lt; y_2</span>' in html
    assert "it costs $5 and $6." in html  # money is not math
    assert '<div class="math block">\n\\frac{1}{2}\n</div>' in html


# ------------------------------------------------------------------------------------- the API


def test_guidelines_are_versioned_when_the_text_changes(client: TestClient, sqlite_tenant: Tenant) -> None:
    made = client.post(BASE, headers=h(sqlite_tenant, "admin"), json={
        "project_id": sqlite_tenant.project_a, "name": "g", "label_budget": 1, "policy": "random",
        "guidelines": "Answer in lowest terms.", "guidelines_required": True}).json()
    assert (made["guidelines"], made["guidelines_version"], made["guidelines_required"]) == \
        ("Answer in lowest terms.", 1, True)
    url = f"{BASE}/{made['id']}"

    def patch(**body: Any) -> dict[str, Any]:
        response = client.patch(url, headers=h(sqlite_tenant, "admin"), json=body)
        assert response.status_code == 200, response.text
        return dict(response.json())

    assert patch(guidelines="Answer in lowest terms.")["guidelines_version"] == 1  # same text: same version
    assert patch(guidelines="Answer in lowest terms; no decimals.")["guidelines_version"] == 2
    assert patch(guidelines_required=False)["guidelines_version"] == 2
    assert patch(description="x")["guidelines"] == "Answer in lowest terms; no decimals."
    plain = client.post(BASE, headers=h(sqlite_tenant, "admin"), json={
        "project_id": sqlite_tenant.project_a, "name": "plain", "label_budget": 1, "policy": "random"}).json()
    assert (plain["guidelines"], plain["guidelines_version"], plain["guidelines_required"]) == ("", 0, False)
    too_long = client.patch(url, headers=h(sqlite_tenant, "admin"), json={"guidelines": "x" * 100_001})
    assert too_long.status_code == 422 and "guidelines" in too_long.text
    assert client.patch(url, headers=h(sqlite_tenant, "trainer"), json={"guidelines": "y"}).status_code == 403


# ---------------------------------------------------------------------------------- the pages


def test_task_page_shows_the_guidelines_collapsible(client: TestClient, sqlite_tenant: Tenant) -> None:
    pid = project_with_tasks(client, sqlite_tenant, 1, guidelines="Simplify **fully**: $\\frac{2}{4}$ is wrong.")
    add_account(pid, "alice")
    login(client, "alice")
    page = client.get(f"/ui/projects/{pid}/task").text
    assert re.search(r'<details class="guidelines" id="guidelines">\s*<summary>Guidelines', page)
    assert "<strong>fully</strong>" in page and '<span class="math inline">\\frac{2}{4}</span>' in page
    assert "Question q0?" in page  # no gate: the task is leased at once


def test_the_gate_asks_once_per_version_before_a_lease(client: TestClient, sqlite_tenant: Tenant) -> None:
    pid = project_with_tasks(client, sqlite_tenant, 2, guidelines="Version one.", guidelines_required=True)
    add_account(pid, "alice")
    login(client, "alice")
    gate = client.get(f"/ui/projects/{pid}/task").text
    assert 'id="guidelines-gate"' in gate and "Version one." in gate and "Question q0?" not in gate
    assert client.get(f"{BASE}/{pid}/stats", headers=h(sqlite_tenant, "admin")).json()["leases_active"] == 0
    confirm = f"/ui/projects/{pid}/guidelines/confirm"
    assert client.post(confirm, data={"csrf_token": "forged", "version": "1"}).status_code == 403
    done = client.post(confirm, data={"csrf_token": csrf_of(gate), "version": "1"}, follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"] == f"/ui/projects/{pid}/task?notice=guidelines_confirmed"
    page = client.get(done.headers["location"]).text
    assert "Question q0?" in page and "Thank you for reading" in page
    assert "Question q0?" in client.get(f"/ui/projects/{pid}/task").text  # confirmed once: no second ask

    client.patch(f"{BASE}/{pid}", headers=h(sqlite_tenant, "admin"), json={"guidelines": "Version two."})
    again = client.get(f"/ui/projects/{pid}/task").text
    assert 'id="guidelines-gate"' in again and "Version two." in again
    stale = client.post(confirm, data={"csrf_token": csrf_of(again), "version": "1"})  # a page from before
    assert 'id="guidelines-gate"' in stale.text and "the guidelines changed (now version 2)" in stale.text
    client.post(confirm, data={"csrf_token": csrf_of(again), "version": "2"})
    assert "Question q0?" in client.get(f"/ui/projects/{pid}/task").text


# ------------------------------------------------------------------------------------ the API


def test_api_annotators_confirm_the_guidelines_before_leasing_and_can_come_back_later(
        client: TestClient, sqlite_tenant: Tenant) -> None:
    from tests.unit.annotation.test_api import buy, create, seed_step

    project = create(client, sqlite_tenant, guidelines="Lowest terms.", guidelines_required=True)
    pid, who = project["id"], h(sqlite_tenant, "annotator")
    seed_step(pid, {"a": ["1", "1", "2", None], "b": ["3", "3", "4", "4"]})
    assert buy(client, sqlite_tenant, pid, ["a", "b"]).status_code == 201
    gated = client.post(f"{BASE}/{pid}/queue/next", headers=who)
    assert gated.status_code == 409 and gated.json()["error"]["code"] == "guidelines_unconfirmed"
    stale = client.post(f"{BASE}/{pid}/guidelines/confirm", headers=who, json={"version": 2})
    assert stale.status_code == 409 and stale.json()["error"]["code"] == "guidelines_changed"
    assert client.post(f"{BASE}/{pid}/guidelines/confirm", headers=who, json={"version": 1}).status_code == 204
    first = client.post(f"{BASE}/{pid}/queue/next", headers=who).json()
    assert first["prompt_id"] == "a"
    later = client.post(f"{BASE}/{pid}/assignments/{first['assignment_id']}/later", headers=who)
    assert later.status_code == 200, later.text
    # "a" comes back only once nothing else is left for this annotator.
    assert client.post(f"{BASE}/{pid}/queue/next", headers=who).json()["prompt_id"] == "b"
