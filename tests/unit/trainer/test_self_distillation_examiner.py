"""π-Play's examiner steps (issue 17, item 2): the examiner trained by policy gradient on r_d.

What is checked: the advantage assembly by hand (r_d with r_format's penalty, hop-grouped normalisation);
the refusals naming ``examiner_steps_per_round``; a tiny-model run (max_steps 2, one examiner step per
round) whose examiner updates go through the trainer's own ``_update`` without the distillation term,
move the weights, hold the LR schedule and log ``sd/examiner/*``; and ``examiner_steps_per_round: 0``
giving the run with the setting absent, bit for bit.

The tiny random model cannot write JSON, so a ScriptedReader TEST DOUBLE turns each sampled examiner
completion into the reply that is parsed (well-formed and malformed in turn); the completion tokens the
update trains on are the policy's own samples. The round's student set is written by the ScriptedExaminer
test double of ``test_self_distillation_run`` (the task writer seam that existed before).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.unit.trainer.test_self_distillation_run import ScriptedExaminer, letter_share, settings
from trainer.config import ConfigError, parse_config
from trainer.grpo import GRPOTrainer
from trainer.rewards import CallableRewards
from trainer.self_distillation import formulas
from trainer.self_distillation.loop import SelfDistillation
from trainer.self_distillation.teacher import ExaminerSeed


def test_examiner_step_advantages_by_hand() -> None:
    # Six examiner completions; None: malformed (r_format = −1). Hop 1: k/n = 1/4, malformed, 3/4;
    # hop 2: 0/4, 2/4, malformed.
    rewards, advantages = formulas.examiner_step_advantages(
        [1, None, 3, 0, 2, None], [4, 0, 4, 4, 4, 0], [1, 1, 1, 2, 2, 2], format_penalty=1.0, eps=0.0)
    # r_d = 1(0<k<n)·(n−k)/(n−1) + r_format: 3/3, −1, 1/3 | 0 (unsolved), 2/3, −1
    assert rewards == pytest.approx([1.0, -1.0, 1 / 3, 0.0, 2 / 3, -1.0])
    # hop 1: mean 1/9, deviations 8/9, −10/9, 2/9, σ² = (64 + 100 + 4)/81 / 2 = 28/27
    # hop 2: mean −1/9, deviations 1/9, 7/9, −8/9, σ² = (1 + 49 + 64)/81 / 2 = 19/27
    s1, s2 = math.sqrt(28 / 27), math.sqrt(19 / 27)
    assert advantages == pytest.approx([8 / 9 / s1, -10 / 9 / s1, 2 / 9 / s1, 1 / 9 / s2, 7 / 9 / s2, -8 / 9 / s2])
    # A well-formed task with no scored answer counts as unsolved; a hop group of one gets 0; penalty 0.5.
    rewards, advantages = formulas.examiner_step_advantages([0, None, 1], [0, 0, 2], [1, 1, 3], 0.5, eps=0.0)
    assert rewards == [0.0, -0.5, 1.0]  # k = 1 of n = 2: 1(0<1<2) · (2 − 1)/(2 − 1) = 1
    # hop 1: mean −1/4, deviations ±1/4, σ = √(2/16) = √2/4, so A = ±1/√2; hop 3 alone: 0
    assert advantages == pytest.approx([1 / math.sqrt(2), -1 / math.sqrt(2), 0.0])
    with pytest.raises(ValueError, match="as long"):
        formulas.examiner_step_advantages([1], [4, 4], [1], 1.0)


class ScriptedReader:
    """TEST DOUBLE of the examiner's prose: every other sampled completion becomes a well-formed task
    (answer 7, a path of the seed's hop count, a question naming the sampled text's length); the others
    are returned as sampled (malformed: a tiny random model writes no JSON)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def __call__(self, seed: ExaminerSeed, text: str) -> str:
        self.calls.append((seed.id, text))
        if len(self.calls) % 2 == 0:
            return text
        path = [{"hop": h, "evidence": f"doc {h}", "step": f"step {h}"} for h in range(1, seed.hops + 1)]
        return json.dumps({"answer": "7", "path": path, "question": f"Which digit follows {len(text)} sixes?"})


def _config(tmp_path: Path, name: str, examiner_steps: int | None, steps_per_round: int = 1, **overrides: Any) -> Any:
    pi: dict[str, Any] = {"tasks": "examiner", "tasks_per_round": 3, "hops": [1, 2], "steps_per_round": steps_per_round,
                          "top_k": 4, "examiner_max_new_tokens": 8}
    if examiner_steps is not None:
        pi["examiner_steps_per_round"] = examiner_steps
    sd = {"method": "pi_play", "teacher": {"backend": "in_process"}, "pi_play": pi}
    return parse_config(settings(tmp_path, name, sd, **overrides), local=True)


def _trainer(config: Any) -> tuple[GRPOTrainer, ScriptedReader]:
    trainer = GRPOTrainer(config, rewards=CallableRewards(letter_share))
    trainer.self_distill = SelfDistillation.build(trainer, task_writer=ScriptedExaminer())
    reader = ScriptedReader()
    trainer.self_distill.examiner_reader = reader
    return trainer, reader


