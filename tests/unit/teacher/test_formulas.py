"""The teacher's formulas against values computed by hand (the arithmetic is in the comments)."""

from __future__ import annotations

import math

import pytest
import torch

from services.teacher import formulas


def test_cig_is_teacher_minus_student_per_token() -> None:
    # [-0.5 - (-1.0), -2.0 - (-1.5), -1.0 - (-1.0)] = [0.5, -0.5, 0.0]
    assert formulas.causal_information_gain([-0.5, -2.0, -1.0], [-1.0, -1.5, -1.0]) == pytest.approx([0.5, -0.5, 0.0])
    with pytest.raises(ValueError, match="student_logprobs"):
        formulas.causal_information_gain([-1.0], [])


def test_positive_advantage_gate_opens_above_tau_plus() -> None:
    # A > 0, α = 2, τ₊ = 0.2: w = 1 + 2·ReLU(CIG − 0.2)
    #   CIG 0.5 → 1 + 2·0.3 = 1.6;  CIG −0.5 → 1 + 2·0 = 1;  CIG 0 → 1 + 2·ReLU(−0.2) = 1
    cig = [0.5, -0.5, 0.0]
    assert formulas.gate_weights(cig, 1.0, 2.0, 0.2, 0.1) == pytest.approx([1.6, 1.0, 1.0])
    # max_weight 1.5 caps the 1.6
    assert formulas.gate_weights(cig, 1.0, 2.0, 0.2, 0.1, max_weight=1.5) == pytest.approx([1.5, 1.0, 1.0])


def test_negative_advantage_gate_opens_below_minus_tau_minus() -> None:
    # A < 0, α = 2, τ₋ = 0.1: w = 1 + 2·ReLU(−CIG − 0.1)
    #   CIG 0.5 → ReLU(−0.6) = 0 → 1;  CIG −0.5 → ReLU(0.4) → 1 + 0.8 = 1.8;  CIG 0 → ReLU(−0.1) = 0 → 1
    weights = formulas.gate_weights([0.5, -0.5, 0.0], -2.0, 2.0, 0.2, 0.1)
    assert weights == pytest.approx([1.0, 1.8, 1.0])
    # Â = A · w = −2 · [1, 1.8, 1] = [−2, −3.6, −2]: the sign of A everywhere
    assert formulas.modulated_advantages(-2.0, weights) == pytest.approx([-2.0, -3.6, -2.0])


def test_zero_advantage_keeps_weight_one_and_negative_alpha_is_refused() -> None:
    assert formulas.gate_weights([3.0, -3.0], 0.0, 5.0, 0.0, 0.0) == [1.0, 1.0]
    with pytest.raises(ValueError, match="alpha"):
        formulas.gate_weight(1.0, 1.0, -0.1, 0.0, 0.0)
    with pytest.raises(ValueError, match="flip"):
        formulas.modulated_advantages(1.0, [1.0, -0.5])


@pytest.mark.parametrize(("schedule", "step", "expected"), [
    ("constant", 7, 0.8),
    ("linear", 0, 0.8),
    ("linear", 5, 0.4),  # 0.8 · (1 − 5/10)
    ("linear", 10, 0.0),
    ("linear", 15, 0.0),  # stays 0 past the end
    ("cosine", 0, 0.8),  # 0.8 · ½ · (1 + cos 0) = 0.8
    ("cosine", 2, 0.7236068),  # 0.8 · ½ · (1 + cos 0.2π) = 0.4 · 1.8090170 = 0.7236068
    ("cosine", 5, 0.4),  # 0.8 · ½ · (1 + cos π/2) = 0.4
    ("cosine", 10, 0.0),  # 0.8 · ½ · (1 + cos π) = 0
])
def test_annealed_alpha(schedule: formulas.Schedule, step: int, expected: float) -> None:
    assert formulas.annealed_alpha(0.8, step, 10, schedule) == pytest.approx(expected, abs=1e-7)


def test_annealed_alpha_refuses_bad_settings() -> None:
    with pytest.raises(ValueError, match="total_steps"):
        formulas.annealed_alpha(1.0, 0, 0, "linear")
    with pytest.raises(ValueError, match="step"):
        formulas.annealed_alpha(1.0, -1, 10, "linear")


def test_share_and_mean_abs() -> None:
    assert formulas.modulated_share([1.6, 1.0, 1.0]) == pytest.approx(1 / 3)  # one of three gated
    assert formulas.mean_abs([0.5, -0.5, 0.0]) == pytest.approx(1 / 3)  # (0.5 + 0.5 + 0) / 3
    assert formulas.modulated_share([]) == 0.0


