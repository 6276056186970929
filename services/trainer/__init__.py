"""The trainer service: GRPO-family training runs, each in its own worker process."""

from services.common.registry import ServiceSpec

SERVICE = ServiceSpec(name="trainer",
                      app="services.trainer.app:create_app",
                      summary="GRPO-family training runs",
                      models="services.trainer.models",
                      tasks=("services.trainer.supervisor", "services.trainer.evaljobs"))
