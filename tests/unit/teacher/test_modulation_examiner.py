"""/v1/modulate and the examiner's logic without HTTP; numbers computed by hand in the comments."""

from __future__ import annotations

import asyncio
import json

import pytest

from services.teacher.examiner import generate_tasks, rewards
from services.teacher.modulation import modulate
from services.teacher.schemas import ExaminerRewardsRequest, ExaminerTasksRequest, ModulateRequest
from tests.unit.teacher.fakes import ScriptedFakeBackend


def test_modulate_two_rollouts_at_the_annealed_alpha() -> None:
    request = ModulateRequest.model_validate({
        "params": {"alpha0": 4.0, "tau_plus": 0.2, "tau_minus": 0.1, "schedule": "linear", "step": 5,
                   "total_steps": 10},
        "items": [
            # CIG = [0.5, −0.5]; α = 4·(1 − 5/10) = 2; A = 1: w = [1 + 2·0.3, 1] = [1.6, 1]
            {"id": "good", "advantage": 1.0, "teacher_logprobs": [-0.5, -2.0], "student_logprobs": [-1.0, -1.5]},
            # CIG = [0.5, −0.5]; A = −0.5: w = [1, 1 + 2·(0.5 − 0.1)] = [1, 1.8]; Â = [−0.5, −0.9]
            {"id": "bad", "advantage": -0.5, "teacher_logprobs": [-0.5, -2.0], "student_logprobs": [-1.0, -1.5]},
            {"id": "short", "advantage": 1.0, "teacher_logprobs": [-0.5], "student_logprobs": [-1.0, -1.5]},
            {"id": "positive", "advantage": 1.0, "teacher_logprobs": [0.5], "student_logprobs": [-1.0]},
            {"id": "nan", "advantage": float("nan"), "teacher_logprobs": [-1.0], "student_logprobs": [-1.0]},
        ]})
    out = modulate(request, max_tokens=100)
    assert out.alpha == pytest.approx(2.0)
    good, bad, short, positive, nan = out.results
    assert good.advantages == pytest.approx([1.6, 1.0]) and good.cig == pytest.approx([0.5, -0.5])
    assert bad.weights == pytest.approx([1.0, 1.8]) and bad.advantages == pytest.approx([-0.5, -0.9])
    assert good.modulated_share == 0.5 and good.mean_abs_cig == pytest.approx(0.5)
    assert [r.status for r in (short, positive, nan)] == ["invalid_input"] * 3
    assert "same tokens" in (short.error or "") and "log-probability" in (positive.error or "")
    # over the ok items' 4 tokens, 2 are gated: 0.5
    assert out.modulated_share == pytest.approx(0.5)


def test_examiner_rewards_and_hop_groups() -> None:
    request = ExaminerRewardsRequest.model_validate({"eps": 1e-9, "items": [
        {"id": "a", "hops": 2, "passed": 1, "samples": 4},  # r = 3/3 = 1
        {"id": "b", "hops": 2, "passed": 3, "samples": 4},  # r = 1/3
        {"id": "c", "hops": 3, "passed": 4, "samples": 4, "format_reward": 0.1},  # r = 0 + 0.1
        {"id": "d", "hops": 3, "passed": 0, "samples": 4},  # r = 0
        {"id": "e", "hops": 3, "passed": 9, "samples": 4},  # invalid
    ]})
    out = rewards(request)
    a, b, c, d, e = out.results
    assert [a.reward, b.reward, c.reward, d.reward] == pytest.approx([1.0, 1 / 3, 0.1, 0.0])
    # hop 2: [1, 1/3]: mean 2/3, deviations ±1/3, σ = sqrt(2/9) = 0.4714045 → ±0.7071068; hop 3 likewise ±0.7071068
    assert [a.advantage, b.advantage, c.advantage, d.advantage] == pytest.approx([0.7071068, -0.7071068,
                                                                                  0.7071068, -0.7071068], abs=1e-6)
    assert e.status == "invalid_input" and e.advantage is None and "passed" in (e.error or "")
    assert out.difficulty_histogram == {"pass_rate_0-25": 1, "pass_rate_50-75": 1, "solved_by_all": 1,
                                        "solved_by_none": 1}


GOOD_TASK = {"answer": "Oslo", "question": "Which capital lies at the end of the fjord named in the report?",
             "path": [{"hop": 1, "evidence": "doc 1", "step": "the report names the fjord"},
                      {"hop": 2, "evidence": "doc 2", "step": "the fjord ends at Oslo"}]}


def test_examiner_tasks_well_formed_and_malformed() -> None:
    replies = ["Here you go:\n```json\n" + json.dumps(GOOD_TASK) + "\n```",
               json.dumps({**GOOD_TASK, "question": "Is the answer Oslo?"}),
               json.dumps({**GOOD_TASK, "path": GOOD_TASK["path"][:1]}),
               "I cannot do that."]
    backend = ScriptedFakeBackend(replies)
    request = ExaminerTasksRequest.model_validate({"items": [
        {"id": str(i), "hops": 2, "evidence": ["doc 1", "doc 2"]} for i in range(4)]})
    out = asyncio.run(generate_tasks(backend, request))
    good, leaky, short, prose = out.results
    assert good.format_ok and good.task is not None and good.task.hops == 2
    assert "Hop 2: the fjord ends at Oslo" in good.task.privileged_context
    assert not leaky.format_ok and "gives the answer away" in (leaky.format_problem or "")
    assert not short.format_ok and "1 steps; 2 were asked" in (short.format_problem or "")
    assert not prose.format_ok and prose.task is None and prose.text == "I cannot do that."
    assert out.format_ok_rate == 0.25
    assert "[2] doc 2" in backend.calls[0][1]["content"]
