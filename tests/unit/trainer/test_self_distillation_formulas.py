"""The self-distillation formulas the trainer uses (issue 17), each against numbers computed by hand.

CIG, the gates, α's annealing and Â = A·w through the trainer's in-process path (``modulate_locally``,
the same functions ``/v1/modulate`` uses), λ's decay across rounds, the batched lumped top-k KL, the
EMA step on a module, the difficulty buckets, and the trainer's choice of hint targets and signals.
"""

from __future__ import annotations

import math

import pytest
import torch

from trainer.self_distillation import formulas
from trainer.self_distillation.config import AmrSdConfig
from trainer.self_distillation.loop import choose_signal, hint_targets
from trainer.self_distillation.teacher import (
    ExaminerItem,
    ModulateItem,
    difficulty_grades,
    modulate_locally,
)


def test_services_teacher_formulas_are_the_trainers() -> None:
    from services.teacher import formulas as service_formulas
    from services.teacher import leak_filter as service_leak_filter
    from trainer.self_distillation import leak_filter

    assert service_formulas.gate_weight is formulas.gate_weight
    assert service_formulas.difficulty_bucket is formulas.difficulty_bucket
    assert service_leak_filter.check_hint is leak_filter.check_hint


def test_cig_gates_and_sign_preserving_advantages_by_hand() -> None:
    # Teacher [-0.5, -2.0, -1.0], student [-1.0, -1.0, -1.0]: CIG = [0.5, -1.0, 0.0].
    # A = +2, α = 2, τ₊ = 0.1: w = 1 + 2·ReLU(CIG − 0.1) = [1 + 2·0.4, 1, 1] = [1.8, 1, 1]; Â = [3.6, 2, 2].
    # A = −1, τ₋ = 0.5: w = 1 + 2·ReLU(−CIG − 0.5) = [1, 1 + 2·0.5, 1] = [1, 2, 1]; Â = [−1, −2, −1].
    settings = AmrSdConfig(alpha0=2.0, tau_plus=0.1, tau_minus=0.5)
    items = [ModulateItem(2.0, [-0.5, -2.0, -1.0], [-1.0, -1.0, -1.0]),
             ModulateItem(-1.0, [-0.5, -2.0, -1.0], [-1.0, -1.0, -1.0])]
    up, down = modulate_locally(items, settings, alpha=2.0)
    assert up.cig == [0.5, -1.0, 0.0] and down.cig == [0.5, -1.0, 0.0]
    assert up.weights == pytest.approx([1.8, 1.0, 1.0]) and up.advantages == pytest.approx([3.6, 2.0, 2.0])
    assert down.weights == pytest.approx([1.0, 2.0, 1.0]) and down.advantages == pytest.approx([-1.0, -2.0, -1.0])
    # A cap (max_weight) bounds w but never below 1.
    capped = modulate_locally(items[:1], AmrSdConfig(alpha0=2.0, tau_plus=0.1, max_weight=1.5), alpha=2.0)[0]
    assert capped.weights == pytest.approx([1.5, 1.0, 1.0])


def test_token_advantages_never_flip_the_outcome_sign() -> None:
    advantages = torch.tensor([1.5, -0.5, 0.0])
    weights = torch.tensor([[1.0, 3.0], [2.0, 1.0], [5.0, 1.0]])
    out = formulas.token_advantages(advantages, weights)
    assert out.tolist() == [[1.5, 4.5], [-1.0, -0.5], [0.0, 0.0]]
    assert bool((torch.sign(out) == torch.sign(advantages).unsqueeze(1)).all())
    with pytest.raises(ValueError, match="non-negative"):
        formulas.token_advantages(advantages, -weights)


def test_alpha_annealing_by_hand() -> None:
    # α₀ = 2, S = 4: linear 2·(1 − s/4); cosine 2·½(1 + cos(π s/4)); both 0 at and after S.
    assert [formulas.annealed_alpha(2.0, s, 4, "linear") for s in range(6)] == [2.0, 1.5, 1.0, 0.5, 0.0, 0.0]
    cosine = [formulas.annealed_alpha(2.0, s, 4, "cosine") for s in (0, 2, 4, 9)]
    assert cosine == pytest.approx([2.0, 1.0, 0.0, 0.0])
    assert formulas.annealed_alpha(2.0, 1, 4, "cosine") == pytest.approx(1.0 + math.cos(math.pi / 4))
    assert formulas.annealed_alpha(2.0, 99, 4, "constant") == 2.0


def test_lambda_decays_across_rounds_by_hand() -> None:
    # λ₀ = 1, R = 4 rounds: linear 1 − r/4; cosine ½(1 + cos(π r/4)); exponential γ^r with γ = 0.5.
    assert [formulas.round_lambda(1.0, r, 4, "linear") for r in range(4)] == [1.0, 0.75, 0.5, 0.25]
    assert formulas.round_lambda(1.0, 2, 4, "cosine") == pytest.approx(0.5)
    assert [formulas.round_lambda(1.0, r, 4, "exponential", 0.5) for r in range(4)] == [1.0, 0.5, 0.25, 0.125]
    assert formulas.round_lambda(0.3, 3, 4, "constant") == 0.3
    with pytest.raises(ValueError, match="gamma"):
        formulas.round_lambda(1.0, 1, 4, "exponential", 0.0)


