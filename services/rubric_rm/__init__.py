"""rubric_rm: the CDRRM contrast-driven rubric reward model (logic; routes live in app.py).

Modules: ``schemas`` (I/O models), ``prompts``, ``scrub`` (outcome-hint removal), ``parsing``
(judge and diagnosis outputs), ``pipeline`` (diagnose, synthesise, consistency filter, rubric
generation), ``judging`` (pairwise both-order and pointwise), ``sft_export`` (generator SFT set),
``evaluation`` (RewardBench / RM-Bench / RMB harness).
"""

from services.common.registry import ServiceSpec

SERVICE = ServiceSpec(name="rubric_rm",
                      app="services.rubric_rm.app:create_app",
                      summary="CDRRM rubric reward model: rubric generation and judging",
                      models="services.rubric_rm.models",
                      tasks=("services.rubric_rm.tasks",),
                      job_queue="rubric_rm")
