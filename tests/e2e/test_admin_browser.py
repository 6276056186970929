"""The admin screens in a real browser, keyboard only, at phone width (390 px).

Debian's Chromium (/usr/bin/chromium) through Playwright; nothing is downloaded. An admin account logs in,
opens "Admin" from the top bar, is refused a label schema whose question has no choices (the error names
the field and the typed schema stays), fixes it and creates the project; on the project page it creates
an annotator account, adds an existing account by username, and goes back to the list, where the new
project shows with its budget. The new annotator then logs in and finds the project in their queue.
A screenshot of each screen goes to $REWARDHUB_SCREENSHOT_DIR (else a temporary folder).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import SQLITE_ONLY, LiveServer, bearer
from tests.e2e.test_question_types import API, PASSWORD, UI, screenshot_dir
from tests.e2e.test_review_browser import login
from tests.e2e.test_webui import fits, watch_errors

pytestmark = [pytest.mark.browser, SQLITE_ONLY]

BAD_SCHEMA = '{"questions": [{"id": "topic", "type": "single_label", "prompt": "Topic", "choices": []}]}'
GOOD_SCHEMA = '{"questions": [{"id": "topic", "type": "single_label", "prompt": "Topic", "choices": ["a", "b"]}]}'


def seed(server: LiveServer) -> None:
    """A first project with the admin account ada and the annotator olga (added to the new project later)."""
    admin = bearer(server.tenant.keys["admin"])
    with httpx.Client(base_url=server.url, timeout=30) as http:
        made = http.post(API, headers=admin, json={"project_id": server.tenant.project_a, "name": "first",
                                                   "label_budget": 1, "policy": "random"})
        assert made.status_code == 201, made.text
        for name, role in (("ada", "admin"), ("olga", "annotator")):
            http.post(f"{API}/{made.json()['id']}/annotators", headers=admin, json={
                "username": name, "password": PASSWORD, "role": role}).raise_for_status()


def replace(page: Any, text: str) -> None:
    """Type into the focused field over what it held."""
    page.keyboard.press("Control+A")
    page.keyboard.type(text)


def test_create_a_project_and_its_members_by_keyboard_at_phone_width(live_server: LiveServer, browser: Any,
                                                                     tmp_path: Path) -> None:
    from playwright.sync_api import expect

    shots = screenshot_dir(tmp_path)
    seed(live_server)
    page = browser.new_page(viewport={"width": 390, "height": 844})
    errors = watch_errors(page)
    login(page, live_server, "ada")
    page.locator("#nav-admin").focus()
    page.keyboard.press("Enter")
    expect(page.locator("#admin-projects")).to_contain_text("first")

    # The new-project form, field after field with Tab; first with a schema whose question has no choices.
    page.locator("#np-name").focus()
    page.keyboard.type("topics")
    page.keyboard.press("Tab")
    expect(page.locator("#np-budget")).to_be_focused()
    replace(page, "3")
    page.keyboard.press("Tab")
    replace(page, "2")
    page.keyboard.press("Tab")
    expect(page.locator("#np-policy")).to_be_focused()  # random, the form's default
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    expect(page.locator("#np-schema")).to_be_focused()
    page.keyboard.insert_text(BAD_SCHEMA)
    page.keyboard.press("Tab")
    page.keyboard.type("Pick the *topic*.")
    page.keyboard.press("Tab")
    expect(page.locator("#create-project")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("#admin-error")).to_contain_text("label_schema.questions[0].choices")
    expect(page.locator("#np-schema")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#np-schema")).to_have_value(BAD_SCHEMA)  # what was typed comes back
    fits(page, 390)
    page.screenshot(path=str(shots / "admin-refused.png"), full_page=True)
    refused = [e for e in errors if e.startswith("422: ") and e.endswith(f"{UI}/admin/projects")]
    assert len(refused) == 1, errors
    errors.clear()

    page.locator("#np-schema").focus()
    replace(page, "")
    page.keyboard.insert_text(GOOD_SCHEMA)
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")
    expect(page.locator("#notice")).to_have_text("Project created.")
    expect(page.locator('#project-budget [data-field="budget"]')).to_have_text("3")
    expect(page.locator("#members")).to_contain_text("ada")  # the admin account that made it

    # A new annotator account, then an existing one by username.
    page.locator("#na-username").focus()
    page.keyboard.type("newbie")
    page.keyboard.press("Tab")
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Tab")
    expect(page.locator("#na-role")).to_be_focused()
    page.keyboard.press("Tab")
    expect(page.locator("#create-account")).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("#notice")).to_contain_text("Account created")
    expect(page.locator('tr[data-username="newbie"] [data-field="role"]')).to_have_text("annotator")
    page.locator("#am-username").focus()
    page.keyboard.type("olga")
    page.keyboard.press("Enter")
    expect(page.locator("#notice")).to_have_text("Account added to the project.")
    expect(page.locator('tr[data-username="olga"]')).to_have_count(1)
    fits(page, 390)
    page.screenshot(path=str(shots / "admin-project.png"), full_page=True)

    page.locator("#back-to-admin").focus()
    page.keyboard.press("Enter")
    row = page.locator("#admin-projects tr", has_text="topics")
    expect(row.locator('[data-field="budget"]')).to_have_text("3")
    expect(row.locator('[data-field="overlap"]')).to_have_text("2")
    fits(page, 390)
    page.screenshot(path=str(shots / "admin.png"), full_page=True)
    assert errors == [], errors

    # The annotator made on the page logs in and finds the project in their queue.
    page = browser.new_page(viewport={"width": 390, "height": 844})
    errors = watch_errors(page)
    login(page, live_server, "newbie")
    expect(page.locator("#queue-table")).to_contain_text("topics")
    assert errors == [], errors
