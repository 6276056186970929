"""The data browser in a real browser, keyboard only, at phone width (390 px): tasks imported through the
API, labelled by two annotator keys (one task disputed), then a reviewer searches and filters them and
follows a disputed task into the reviewer screen. Debian's Chromium through Playwright; nothing is
downloaded. A screenshot goes to $REWARDHUB_SCREENSHOT_DIR (else a temporary folder).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.common.auth import create_api_key
from services.common.db import session_scope
from services.common.models import Project, Role
from tests.conftest import SQLITE_ONLY, LiveServer, bearer
from tests.e2e.test_question_types import screenshot_dir
from tests.e2e.test_webui import fits, watch_errors

pytestmark = [pytest.mark.browser, SQLITE_ONLY]

PASSWORD = "correct horse battery"
API = "/services/annotation/v1/annotation/projects"
UI = "/services/annotation/ui"
ROWS = [{"id": "apple-1", "text": "How many apples are in a dozen?", "cands": ["12", "10"], "batch": "fruit"},
        {"id": "apple-2", "text": "Apples or pears: which is heavier?", "cands": ["apples", "pears"], "batch": "fruit"},
        {"id": "car-1", "text": "How many wheels has a car?", "cands": ["4", "3"], "batch": "cars"}]


def seed(server: LiveServer) -> str:
    admin, trainer = bearer(server.tenant.keys["admin"]), bearer(server.tenant.keys["trainer"])
    with session_scope() as session:
        project = session.get(Project, server.tenant.project_a)
        assert project is not None
        _, other = create_api_key(session, role=Role.annotator, projects=[project])
    with httpx.Client(base_url=server.url, timeout=30) as http:
        made = http.post(API, headers=admin, json={
            "project_id": server.tenant.project_a, "name": "browse", "label_budget": 5, "rollouts_per_prompt": 2,
            "policy": "random", "overlap_k": 2, "label_schema": {"questions": [
                {"id": "ok", "type": "single_label", "prompt": "Is it right?", "choices": ["yes", "no"]}]}})
        pid = str(made.json()["id"])
        lines = "".join(json.dumps(r) + "\n" for r in ROWS).encode()
        imported = http.post(f"{API}/{pid}/imports", headers=trainer, files={"file": ("rows.jsonl", lines)},
                             data={"mapping": json.dumps({"id": "id", "prompt": "text", "candidates": "cands",
                                                          "metadata": ["batch"]})})
        assert imported.status_code == 200 and imported.json()["imported"] == 3, imported.text
        # Both keys label both apple tasks: they agree on apple-1, disagree on apple-2.
        for key, second in ((server.tenant.keys["annotator"], "yes"), (other, "no")):
            for _ in range(2):
                lease = http.post(f"{API}/{pid}/queue/next", headers=bearer(key)).json()
                if lease["prompt_id"] == "car-1":
                    http.post(f"{API}/{pid}/assignments/{lease['assignment_id']}/later",
                              headers=bearer(key)).raise_for_status()
                    lease = http.post(f"{API}/{pid}/queue/next", headers=bearer(key)).json()
                choice = "yes" if lease["prompt_id"] == "apple-1" else second
                http.post(f"{API}/{pid}/assignments/{lease['assignment_id']}/submit", json={"values": {"ok": choice}},
                          headers={**bearer(key), "Idempotency-Key": lease["assignment_id"]}).raise_for_status()
        http.post(f"{API}/{pid}/annotators", headers=admin, json={"username": "rita", "password": PASSWORD,
                                                                 "role": "reviewer"}).raise_for_status()
    return pid


def test_browse_with_filters_by_keyboard_at_phone_width(live_server: LiveServer, browser: Any,
                                                       tmp_path: Path) -> None:
    from playwright.sync_api import expect

    pid = seed(live_server)
    page = browser.new_page(viewport={"width": 390, "height": 844})
    errors = watch_errors(page)
    page.goto(f"{live_server.url}{UI}/login")
    page.keyboard.type("rita")
    page.keyboard.press("Tab")
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Enter")
    expect(page.locator("#main")).to_be_visible()
    page.goto(f"{live_server.url}{UI}/projects/{pid}/browse")
    rows = page.locator("#browse-results tbody tr[data-task-id]")
    expect(rows).to_have_count(3)
    expect(page.locator("#f-q")).to_be_focused()  # the search box takes the first keys
    page.keyboard.type("APPLE")
    page.keyboard.press("Enter")
    expect(rows).to_have_count(2)
    expect(page.locator("#f-q")).to_have_value("APPLE")  # the form keeps what was asked
    expect(page.locator("#f-q")).to_be_focused()  # autofocus again on the new page
    page.keyboard.press("Tab")  # → status
    expect(page.locator("#f-status")).to_be_focused()
    page.keyboard.press("d")  # the first status starting with d: disputed
    expect(page.locator("#f-status")).to_have_value("disputed")
    page.keyboard.press("Shift+Tab")
    page.keyboard.press("Enter")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("apple-2")
    expect(rows.first).to_have_attribute("data-status", "disputed")
    fits(page, 390)
    page.screenshot(path=str(screenshot_dir(tmp_path) / "browse.png"), full_page=True)
    link = page.locator(".review-link")
    link.focus()
    page.keyboard.press("Enter")
    expect(page.locator("main")).to_contain_text("Apples or pears")
    assert "/review/" in page.url
    expect(page.locator('html[data-shortcuts="on"]')).to_have_count(1)  # its scripts have run
    # A question's final value: apple-1 was settled "yes" by agreement.
    page.goto(f"{live_server.url}{UI}/projects/{pid}/browse?question=ok&value=yes")
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-status", "labelled")
    page.goto(f"{live_server.url}{UI}/projects/{pid}/browse?max_agreement=2")
    expect(page.locator("#browse-error")).to_contain_text("max_agreement")
    assert [e for e in errors if "422" not in e] == [], errors  # only the refused filter
