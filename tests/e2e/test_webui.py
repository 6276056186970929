"""The web UI in a real browser: an annotator labels with the keyboard only, an admin reads the dashboard.

Drives Debian's Chromium (/usr/bin/chromium) through Playwright's sync API; no browser is ever
downloaded. The pages need KaTeX and Chart.js from ``npm ci --prefix webui``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from services.annotation import ingestion, locking
from services.annotation.schemas import RolloutGroupIn, StepIn
from services.common.db import session_scope
from tests.conftest import REPO_ROOT, LiveServer, bearer

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SCREENSHOT = REPO_ROOT / "test-artifacts" / "webui-dashboard.png"
PASSWORD = "correct horse battery"
API = "/services/annotation/v1/annotation/projects"
UI = "/services/annotation/ui"
# prompt id → (prompt text, the rollouts' final answers)
PROMPTS = {
    "q0": (r"Prompt q0: compute $2 + 2$.", ["4", "4", "5", None]),
    "q1": (r"Prompt q1: differentiate $\frac{x^3}{3}$.", ["x^2", "x^2", "2x", "3x^2"]),
    "q2": (r"Prompt q2: how many roots has $x^2 = c$?", ["2", "1", "2", None]),
    "q3": (r"Prompt q3: evaluate $\int_0^1 x\,dx$.", ["\\frac{1}{2}", "1", "\\frac{1}{2}", "\\frac{1}{2}"]),
}


def store_step(pid: str) -> None:
    """The step's rollout groups, stored without running a selection policy (the test buys explicitly);
    the live server runs in this process on the same database."""
    with session_scope() as session:
        project = locking.lock_project(session, pid)
        ingestion.store_step(session, project, StepIn(step=0, groups=[
            RolloutGroupIn(prompt_id=key, prompt_text=text, answers=answers)
            for key, (text, answers) in PROMPTS.items()]), datetime.now(UTC))


def seed(server: LiveServer) -> str:
    """A project with four bought tasks and an annotator account."""
    admin, trainer = bearer(server.tenant.keys["admin"]), bearer(server.tenant.keys["trainer"])
    with httpx.Client(base_url=server.url, timeout=30) as http:
        made = http.post(API, headers=admin, json={"project_id": server.tenant.project_a, "name": "calculus",
                                                    "label_budget": 4, "rollouts_per_prompt": 4,
                                                    "policy": "random"})
        assert made.status_code == 201, made.text
        pid = made.json()["id"]
        store_step(pid)
        bought = http.post(f"{API}/{pid}/purchases", headers=trainer, json={"step": 0, "prompt_ids": list(PROMPTS)})
        assert bought.status_code == 201, bought.text
        account = http.post(f"{API}/{pid}/annotators", headers=admin, json={"username": "alice", "password": PASSWORD})
        assert account.status_code == 201, account.text
    return str(pid)


def stats(server: LiveServer, pid: str) -> dict[str, Any]:
    response = httpx.get(f"{server.url}{API}/{pid}/stats", headers=bearer(server.tenant.keys["admin"]), timeout=30)
    return response.json()


def watch_errors(page: Any) -> list[str]:
    """Console errors and failed requests (a CSP violation or a missing asset shows up here)."""
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    # A request the browser abandons because the page navigated on (a keyboard submit while a script
    # still loads) fails with net::ERR_ABORTED: not an error of the page. Any other failure counts.
    page.on("requestfailed", lambda request: errors.append(f"failed: {request.url} ({request.failure})")
            if request.failure != "net::ERR_ABORTED" else None)
    page.on("response", lambda response: errors.append(f"{response.status}: {response.url}")
            if response.status >= 400 else None)
    return errors


def on_task(page: Any, prompt_id: str) -> None:
    """Wait for the task page of this prompt with its keyboard shortcuts set up."""
    from playwright.sync_api import expect

    expect(page.locator("#prompt")).to_contain_text(f"Prompt {prompt_id}")
    expect(page.locator('html[data-shortcuts="on"]')).to_have_count(1)


def test_annotator_labels_by_keyboard_and_admin_sees_the_counts(live_server: LiveServer, browser: Any) -> None:
    from playwright.sync_api import expect

    pid = seed(live_server)
    ui = live_server.url + UI
    page = browser.new_page()
    errors = watch_errors(page)

    # Log in: the username box has focus; Tab to the password; Enter submits.
    page.goto(f"{ui}/login")
    page.keyboard.type("alice")
    page.keyboard.press("Tab")
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Enter")
    expect(page.locator("#queue-table")).to_contain_text("calculus")
    expect(page.locator(f'tr[data-project-id="{pid}"] [data-field="open"]')).to_have_text("4")

    page.goto(f"{ui}/projects/{pid}/task")
    prompt = page.locator("#prompt")
    on_task(page, "q0")
    expect(prompt.locator(".katex")).to_have_count(1)  # $2 + 2$ typeset by KaTeX
    expect(page.locator("#candidates .tex .katex")).to_have_count(2)
    expect(page.locator('label[for="choice-0"]')).to_contain_text("2 of 4 rollouts")

    # q0: pick candidate 1 ("4"), submit.
    page.keyboard.press("1")
    expect(page.locator("#choice-0")).to_be_checked()
    page.keyboard.press("Control+Enter")
    expect(page.locator("#notice")).to_have_text("Saved.")
    on_task(page, "q1")

    # q1: type an answer of my own with a live preview, submit; then undo it and pick candidate 1 instead.
    page.keyboard.press("a")
    expect(page.locator("#answer")).to_be_focused()
    page.keyboard.type("x^{2}")
    expect(page.locator("#answer-preview .katex")).to_have_count(1)
    expect(page.locator("#choice-own")).to_be_checked()
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT.with_name("webui-task.png")), full_page=True)
    page.keyboard.press("Control+Enter")
    on_task(page, "q2")
    page.keyboard.press("u")
    expect(page.locator("#notice")).to_contain_text("taken back")
    on_task(page, "q1")
    page.keyboard.press("1")
    page.keyboard.press("Control+Enter")
    on_task(page, "q2")

    # q2: flag as ambiguous with a rationale (Tab from the flag reaches the rationale box).
    page.keyboard.press("f")
    expect(page.locator("#ambiguous")).to_be_checked()
    page.keyboard.press("Tab")
    expect(page.locator("#rationale")).to_be_focused()
    page.keyboard.type("c could be 0 or negative")
    page.keyboard.press("Escape")  # leaves the text box (Esc never skips)
    page.keyboard.press("Control+Enter")
    on_task(page, "q3")

    # q3: never show again (Shift+N; a plain Esc does nothing).
    page.keyboard.press("Escape")
    on_task(page, "q3")
    page.keyboard.press("Shift+N")
    expect(page.locator("#no-task")).to_contain_text("Nothing to label right now")
    expect(page.locator('#progress [data-field="submitted"]')).to_have_text("3")
    expect(page.locator('#progress [data-field="skipped"]')).to_have_text("1")

    numbers = stats(live_server, pid)
    assert (numbers["tasks_done"], numbers["tasks_open"]) == (3, 1)
    assert [(a["username"], a["submitted"], a["skipped"]) for a in numbers["annotators"]] == [("alice", 3, 1)]
    assert errors == [], errors

    # The admin opens the dashboard with an admin API key.
    admin = browser.new_page(viewport={"width": 1280, "height": 900})
    admin_errors = watch_errors(admin)
    admin.goto(f"{ui}/login")
    admin.fill("#api_key", live_server.tenant.keys["admin"])
    admin.press("#api_key", "Enter")
    card = admin.locator(f'section[data-project-id="{pid}"]')
    expect(card).to_be_visible()
    row = card.locator('tr[data-annotator="alice"]')
    expect(row.locator('[data-field="submitted"]')).to_have_text("3")
    expect(row.locator('[data-field="skipped"]')).to_have_text("1")
    expect(card.locator('[data-field="tasks-done"]')).to_have_text("3")
    expect(card.locator('[data-field="tasks-open"]')).to_have_text("1")
    expect(card.locator('[data-field="budget-spent"]')).to_have_text("4")
    # q0 and q1 were labelled with the majority answer; q2 (ambiguous) does not count.
    expect(card.locator('[data-field="pseudo-accuracy"]')).to_have_text("100.0%")
    # Chart.js draws once its script has run: wait for every canvas's chart, not for a clock.
    admin.wait_for_function("window.Chart !== undefined && Array.from(document.querySelectorAll('canvas.chart'))"
                            ".every(c => window.Chart.getChart(c))")
    charts = admin.evaluate("Array.from(document.querySelectorAll('canvas.chart'))"
                            ".map(c => window.Chart.getChart(c) ? window.Chart.getChart(c).data.datasets[0].data : null)")
    assert charts == [[4, 0], [1, 0, 3], [3]], charts
    admin.screenshot(path=str(SCREENSHOT), full_page=True)
    assert SCREENSHOT.stat().st_size > 10_000
    assert admin_errors == [], admin_errors


def fits(page: Any, width: int) -> None:
    """Nothing on the page is wider than the viewport (no sideways scrolling)."""
    # Measured once the stylesheets have loaded: an unstyled table is wider (a loaded machine showed 456 px).
    page.wait_for_load_state("load")
    scroll = page.evaluate("document.documentElement.scrollWidth")
    assert scroll <= width, f"{page.url}: the page is {scroll} px wide in a {width} px viewport"


def test_phone_width_guidelines_gate_lease_and_come_back_later(live_server: LiveServer, browser: Any) -> None:
    from playwright.sync_api import expect

    pid = seed(live_server)
    guidelines = "## Rules\n\nGive the **exact** value: $\\frac{1}{2}$, not 0.5.\n\n<script>window.pwned = 1</script>"
    changed = httpx.patch(f"{live_server.url}{API}/{pid}", headers=bearer(live_server.tenant.keys["admin"]),
                          json={"guidelines": guidelines, "guidelines_required": True}, timeout=30)
    assert changed.status_code == 200 and changed.json()["guidelines_version"] == 1, changed.text
    ui = live_server.url + UI
    page = browser.new_page(viewport={"width": 390, "height": 844})
    errors = watch_errors(page)
    page.goto(f"{ui}/login")
    page.keyboard.type("alice")
    page.keyboard.press("Tab")
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Enter")
    expect(page.locator("#queue-table")).to_contain_text("calculus")
    fits(page, 390)
    page.screenshot(path=str(SCREENSHOT.with_name("webui-queue-390.png")), full_page=True)

    # The gate: guidelines (KaTeX inside, the script tag shown as text) before the first lease.
    page.goto(f"{ui}/projects/{pid}/task")
    gate = page.locator("#guidelines-gate")
    expect(gate.locator(".katex")).to_have_count(1)
    expect(gate).to_contain_text("<script>window.pwned = 1</script>")
    assert page.evaluate("window.pwned") is None
    fits(page, 390)
    page.locator("#confirm-guidelines").focus()
    page.keyboard.press("Enter")
    expect(page.locator("#notice")).to_contain_text("Thank you for reading")
    on_task(page, "q0")
    fits(page, 390)

    # The lease as time left, the ISO time in the title; the guidelines collapsed but there.
    lease = page.locator("#lease time")
    expect(lease).to_have_text("expires in 10 min")
    iso = lease.get_attribute("datetime")
    assert iso and lease.get_attribute("title") == iso and iso.startswith(str(datetime.now(UTC).year))
    expect(page.locator("#guidelines")).not_to_have_attribute("open", "")
    page.locator("#guidelines summary").click()
    expect(page.locator("#guidelines .katex")).to_have_count(1)
    expect(page.locator("#undo-form")).to_have_count(0)  # nothing to undo yet
    page.screenshot(path=str(SCREENSHOT.with_name("webui-task-390.png")), full_page=True)

    # Esc does not skip; L puts q0 off until the others are seen.
    page.keyboard.press("Escape")
    on_task(page, "q0")
    page.keyboard.press("l")
    expect(page.locator("#notice")).to_contain_text("comes back to you")
    on_task(page, "q1")
    page.keyboard.press("1")
    page.keyboard.press("Control+Enter")
    on_task(page, "q2")
    expect(page.locator("#undo-button")).to_be_visible()

    # A refused submit comes back as a page of its own: reloading it posts nothing.
    page.keyboard.press("a")
    page.keyboard.press("Control+Enter")  # an empty answer
    expect(page.locator("#form-error")).to_contain_text("pick one of the candidate answers")
    assert page.url.endswith(f"/projects/{pid}/task")
    on_task(page, "q2")  # its scripts have run: reloading now aborts no request
    page.reload()
    on_task(page, "q2")
    expect(page.locator("#form-error")).to_have_count(0)

    assert errors == [], errors

    # An unknown UI path is an HTML page, not JSON.
    missing = page.goto(f"{ui}/no/such/page")
    assert missing is not None and missing.status == 404
    assert missing.headers["content-type"].startswith("text/html")
    expect(page.locator("#error-message")).to_contain_text("there is no page at")
    fits(page, 390)
    numbers = stats(live_server, pid)
    assert [(a["username"], a["submitted"], a["skipped"]) for a in numbers["annotators"]] == [("alice", 1, 0)]
