"""RLAVR end to end on a tiny model: the trainer posts each step to a real annotation project (CARE,
an answer key answering purchases at once), trains with the labels and weights it gets back, never
buys past the budget, and a step whose response was lost is retried without buying twice."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import SQLITE_ONLY, LiveServer, bearer
from trainer.config import parse_config
from trainer.grpo import GRPOTrainer
from trainer.rewards import CallableRewards, RewardItem
from trainer.rlavr import RlavrSession, match_rewards

pytestmark = pytest.mark.slow

PROMPTS = 4
BUDGET = 3


class LoseFirstStepResponse(httpx.BaseTransport):
    """Forwards to the real server; the first /steps response is dropped after the server processed it."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.step_requests: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if request.url.path.endswith("/steps"):
            self.step_requests.append(request.headers["Idempotency-Key"])
            if len(self.step_requests) == 1:
                response.read()
                response.close()
                raise httpx.ReadError("response lost after the server committed it", request=request)
        return response

    def close(self) -> None:
        self.inner.close()


def never_called(_completion: str, _ground_truth: Any, _item: RewardItem) -> float:
    return 0.0  # the run's own reward source: in rlavr mode its scores are only logged (reward_mean)


def create_project(server: LiveServer, policy: str = "care", care_params: dict[str, Any] | None = None,
                   answer_source: str = "answer_key") -> str:
    base = f"{server.url}/services/annotation/v1/annotation/projects"
    admin = bearer(server.tenant.keys["admin"])
    created = httpx.post(base, headers=admin, json={
        "project_id": server.tenant.project_a, "name": f"rlavr-{policy}", "label_budget": BUDGET,
        "rollouts_per_prompt": 4, "policy": policy, "answer_source": answer_source,
        "care_params": care_params if care_params is not None else {"top_p": 1.0, "warmup_steps": 20}})
    assert created.status_code in (200, 201), created.text
    project_id = str(created.json()["id"])
    if answer_source != "answer_key":
        return project_id
    key = httpx.put(f"{base}/{project_id}/answer-key", headers=admin,
                    json={"entries": [{"prompt_id": str(i), "answer": "7"} for i in range(PROMPTS)]})
    assert key.status_code == 200, key.text
    return project_id


def rlavr_trainer(server: LiveServer, tmp_path: Path, project_id: str, **overrides: Any) -> GRPOTrainer:
    dataset = tmp_path / "d.jsonl"
    dataset.write_text("".join(json.dumps({"data_source": "digit7", "reward_model": {"ground_truth": "7"},
                                           "prompt": f"Reply with the digit 7. ({i})"}) + "\n"
                               for i in range(PROMPTS)))
    data: dict[str, Any] = {
        "model": {"tiny": {"seed": 0}}, "dataset": str(dataset), "group_size": 4, "prompts_per_step": 2,
        "max_steps": 2, "learning_rate": 3e-3, "max_completion_length": 2, "seed": 0,
        "output_dir": str(tmp_path / "run"),
        "rlavr": {"annotation_project_id": project_id, "url": f"{server.url}/services/annotation",
                  "extractor": "text", "run_id": "loop"}}
    data.update(overrides)
    return GRPOTrainer(parse_config(data, local=True), rewards=CallableRewards(never_called))


