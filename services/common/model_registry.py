"""Import every service's SQLAlchemy models so one metadata (and one Alembic history) sees them all."""

from __future__ import annotations

import importlib

MODEL_MODULES = [
    "services.common.models",
    "services.gateway.models",
    "services.annotation.models",
    "services.trainer.models",
    "services.rubric_rm.models",
]


def import_all_models() -> None:
    for module in MODEL_MODULES:
        importlib.import_module(module)
