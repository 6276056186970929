"""The services rewardhub runs, by name, and how to build each one's app.

Derived from the one service registry (``services.common.registry``): a service declares its app once,
in its package's ``SERVICE``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from fastapi import FastAPI

from services.common.registry import service, services

# name -> "module:factory", in the order the embedded default builds them (the gateway first).
SERVICES: dict[str, str] = {name: spec.app for name, spec in services().items()}


def app_factory(name: str) -> Callable[[], FastAPI]:
    spec = service(name)
    factory: Callable[[], FastAPI] = getattr(importlib.import_module(spec.app_module), spec.app_factory)
    return factory


def build_service_app(name: str) -> FastAPI:
    return app_factory(name)()
