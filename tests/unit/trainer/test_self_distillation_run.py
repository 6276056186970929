"""Self-distillation wired into real training runs (issue 17): AMR-SD and π-Play in GRPOTrainer on the
tiny model (CPU) against the in-process teacher.

What is checked: the config refuses combinations that cannot work, naming the field; an AMR-SD run
forms token advantages Â = A·w whose sign is the outcome's on every token, counts leak-filter
rejections (a ScriptedHints TEST DOUBLE writes the hints: no model could be made to leak on cue) and
logs hint length, modulated share and mean |CIG|; a π-Play run adds the distillation term (it trains
even when every advantage is 0), decays λ across rounds, updates its EMA teacher after every step
exactly as ψ ← (1−τ)ψ + τθ, and logs the KL and the difficulty distribution.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from trainer.config import ConfigError, parse_config
from trainer.data import DatasetError
from trainer.grpo import GRPOTrainer
from trainer.rewards import CallableRewards, RewardItem
from trainer.self_distillation import formulas
from trainer.self_distillation.config import TeacherConfig
from trainer.self_distillation.loop import SelfDistillation
from trainer.self_distillation.scoring import ScoreInput
from trainer.self_distillation.teacher import HttpTeacher, InProcessTeacher, TeacherError


def letter_share(completion: str, _truth: Any, _item: RewardItem) -> float:
    """A dense reward: almost every group has a spread, so A ≠ 0."""
    chars = [c for c in completion if not c.isspace()]
    return sum(c.isalpha() for c in chars) / len(chars) if chars else 0.0


def zero(_completion: str, _truth: Any, _item: RewardItem) -> float:
    return 0.0


class ScriptedHints:
    """TEST DOUBLE of the hint writer: replays hints in a cycle, records the prompts it was given."""

    def __init__(self, hints: list[str]) -> None:
        self.hints = hints
        self.prompts: list[str] = []

    def __call__(self, prompt: str) -> str:
        self.prompts.append(prompt)
        return self.hints[(len(self.prompts) - 1) % len(self.hints)]


def settings(tmp_path: Path, name: str, sd: dict[str, Any] | None, **overrides: Any) -> dict[str, Any]:
    data = tmp_path / f"{name}.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Name the digit ({i}).", "reward_model": {"ground_truth": "7"},
                                        "extra_info": {"qcp": f"Hop 1: the digit after six is 7 ({i})",
                                                       "hops": 1 + i % 2}}) + "\n" for i in range(8)))
    out: dict[str, Any] = {"model": {"tiny": {"seed": 0, "hidden_size": 32}}, "dataset": str(data), "group_size": 4,
                           "prompts_per_step": 2, "max_steps": 2, "learning_rate": 3e-3, "max_completion_length": 5,
                           "seed": 0, "output_dir": str(tmp_path / name), "export_hf": "none"}
    if sd is not None:
        out["self_distillation"] = sd
    out.update(overrides)
    return out


IN_PROCESS = {"backend": "in_process"}


def test_the_config_refuses_what_cannot_run_naming_the_field(tmp_path: Path) -> None:
    def refused(sd: dict[str, Any], match: str, **overrides: Any) -> None:
        with pytest.raises(ConfigError, match=match):
            parse_config(settings(tmp_path, "c", sd, **overrides), local=True)

    refused({"method": "amr_sd"}, r"self_distillation: teacher\.model: the http teacher needs")
    refused({"method": "amr_sd", "teacher": IN_PROCESS, "pi_play": {}}, r"self_distillation: pi_play: given with "
                                                                        r"method amr_sd")
    refused({"method": "pi_play", "teacher": IN_PROCESS, "amr_sd": {}}, r"self_distillation: amr_sd: given with "
                                                                        r"method pi_play")
    refused({"method": "sft", "teacher": IN_PROCESS}, r"self_distillation\.method")
    refused({"method": "amr_sd", "teacher": IN_PROCESS}, "self_distillation: amr_sd is not supported with kl_in_reward",
            kl_in_reward=True, beta=0.1)
    refused({"method": "amr_sd", "teacher": IN_PROCESS}, "self_distillation: amr_sd is not supported with "
            "scale_rewards: reinforce_pp", scale_rewards="reinforce_pp")
    refused({"method": "pi_play", "teacher": IN_PROCESS}, "self_distillation: not supported with mtp",
            mtp={"regime": "detach"})
    refused({"method": "pi_play", "teacher": IN_PROCESS}, "self_distillation: not supported with multi_turn",
            multi_turn={"execution": "none"})
    refused({"method": "amr_sd", "teacher": {"backend": "in_process", "reflect_model": "m"}},
            r"teacher\.reflect_model: names a service model")
    refused({"method": "amr_sd", "teacher": IN_PROCESS, "amr_sd": {"alpha0": -1}}, r"amr_sd\.alpha0")
    refused({"method": "pi_play", "teacher": {"backend": "in_process", "tau": 0}}, r"teacher\.tau")
    # A config that came over the trainer service's API has the section without a key variable
    # (tests/unit/trainer/test_api_self_distillation.py has the rest).
    assert parse_config(settings(tmp_path, "c", {"method": "amr_sd", "teacher": IN_PROCESS})).self_distillation
    with pytest.raises(ConfigError, match=r"self_distillation\.teacher\.api_key_env: Extra inputs"):
        parse_config(settings(tmp_path, "c", {"method": "amr_sd", "teacher": {"model": "m", "api_key_env": "K"}}))
    ok = parse_config(settings(tmp_path, "c", {"method": "pi_play", "teacher": IN_PROCESS}), local=True)
    sd = getattr(ok, "self_distillation", None)
    assert sd is not None and sd.teacher.tau == 0.05 and sd.pi.lambda_schedule == "linear"


def test_amr_sd_run_modulates_tokens_without_flipping_the_outcome_sign(tmp_path: Path) -> None:
    sd = {"method": "amr_sd", "teacher": IN_PROCESS,
          "amr_sd": {"reflections_per_group": 2, "alpha0": 1.0, "tau_plus": 0.0, "tau_minus": 0.0}}
    trainer = GRPOTrainer(parse_config(settings(tmp_path, "amr", sd), local=True),
                          rewards=CallableRewards(letter_share))
    # The first hint of every pair leaks the answer (7) and is rejected; the second passes.
    writer = ScriptedHints(["It is 7, obviously.", "Count the steps again."])
    trainer.self_distill = SelfDistillation.build(trainer, hint_writer=writer)
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    update = trainer._update

    def recording(batch: Any, advantages: torch.Tensor, seed: int) -> dict[str, float]:
        seen.append((advantages.clone(), trainer._step_rewards.clone()))
        return update(batch, advantages, seed)

    trainer._update = recording  # type: ignore[method-assign]
    outcome = trainer.train()
    assert outcome.status == "succeeded" and len(outcome.history) == 2
    first, second = outcome.history
    assert [first["sd/alpha"], second["sd/alpha"]] == [1.0, 0.5]  # linear over max_steps = 2
    for metrics in outcome.history:
        hints = metrics["sd/hints"]
        assert hints >= 1 and metrics["sd/leak_rejections"] == hints  # one leak per written hint
        assert metrics["sd/leak_rejections/numeric_answer"] == hints
        assert metrics["sd/hint_chars_mean"] == len("Count the steps again.")
        assert 0.0 < metrics["sd/modulated_share"] <= 1.0 and metrics["sd/mean_abs_cig"] > 0.0
    # No rollout reaches reward 1 (no successful peer), so `auto` writes from the reference (the ground truth).
    assert "Reference solution:\n7" in writer.prompts[0]
    assert len(seen) == 2
    # A_i from the step's GRPO advantages: every token keeps A_i's sign, and |Â| ≥ |A| (w ≥ 1).
    for token_advantages, rewards in seen:
        assert token_advantages.dim() == 2
        outcome_adv = trainer._advantages(rewards)[0]
        signs = torch.sign(outcome_adv).unsqueeze(1).expand_as(token_advantages)
        real = token_advantages != 0
        assert bool((torch.sign(token_advantages)[real] == signs[real]).all())
        assert bool((token_advantages.abs() >= outcome_adv.abs().unsqueeze(1) - 1e-6).all())
        assert bool((token_advantages.abs() > outcome_adv.abs().unsqueeze(1) + 1e-6).any())  # some w > 1


def test_amr_sd_raw_reference_context_skips_reflection(tmp_path: Path) -> None:
    sd = {"method": "amr_sd", "teacher": {"backend": "in_process", "weights": "policy"},
          "amr_sd": {"context": "reference", "tau_plus": 0.01, "tau_minus": 0.01}}
    trainer = GRPOTrainer(parse_config(settings(tmp_path, "ref", sd, max_steps=1), local=True),
                          rewards=CallableRewards(letter_share))
    assert trainer.self_distill is not None
    teacher = trainer.self_distill.teacher
    assert isinstance(teacher, InProcessTeacher) and teacher.model is trainer.model  # weights: policy
    metrics = trainer.train().history[0]
    assert "sd/hints" not in metrics and metrics["sd/scored_rollouts"] > 0
    assert 0.0 < metrics["sd/modulated_share"] < 1.0


def test_pi_play_run_distils_decays_lambda_and_updates_the_ema_teacher_every_step(tmp_path: Path) -> None:
    sd = {"method": "pi_play", "teacher": {"backend": "in_process", "tau": 0.05},
          "pi_play": {"steps_per_round": 1, "lambda0": 1.0, "lambda_schedule": "linear", "top_k": 8}}
    # Every reward is 0: GRPO alone would skip both updates; the distillation term still trains.
    trainer = GRPOTrainer(parse_config(settings(tmp_path, "pi", sd), local=True), rewards=CallableRewards(zero))
    assert trainer.self_distill is not None
    teacher = trainer.self_distill.teacher
    assert isinstance(teacher, InProcessTeacher)
    theta = [{n: p.detach().clone() for n, p in trainer.model.named_parameters()}]
    psi: list[dict[str, torch.Tensor]] = []

    def snapshot(_step: int, _metrics: dict[str, Any]) -> None:
        theta.append({n: p.detach().clone() for n, p in trainer.model.named_parameters()})
        psi.append({n: p.detach().clone() for n, p in teacher.model.named_parameters()})

    outcome = trainer.train(on_step=snapshot)
    assert [m["sd/lambda"] for m in outcome.history] == [1.0, 0.5]  # R = 2 rounds: λ₀·(1 − r/2)
    assert [m["sd/round"] for m in outcome.history] == [0.0, 1.0]
    for metrics in outcome.history:
        assert "skipped_update" not in metrics and metrics["grad_norm"] > 0.0
        assert metrics["sd/distill_kl"] > 0.0 and metrics["sd/teacher_failures"] == 0.0
        assert metrics["sd/difficulty/solved_by_none"] == 1.0 and metrics["sd/examiner_reward_mean"] == 0.0
    # ψ₁ = 0.95·θ₀ + 0.05·θ₁ and ψ₂ = 0.95·ψ₁ + 0.05·θ₂, bit for bit (the same float64 step).
    for name, value in psi[0].items():
        assert torch.equal(value, formulas.ema_update(theta[0][name], theta[1][name], 0.05)), name
        assert torch.equal(psi[1][name], formulas.ema_update(value, theta[2][name], 0.05)), name
    assert any(not torch.equal(theta[0][n], theta[2][n]) for n in theta[0])  # the policy moved


def test_pi_play_bare_answer_arm_and_a_missing_qcp(tmp_path: Path) -> None:
    sd = {"method": "pi_play", "teacher": IN_PROCESS, "pi_play": {"privileged": "answer", "top_k": 4}}
    trainer = GRPOTrainer(parse_config(settings(tmp_path, "ans", sd, max_steps=1), local=True),
                          rewards=CallableRewards(letter_share))
    metrics = trainer.train().history[0]
    assert metrics["sd/distill_kl"] > 0.0 and metrics["sd/lambda"] == 1.0
    assert sum(v for k, v in metrics.items() if k.startswith("sd/difficulty/")) == pytest.approx(1.0)

    data = tmp_path / "bare.jsonl"
    data.write_text(json.dumps({"prompt": "x", "reward_model": {"ground_truth": "7"}}) + "\n")
    config = parse_config({**settings(tmp_path, "noqcp", {"method": "pi_play", "teacher": IN_PROCESS}),
                           "dataset": str(data), "prompts_per_step": 1}, local=True)
    with pytest.raises(DatasetError, match=r"row 0: extra_info\.qcp is missing"):
        GRPOTrainer(config, rewards=CallableRewards(zero))


class RefusingTransport(httpx.BaseTransport):
    """TEST DOUBLE of the teacher service's transport: answers every request with one fixed status."""

    def __init__(self, status: int) -> None:
        self.status = status
        self.requests: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return httpx.Response(self.status, json={"error": {"message": "model: no teacher model 'm'", "field": "model"}})