def test_batched_lumped_topk_kl_by_hand_and_gradient_only_to_the_student() -> None:
    # k = 2 buckets plus the tail. P = (0.5, 0.3 | tail 0.2), Q = (0.25, 0.25 | tail 0.5):
    # KL = 0.5 ln 2 + 0.3 ln 1.2 + 0.2 ln 0.4.
    expected = 0.5 * math.log(2) + 0.3 * math.log(1.2) + 0.2 * math.log(0.4)
    p = torch.tensor([[math.log(0.5), math.log(0.3)]], dtype=torch.float64, requires_grad=True)
    q = torch.tensor([[math.log(0.25), math.log(0.25)]], dtype=torch.float64)
    kl = formulas.lumped_topk_kl_tensor(p, q)
    assert float(kl[0].detach()) == pytest.approx(expected, abs=1e-12)
    assert float(kl[0].detach()) == pytest.approx(formulas.lumped_topk_kl(p[0].tolist(), q[0].tolist()), abs=1e-12)
    # The teacher's own tail (as /v1/score returns it) gives the same number when it agrees.
    with_tail = formulas.lumped_topk_kl_tensor(p, q, torch.tensor([math.log(0.5)], dtype=torch.float64))
    assert float(with_tail[0].detach()) == pytest.approx(expected, abs=1e-12)
    kl.sum().backward()  # type: ignore[no-untyped-call]
    assert p.grad is not None and q.grad is None
    # Identical distributions: KL = 0.
    same = formulas.lumped_topk_kl_tensor(q, q)
    assert float(same[0]) == pytest.approx(0.0, abs=1e-12)


def test_distillation_loss_is_lambda_times_the_mean_sequence_mean() -> None:
    # Row 0: (1 + 3)/2 = 2; row 1: 4/1 = 4 (its second token is padding); mean 3; λ = 0.5 → 1.5.
    kl = torch.tensor([[1.0, 3.0], [4.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    assert formulas.sequence_mean(kl, mask).tolist() == [2.0, 4.0]
    assert float(formulas.distillation_loss(kl, mask, 0.5)) == 1.5
    assert formulas.sequence_mean(kl, torch.zeros_like(mask)).tolist() == [0.0, 0.0]


def test_ema_step_on_a_module_by_hand() -> None:
    # ψ = 1, θ = 3, τ = 0.25: ψ ← 0.75·1 + 0.25·3 = 1.5; again: 0.75·1.5 + 0.25·3 = 1.875.
    teacher, student = torch.nn.Linear(2, 1, bias=False), torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        teacher.weight.fill_(1.0)
        student.weight.fill_(3.0)
    formulas.ema_update_module(teacher, student, 0.25)
    assert teacher.weight.tolist() == [[1.5, 1.5]]
    formulas.ema_update_module(teacher, student, 0.25)
    assert teacher.weight.tolist() == [[1.875, 1.875]]
    assert student.weight.tolist() == [[3.0, 3.0]]  # θ is only read
    with pytest.raises(ValueError, match="tau"):
        formulas.ema_update_module(teacher, student, 1.5)


def test_difficulty_grades_by_hand() -> None:
    # n = 4: k = 1 → (4−1)/3 = 1; k = 2 → 2/3; k = 0 and k = 4 → 0. Hops 1: rewards 1 and 0 (mean ½,
    # std √½): advantages ±(½)/√½ = ±0.7071; hop 2: 2/3 alone → 0.
    grades = difficulty_grades([ExaminerItem("a", 1, 1, 4), ExaminerItem("b", 2, 2, 4), ExaminerItem("c", 1, 0, 4),
                                ExaminerItem("d", 3, 4, 4)])
    assert grades.rewards == pytest.approx([1.0, 2 / 3, 0.0, 0.0])
    assert grades.advantages == pytest.approx([math.sqrt(0.5), 0.0, -math.sqrt(0.5), 0.0], abs=1e-5)
    assert grades.histogram == {"pass_rate_0-25": 1, "pass_rate_25-50": 1, "solved_by_none": 1, "solved_by_all": 1}


def test_hint_targets_and_signals() -> None:
    # A ≠ 0 only, failures first, then by position; at most `count`.
    assert hint_targets([0.5, -1.0, 0.0, -0.2, 1.0], 3) == [1, 3, 0]
    assert hint_targets([0.0, 0.0], 2) == []
    texts = ["right", "wrong", "also wrong"]
    assert choose_signal("auto", 1, [1.0, 0.0, 0.0], texts, "ref", 1.0) == ("peer", "right")
    # The target itself is not its own peer: with no other success, auto falls back to the reference.
    assert choose_signal("auto", 0, [1.0, 0.0, 0.0], texts, "ref", 1.0) == ("reference", "ref")
    kind, text = choose_signal("auto", 1, [0.0, 0.0, 0.0], texts, None, 1.0)
    assert kind == "verifier" and "scored this attempt 0 (not correct)" in text
    assert choose_signal("verifier", 1, [1.0, 0.0, 0.0], texts, "ref", 1.0)[0] == "verifier"
