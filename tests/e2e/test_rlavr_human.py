"""Issue 14, item 4: the human path end to end. A tiny-model run in RLAVR mode with ``pending_rule: requeue``
posts its steps to a human-labelled annotation project (random acquisition, budget 3) on the live embedded
server; between steps an annotator labels the bought prompts in the web UI (Debian's Chromium through
Playwright, keyboard only) while the run waits in its step callback; at the next step the trainer reads
the labels feed, puts each labelled prompt back into its prompts and trains it on the human label at
weight 1. The run's steps are driven by the run itself and the labelling by its ``on_step`` callback on
the test thread, so nothing waits on time.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import SQLITE_ONLY, LiveServer, bearer
from tests.e2e.test_webui import watch_errors
from trainer import rlavr
from trainer.config import parse_config
from trainer.grpo import GRPOTrainer
from trainer.rewards import CallableRewards, RewardItem

pytestmark = [pytest.mark.browser, SQLITE_ONLY]

PASSWORD = "correct horse battery"
API = "/services/annotation/v1/annotation/projects"
UI = "/services/annotation/ui"
PROMPTS, STEPS, BUDGET, HUMAN_LABEL = 6, 3, 3, "7"


def logged_only(_completion: str, _ground_truth: Any, _item: RewardItem) -> float:
    return 0.0  # the run's own reward source: in rlavr mode its scores are only logged (reward_mean)


def human_project(server: LiveServer) -> str:
    """Random acquisition of half of each step's prompts, labelled by people (no answer key), and alice."""
    admin = bearer(server.tenant.keys["admin"])
    made = httpx.post(server.url + API, headers=admin, json={
        "project_id": server.tenant.project_a, "name": "rlavr-human", "label_budget": BUDGET,
        "rollouts_per_prompt": 4, "policy": "random", "answer_source": "human", "care_params": {"top_p": 0.5}})
    assert made.status_code == 201, made.text
    pid = str(made.json()["id"])
    account = httpx.post(f"{server.url}{API}/{pid}/annotators", headers=admin,
                         json={"username": "alice", "password": PASSWORD})
    assert account.status_code == 201, account.text
    return pid


def requeue_trainer(server: LiveServer, tmp_path: Path, pid: str) -> GRPOTrainer:
    dataset = tmp_path / "d.jsonl"
    dataset.write_text("".join(json.dumps({"data_source": "digit7", "reward_model": {"ground_truth": "7"},
                                           "extra_info": {"prompt_id": f"q{i}"},
                                           "prompt": f"Reply with the digit 7. ({i})"}) + "\n"
                               for i in range(PROMPTS)))
    config = parse_config({
        "model": {"tiny": {"seed": 0}}, "dataset": str(dataset), "group_size": 4, "prompts_per_step": 2,
        "max_steps": STEPS, "learning_rate": 3e-3, "max_completion_length": 1, "seed": 0,
        "output_dir": str(tmp_path / "run"),
        "rlavr": {"annotation_project_id": pid, "url": f"{server.url}/services/annotation", "extractor": "text",
                  "run_id": "human", "pending_rule": "requeue"}}, local=True)
    return GRPOTrainer(config, rewards=CallableRewards(logged_only))


def label_open_tasks(page: Any, ui: str, pid: str, submitted: list[str]) -> None:
    """Label every open task of the project in the task page, typing the answer as the annotator's own;
    each submission's prompt id goes to ``submitted``."""
    from playwright.sync_api import expect

    page.goto(f"{ui}/projects/{pid}/task")
    while page.locator("#no-task").count() == 0:
        expect(page.locator('html[data-shortcuts="on"]')).to_have_count(1)  # the page's keyboard is ready
        heading = page.locator("#prompt-heading .muted").inner_text()  # "q3 · step 0"
        page.keyboard.press("a")  # none of the candidates: my own answer
        expect(page.locator("#answer")).to_be_focused()
        page.keyboard.type(HUMAN_LABEL)
        page.keyboard.press("Control+Enter")  # submits; the next task (or none) loads
        submitted.append(heading.split()[0])
        expect(page.locator('[data-field="submitted"]')).to_have_text(str(len(submitted)))


