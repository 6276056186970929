"""Self-distillation runs against the real teacher service (issue 17): the embedded platform on a real
uvicorn, a tiny teacher model folder registered as an ``ema`` teacher, and GRPOTrainer calling it over HTTP.

AMR-SD: hints from ``/v1/reflect`` written by the registered model itself (random weights: they come
out empty and the leak filter rejects them, counted by reason), then with the raw reference as the
context, teacher log-probs from ``/v1/score`` and weights from ``/v1/modulate``; π-Play: top-k from ``/v1/score`` and the difficulty grades from
``/v1/examiner/rewards``. Both push θ into the teacher: replaced at the start, then one EMA step
(τ = 0.05) per training step under its own Idempotency-Key; the service's teacher then scores exactly
as ψ computed here from the policy's snapshots.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from services.common.settings import reset_settings_cache
from services.teacher.model_cache import CACHE
from tests.conftest import SQLITE_ONLY, LiveServer, bearer
from trainer.config import parse_config
from trainer.grpo import GRPOTrainer
from trainer.rewards import CallableRewards, RewardItem
from trainer.self_distillation import formulas
from trainer.self_distillation.scoring import ScoreInput, score_tokens

pytestmark = pytest.mark.slow

TINY = {"seed": 0, "hidden_size": 32}


def letter_share(completion: str, _truth: Any, _item: RewardItem) -> float:
    chars = [c for c in completion if not c.isspace()]
    return sum(c.isalpha() for c in chars) / len(chars) if chars else 0.0


@pytest.fixture
def teacher_server(live_server: LiveServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> LiveServer:
    """The live server with a teacher_models_dir holding the run's own tiny model (same seed and sizes)."""
    from trainer.tiny_models import build_tiny_causal_lm

    root = tmp_path / "teacher-models"
    build_tiny_causal_lm(root / "tiny", seed=TINY["seed"], hidden_size=TINY["hidden_size"])
    monkeypatch.setenv("REWARDHUB_TEACHER_MODELS_DIR", str(root))
    monkeypatch.setenv("REWARDHUB_API_KEY", live_server.tenant.keys["trainer"])
    reset_settings_cache()
    CACHE.clear()
    return live_server


def register(server: LiveServer, name: str) -> None:
    response = httpx.put(f"{server.url}/services/teacher/v1/teacher-models/{name}", json={"kind": "ema", "path": "tiny"},
                         headers=bearer(server.tenant.keys["trainer"]))
    assert response.status_code == 201, response.text


def model_info(server: LiveServer, name: str) -> dict[str, Any]:
    response = httpx.get(f"{server.url}/services/teacher/v1/teacher-models/{name}",
                         headers=bearer(server.tenant.keys["trainer"]))
    assert response.status_code == 200, response.text
    out: dict[str, Any] = response.json()
    return out


def run_config(tmp_path: Path, server: LiveServer, name: str, sd: dict[str, Any]) -> Any:
    data = tmp_path / f"{name}.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Name the digit ({i}).", "reward_model": {"ground_truth": "7"},
                                        "extra_info": {"qcp": f"Hop 1: six plus one is 7 ({i})", "hops": 1}}) + "\n"
                               for i in range(4)))
    sd["teacher"] = {"backend": "http", "url": f"{server.url}/services/teacher", "model": name, "tau": 0.05,
                     **sd.get("teacher", {})}
    return parse_config({"model": {"tiny": TINY}, "dataset": str(data), "group_size": 4, "prompts_per_step": 2,
                         "max_steps": 2, "learning_rate": 3e-3, "max_completion_length": 4, "seed": 0,
                         "output_dir": str(tmp_path / name), "export_hf": "none", "self_distillation": sd}, local=True)


def params(model: Any) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@SQLITE_ONLY
def test_amr_sd_and_pi_play_runs_against_the_teacher_service(teacher_server: LiveServer, tmp_path: Path) -> None:
    server = teacher_server
    register(server, "amr")
    amr = run_config(tmp_path, server, "amr", {"method": "amr_sd", "teacher": {"reflect_model": "amr"},
                                               "amr_sd": {"max_hint_tokens": 8, "reflections_per_group": 1}})
    trainer = GRPOTrainer(amr, rewards=CallableRewards(letter_share))
    outcome = trainer.train()
    assert outcome.status == "succeeded" and outcome.steps == 2
    for metrics in outcome.history:
        # One hint asked for per group with A ≠ 0: written (kept) or rejected by the service's leak filter.
        assert metrics["sd/hints"] + metrics["sd/hint_failures"] >= 1
        assert "sd/modulated_share" in metrics and "sd/leak_rejections" in metrics
        if metrics["sd/hints"] > 0:
            assert metrics["sd/scored_rollouts"] > 0 and metrics["sd/teacher_failures"] == 0.0
            assert metrics["sd/hint_chars_mean"] > 0
    info = model_info(server, "amr")
    assert info["version"] == 3 and info["last_tau"] == 0.05  # replaced once, then one EMA step per step

    # The random-weights writer's hints come out empty (rejected), so nothing above was modulated: the raw
    # reference as the context (no reflection) drives /v1/score and /v1/modulate.
    register(server, "ref")
    ref = run_config(tmp_path, server, "ref", {"method": "amr_sd", "amr_sd": {"context": "reference"}})
    history = GRPOTrainer(ref, rewards=CallableRewards(letter_share)).train().history
    assert all(m["sd/scored_rollouts"] > 0 and m["sd/teacher_failures"] == 0.0 for m in history)
    assert any(m["sd/modulated_share"] > 0.0 and m["sd/mean_abs_cig"] > 0.0 for m in history)

    register(server, "pi")
    pi = run_config(tmp_path, server, "pi", {"method": "pi_play", "pi_play": {"steps_per_round": 1, "top_k": 5}})
    trainer = GRPOTrainer(pi, rewards=CallableRewards(letter_share))
    theta = [params(trainer.model)]
    outcome = trainer.train(on_step=lambda _s, _m: theta.append(params(trainer.model)))
    assert [m["sd/lambda"] for m in outcome.history] == [1.0, 0.5]
    for metrics in outcome.history:
        assert metrics["sd/distill_kl"] > 0.0 and metrics["sd/teacher_failures"] == 0.0
        assert sum(v for k, v in metrics.items() if k.startswith("sd/difficulty/")) == pytest.approx(1.0)
    assert model_info(server, "pi")["version"] == 3

    # The service's teacher is ψ₂ = EMA(EMA(θ₀, θ₁), θ₂) with τ = 0.05, computed here from the snapshots.
    psi = {n: formulas.ema_update(formulas.ema_update(theta[0][n], theta[1][n], 0.05), theta[2][n], 0.05)
           for n in theta[0]}
    local = copy.deepcopy(trainer.model)
    with torch.no_grad():
        for name, value in local.named_parameters():
            value.copy_(psi[name])
    item = ScoreInput(context_ids=[5, 17, 9], continuation_ids=[40, 41, 42])
    expected = score_tokens(local, [item], int(trainer.tokenizer.pad_token_id), top_k=0)[0].logprobs
    scored = httpx.post(f"{server.url}/services/teacher/v1/score", headers=bearer(server.tenant.keys["trainer"]),
                        json={"model": "pi", "items": [{"id": "a", "context_ids": item.context_ids,
                                                        "continuation_ids": item.continuation_ids}]})
    assert scored.status_code == 200, scored.text
    assert scored.json()["results"][0]["logprobs"] == pytest.approx(expected, abs=1e-5)
