"""teacher: self-distillation teachers (AMR-SD and pi-Play) the trainer consumes over HTTP.

Modules: ``formulas`` (CIG, gates, annealing, Â, difficulty reward, hop-grouped normalisation, EMA,
lumped top-k KL), ``leak_filter`` (hints), ``registry`` (per-project teacher models, as files),
``model_cache`` (loaded models, LRU), ``weights`` (EMA / replace pushes), ``scoring`` (the trainer's
log-probs, top-k; vLLM option), ``reflection``, ``modulation``, ``examiner``, ``backends`` (who writes
hints and tasks), ``operations``; routes in ``routes_*``. See docs/teacher.md.
"""

from services.common.registry import ServiceSpec

SERVICE = ServiceSpec(name="teacher",
                      app="services.teacher.app:create_app",
                      summary="self-distillation teachers: score, reflect, modulate, examiner")
