"""RLAVR's ``pending_rule: requeue`` against a real, human-labelled annotation project (the embedded
server): labels submitted over the annotator API between steps reach the trainer through the label
feed, their prompts come back at weight 1, and a run resumed from a checkpoint before those steps
replays its journal: it posts the same prompts under the same Idempotency-Keys (the service would
refuse a different body) although a label submitted after the first run is in the feed by then."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import SQLITE_ONLY, LiveServer, bearer
from trainer import rlavr
from trainer.config import parse_config
from trainer.grpo import GRPOTrainer
from trainer.rewards import CallableRewards, RewardItem

API = "/services/annotation/v1/annotation/projects"
PROMPTS, STEPS = 6, 3
RLAVR_KEYS = ("rlavr/labels_arrived", "rlavr/requeued", "rlavr/waiting", "rlavr/purchased", "rlavr/gt_share",
              "rlavr/mean_advantage_weight", "rlavr/reward_mean")


def logged_only(_completion: str, _ground_truth: Any, _item: RewardItem) -> float:
    return 0.0


def project(server: LiveServer) -> str:
    made = httpx.post(server.url + API, headers=bearer(server.tenant.keys["admin"]), json={
        "project_id": server.tenant.project_a, "name": "requeue", "label_budget": 3, "rollouts_per_prompt": 4,
        "policy": "random", "answer_source": "human", "care_params": {"top_p": 0.5}})
    assert made.status_code == 201, made.text
    return str(made.json()["id"])


def make_trainer(server: LiveServer, tmp_path: Path, pid: str, output: str) -> GRPOTrainer:
    dataset = tmp_path / "d.jsonl"
    dataset.write_text("".join(json.dumps({"data_source": "digit7", "reward_model": {"ground_truth": "7"},
                                           "extra_info": {"prompt_id": f"q{i}"},
                                           "prompt": f"Reply with the digit 7. ({i})"}) + "\n"
                               for i in range(PROMPTS)))
    return GRPOTrainer(parse_config({
        "model": {"tiny": {"seed": 0}}, "dataset": str(dataset), "group_size": 4, "prompts_per_step": 2,
        "max_steps": STEPS, "learning_rate": 3e-3, "max_completion_length": 1, "seed": 0, "checkpoint_every": 1,
        "export_hf": "none", "output_dir": str(tmp_path / output),
        "rlavr": {"annotation_project_id": pid, "url": f"{server.url}/services/annotation", "extractor": "text",
                  "run_id": "requeue", "pending_rule": "requeue"}}, local=True), rewards=CallableRewards(logged_only))


def label_all(server: LiveServer, pid: str, answer: str = "7") -> list[str]:
    """The annotator key answers every open task; the prompt ids it labelled, in order."""
    key = bearer(server.tenant.keys["annotator"])
    done: list[str] = []
    with httpx.Client(base_url=server.url, timeout=30) as http:
        while (lease := http.post(f"{API}/{pid}/queue/next", headers=key)).status_code == 200:
            task = lease.json()
            http.post(f"{API}/{pid}/assignments/{task['assignment_id']}/submit", json={"answer": answer},
                      headers={**key, "Idempotency-Key": task["assignment_id"]}).raise_for_status()
            done.append(task["prompt_id"])
        assert lease.status_code == 204, lease.text
    return done


@SQLITE_ONLY
def test_requeued_labels_train_and_a_resume_replays_the_journal(live_server: LiveServer, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    pid = project(live_server)
    monkeypatch.setenv("REWARDHUB_API_KEY", live_server.tenant.keys["trainer"])
    first = make_trainer(live_server, tmp_path, pid, "run")
    labelled: dict[int, list[str]] = {}
    # Nobody labels after step 1; after step 2 the annotator answers both purchases so far.

    def after_step(step: int, _metrics: dict[str, Any]) -> None:
        if step == 2:
            labelled[step] = label_all(live_server, pid)

    outcome = first.train(on_step=after_step)
    history = outcome.history
    bought = [m["rlavr/purchased"] for m in history]
    assert bought[:2] == [1.0, 1.0] and len(labelled[2]) == 2  # random buys one of two prompts a step
    assert [m["rlavr/labels_arrived"] for m in history] == [0.0, 0.0, 2.0]
    assert [m["rlavr/requeued"] for m in history] == [0.0, 0.0, 2.0]
    assert [m["rlavr/waiting"] for m in history] == [1.0, 2.0, bought[2]]
    assert history[2]["rlavr/gt_share"] == 1.0  # both prompts of the last step train on their labels
    assert first.rlavr is not None and first.rlavr.last is not None
    assert [d.prompt_id for d in first.rlavr.last.decisions] == labelled[2]  # requeued, ahead of fresh ones
    assert all(d.label == "7" and w == 1.0 for d, w in zip(first.rlavr.last.decisions, first.rlavr.last.weights,
                                                            strict=True))

    # Resume a copy of the run folder from its step-1 checkpoint: steps 2 and 3 are taken again. Step 0's
    # purchase is labelled in the feed by now, so a fresh poll at step 2 would requeue it and post other
    # prompts than the first run did under the same key (refused); the journal replays step 2's empty poll.
    shutil.copytree(tmp_path / "run", tmp_path / "again")
    again = make_trainer(live_server, tmp_path, pid, "again")
    checkpoints = sorted(p for p in (tmp_path / "again" / "checkpoints").iterdir() if (p / "state.json").is_file())
    step_one = next(p for p in checkpoints if json.loads((p / "state.json").read_text())["step"] == 1)
    assert again.resume(step_one) and again.step == 1
    # The checkpoint's state: the feed not read yet, step 0's purchase waiting for its label.
    assert again.rlavr is not None and again.rlavr.cursor == "0"
    assert len(again.rlavr.waiting) == 1 and set(again.rlavr.waiting) < set(labelled[2])
    retaken = again.train().history
    assert [{k: m[k] for k in RLAVR_KEYS} for m in retaken] == [{k: m[k] for k in RLAVR_KEYS} for m in history[1:]]
    journal = (tmp_path / "again" / rlavr.LABELS_LOG).read_text().splitlines()
    assert len(journal) == STEPS  # replayed, nothing appended
    again_last = again.rlavr.last
    assert again_last is not None and [d.prompt_id for d in again_last.decisions] == [
        d.prompt_id for d in first.rlavr.last.decisions]

    # The control: the same resume without the journal polls afresh, posts other prompts under step 2's key,
    # and the service refuses the reused key.
    shutil.copytree(tmp_path / "run", tmp_path / "unjournalled")
    (tmp_path / "unjournalled" / rlavr.LABELS_LOG).unlink()
    control = make_trainer(live_server, tmp_path, pid, "unjournalled")
    assert control.resume(step_one)
    with pytest.raises(rlavr.RlavrError, match=r"annotation step 1: HTTP 409.*idempotency_key_reused"):
        control.train()