def test_the_config_refuses_examiner_steps_it_cannot_run(tmp_path: Path) -> None:
    sd = {"method": "pi_play", "teacher": {"backend": "in_process"}, "pi_play": {"examiner_steps_per_round": 1}}
    with pytest.raises(ConfigError, match=r"self_distillation\.pi_play: examiner_steps_per_round: 1 examiner "
                                          r"steps need tasks: examiner"):
        parse_config(settings(tmp_path, "bad", sd), local=True)
    for overrides in ({"kl_in_reward": True, "beta": 0.04}, {"scale_rewards": "reinforce_pp"}):
        # Refused when the config is parsed (a POST /v1/runs body gets its 422 at once), and by the
        # trainer for a config built past the parser.
        with pytest.raises(ConfigError, match=r"self_distillation\.pi_play\.examiner_steps_per_round: examiner "
                                              r"steps are not supported with"):
            _config(tmp_path, "bad2", 1, **overrides)
        config = _config(tmp_path, "bad3", 1).model_copy(update=overrides)
        with pytest.raises(ConfigError, match=r"self_distillation\.pi_play\.examiner_steps_per_round: examiner "
                                              r"steps are not supported with"):
            GRPOTrainer(config, rewards=CallableRewards(letter_share))
    http = {"method": "pi_play", "teacher": {"model": "student-ema"},
            "pi_play": {"tasks": "examiner", "examiner_steps_per_round": 1}}
    with pytest.raises(ConfigError, match=r"pi_play\.examiner_steps_per_round: the examiner steps train the policy "
                                          r"as the examiner, but the http teacher without teacher\.reflect_model"):
        parse_config(settings(tmp_path, "http", http), local=True)
    http["teacher"] = {"model": "student-ema", "reflect_model": "student-ema"}
    assert parse_config(settings(tmp_path, "http", http), local=True).self_distillation is not None
    assert _config(tmp_path, "ok", None).self_distillation.pi.examiner_steps_per_round == 0  # the default


def test_a_run_resumed_mid_round_does_not_repeat_the_rounds_examiner_steps(tmp_path: Path) -> None:
    trainer, reader = _trainer(_config(tmp_path, "resume", 1, steps_per_round=2, max_steps=4))
    assert trainer.self_distill is not None
    trainer.step = 1  # as after resuming from the checkpoint of step 1: round 0's examiner steps are behind it
    metrics = trainer.self_distill.begin_step(trainer)
    assert reader.calls == [] and metrics["sd/examiner_tasks"] == 2.0
    assert not any(k.startswith("sd/examiner/") for k in metrics)
    trainer.step = 2  # round 1's first step: its examiner step runs
    assert trainer.self_distill.begin_step(trainer)["sd/examiner/steps"] == 1.0 and len(reader.calls) == 8


def test_examiner_steps_train_the_examiner_through_the_trainers_update(tmp_path: Path) -> None:
    trainer, reader = _trainer(_config(tmp_path, "exam", 1))
    calls: list[dict[str, Any]] = []
    update = trainer._update

    def recording(batch: Any, advantages: torch.Tensor, seed: int) -> dict[str, float]:
        before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
        assert trainer.self_distill is not None
        kl_term = trainer.self_distill.kl_term
        out = update(batch, advantages, seed)
        moved = any(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters())
        calls.append({"advantages": advantages.clone(), "kl_term": kl_term, "moved": moved, "loss": out["loss"],
                      "rows": batch.completion_ids.shape[0]})
        return out

    trainer._update = recording  # type: ignore[method-assign]
    outcome = trainer.train()
    # Per step: the round's examiner update, then the student update (2 rounds of 1 step each).
    assert len(calls) == 4
    examiner, student = calls[0::2], calls[1::2]
    for call in examiner:
        assert call["rows"] == 8 and not call["kl_term"] and call["moved"]  # 2 seeds × G = 4, no distillation term
        assert bool((call["advantages"] != 0).any())
    assert all(call["kl_term"] for call in student)
    assert len(reader.calls) == 16 and reader.calls[0][0] == "e0-0-0" and reader.calls[8][0] == "e1-0-0"
    # Each hop group: two well-formed tasks (r_d ≥ 0) and two malformed (r_d = −1).
    first = calls[0]["advantages"].tolist()
    assert [a > 0 for a in first] == [True, False, True, False, True, False, True, False]
    for step, metrics in enumerate(outcome.history):
        assert metrics["sd/examiner/valid_share"] == 0.5 and metrics["sd/examiner/steps"] == 1.0
        assert -1.0 <= metrics["sd/examiner/reward_mean"] < 0.5
        assert metrics["sd/examiner/loss"] == pytest.approx(examiner[step]["loss"])
        assert metrics["sd/examiner_tasks"] == 2.0 and metrics["sd/distill_kl"] > 0.0
    # The LR schedule counts student steps only: the same lr as the run without examiner steps.
    plain, _ = _trainer(_config(tmp_path, "plain", 0, lr_schedule="linear"))
    held, _ = _trainer(_config(tmp_path, "held", 1, lr_schedule="linear"))
    assert [m["lr"] for m in held.train().history] == [m["lr"] for m in plain.train().history]


def test_zero_examiner_steps_is_the_run_without_the_setting_bit_for_bit(tmp_path: Path) -> None:
    finals = []
    for name, steps in (("absent", None), ("zero", 0)):
        trainer, reader = _trainer(_config(tmp_path, name, steps))
        history = trainer.train().history
        assert reader.calls == [] and not any(k.startswith("sd/examiner/") for m in history for k in m)
        finals.append({n: p.detach().clone() for n, p in trainer.model.named_parameters()})
    assert finals[0].keys() == finals[1].keys()
    assert all(torch.equal(finals[0][n], finals[1][n]) for n in finals[0])