def test_annotator_labels_in_the_browser_while_the_run_requeues_them(live_server: LiveServer, browser: Any,
                                                                      tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from playwright.sync_api import expect

    pid = human_project(live_server)
    monkeypatch.setenv("REWARDHUB_API_KEY", live_server.tenant.keys["trainer"])
    trainer = requeue_trainer(live_server, tmp_path, pid)
    session = trainer.rlavr
    assert session is not None and session.requeue

    page = browser.new_page()
    errors = watch_errors(page)
    ui = live_server.url + UI
    page.goto(f"{ui}/login")
    page.keyboard.type("alice")
    page.keyboard.press("Tab")
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Enter")
    expect(page.locator("#main")).to_be_visible()

    submitted: list[str] = []  # prompt ids the annotator labelled, in order
    labelled_after: dict[int, list[str]] = {}  # step -> the prompt ids labelled right after it
    decisions: dict[int, Any] = {}

    def between_steps(step: int, _metrics: dict[str, Any]) -> None:
        decisions[step] = session.last
        if step < STEPS:  # the run goes on after this callback: label what it bought so far
            before = len(submitted)
            label_open_tasks(page, ui, pid, submitted)
            labelled_after[step] = submitted[before:]

    outcome = trainer.train(on_step=between_steps)
    assert outcome.status == "succeeded" and outcome.steps == STEPS
    history = outcome.history
    assert history[0]["rlavr/purchased"] == 1.0  # step 0 bought one prompt, pending
    assert submitted, "the annotator found nothing to label"
    assert len(submitted) == len(set(submitted)) == sum(m["rlavr/purchased"] for m in history[:-1])

    # Every label submitted between steps arrived through the feed at the next step, and its prompt came
    # back into that step's prompts.
    for step in range(1, STEPS):
        metrics = history[step]
        assert metrics["rlavr/labels_arrived"] == len(labelled_after[step]), (step, metrics)
        assert metrics["rlavr/requeued"] == len(labelled_after[step]), (step, metrics)
    assert history[0]["rlavr/labels_arrived"] == history[0]["rlavr/requeued"] == 0.0
    assert sum(m["rlavr/labels_arrived"] for m in history) == len(submitted)

    # A requeued prompt trains on the human label at weight 1: rewards 1[answer = "7"] for its rollouts.
    for step in range(1, STEPS):
        step_out = decisions[step + 1]
        by_prompt = {d.prompt_id: (d, w, answers) for d, w, answers in
                     zip(step_out.decisions, step_out.weights, step_out.answers, strict=True)}
        first = [d.prompt_id for d in step_out.decisions][: len(labelled_after[step])]
        assert first == labelled_after[step]  # ahead of the fresh draws
        for prompt_id in labelled_after[step]:
            decision, weight, _answers = by_prompt[prompt_id]
            assert (decision.label_status, decision.label, weight) == ("labelled", HUMAN_LABEL, 1.0)
        assert history[step]["rlavr/gt_share"] >= len(labelled_after[step]) / 2
    # The run's log of label arrivals (its requeue journal): one poll per step.
    journal = [json.loads(x) for x in (tmp_path / "run" / rlavr.LABELS_LOG).read_text().splitlines()]
    assert [x["step"] for x in journal] == list(range(STEPS))
    assert [p for x in journal for p in x["arrived"]] == submitted
    assert [p for x in journal for p in x["requeued"]] == submitted

    # The run's checkpoint keeps the feed cursor (its head) for a resume, and nothing waits that was labelled.
    state = json.loads((outcome.checkpoint / "state.json").read_text()) if outcome.checkpoint else {}
    feed = httpx.get(f"{live_server.url}{API}/{pid}/labels", headers=bearer(live_server.tenant.keys["trainer"]),
                     params={"cursor": 0}).json()
    assert [x["prompt_id"] for x in feed["data"]] == submitted
    assert all(x["label"] == HUMAN_LABEL and x["labelled_by"] for x in feed["data"])
    assert state["extra"]["rlavr"]["cursor"] == feed["next_cursor"]
    assert not set(submitted) & {k for k, _ in state["extra"]["rlavr"]["waiting"]}
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [x["rlavr/labels_arrived"] for x in lines] == [m["rlavr/labels_arrived"] for m in history]
    assert errors == [], errors
