"""rec_rm: the RecRM recommendation reward model (catalogs, logs, four scorers, the hybrid reward)."""

from services.common.registry import ServiceSpec

SERVICE = ServiceSpec(name="rec_rm",
                      app="services.rec_rm.app:create_app",
                      summary="recommendation reward model: format, grounding, relevance and behaviour",
                      models="services.rec_rm.models",
                      tasks=("services.rec_rm.tasks",),
                      job_queue="rec_rm")
