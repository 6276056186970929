"""The GRPO run loop on a tiny random model (CPU): it learns, resumes exactly, cancels cleanly, fails loudly.

The learning task: prompts ask for the digit 7; the in-process reward is the share of the
answer's non-space characters that are digits (weight 1/2) plus the share that are "7"
(weight 1/2). A random model scores about 0.02; a model that only writes 7s scores 1.
"""

from __future__ import annotations

import json
import math
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from tests.conftest import LiveServer
from trainer import checkpoint
from trainer.config import RewardConfig, parse_config
from trainer.grpo import CHECKPOINTS, METRICS_FILE, GRPOTrainer
from trainer.rewards import (
    CallableRewards,
    HttpRewards,
    RewardItem,
    RewardServiceError,
    RewardServiceUnavailable,
)

pytestmark = pytest.mark.slow


def write_dataset(path: Path, rows: int = 16) -> Path:
    lines = [json.dumps({"data_source": "digit7", "reward_model": {"ground_truth": "7"},
                         "prompt": [{"role": "user", "content": f"Reply with the digit 7. ({i})"}]})
             for i in range(rows)]
    path.write_text("\n".join(lines) + "\n")
    return path


def digit7_reward(completion: str, ground_truth: Any, _item: RewardItem) -> float:
    chars = [c for c in completion if not c.isspace()]
    if not chars:
        return 0.0
    digits = sum(c.isdigit() for c in chars) / len(chars)
    target = sum(c == str(ground_truth) for c in chars) / len(chars)
    return 0.5 * digits + 0.5 * target


def letter_share(completion: str, _ground_truth: Any, _item: RewardItem) -> float:
    """A dense reward (almost every group has a spread) for the tests that compare losses step by step."""
    chars = [c for c in completion if not c.isspace()]
    return sum(c.isalpha() for c in chars) / len(chars) if chars else 0.0


def make_config(tmp_path: Path, name: str, **overrides: Any) -> Any:
    data: dict[str, Any] = {
        "model": {"tiny": {"seed": 0}}, "dataset": str(write_dataset(tmp_path / f"{name}.jsonl")),
        "group_size": 4, "prompts_per_step": 2, "max_steps": 4, "learning_rate": 3e-3,
        "max_completion_length": 6, "seed": 0, "output_dir": str(tmp_path / name),
    }
    data.update(overrides)
    return parse_config(data)


def read_metrics(output_dir: Path) -> list[dict[str, Any]]:
    path = output_dir / METRICS_FILE
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_tiny_model_learns_to_answer_7(tmp_path: Path) -> None:
    # Seed 1 fixed here. Over 40 steps (about 0.1 s each on 2 CPU cores), the mean reward of the first
    # 5 steps -> the last 5 was, for seeds 0..5 when this test was written: 0.040 -> 0.946,
    # 0.006 -> 0.913, 0.029 -> 0.880, 0.023 -> 0.863, 0.011 -> 0.472, 0.052 -> 0.983. Margin asked: 0.4.
    config = make_config(tmp_path, "learn", model={"tiny": {"seed": 1}}, seed=1, group_size=8, prompts_per_step=4,
                         max_steps=40)
    outcome = GRPOTrainer(config, rewards=CallableRewards(digit7_reward)).train()

    assert outcome.status == "succeeded" and outcome.steps == 40
    rewards = [m["reward_mean"] for m in outcome.history]
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert last - first >= 0.4, rewards
    logged = read_metrics(Path(config.output_dir))
    assert [m["step"] for m in logged] == list(range(1, 41))
    for key in ("reward_mean", "reward_std", "non_ok_share", "loss", "clip_fraction", "entropy", "tokens_per_s",
                "step_time_s", "lr"):
        assert all(math.isfinite(m[key]) for m in logged), key


def test_resume_takes_the_same_next_step(tmp_path: Path) -> None:
    settings: dict[str, Any] = {"max_steps": 4, "mini_batches": 2, "beta": 0.04, "lr_schedule": "cosine",
                                "warmup_steps": 1, "loss_type": "grpo"}
    straight = GRPOTrainer(make_config(tmp_path, "straight", **settings),
                           rewards=CallableRewards(letter_share)).train()

    interrupted_config = make_config(tmp_path, "interrupted", **settings)
    first = GRPOTrainer(interrupted_config, rewards=CallableRewards(letter_share))
    cancelled = first.train(should_stop=lambda: first.step >= 2)
    assert cancelled.status == "cancelled" and cancelled.steps == 2

    resumed = GRPOTrainer(interrupted_config, rewards=CallableRewards(letter_share))
    assert resumed.resume() is True and resumed.step == 2
    rest = resumed.train()

    assert rest.status == "succeeded" and [m["step"] for m in rest.history] == [3, 4]
    for after, before in zip(rest.history, straight.history[2:], strict=True):
        assert after["loss"] != 0.0
        assert after["loss"] == pytest.approx(before["loss"], abs=1e-6)
        assert after["kl"] == pytest.approx(before["kl"], abs=1e-6)
        assert after["reward_mean"] == pytest.approx(before["reward_mean"], abs=1e-9)
        assert after["lr"] == pytest.approx(before["lr"], abs=1e-12)
    # The metrics log of the interrupted run reads like the uninterrupted one's.
    assert [m["step"] for m in read_metrics(Path(interrupted_config.output_dir))] == [1, 2, 3, 4]