def test_the_http_teacher_fails_loudly_never_with_silent_zeros() -> None:
    settings = TeacherConfig(backend="http", model="m", max_retries=1)
    refused = RefusingTransport(404)
    teacher = HttpTeacher(settings, base_url="http://teacher.invalid", api_key="k", transport=refused)
    with pytest.raises(TeacherError, match=r"POST /v1/score: HTTP 404: .*no teacher model"):
        teacher.score([ScoreInput([1], [2])], top_k=0, temperature=1.0)
    assert len(refused.requests) == 1  # a 4xx is not retried
    assert refused.requests[0].headers["Authorization"] == "Bearer k"
    unavailable = RefusingTransport(503)
    teacher = HttpTeacher(TeacherConfig(backend="http", model="m", max_retries=0), base_url="http://teacher.invalid",
                          api_key="", transport=unavailable)
    with pytest.raises(TeacherError, match=r"unreachable at http://teacher.invalid/v1/teacher-models/m/weights after "
                                           r"1 attempts: HTTP 503"):
        teacher.sync(torch.nn.Linear(2, 1), 0, initial=True)
    push = unavailable.requests[0]
    assert push.method == "PUT" and push.headers["Idempotency-Key"] == "sd-run-init" and "tau" not in str(push.url)
    assert "Authorization" not in push.headers


