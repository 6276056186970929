"""Issue 5 end to end: trainer step → policy purchases → annotator web UI (keyboard) → labels back.

A real uvicorn serves the embedded app (``live_server``); the trainer talks to it over HTTP only,
the annotator through Debian's Chromium driven by Playwright (no browser is ever downloaded).
The project uses the ``low_consensus`` policy, whose scores (1 − majority ratio) are hand-computable,
so the purchases below are deterministic.

The clear-4xx cases (unknown prompt id, wrong group size, over-budget purchase, submit on an
expired lease) are covered once, against the same routes, in tests/unit/annotation/test_api.py.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import LiveServer, bearer

pytestmark = [pytest.mark.browser, pytest.mark.slow]

PASSWORD = "correct horse battery"
API = "/services/annotation/v1/annotation/projects"
UI = "/services/annotation/ui"
N = 4
WIDTH = 3  # feature width (a stand-in for the policy's hidden size)


def group(prompt_id: str, answers: list[str | None], seed: int) -> dict[str, Any]:
    """One prompt's rollout group as a trainer posts it, with (made-up, deterministic) feature vectors."""
    return {"prompt_id": prompt_id, "prompt_text": f"Prompt {prompt_id}: what is the answer?", "answers": answers,
            "response_lengths": [100 + 10 * j for j in range(N)],
            "prompt_features": [0.1 * seed, 0.2, -0.3],
            "rollout_features": [[0.01 * (seed + j), -0.5, 0.25] for j in range(N)]}


