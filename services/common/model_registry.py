"""Import every service's SQLAlchemy models so one metadata (and one Alembic history) sees them all."""

from __future__ import annotations

import importlib

from services.common.registry import model_modules


def import_all_models() -> None:
    # Each service declares its models module once (services.common.registry).
    for module in model_modules():
        importlib.import_module(module)
