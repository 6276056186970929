"""A question's guidelines in a real browser (Debian's Chromium, Playwright, nothing downloaded), keyboard only,
at phone width: the "read before labelling" gate shows the question's guidelines (KaTeX typeset, raw HTML as
text) with their version, is confirmed by keyboard, the task page then shows them beside the question with the
version; a new version asks again. Screenshots go to $REWARDHUB_SCREENSHOT_DIR (else a temporary folder)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import SQLITE_ONLY, LiveServer, bearer
from tests.e2e.test_question_types import API, PASSWORD, UI, on_task, screenshot_dir, seed
from tests.e2e.test_webui import fits, watch_errors

pytestmark = [pytest.mark.browser, SQLITE_ONLY]


def confirm_by_keyboard(page: Any) -> None:
    """Tab to the gate's button (as a keyboard user would) and press Enter."""
    for _ in range(40):
        if page.evaluate("document.activeElement && document.activeElement.id") == "confirm-guidelines":
            break
        page.keyboard.press("Tab")
    else:
        raise AssertionError("Tab never reached the confirm button")
    page.keyboard.press("Enter")


def test_question_guidelines_gate_and_task_page_by_keyboard(live_server: LiveServer, browser: Any,
                                                           tmp_path: Path) -> None:
    from playwright.sync_api import expect

    shots = screenshot_dir(tmp_path)
    pid = seed(live_server)
    admin = bearer(live_server.tenant.keys["admin"])
    with httpx.Client(base_url=live_server.url, timeout=30) as http:
        put = http.put(f"{API}/{pid}/questions/topic/guidelines", headers=admin, json={
            "guidelines": "**Algebra** when the answer is a formula like $x^2 + 1$.\n\n<script>window.pwned = 1</script>"})
        assert put.status_code == 200 and put.json()["version"] == 1, put.text
        gate_on = http.patch(f"{API}/{pid}", headers=admin, json={"guidelines_required": True})
        assert gate_on.status_code == 200, gate_on.text

    page = browser.new_page(viewport={"width": 390, "height": 844})
    errors = watch_errors(page)
    page.goto(f"{live_server.url}{UI}/login")
    page.keyboard.type("bea")
    page.keyboard.press("Tab")
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Enter")
    expect(page.locator("#queue-table")).to_contain_text("typed")

    page.goto(f"{live_server.url}{UI}/projects/{pid}/task")
    gate = page.locator("#gate-question-topic")
    expect(gate).to_contain_text("guidelines version 1")
    expect(gate.locator(".katex")).to_have_count(1)
    expect(gate).to_contain_text("<script>window.pwned = 1</script>")  # shown as text, never run
    assert page.evaluate("window.pwned") is None
    expect(page.locator("#label-form")).to_have_count(0)  # nothing leased before the confirmation
    fits(page, 390)
    page.screenshot(path=str(shots / "question-guidelines-gate.png"), full_page=True)
    confirm_by_keyboard(page)
    expect(page.locator("#notice")).to_contain_text("Thank you for reading")
    on_task(page, "t0")
    beside = page.locator("#question-topic #question-guidelines-topic")
    expect(beside).to_contain_text("Guidelines version 1")
    expect(beside.locator(".katex")).to_have_count(1)
    fits(page, 390)
    page.screenshot(path=str(shots / "question-guidelines-task.png"), full_page=True)

    with httpx.Client(base_url=live_server.url, timeout=30) as http:
        assert http.put(f"{API}/{pid}/questions/topic/guidelines", headers=admin,
                        json={"guidelines": "Geometry wins ties."}).json()["version"] == 2
    page.reload()
    expect(page.locator("#gate-question-topic")).to_contain_text("guidelines version 2")
    expect(page.locator("#gate-question-topic")).to_contain_text("new for you")
    confirm_by_keyboard(page)
    on_task(page, "t0")  # the same lease, resumed
    expect(page.locator("#question-guidelines-topic")).to_contain_text("Guidelines version 2")
    expect(page.locator("#question-guidelines-topic")).to_contain_text("Geometry wins ties.")
    assert errors == [], errors