@pytest.mark.parametrize(("passed", "samples", "format_reward", "expected"), [
    (1, 4, 0.0, 1.0),  # 1(0<1<4) · (4−1)/(4−1) = 1
    (2, 4, 0.0, 2 / 3),  # (4−2)/3
    (3, 4, 0.0, 1 / 3),  # (4−3)/3
    (0, 4, 0.0, 0.0),  # nobody solved it: indicator 0
    (4, 4, 0.0, 0.0),  # everybody solved it: indicator 0
    (2, 4, 0.5, 2 / 3 + 0.5),  # plus r_format = 1.1666…
    (1, 1, 0.25, 0.25),  # n = 1: indicator always 0, only r_format
])
def test_difficulty_reward(passed: int, samples: int, format_reward: float, expected: float) -> None:
    assert formulas.difficulty_reward(passed, samples, format_reward) == pytest.approx(expected)


def test_difficulty_reward_refuses_impossible_counts() -> None:
    with pytest.raises(ValueError, match="passed"):
        formulas.difficulty_reward(5, 4)
    with pytest.raises(ValueError, match="samples"):
        formulas.difficulty_reward(0, 0)


def test_hop_grouped_normalisation() -> None:
    # hop 1: [1, 0, 0]: mean 1/3, deviations [2/3, −1/3, −1/3], Σd² = 4/9 + 1/9 + 1/9 = 2/3,
    #        σ = sqrt((2/3)/2) = 0.5773503 → [0.6667/0.5774, −0.3333/0.5774, …] = [1.1547005, −0.5773503, −0.5773503]
    # hop 2: [0.5, 0.2]: mean 0.35, deviations ±0.15, σ = sqrt(0.045/1) = 0.2121320 → ±0.7071068
    # hop 3: one task, no spread → 0
    out = formulas.hop_grouped_normalise([1, 0, 0.5, 0, 0.2, 0.8], [1, 1, 2, 1, 2, 3], eps=0.0)
    assert out == pytest.approx([1.1547005, -0.5773503, 0.7071068, -0.5773503, -0.7071068, 0.0], abs=1e-6)


def test_hop_group_with_equal_rewards_is_zero() -> None:
    # σ = 0: (r − mean) = 0 for every member, so 0 / (0 + ε) = 0
    assert formulas.hop_grouped_normalise([0.5, 0.5], [2, 2]) == [0.0, 0.0]


def test_ema_update() -> None:
    # ψ ← 0.95·ψ + 0.05·θ: [0.95·1 + 0.05·3, 0.95·2 + 0.05·0] = [1.1, 1.9]
    out = formulas.ema_update(torch.tensor([1.0, 2.0]), torch.tensor([3.0, 0.0]), 0.05)
    assert out.tolist() == pytest.approx([1.1, 1.9])
    assert out.dtype == torch.float32
    # τ = 1 is the student itself, τ = 0 the teacher unchanged
    assert formulas.ema_update(torch.tensor([1.0]), torch.tensor([3.0]), 1.0).tolist() == [3.0]
    assert formulas.ema_update(torch.tensor([1.0]), torch.tensor([3.0]), 0.0).tolist() == [1.0]
    with pytest.raises(ValueError, match="tau"):
        formulas.ema_update(torch.tensor([1.0]), torch.tensor([3.0]), 1.5)


def test_ema_update_state_keeps_tensors_not_sent() -> None:
    psi = {"a": torch.tensor([0.0]), "b": torch.tensor([10.0])}
    out = formulas.ema_update_state(psi, {"a": torch.tensor([2.0])}, 0.5)  # 0.5·0 + 0.5·2 = 1
    assert out["a"].tolist() == [1.0] and out["b"].tolist() == [10.0]
    with pytest.raises(KeyError, match="c"):
        formulas.ema_update_state(psi, {"c": torch.tensor([1.0])}, 0.5)


def test_lumped_topk_kl() -> None:
    # P top-2 = [0.5, 0.3] (tail 0.2), Q on the same ids = [0.4, 0.4] (tail 0.2):
    # 0.5·ln(0.5/0.4) + 0.3·ln(0.3/0.4) + 0.2·ln(0.2/0.2) = 0.5·0.2231436 − 0.3·0.2876821 + 0 = 0.0252672
    p, q = [math.log(0.5), math.log(0.3)], [math.log(0.4), math.log(0.4)]
    assert formulas.lumped_topk_kl(p, q) == pytest.approx(0.0252672, abs=1e-7)
    assert formulas.tail_logprob(p) == pytest.approx(math.log(0.2))
    # The full KL with P = [0.5, 0.3, 0.1, 0.1], Q = [0.4, 0.4, 0.15, 0.05] adds 0.1·ln(0.1/0.15) + 0.1·ln(2)
    # = −0.0405465 + 0.0693147: 0.0540354 ≥ the lumped 0.0252672 (it is a lower bound)
    full_p, full_q = torch.tensor([0.5, 0.3, 0.1, 0.1]), torch.tensor([0.4, 0.4, 0.15, 0.05])
    full = float((full_p * (full_p / full_q).log()).sum())
    assert full == pytest.approx(0.0540354, abs=1e-6)
    assert formulas.lumped_topk_kl(p, q) <= full