@SQLITE_ONLY
def test_rlavr_pseudo_labels_at_weight_one_train(live_server: LiveServer, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # random at top_p 0.5 with mask_non_gt off: 1 prompt of 2 bought per step, the other trains on its
    # pseudo-label at weight 1, so majority-vote rewards (1 for the majority cluster) give updates.
    project_id = create_project(live_server, "random", {"top_p": 0.5, "mask_non_gt": False})
    monkeypatch.setenv("REWARDHUB_API_KEY", live_server.tenant.keys["trainer"])
    trainer = rlavr_trainer(live_server, tmp_path, project_id, max_completion_length=1, max_steps=2)
    outcome = trainer.train()
    assert [m["rlavr/purchased"] for m in outcome.history] == [1.0, 1.0]
    assert [m["rlavr/budget_left"] for m in outcome.history] == [2.0, 1.0]
    assert all(m["rlavr/mean_advantage_weight"] == 1.0 for m in outcome.history)
    assert all(m["rlavr/gt_share"] == 0.5 for m in outcome.history)
    # An optimizer step was taken (the on-policy loss value of zero-mean advantages is 0; its gradient is not).
    assert any(m.get("skipped_update") is None and m["grad_norm"] > 0.0 for m in outcome.history)


@SQLITE_ONLY
def test_rlavr_pending_human_labels_train_at_weight_zero(live_server: LiveServer, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # A human-labelled project: the bought prompt's label is pending (nobody has answered it), so it
    # trains at weight 0 although the service gives it 1; the unbought one trains on its pseudo-label.
    project_id = create_project(live_server, "random", {"top_p": 0.5, "mask_non_gt": False}, answer_source="human")
    monkeypatch.setenv("REWARDHUB_API_KEY", live_server.tenant.keys["trainer"])
    trainer = rlavr_trainer(live_server, tmp_path, project_id, max_completion_length=1)
    outcome = trainer.train()
    for metrics in outcome.history:
        assert metrics["rlavr/purchased"] == 1.0 and metrics["rlavr/pending"] == 1.0
        assert metrics["rlavr/gt_share"] == 0.0 and metrics["rlavr/mean_advantage_weight"] == 0.5
        assert "rlavr/pseudo_label_accuracy" not in metrics  # no label is known yet
    last = trainer.rlavr.last if trainer.rlavr is not None else None
    assert last is not None and [d.label_status for d in last.decisions].count("pending") == 1
    assert sorted(last.weights) == [0.0, 1.0]


@SQLITE_ONLY
def test_rlavr_run_buys_within_budget_and_retries_idempotently(live_server: LiveServer, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    project_id = create_project(live_server)
    monkeypatch.setenv("REWARDHUB_API_KEY", live_server.tenant.keys["trainer"])
    trainer = rlavr_trainer(live_server, tmp_path, project_id)
    transport = LoseFirstStepResponse()
    trainer.rlavr = RlavrSession(trainer.config, trainer.output_dir, transport=transport)
    seen: list[Any] = []
    outcome = trainer.train(on_step=lambda _step, _metrics: seen.append(trainer.rlavr.last if trainer.rlavr else None))
    assert outcome.status == "succeeded" and outcome.steps == 2

    # The lost response was retried once with the same key; every step has its own key.
    assert transport.step_requests == ["rlavr-loop-step-0", "rlavr-loop-step-0", "rlavr-loop-step-1"]
    ledger = httpx.get(f"{live_server.url}/services/annotation/v1/annotation/projects/{project_id}/ledger",
                       headers=bearer(live_server.tenant.keys["trainer"])).json()
    purchased = [m["rlavr/purchased"] for m in outcome.history]
    # CARE wants both prompts of step 0 (top_p 1): 2 bought; step 1 has 1 label left. The retry bought nothing more.
    assert purchased[0] == 2.0
    assert len(ledger["data"]) == sum(purchased) == ledger["budget"]["spent"] <= BUDGET
    assert [p["step"] for p in ledger["data"]].count(0) == 2
    assert outcome.history[-1]["rlavr/budget_left"] == BUDGET - sum(purchased)

    for metrics, step in zip(outcome.history, seen, strict=True):
        for name in ("rlavr/gt_share", "rlavr/mean_advantage_weight", "rlavr/purchased", "rlavr/budget_left",
                     "rlavr/pseudo_label_accuracy"):
            assert name in metrics, name
        assert 0.0 <= metrics["rlavr/gt_share"] <= 1.0
        # Answer-key labels arrive at once: every bought prompt trains with its label ("7").
        expected: list[float] = []
        for answers, decision in zip(step.answers, step.decisions, strict=True):
            assert decision.label_status in ("none", "labelled")
            target = decision.label if decision.label_status == "labelled" else decision.pseudo_label
            if decision.label_status == "labelled":
                assert decision.label == "7"
            expected.extend(match_rewards(answers, target))
        assert step.rewards.tolist() == expected
    assert outcome.history[0]["rlavr/gt_share"] == 1.0  # both of step 0's prompts were bought and labelled
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert all("rlavr/gt_share" in json.loads(line) for line in lines)
