"""Every self-distillation formula, each a small pure function (AMR-SD, π-Play, EMA, the KL estimate).

Shared by the teacher service (``services.teacher.formulas`` re-exports them) and the trainer's
``self_distillation`` section, so both compute with the same code.

AMR-SD has no public code: the CIG, gate and annealing definitions follow this project's spec
(``specs/self_distillation.md``), which designs them from the paper's abstract. π-Play's difficulty
reward and hop-grouped normalisation follow reading notes of the paper. Choices the spec leaves
open are stated in each docstring (and in ``docs/teacher.md``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # torch is imported where it is used: the service app starts without it
    import torch

Schedule = Literal["constant", "linear", "cosine"]
LambdaSchedule = Literal["constant", "linear", "cosine", "exponential"]

# Floor of a lumped tail probability: keeps log(0) out of the top-k KL when a top-k covers all the mass.
TAIL_FLOOR = 1e-12


def relu(x: float) -> float:
    """ReLU(x) = max(0, x)."""
    return x if x > 0.0 else 0.0


def causal_information_gain(teacher_logprobs: Sequence[float], student_logprobs: Sequence[float]) -> list[float]:
    """CIG_t = log π_T(y_t | x, c, y_<t) − log π_S(y_t | x, y_<t), token by token.

    ``teacher_logprobs`` are the policy's log-probs of the rollout's tokens with the privileged
    context (the hint) c, ``student_logprobs`` without it; both of the same length.
    """
    if len(teacher_logprobs) != len(student_logprobs):
        raise ValueError(f"teacher_logprobs has {len(teacher_logprobs)} values, student_logprobs "
                         f"{len(student_logprobs)}")
    return [float(t) - float(s) for t, s in zip(teacher_logprobs, student_logprobs, strict=True)]


def gate_weight(cig: float, advantage: float, alpha: float, tau_plus: float, tau_minus: float,
                max_weight: float | None = None) -> float:
    """The asymmetric ReLU-gated weight of one token.

    - A > 0: w = 1 + α · ReLU(CIG − τ₊)   (reinforce more what the teacher endorses)
    - A < 0: w = 1 + α · ReLU(−CIG − τ₋)  (sharpen the penalty on what the teacher rejects)
    - A = 0: w = 1                        (our choice: nothing to modulate; Â = 0 anyway)

    ``max_weight`` (optional, ≥ 1; our addition) caps w. With α ≥ 0, w ≥ 1, so Â = A · w never
    changes the outcome's sign.
    """
    if alpha < 0:
        raise ValueError(f"alpha must be at least 0 (a negative alpha could flip the outcome sign), got {alpha}")
    if advantage > 0:
        w = 1.0 + alpha * relu(cig - tau_plus)
    elif advantage < 0:
        w = 1.0 + alpha * relu(-cig - tau_minus)
    else:
        w = 1.0
    if max_weight is not None:
        w = min(w, max_weight)
    return w


def gate_weights(cig: Sequence[float], advantage: float, alpha: float, tau_plus: float, tau_minus: float,
                 max_weight: float | None = None) -> list[float]:
    """:func:`gate_weight` for every token of one rollout (one outcome advantage A_i for all its tokens)."""
    return [gate_weight(c, advantage, alpha, tau_plus, tau_minus, max_weight) for c in cig]


def modulated_advantages(advantage: float, weights: Sequence[float]) -> list[float]:
    """Â_{i,t} = A_i · w_t. The sign of every Â is the sign of A_i (weights are ≥ 1)."""
    if any(w < 0 for w in weights):
        raise ValueError("weights must be non-negative: a negative weight would flip the outcome sign")
    return [advantage * w for w in weights]


def annealed_alpha(alpha0: float, step: int, total_steps: int, schedule: Schedule = "linear") -> float:
    """α at training step ``step`` (0-based) of ``total_steps``; it reaches 0 at ``total_steps`` and stays 0.

    - constant: α = α₀
    - linear:   α = α₀ · max(0, 1 − s/S)
    - cosine:   α = α₀ · ½ · (1 + cos(π · min(s, S)/S))
    """
    if alpha0 < 0:
        raise ValueError(f"alpha0 must be at least 0, got {alpha0}")
    if step < 0:
        raise ValueError(f"step must be at least 0, got {step}")
    if schedule == "constant":
        return alpha0
    if total_steps < 1:
        raise ValueError(f"total_steps must be at least 1 for a {schedule} schedule, got {total_steps}")
    progress = min(step, total_steps) / total_steps
    if schedule == "linear":
        return alpha0 * max(0.0, 1.0 - progress)
    if schedule == "cosine":
        return alpha0 * 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"schedule must be constant, linear or cosine, got {schedule!r}")


def modulated_share(weights: Sequence[float]) -> float:
    """Share of tokens whose weight is not 1 (the gate opened); 0 for an empty rollout."""
    return sum(1 for w in weights if w != 1.0) / len(weights) if weights else 0.0


def mean_abs(values: Sequence[float]) -> float:
    """(1/T) Σ_t |v_t|; 0 for no values."""
    return sum(abs(v) for v in values) / len(values) if values else 0.0


def difficulty_reward(passed: int, samples: int, format_reward: float = 0.0) -> float:
    """π-Play's examiner reward with k of n student samples correct:

        r_d = 1(0 < k < n) · (n − k)/(n − 1) + r_format

    Hardest still-solvable (k = 1) gives 1; unsolved (k = 0) and trivial (k = n) give 0. With n = 1
    the indicator is always 0, so r_d = r_format (the (n − 1) never divides).
    """
    if samples < 1:
        raise ValueError(f"samples must be at least 1, got {samples}")
    if not 0 <= passed <= samples:
        raise ValueError(f"passed must be between 0 and samples ({samples}), got {passed}")
    solvable = 0 < passed < samples
    return ((samples - passed) / (samples - 1) if solvable else 0.0) + format_reward


def difficulty_bucket(passed: int, samples: int) -> str:
    """Where a task falls by its pass rate k/n: solved_by_none (k = 0), solved_by_all (k = n), else the
    quartile of k/n: pass_rate_0-25 (≤ ¼), pass_rate_25-50 (≤ ½), pass_rate_50-75 (≤ ¾), pass_rate_75-100."""
    if passed == 0:
        return "solved_by_none"
    if passed == samples:
        return "solved_by_all"
    rate = passed / samples
    return "pass_rate_0-25" if rate <= 0.25 else "pass_rate_25-50" if rate <= 0.5 else \
        "pass_rate_50-75" if rate <= 0.75 else "pass_rate_75-100"


def hop_grouped_normalise(rewards: Sequence[float], hops: Sequence[int], eps: float = 1e-6) -> list[float]:
    """Advantages normalised within the group of questions with the same hop count h:

        A_j = (r_j − mean_h) / (σ_h + ε),  σ_h the unbiased std of group h (as GRPO's groups)

    A group of one question has no spread: its advantage is 0 (our choice). Order is kept.
    """
    if len(rewards) != len(hops):
        raise ValueError(f"rewards has {len(rewards)} values, hops {len(hops)}")
    groups: dict[int, list[int]] = {}
    for index, hop in enumerate(hops):
        groups.setdefault(hop, []).append(index)
    out = [0.0] * len(rewards)
    for members in groups.values():
        if len(members) < 2:
            continue
        values = [float(rewards[i]) for i in members]
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
        for i, v in zip(members, values, strict=True):
            out[i] = (v - mean) / (std + eps)
    return out


def examiner_step_advantages(passed: Sequence[int | None], samples: Sequence[int], hops: Sequence[int],
                             format_penalty: float, eps: float = 1e-6) -> tuple[list[float], list[float]]:
    """The examiner step's rewards and advantages, one per examiner completion j (``passed[j]`` None: the
    completion did not parse into a well-formed task):

        r_format,j = 0 if well-formed, else −format_penalty
        r_d,j      = 1(0 < k_j < n_j) · (n_j − k_j)/(n_j − 1) + r_format,j   (:func:`difficulty_reward`;
                     a malformed one has no student answers: r_d,j = r_format,j)
        A_j        = (r_d,j − mean_h) / (σ_h + ε) over the completions whose seed asked for h hops
                     (:func:`hop_grouped_normalise`; σ_h unbiased, a group of one gets 0)

    A well-formed task whose student answers were all unscored (n_j = 0) counts as unsolved: r_d = 0.
    """
    if not len(passed) == len(samples) == len(hops):
        raise ValueError(f"passed, samples and hops must be as long: {len(passed)}, {len(samples)}, {len(hops)}")
    rewards = []
    for k, n in zip(passed, samples, strict=True):
        if k is None:
            rewards.append(difficulty_reward(0, 1, -format_penalty))
        else:
            rewards.append(difficulty_reward(k, n) if n > 0 else 0.0)
    return rewards, hop_grouped_normalise(rewards, hops, eps)


def ema_update(psi: torch.Tensor, theta: torch.Tensor, tau: float) -> torch.Tensor:
    """The EMA teacher's step: ψ ← (1 − τ) · ψ + τ · θ (a new tensor, in ψ's dtype).

    Computed in float64 and cast back, so a float32/bfloat16 teacher loses no more than one rounding.
    """
    if not 0.0 <= tau <= 1.0:
        raise ValueError(f"tau must be between 0 and 1, got {tau}")
    if psi.shape != theta.shape:
        raise ValueError(f"shapes differ: teacher {tuple(psi.shape)}, student {tuple(theta.shape)}")
    import torch

    mixed = (1.0 - tau) * psi.to(torch.float64) + tau * theta.to(torch.float64)
    return mixed.to(psi.dtype)


def ema_update_state(psi: Mapping[str, torch.Tensor], theta: Mapping[str, torch.Tensor],
                     tau: float) -> dict[str, torch.Tensor]:
    """:func:`ema_update` for every tensor of ``theta`` (names must exist in ``psi``); the rest of ψ is kept."""
    unknown = sorted(set(theta) - set(psi))
    if unknown:
        raise KeyError(f"not tensors of the teacher: {', '.join(unknown[:5])}")
    out = dict(psi)
    for name, value in theta.items():
        out[name] = ema_update(psi[name], value, tau)
    return out


def tail_logprob(top_logprobs: Sequence[float]) -> float:
    """log of the mass outside the top-k: log(1 − Σ_{v∈K} p_v), floored at log(``TAIL_FLOOR``)."""
    covered = sum(math.exp(lp) for lp in top_logprobs)
    return math.log(max(TAIL_FLOOR, 1.0 - covered))


def lumped_topk_kl(p_top_logprobs: Sequence[float], q_top_logprobs: Sequence[float]) -> float:
    """KL(P ‖ Q) over k + 1 buckets: the k ids of a top-k list, and the rest lumped into one tail bucket.

        KL ≈ Σ_{v∈K} p_v (log p_v − log q_v) + p_tail (log p_tail − log q_tail),
        p_tail = 1 − Σ_{v∈K} p_v,  q_tail = 1 − Σ_{v∈K} q_v (each floored at TAIL_FLOOR)

    ``p_top_logprobs[i]`` and ``q_top_logprobs[i]`` are the log-probs of the same token id under P
    and Q. This is the KL of the two distributions coarsened to those buckets, so it never exceeds
    the full-vocabulary KL (the data-processing inequality) and equals it when the tail is empty.
    π-Play's term KL(π_S ‖ π_T) is this with P = the student (its full logits are at the trainer)
    and K = the teacher's top-k ids returned by ``/v1/score``.
    """
    if len(p_top_logprobs) != len(q_top_logprobs):
        raise ValueError(f"p has {len(p_top_logprobs)} values, q {len(q_top_logprobs)}")
    kl = sum(math.exp(p) * (p - q) for p, q in zip(p_top_logprobs, q_top_logprobs, strict=True))
    p_tail, q_tail = tail_logprob(p_top_logprobs), tail_logprob(q_top_logprobs)
    return kl + math.exp(p_tail) * (p_tail - q_tail)


# ------------------------------------------------------------------ trainer-side formulas (torch where batched)


def round_lambda(lambda0: float, round_index: int, rounds: int, schedule: LambdaSchedule = "linear",
                 gamma: float = 0.5) -> float:
    """π-Play's distillation weight in round r (0-based) of R rounds; it decays across rounds.

    - constant:    λ_r = λ₀
    - linear:      λ_r = λ₀ · max(0, 1 − r/R)
    - cosine:      λ_r = λ₀ · ½ · (1 + cos(π · min(r, R)/R))
    - exponential: λ_r = λ₀ · γ^r   (0 < γ ≤ 1)

    Round 0 always gets λ₀; the linear and cosine schedules reach 0 only at r = R, one past the
    last round, so the last round still distils a little (λ₀/R for linear).
    """
    if schedule == "exponential":
        if lambda0 < 0:
            raise ValueError(f"lambda0 must be at least 0, got {lambda0}")
        if round_index < 0:
            raise ValueError(f"round_index must be at least 0, got {round_index}")
        if not 0.0 < gamma <= 1.0:
            raise ValueError(f"gamma must be in (0, 1], got {gamma}")
        return lambda0 * gamma ** round_index
    return annealed_alpha(lambda0, round_index, rounds, schedule)


def lumped_topk_kl_tensor(p_top_logprobs: torch.Tensor, q_top_logprobs: torch.Tensor,
                          q_tail_logprobs: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`lumped_topk_kl` per position, batched and differentiable in P: shapes (..., k) → (...).

        KL_t = Σ_{v∈K_t} p_v (log p_v − log q_v) + p_tail (log p_tail − log q_tail)

    with p_tail = 1 − Σ_{v∈K_t} p_v (floored at ``TAIL_FLOOR``, in log space through log1p) and
    q_tail = ``q_tail_logprobs`` when given (the teacher service's ``tail_logprobs``), else computed
    from ``q_top_logprobs`` the same way. P is the student (gradient flows), Q the teacher (pass it
    detached: the term is KL(π_S ‖ stopgrad π_T)).
    """
    import torch

    if p_top_logprobs.shape != q_top_logprobs.shape:
        raise ValueError(f"p has shape {tuple(p_top_logprobs.shape)}, q {tuple(q_top_logprobs.shape)}")
    floor = math.log(TAIL_FLOOR)

    def tail(top: torch.Tensor) -> torch.Tensor:
        covered = top.exp().sum(-1)
        return torch.log1p(-covered.clamp(max=1.0 - TAIL_FLOOR)).clamp(min=floor)

    p_tail = tail(p_top_logprobs)
    q_tail = tail(q_top_logprobs) if q_tail_logprobs is None else q_tail_logprobs.clamp(min=floor)
    buckets = (p_top_logprobs.exp() * (p_top_logprobs - q_top_logprobs)).sum(-1)
    return buckets + p_tail.exp() * (p_tail - q_tail)


