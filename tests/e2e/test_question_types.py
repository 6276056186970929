"""Every non-math question type in a real browser, keyboard only, at phone width (390 px), in one session.

Debian's Chromium (/usr/bin/chromium) through Playwright; nothing is downloaded. One project asks a
single label, a multi label, a rating, a ranking of the candidates, a free text and a preference pair;
the annotator answers the first task with the keys each question's help line names, submits an empty
second task (the refusal comes back as a flash with the typed text kept, PRG), then answers it. Then a
reviewer settles a disputed preference on the reviewer screen, by keyboard too. The math form is
covered by test_webui.py. A screenshot of each screen goes to $REWARDHUB_SCREENSHOT_DIR
(else a temporary folder).
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.annotation import ingestion, locking
from services.annotation.schemas import RolloutGroupIn, StepIn
from services.common.auth import create_api_key
from services.common.db import session_scope
from services.common.models import Project, Role
from tests.conftest import SQLITE_ONLY, LiveServer, bearer
from tests.e2e.test_webui import fits, watch_errors

pytestmark = [pytest.mark.browser, SQLITE_ONLY]

PASSWORD = "correct horse battery"
API = "/services/annotation/v1/annotation/projects"
UI = "/services/annotation/ui"
QUESTIONS: list[dict[str, Any]] = [
    {"id": "topic", "type": "single_label", "prompt": "Topic", "choices": ["algebra", "geometry", "other"]},
    {"id": "flags", "type": "multi_label", "prompt": "Problems", "choices": ["typo", "unsafe"], "required": False},
    {"id": "quality", "type": "rating", "prompt": "Quality", "min": 1, "max": 5,
     "labels": {"1": "bad", "5": "great"}},
    {"id": "order", "type": "ranking", "prompt": "Rank the answers"},
    {"id": "note", "type": "free_text", "prompt": "Notes", "required": False, "max_length": 200},
    {"id": "pref", "type": "preference_pair", "prompt": "Which response is better?",
     "rubric_hints": ["States the final answer", "Shows the working"]},
]
ROLLOUTS = {
    "t0": ("Prompt t0: what is $2+2$?", ["4", "5", "4"], ["so the answer is 4", "I think it is 5", "4"]),
    "t1": ("Prompt t1: what is $3 \\cdot 3$?", ["9", "6", "9"], ["nine: 9", "3+3 = 6", "9"]),
}


# Read at import: the isolated_env fixture clears every REWARDHUB_* variable before the test runs.
SCREENSHOT_DIR = os.environ.get("REWARDHUB_SCREENSHOT_DIR")


def screenshot_dir(tmp_path: Path) -> Path:
    folder = Path(SCREENSHOT_DIR or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def seed(server: LiveServer) -> str:
    admin, trainer = bearer(server.tenant.keys["admin"]), bearer(server.tenant.keys["trainer"])
    with httpx.Client(base_url=server.url, timeout=30) as http:
        made = http.post(API, headers=admin, json={
            "project_id": server.tenant.project_a, "name": "typed", "label_budget": 2, "rollouts_per_prompt": 3,
            "policy": "random", "label_schema": {"questions": QUESTIONS}})
        assert made.status_code == 201, made.text
        pid = str(made.json()["id"])
        with session_scope() as session:
            project = locking.lock_project(session, pid)
            ingestion.store_step(session, project, StepIn(step=0, groups=[
                RolloutGroupIn(prompt_id=key, prompt_text=text, answers=answers, completions=completions)
                for key, (text, answers, completions) in ROLLOUTS.items()]), datetime.now(UTC))
        bought = http.post(f"{API}/{pid}/purchases", headers=trainer, json={"step": 0, "prompt_ids": list(ROLLOUTS)})
        assert bought.status_code == 201, bought.text
        account = http.post(f"{API}/{pid}/annotators", headers=admin, json={"username": "bea", "password": PASSWORD})
        assert account.status_code == 201, account.text
    return pid


def on_task(page: Any, prompt_id: str) -> None:
    from playwright.sync_api import expect

    expect(page.locator("#prompt")).to_contain_text(f"Prompt {prompt_id}")
    expect(page.locator('html[data-shortcuts="on"]')).to_have_count(1)


def test_every_question_type_by_keyboard_at_phone_width(live_server: LiveServer, browser: Any,
                                                        tmp_path: Path) -> None:
    from playwright.sync_api import expect

    shots = screenshot_dir(tmp_path)
    pid = seed(live_server)
    page = browser.new_page(viewport={"width": 390, "height": 844})
    errors = watch_errors(page)
    page.goto(f"{live_server.url}{UI}/login")
    page.keyboard.type("bea")
    page.keyboard.press("Tab")
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Enter")
    expect(page.locator("#queue-table")).to_contain_text("typed")

    page.goto(f"{live_server.url}{UI}/projects/{pid}/task")
    on_task(page, "t0")
    # Each question says its keys; the pair shows both responses and the rubric hints.
    for question in QUESTIONS:
        expect(page.locator(f"#help-{question['id']}")).to_contain_text("Keys:")
    expect(page.locator("#q-pref-a")).to_contain_text("so the answer is 4")
    expect(page.locator("#q-pref-b")).to_contain_text("I think it is 5")
    expect(page.locator("#question-pref .hints")).to_contain_text("Shows the working")
    expect(page.locator("#question-quality")).to_contain_text("great")
    fits(page, 390)
    page.screenshot(path=str(shots / "question-types-task.png"), full_page=True)

    page.keyboard.press("2")  # single label: the first question that takes numbers → "geometry"
    expect(page.locator("#q-topic-1")).to_be_checked()
    page.keyboard.press("Tab")  # → the multi label
    page.keyboard.press("1")  # toggles "typo"
    page.keyboard.press("Tab")
    page.keyboard.press("Space")  # toggles the focused "unsafe"
    expect(page.locator("#q-flags-0")).to_be_checked()
    expect(page.locator("#q-flags-1")).to_be_checked()
    page.keyboard.press("1")  # and off again (the focus follows: back on "typo")
    expect(page.locator("#q-flags-0")).not_to_be_checked()
    page.keyboard.press("Tab")
    page.keyboard.press("Space")  # "unsafe" off too: no problems
    expect(page.locator("#q-flags-1")).not_to_be_checked()
    page.keyboard.press("Tab")  # → the rating scale
    page.keyboard.press("4")
    expect(page.locator("#q-quality-3")).to_be_checked()
    page.keyboard.press("ArrowRight")  # one point up
    expect(page.locator("#q-quality-4")).to_be_checked()
    page.keyboard.press("Tab")  # → the ranking's first item ("4", the largest cluster)
    expect(page.locator("#q-order-item-0")).to_be_focused()
    page.keyboard.press("ArrowDown")  # "4" below "5"
    expect(page.locator("#q-order")).to_have_value("1,0")
    page.keyboard.press("Tab")  # → the free text
    expect(page.locator("#q-note")).to_be_focused()
    page.keyboard.type("ok: 4 is right")  # digits typed in a text box stay text
    page.keyboard.press("Escape")
    page.keyboard.press("b")  # the pair: B is better
    expect(page.locator("#q-pref-B")).to_be_checked()
    page.keyboard.press("a")  # no math answer in this form: A means "A is better"
    expect(page.locator("#q-pref-A")).to_be_checked()
    page.keyboard.press("Tab")  # out of the A/B/tie group → its "why" box
    expect(page.locator("#q-pref-rationale")).to_be_focused()
    page.keyboard.type("shows the answer")
    page.screenshot(path=str(shots / "question-types-answered.png"), full_page=True)
    page.keyboard.press("Control+Enter")
    expect(page.locator("#notice")).to_have_text("Saved.")
    on_task(page, "t1")

    # An empty submit: refused, back on the task page with the error and the typed note (PRG).
    page.locator("#q-note").focus()
    page.keyboard.type("draft")
    page.keyboard.press("Control+Enter")
    expect(page.locator("#form-error")).to_contain_text("values.topic: this question is required")
    expect(page.locator('#question-topic[aria-invalid="true"]')).to_have_count(1)
    expect(page.locator("#q-note")).to_have_value("draft")
    assert page.url.endswith(f"/projects/{pid}/task")
    fits(page, 390)
    page.screenshot(path=str(shots / "question-types-refused.png"), full_page=True)
    on_task(page, "t1")
    page.keyboard.press("3")  # "other"
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")  # past both checkboxes → the rating
    page.keyboard.press("1")
    expect(page.locator("#q-quality-0")).to_be_checked()
    page.keyboard.press("t")  # a tie
    expect(page.locator("#q-pref-tie")).to_be_checked()
    page.keyboard.press("Control+Enter")
    expect(page.locator("#no-task")).to_contain_text("Nothing to label right now")
    page.screenshot(path=str(shots / "question-types-done.png"), full_page=True)
    assert errors == [], errors

    trainer = bearer(live_server.tenant.keys["trainer"])
    feed = httpx.get(f"{live_server.url}{API}/{pid}/labels", headers=trainer, timeout=30).json()["data"]
    assert [x["values"] for x in feed] == [
        {"topic": "geometry", "flags": [], "quality": 5.0, "order": [1, 0], "note": "ok: 4 is right",
         "pref": {"choice": "A", "rationale": "shows the answer"}},
        {"topic": "other", "flags": [], "quality": 1.0, "order": [0, 1], "note": "draft",
         "pref": {"choice": "tie", "rationale": None}}]
    exported = httpx.get(f"{live_server.url}{API}/{pid}/exports/preference-pairs", headers=trainer, timeout=30)
    lines = [json.loads(row) for row in exported.text.splitlines()]
    assert [(x["instruction_id"], x["winner"], x["response_a"]) for x in lines] == [("t0", "A", "so the answer is 4")]

    review(live_server, browser, shots)


def review(server: LiveServer, browser: Any, shots: Path) -> None:
    """Two annotator keys disagree on a preference; a reviewer account settles it on the reviewer screen."""
    from playwright.sync_api import expect

    admin = bearer(server.tenant.keys["admin"])
    with session_scope() as session:
        _, other = create_api_key(session, role=Role.annotator, projects=[session.get(Project, server.tenant.project_a)])
    with httpx.Client(base_url=server.url, timeout=30) as http:
        made = http.post(API, headers=admin, json={
            "project_id": server.tenant.project_a, "name": "disputed", "label_budget": 1, "rollouts_per_prompt": 3,
            "policy": "random", "overlap_k": 2, "label_schema": {"questions": [
                {"id": "pref", "type": "preference_pair", "prompt": "Better response?", "rationale": "off"}]}})
        pid = made.json()["id"]
        with session_scope() as session:
            ingestion.store_step(session, locking.lock_project(session, pid), StepIn(step=0, groups=[
                RolloutGroupIn(prompt_id="t0", prompt_text=ROLLOUTS["t0"][0], answers=ROLLOUTS["t0"][1],
                               completions=ROLLOUTS["t0"][2])]), datetime.now(UTC))
        http.post(f"{API}/{pid}/purchases", headers=bearer(server.tenant.keys["trainer"]),
                  json={"step": 0, "prompt_ids": ["t0"]}).raise_for_status()
        for key, choice in ((server.tenant.keys["annotator"], "A"), (other, "B")):
            lease = http.post(f"{API}/{pid}/queue/next", headers=bearer(key)).json()
            http.post(f"{API}/{pid}/assignments/{lease['assignment_id']}/submit", json={"values": {"pref": choice}},
                      headers={**bearer(key), "Idempotency-Key": choice}).raise_for_status()
        http.post(f"{API}/{pid}/annotators", headers=admin, json={"username": "rita", "password": PASSWORD,
                                                                 "role": "reviewer"}).raise_for_status()
    page = browser.new_page(viewport={"width": 390, "height": 844})
    errors = watch_errors(page)
    page.goto(f"{server.url}{UI}/login")
    page.keyboard.type("rita")
    page.keyboard.press("Tab")
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Enter")
    expect(page.locator(f"#review-{pid}")).to_contain_text("Review disagreements (1)")
    page.goto(f"{server.url}{UI}/projects/{pid}/review")
    rows = page.locator("table.labels-side-by-side tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.nth(0)).to_contain_text("A better")
    expect(rows.nth(1)).to_contain_text("B better")
    fits(page, 390)
    page.screenshot(path=str(shots / "review-list.png"), full_page=True)
    page.locator(".review-task a.button").focus()
    page.keyboard.press("Enter")
    expect(page.locator("#q-pref-a")).to_contain_text("so the answer is 4")
    expect(page.locator('html[data-shortcuts="on"]')).to_have_count(1)  # the keys are live
    page.keyboard.press("b")
    expect(page.locator("#q-pref-B")).to_be_checked()
    fits(page, 390)
    page.screenshot(path=str(shots / "review-settle.png"), full_page=True)
    page.keyboard.press("Control+Enter")
    expect(page.locator("#notice")).to_contain_text("Settled")
    expect(page.locator("#no-disputes")).to_be_visible()
    assert errors == [], errors
    lines = httpx.get(f"{server.url}{API}/{pid}/exports/preference-pairs",
                      headers=bearer(server.tenant.keys["trainer"]), timeout=30).text.splitlines()
    assert [json.loads(line)["winner"] for line in lines] == ["B"]
