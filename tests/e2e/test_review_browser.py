"""Editing one's own label and accepting/rejecting single labels, in a real browser, keyboard only, at
phone width (390 px).

Debian's Chromium (/usr/bin/chromium) through Playwright; nothing is downloaded. An annotator labels a task
on the task page, opens "My labels", edits the label (the form comes filled with the stored value) and
saves it; a second annotator (an API key) gave another answer. A reviewer opens the submission from the
reviewer screen's "waiting for review" list, reads the task's history (label, label, edit) and rejects the
other label with a comment: the task goes back to the queue. A screenshot of each screen goes to
$REWARDHUB_SCREENSHOT_DIR (else a temporary folder).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import SQLITE_ONLY, LiveServer, bearer
from tests.e2e.test_question_types import API, PASSWORD, UI, screenshot_dir
from tests.e2e.test_webui import fits, watch_errors

pytestmark = [pytest.mark.browser, SQLITE_ONLY]

SCHEMA = {"questions": [{"id": "topic", "type": "single_label", "prompt": "Topic",
                         "choices": ["algebra", "geometry", "other"]}]}


def seed(server: LiveServer) -> tuple[str, str]:
    """A k = 2 project with one task, the login accounts bea (annotator) and rita (reviewer)."""
    admin, trainer = bearer(server.tenant.keys["admin"]), bearer(server.tenant.keys["trainer"])
    with httpx.Client(base_url=server.url, timeout=30) as http:
        made = http.post(API, headers=admin, json={
            "project_id": server.tenant.project_a, "name": "reviewed", "label_budget": 0, "rollouts_per_prompt": 2,
            "policy": "random", "overlap_k": 2, "label_schema": SCHEMA})
        assert made.status_code == 201, made.text
        pid = str(made.json()["id"])
        http.post(f"{API}/{pid}/steps", headers=trainer, json={"step": 0, "groups": [
            {"prompt_id": "t0", "prompt_text": "Prompt t0: a triangle's angles", "answers": ["1", "2"]}]}
                  ).raise_for_status()
        http.patch(f"{API}/{pid}", headers=admin, json={"label_budget": 1}).raise_for_status()
        http.post(f"{API}/{pid}/purchases", headers=trainer, json={"step": 0, "prompt_ids": ["t0"]}
                  ).raise_for_status()
        for name, role in (("bea", "annotator"), ("rita", "reviewer")):
            http.post(f"{API}/{pid}/annotators", headers=admin, json={"username": name, "password": PASSWORD,
                                                                     "role": role}).raise_for_status()
        key = bearer(server.tenant.keys["annotator"])  # the second annotator: an API key
        lease = http.post(f"{API}/{pid}/queue/next", headers=key).json()
        other = http.post(f"{API}/{pid}/assignments/{lease['assignment_id']}/submit", json={"values": {
            "topic": "geometry"}}, headers={**key, "Idempotency-Key": "other"})
        assert other.status_code == 201, other.text
    return pid, str(other.json()["id"])


def login(page: Any, server: LiveServer, username: str) -> None:
    page.goto(f"{server.url}{UI}/login")
    page.keyboard.type(username)
    page.keyboard.press("Tab")
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Enter")


def test_edit_own_label_then_reject_a_label_by_keyboard_at_phone_width(live_server: LiveServer, browser: Any,
                                                                      tmp_path: Path) -> None:
    from playwright.sync_api import expect

    shots = screenshot_dir(tmp_path)
    pid, other_label = seed(live_server)

    # --- bea labels, then edits her label --------------------------------------------------------------
    page = browser.new_page(viewport={"width": 390, "height": 844})
    errors = watch_errors(page)
    login(page, live_server, "bea")
    expect(page.locator("#queue-table")).to_contain_text("reviewed")
    page.goto(f"{live_server.url}{UI}/projects/{pid}/task")
    expect(page.locator("#prompt")).to_contain_text("Prompt t0")
    expect(page.locator('html[data-shortcuts="on"]')).to_have_count(1)
    page.keyboard.press("1")  # "algebra": bea and the key disagree
    page.keyboard.press("Control+Enter")
    expect(page.locator("#no-task")).to_be_visible()
    page.locator("#my-labels-link").focus()
    page.keyboard.press("Enter")
    card = page.locator(".my-label")
    expect(card).to_have_count(1)
    expect(card.locator('[data-field="label"]')).to_have_text("algebra")
    fits(page, 390)
    page.screenshot(path=str(shots / "my-labels.png"), full_page=True)
    card.locator(".edit-link").focus()
    page.keyboard.press("Enter")
    expect(page.locator("#q-topic-0")).to_be_checked()  # the form starts from the stored value
    expect(page.locator('html[data-shortcuts="on"]')).to_have_count(1)
    page.keyboard.press("2")  # → "geometry"
    expect(page.locator("#q-topic-1")).to_be_checked()
    fits(page, 390)
    page.screenshot(path=str(shots / "label-edit.png"), full_page=True)
    page.keyboard.press("Control+Enter")
    expect(page.locator("#notice")).to_contain_text("Your label was changed")
    expect(page.locator('.my-label [data-field="label"]')).to_have_text("geometry")
    expect(page.locator(".my-label")).to_contain_text("task done")  # both say geometry now
    assert errors == [], errors

    # --- rita: the waiting list, the history, a rejection with a comment ------------------------------
    page = browser.new_page(viewport={"width": 390, "height": 844})
    errors = watch_errors(page)
    login(page, live_server, "rita")
    expect(page.locator(f"#review-{pid}")).to_be_visible()
    page.goto(f"{live_server.url}{UI}/projects/{pid}/review")
    expect(page.locator("#waiting-heading")).to_contain_text("(2)")
    fits(page, 390)
    page.screenshot(path=str(shots / "review-waiting.png"), full_page=True)
    page.locator(f'li[data-annotation-id="{other_label}"] a.waiting-link').focus()
    page.keyboard.press("Enter")
    expect(page.locator("#history li")).to_have_count(3)
    expect(page.locator("#history li").nth(2)).to_contain_text("edited: algebra → geometry")
    expect(page.locator("#final-label")).to_contain_text("geometry")
    comment = page.locator(f"#comment-{other_label}")
    comment.focus()
    page.keyboard.type("the key was guessing")
    page.keyboard.press("Tab")
    expect(page.locator(f"#accept-{other_label}")).to_be_focused()
    page.keyboard.press("Tab")
    expect(page.locator(f"#reject-{other_label}")).to_be_focused()
    fits(page, 390)
    page.screenshot(path=str(shots / "task-history.png"), full_page=True)
    page.keyboard.press("Enter")
    expect(page.locator("#notice")).to_have_text("Review saved.")
    expect(page.locator(f'#label-{other_label} [data-field="review"]')).to_have_text("rejected")
    expect(page.locator(f"#reject-{other_label}")).to_have_count(0)
    expect(page.locator("#history li").nth(3)).to_contain_text("rejected a label: “the key was guessing”")
    expect(page.locator("#final-label")).to_have_count(0)  # the label was taken back: the task is open again
    fits(page, 390)
    page.screenshot(path=str(shots / "task-history-rejected.png"), full_page=True)
    assert errors == [], errors

    feed = httpx.get(f"{live_server.url}{API}/{pid}/labels", headers=bearer(live_server.tenant.keys["trainer"]),
                     timeout=30).json()["data"]
    assert [entry["event"] for entry in feed] == ["retracted"]