def test_cancel_leaves_a_loadable_checkpoint(tmp_path: Path) -> None:
    config = make_config(tmp_path, "cancel", max_steps=10)
    trainer = GRPOTrainer(config, rewards=CallableRewards(letter_share))
    outcome = trainer.train(should_stop=lambda: trainer.step >= 1)

    assert outcome.status == "cancelled" and outcome.steps == 1
    assert outcome.checkpoint is not None
    assert checkpoint.latest(Path(config.output_dir) / CHECKPOINTS) == outcome.checkpoint

    fresh = GRPOTrainer(make_config(tmp_path, "fresh"), rewards=CallableRewards(letter_share))
    state = fresh.policy.load(outcome.checkpoint)
    assert state.step == 1 and state.sampler["position"] == config.prompts_per_step
    trained = trainer.model.state_dict()
    assert all(torch.equal(value, trained[name]) for name, value in fresh.model.state_dict().items())
    # It moved away from the initial weights: the checkpoint holds the trained step, not the start.
    initial = GRPOTrainer(make_config(tmp_path, "initial"), rewards=CallableRewards(letter_share)).model
    assert any(not torch.equal(value, trained[name]) for name, value in initial.state_dict().items())


def test_non_ok_rewards_are_counted_and_left_out(tmp_path: Path) -> None:
    calls = {"n": 0}

    def flaky(completion: str, ground_truth: Any, item: RewardItem) -> float | tuple[float | None, str]:
        calls["n"] += 1
        if calls["n"] % 4 == 0:
            return (None, "timeout")
        return digit7_reward(completion, ground_truth, item)

    outcome = GRPOTrainer(make_config(tmp_path, "flaky", max_steps=2),
                          rewards=CallableRewards(flaky)).train()
    for metrics in outcome.history:
        assert metrics["non_ok_share"] == pytest.approx(0.25)
        assert math.isfinite(metrics["reward_mean"]) and math.isfinite(metrics["loss"])


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # closed again when the socket is: nothing listens there