class ScriptedExaminer:
    """TEST DOUBLE of the examiner's writer: a well-formed task per seed (answer = hops + 3), except that
    every third reply is malformed (a path one hop short), as a weak examiner's would be."""

    def __init__(self) -> None:
        self.seeds: list[Any] = []

    def __call__(self, seed: Any) -> str:
        self.seeds.append(seed)
        hops = seed.hops if len(self.seeds) % 3 else seed.hops - 1
        path = [{"hop": h, "evidence": f"doc {h}", "step": f"step {h} of {seed.id}"} for h in range(1, hops + 1)]
        return "Here it is: " + json.dumps({"answer": str(seed.hops + 3), "path": path,
                                            "question": f"Which number ends {seed.id}?"})


def test_pi_play_examiner_rounds_build_each_rounds_student_set(tmp_path: Path) -> None:
    sd = {"method": "pi_play", "teacher": IN_PROCESS,
          "pi_play": {"tasks": "examiner", "tasks_per_round": 3, "hops": [1, 2], "steps_per_round": 1, "top_k": 4}}
    trainer = GRPOTrainer(parse_config(settings(tmp_path, "exam", sd), local=True),
                          rewards=CallableRewards(letter_share))
    examiner = ScriptedExaminer()
    trainer.self_distill = SelfDistillation.build(trainer, task_writer=examiner)
    outcome = trainer.train()
    assert [s.id for s in examiner.seeds] == ["r0-0", "r0-1", "r0-2", "r1-0", "r1-1", "r1-2"]
    assert [s.hops for s in examiner.seeds] == [1, 2, 1, 1, 2, 1]
    assert examiner.seeds[0].topic == "Name the digit (0)." and examiner.seeds[3].topic == "Name the digit (3)."
    for metrics in outcome.history:  # the third reply of each round is malformed
        assert metrics["sd/examiner_tasks"] == 2.0 and metrics["sd/examiner_format_ok_rate"] == pytest.approx(2 / 3)
        assert metrics["sd/distill_kl"] > 0.0
    rows = trainer.rows  # the last round's student set
    assert [r.prompt for r in rows] == ["Which number ends r1-0?", "Which number ends r1-1?"]
    assert [r.ground_truth for r in rows] == ["4", "5"]
    assert rows[1].extra_info["hops"] == 2
    assert rows[1].extra_info["qcp"] == ("Question construction path:\nHop 1: step 1 of r1-1 (evidence: doc 1)\n"
                                         "Hop 2: step 2 of r1-1 (evidence: doc 2)\nIt leads to the answer: 5")


def test_examiner_replies_are_parsed_with_the_services_format_checks() -> None:
    from trainer.self_distillation.teacher import parse_examiner_task

    good = json.dumps({"answer": "Oslo", "question": "Which city ends the fjord?",
                       "path": [{"hop": 1, "evidence": "doc", "step": "the fjord ends at Oslo"}]})
    task, problem = parse_examiner_task(f"Sure. {good} Done.", 1)
    assert problem is None and task is not None and task.answer == "Oslo" and task.hops == 1
    assert task.qcp.endswith("It leads to the answer: Oslo")
    assert parse_examiner_task(good, 2) == (None, "path has 1 steps; 2 were asked for")
    assert parse_examiner_task("no json here", 1) == (None, "no JSON object in the reply")
    leak = good.replace("Which city ends the fjord?", "Is Oslo where the fjord ends?")
    assert parse_examiner_task(leak, 1) == (None, "the question gives the answer away")
    assert parse_examiner_task(good.replace("?\"", "\""), 1) == (None, "the question must end with '?'")
