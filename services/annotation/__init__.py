"""CARE active-annotation service: pseudo-labels, budgeted label purchases, the annotator queue."""

from services.common.registry import ServiceSpec

SERVICE = ServiceSpec(name="annotation",
                      app="services.annotation.app:create_app",
                      summary="CARE active annotation: queues, labels, the labeling web UI",
                      models="services.annotation.models",
                      tasks=("services.annotation.tasks",),
                      job_queue="annotation")
