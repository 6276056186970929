"""Every formula of the teacher service (AMR-SD, π-Play, EMA, the KL estimate).

They live in :mod:`trainer.self_distillation.formulas`, a layer both the teacher service and the
trainer may import (``.importlinter``: services > services.common > trainer), so the service's
``/v1/modulate`` and ``/v1/examiner/rewards`` and the trainer's in-process teacher compute with the
very same functions. This module re-exports them under their old home.
"""

from __future__ import annotations

from trainer.self_distillation.formulas import (
    TAIL_FLOOR,
    Schedule,
    annealed_alpha,
    causal_information_gain,
    difficulty_bucket,
    difficulty_reward,
    ema_update,
    ema_update_state,
    gate_weight,
    gate_weights,
    hop_grouped_normalise,
    lumped_topk_kl,
    mean_abs,
    modulated_advantages,
    modulated_share,
    relu,
    tail_logprob,
)

__all__ = ["TAIL_FLOOR", "Schedule", "annealed_alpha", "causal_information_gain", "difficulty_bucket",
           "difficulty_reward", "ema_update",
           "ema_update_state", "gate_weight", "gate_weights", "hop_grouped_normalise", "lumped_topk_kl", "mean_abs",
           "modulated_advantages", "modulated_share", "relu", "tail_logprob"]