def sequence_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(1/|y_i|) Σ_t m_{i,t} v_{i,t} per row i, |y_i| = Σ_t m_{i,t} (a row with no counted token gives 0)."""
    return (values * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)


def distillation_loss(kl: torch.Tensor, mask: torch.Tensor, lam: float) -> torch.Tensor:
    """π-Play's term over a micro-batch of rows: λ · mean_i [(1/|y_i|) Σ_t KL_{i,t}]."""
    return lam * sequence_mean(kl, mask).mean()


def token_advantages(advantages: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Â_{i,t} = A_i · w_t for a batch: (B,) advantages and (B, T) weights → (B, T). Weights must be ≥ 0
    (AMR-SD's are ≥ 1), so sign(Â_{i,t}) = sign(A_i) on every token."""
    if bool((weights < 0).any()):
        raise ValueError("weights must be non-negative: a negative weight would flip the outcome sign")
    return advantages.unsqueeze(-1).to(weights.dtype) * weights


def ema_update_module(teacher: object, student: object, tau: float) -> None:
    """ψ ← (1 − τ) · ψ + τ · θ for every parameter and buffer of ``teacher`` (torch modules of the same
    architecture), in place, through :func:`ema_update` (float64 arithmetic, cast back)."""
    import torch

    if not 0.0 <= tau <= 1.0:
        raise ValueError(f"tau must be between 0 and 1, got {tau}")
    psi = dict(teacher.named_parameters())  # type: ignore[attr-defined]
    theta = dict(student.named_parameters())  # type: ignore[attr-defined]
    if psi.keys() != theta.keys():
        raise ValueError("teacher and student have different parameters")
    with torch.no_grad():
        for name, value in psi.items():
            value.copy_(ema_update(value.detach(), theta[name].detach().to(value.device), tau))