def test_reward_service_outage_fails_the_step_loudly(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    config = make_config(tmp_path, "outage", reward={"spec": {"type": "exact"}, "url": url, "max_retries": 1,
                                                     "timeout_s": 5})
    trainer = GRPOTrainer(config)
    with pytest.raises(RewardServiceUnavailable, match=f"reward service at {url} unreachable after 1 retries"):
        trainer.train()
    assert trainer.step == 0
    assert read_metrics(Path(config.output_dir)) == []  # no step was recorded, least of all with zero rewards


def _reward_config(**overrides: Any) -> RewardConfig:
    return RewardConfig.model_validate({"spec": {"type": "exact"}, "url": "http://rewardhub.test",
                                        "max_retries": 1, **overrides})


def _items(n: int) -> list[RewardItem]:
    return [RewardItem(id=str(i), prompt="p", completion=str(i), ground_truth="7") for i in range(n)]


def test_http_rewards_batches_and_keeps_statuses() -> None:
    sizes: list[int] = []

    def answer(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        assert body["spec"]["type"] == "exact" and request.headers["Idempotency-Key"]
        sizes.append(len(body["items"]))
        results = [{"id": item["id"], "score": 1.0 if int(item["id"]) % 2 == 0 else 0.0,
                    "status": "ok" if int(item["id"]) % 3 else "timeout"} for item in reversed(body["items"])]
        return httpx.Response(200, json={"request_id": "r", "spec_ref": "inline", "results": results,
                                         "summary": {}})

    rewards = HttpRewards(_reward_config(batch_size=5, concurrency=2), transport=httpx.MockTransport(answer))
    outcomes = rewards.score(_items(12))
    assert sorted(sizes) == [2, 5, 5]
    expected = [None if i % 3 == 0 else (1.0 if i % 2 == 0 else 0.0) for i in range(12)]
    assert [o.score for o in outcomes] == expected
    assert [o.status for o in outcomes] == ["timeout" if i % 3 == 0 else "ok" for i in range(12)]


def test_http_rewards_errors() -> None:
    calls = {"n": 0}

    def unavailable(_request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        return httpx.Response(503, json={"error": {"code": "unavailable", "message": "verifier down"}})

    with pytest.raises(RewardServiceUnavailable, match="kept failing after 1 retries"):
        HttpRewards(_reward_config(), transport=httpx.MockTransport(unavailable)).score(_items(3))
    assert calls["n"] == 2  # the first attempt and one retry

    def rejected(_request: httpx.Request) -> httpx.Response:
        return httpx.Response(422, json={"error": {"code": "invalid_input", "message": "bad spec",
                                                   "field": "spec"}})

    with pytest.raises(RewardServiceError, match="rejected the request") as error:
        HttpRewards(_reward_config(), transport=httpx.MockTransport(rejected)).score(_items(3))
    assert not isinstance(error.value, RewardServiceUnavailable)


def test_trains_against_the_live_reward_api(live_server: LiveServer, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REWARDHUB_API_KEY", live_server.tenant.keys["trainer"])
    sent: list[list[str]] = []  # each step's completions, as sent to the live API
    real_score = HttpRewards.score

    def recording_score(self: HttpRewards, items: Any) -> Any:
        sent.append([item.completion for item in items])
        return real_score(self, items)

    monkeypatch.setattr(HttpRewards, "score", recording_score)
    config = make_config(tmp_path, "live", max_steps=2, reward={
        "spec": {"type": "regex", "pattern": "7"}, "url": live_server.url,
        "project_id": live_server.tenant.project_a, "batch_size": 3})
    outcome = GRPOTrainer(config).train()
    assert outcome.status == "succeeded" and outcome.steps == 2
    assert [len(step) for step in sent] == [8, 8]  # 2 prompts x group of 4, in chunks of 3 over HTTP
    # The regex "7" scores 1 where a completion contains a 7 (the default normalisation keeps digits).
    expected = [sum("7" in completion for completion in step) / len(step) for step in sent]
    assert [metrics["non_ok_share"] for metrics in outcome.history] == [0.0, 0.0]
    assert [metrics["reward_mean"] for metrics in outcome.history] == pytest.approx(expected, abs=1e-12)


def test_dataset_rows_are_checked_up_front(tmp_path: Path) -> None:
    from trainer.data import DatasetError, load_rows

    good = {"prompt": "What is 3 + 4?", "reward_model": {"ground_truth": "7"}, "data_source": "t"}
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps({"prompt": "x", "reward_model": {}}) + "\n")
    with pytest.raises(DatasetError, match=r"row 1: field 'reward_model.ground_truth' is required"):
        load_rows(path)
    path.write_text(json.dumps(good) + "\n{not json\n")
    with pytest.raises(DatasetError, match="line 2: invalid JSON"):
        load_rows(path)
    csv = tmp_path / "rows.csv"
    csv.write_text("prompt,answer\n")
    with pytest.raises(DatasetError, match=r"unsupported format '\.csv'"):
        load_rows(csv)
    config = make_config(tmp_path, "bad-data", dataset=str(path))
    with pytest.raises(DatasetError):
        GRPOTrainer(config, rewards=CallableRewards(digit7_reward))


def test_prompt_sampler_resumes_its_order() -> None:
    from trainer.data import PromptSampler

    straight = PromptSampler(5, seed=3)
    taken = [straight.take(3) for _ in range(4)]  # crosses two epoch boundaries
    assert sorted(taken[0] + taken[1][:2]) == [0, 1, 2, 3, 4]  # each epoch is a permutation
    interrupted = PromptSampler(5, seed=3)
    interrupted.take(3)
    interrupted.take(3)
    resumed = PromptSampler(5, seed=3)
    resumed.load_state_dict(interrupted.state_dict())
    assert [resumed.take(3), resumed.take(3)] == taken[2:]


def test_bf16_weights_with_gradient_checkpointing_train(tmp_path: Path) -> None:
    """The GPU settings also run on CPU: bfloat16 weights, activations recomputed in backward."""
    config = make_config(tmp_path, "bf16", max_steps=2, model={"tiny": {"seed": 0}, "dtype": "bfloat16",
                                                                "gradient_checkpointing": True})
    trainer = GRPOTrainer(config, rewards=CallableRewards(letter_share))
    model = trainer.model
    assert getattr(model, "is_activation_checkpointing", None) or model.is_gradient_checkpointing
    assert {p.dtype for p in trainer.model.parameters()} == {torch.bfloat16}
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    outcome = trainer.train()
    assert outcome.status == "succeeded"
    assert all(math.isfinite(m["loss"]) and math.isfinite(m["grad_norm"]) for m in outcome.history)
    after = trainer.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