def by_prompt(step: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {g["prompt_id"]: g for g in step["groups"]}


def on_task(page: Any, prompt_id: str) -> None:
    """Wait for the task page of this prompt with its keyboard shortcuts set up."""
    from playwright.sync_api import expect

    expect(page.locator("#prompt")).to_contain_text(f"Prompt {prompt_id}:")
    expect(page.locator('html[data-shortcuts="on"]')).to_have_count(1)


def watch_errors(page: Any) -> list[str]:
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("requestfailed", lambda request: errors.append(f"failed: {request.url}"))
    page.on("response", lambda response: errors.append(f"{response.status}: {response.url}")
            if response.status >= 400 else None)
    return errors


def test_step_purchase_ui_labels_and_ledger_loop(live_server: LiveServer, browser: Any) -> None:
    from playwright.sync_api import expect

    admin, trainer = bearer(live_server.tenant.keys["admin"]), bearer(live_server.tenant.keys["trainer"])
    http = httpx.Client(base_url=live_server.url, timeout=60)

    # The admin sets up the project: budget 3, buy the least-consensual half of each step.
    made = http.post(API, headers=admin, json={
        "project_id": live_server.tenant.project_a, "name": "loop", "label_budget": 3, "rollouts_per_prompt": N,
        "policy": "low_consensus", "care_params": {"top_p": 0.5}})
    assert made.status_code == 201, made.text
    pid = made.json()["id"]
    steps, labels_url = f"{API}/{pid}/steps", f"{API}/{pid}/labels"
    account = http.post(f"{API}/{pid}/annotators", headers=admin, json={"username": "alice", "password": PASSWORD})
    assert account.status_code == 201, account.text

    # Step 0: four prompts; scores 1 − majority ratio = 0, 0.5, 0.75, 0.25; quota ⌈0.5 · 4⌉ = 2.
    posted = http.post(steps, headers=trainer, json={"step": 0, "groups": [
        group("p0", ["4", "4", "4", "4"], 0),
        group("p1", ["x^2", "x^2", "2x", "3x^2"], 1),
        group("p2", ["1", "2", "3", None], 2),
        group("p3", ["7", "7", "7", "8"], 3)]})
    assert posted.status_code == 200, posted.text
    step0 = posted.json()
    g = by_prompt(step0)
    assert [(k, v["pseudo_label"], v["majority_ratio"]) for k, v in g.items()] == [
        ("p0", "4", 1.0), ("p1", "x^2", 0.5), ("p2", "1", 0.25), ("p3", "7", 0.75)]
    assert g["p2"]["valid_ratio"] == 0.75 and [c["size"] for c in g["p1"]["clusters"]] == [2, 1, 1]
    assert [g[k]["score"] for k in ("p0", "p1", "p2", "p3")] == pytest.approx([0.0, 0.5, 0.75, 0.25])
    assert [k for k, v in g.items() if v["selected"]] == ["p1", "p2"]
    assert [k for k, v in g.items() if v["bought"]] == ["p1", "p2"]
    assert {k: v["label_status"] for k, v in g.items()} == {"p0": "none", "p1": "pending", "p2": "pending",
                                                            "p3": "none"}
    # Bought → weight 1; the low_consensus baseline trains only on what it bought (mask_non_gt, on by default).
    assert [v["advantage_weight"] for v in g.values()] == [0.0, 1.0, 1.0, 0.0]
    assert (step0["purchased"], step0["budget"], step0["budget_exhausted"]) == (
        2, {"total": 3, "spent": 2, "left": 1}, False)
    assert http.get(labels_url, headers=trainer, params={"cursor": 0}).json() == {"data": [], "next_cursor": "0"}

    # The annotator logs in (keyboard only) and finds the two bought prompts queued, best score first.
    page = browser.new_page()
    errors = watch_errors(page)
    ui = live_server.url + UI
    page.goto(f"{ui}/login")
    page.keyboard.type("alice")
    page.keyboard.press("Tab")
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Enter")
    expect(page.locator(f'tr[data-project-id="{pid}"] [data-field="open"]')).to_have_text("2")
    page.goto(f"{ui}/projects/{pid}/task")
    on_task(page, "p2")
    expect(page.locator("#choice-2")).to_have_count(1)  # three candidate answers, then "my own"
    expect(page.locator("#choice-3")).to_have_count(0)
    page.keyboard.press("a")  # none of the candidates is right: type my own answer
    expect(page.locator("#answer")).to_be_focused()
    page.keyboard.type("6")
    page.keyboard.press("Control+Enter")
    expect(page.locator("#notice")).to_have_text("Saved.")
    on_task(page, "p1")
    expect(page.locator('label[for="choice-0"]')).to_contain_text("2 of 4 rollouts")
    page.keyboard.press("1")
    expect(page.locator("#choice-0")).to_be_checked()
    page.keyboard.press("Control+Enter")
    expect(page.locator("#no-task")).to_contain_text("Nothing to label right now")

    # The trainer reads the labels since its cursor, in delivery order.
    feed = http.get(labels_url, headers=trainer, params={"cursor": 0}).json()
    assert [(x["seq"], x["prompt_id"], x["label"], x["event"], x["step"], x["policy"]) for x in feed["data"]] == [
        (1, "p2", "6", "labelled", 0, "low_consensus"), (2, "p1", "x^2", "labelled", 0, "low_consensus")]
    assert all(x["labelled_by"] for x in feed["data"]) and feed["next_cursor"] == "2"
    cursor = feed["next_cursor"]

    # Step 1: p1 comes back already labelled (not bought again); the policy wants p4 and p5, the budget
    # has room for one.
    posted = http.post(steps, headers=trainer, json={"step": 1, "groups": [
        group("p1", ["x^2", "2x", "2x", "2x"], 1),
        group("p4", ["a", "b", "c", "d"], 4),
        group("p5", ["5", "5", "6", "6"], 5)]})
    assert posted.status_code == 200, posted.text
    step1 = posted.json()
    g = by_prompt(step1)
    assert (g["p1"]["label_status"], g["p1"]["label"], g["p1"]["bought"], g["p1"]["selected"]) == (
        "labelled", "x^2", False, False)
    assert g["p1"]["purchase_id"] == step0["groups"][1]["purchase_id"]
    assert [k for k, v in g.items() if v["selected"]] == ["p4", "p5"]
    assert [k for k, v in g.items() if v["bought"]] == ["p4"]
    assert (step1["purchased"], step1["budget"], step1["budget_exhausted"]) == (
        1, {"total": 3, "spent": 3, "left": 0}, True)
    assert str(step1["label_cursor"]) == cursor  # the feed head as a seq number; the feed cursor is its text

    # The new purchase shows up in the UI; the annotator picks the third candidate.
    page.goto(f"{ui}/projects/{pid}/task")
    on_task(page, "p4")
    expect(page.locator('label[for="choice-2"]')).to_contain_text("c")
    page.keyboard.press("3")
    expect(page.locator("#choice-2")).to_be_checked()
    page.keyboard.press("Control+Enter")
    expect(page.locator("#no-task")).to_contain_text("Nothing to label right now")
    assert errors == [], errors

    feed = http.get(labels_url, headers=trainer, params={"cursor": cursor}).json()
    assert [(x["seq"], x["prompt_id"], x["label"], x["step"]) for x in feed["data"]] == [(3, "p4", "c", 1)]
    assert feed["next_cursor"] == "3"
    # The same entry over Server-Sent Events, resuming from the old cursor.
    stream = http.get(f"{labels_url}/stream", headers={**trainer, "Last-Event-ID": str(cursor)}, params={"limit": 1})
    assert stream.status_code == 200 and stream.headers["content-type"].startswith("text/event-stream")
    assert "id: 3\n" in stream.text and '"prompt_id":"p4"' in stream.text

    # The ledger: budget used = number bought, each purchase labelled by alice.
    ledger = http.get(f"{API}/{pid}/ledger", headers=trainer).json()
    assert ledger["budget"] == {"total": 3, "spent": 3, "left": 0} and ledger["next_cursor"] is None
    assert sorted((p["prompt_id"], p["step"], p["status"], p["label"]) for p in ledger["data"]) == [
        ("p1", 0, "labelled", "x^2"), ("p2", 0, "labelled", "6"), ("p4", 1, "labelled", "c")]
    assert all(p["policy"] == "low_consensus" and len(p["labelled_by"]) == 1 for p in ledger["data"])
    project = http.get(f"{API}/{pid}", headers=trainer).json()
    assert (project["last_step"], project["label_cursor"]) == (1, 3)
    http.close()
