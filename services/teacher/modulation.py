"""AMR-SD token-level advantage modulation over a batch of rollouts (``POST /v1/modulate``).

Per rollout i with outcome advantage A_i: CIG_t from the two log-prob traces, the asymmetric gate
weight w_t at the annealed α, and Â_{i,t} = A_i · w_t (:mod:`services.teacher.formulas`). A rollout
whose traces are unusable (lengths differ, a NaN, a positive log-prob) is that item's
``invalid_input``; the others are computed.
"""

from __future__ import annotations

import math

from services.teacher import formulas
from services.teacher.schemas import (
    ModulateItem,
    ModulateParams,
    ModulateRequest,
    ModulateResponse,
    ModulateResult,
)

# A log-prob may exceed 0 only by float rounding.
LOGPROB_SLACK = 1e-4


def _problem(item: ModulateItem, max_tokens: int) -> str | None:
    if not math.isfinite(item.advantage):
        return "advantage: must be a finite number"
    if len(item.teacher_logprobs) != len(item.student_logprobs):
        return (f"teacher_logprobs has {len(item.teacher_logprobs)} values, student_logprobs "
                f"{len(item.student_logprobs)}: they must cover the same tokens")
    if len(item.teacher_logprobs) > max_tokens:
        return f"teacher_logprobs: {len(item.teacher_logprobs)} tokens; the limit is {max_tokens}"
    for name, values in (("teacher_logprobs", item.teacher_logprobs), ("student_logprobs", item.student_logprobs)):
        for t, value in enumerate(values):
            if not math.isfinite(value):
                return f"{name}[{t}]: must be a finite number"
            if value > LOGPROB_SLACK:
                return f"{name}[{t}]: {value} is not a log-probability (must be ≤ 0)"
    return None


def modulate_item(item: ModulateItem, params: ModulateParams, alpha: float) -> ModulateResult:
    cig = formulas.causal_information_gain(item.teacher_logprobs, item.student_logprobs)
    weights = formulas.gate_weights(cig, item.advantage, alpha, params.tau_plus, params.tau_minus, params.max_weight)
    return ModulateResult(id=item.id, status="ok", advantages=formulas.modulated_advantages(item.advantage, weights),
                          cig=cig, weights=weights, modulated_share=formulas.modulated_share(weights),
                          mean_abs_cig=formulas.mean_abs(cig))


def modulate(request: ModulateRequest, max_tokens: int) -> ModulateResponse:
    params = request.params
    alpha = formulas.annealed_alpha(params.alpha0, params.step, params.total_steps, params.schedule)
    results: list[ModulateResult] = []
    all_weights: list[float] = []
    all_cig: list[float] = []
    for item in request.items:
        problem = _problem(item, max_tokens)
        if problem is not None:
            results.append(ModulateResult(id=item.id, status="invalid_input", error=problem))
            continue
        result = modulate_item(item, params, alpha)
        all_weights.extend(result.weights or [])
        all_cig.extend(result.cig or [])
        results.append(result)
    return ModulateResponse(alpha=alpha, results=results, modulated_share=formulas.modulated_share(all_weights),
                            mean_abs_cig=formulas.mean_abs(all_cig))
