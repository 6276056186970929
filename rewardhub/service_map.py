"""The services rewardhub runs, by name, and how to build each one's app."""

from __future__ import annotations

import importlib
from collections.abc import Callable

from fastapi import FastAPI

# name -> "module:factory". Add a service here when it has real endpoints.
SERVICES: dict[str, str] = {
    "gateway": "services.gateway.app:create_app",
    "verifier": "services.verifier.app:create_app",
    "annotation": "services.annotation.app:create_app",
    "trainer": "services.trainer.app:create_app",
    "rubric_rm": "services.rubric_rm.app:create_app",
    "sandbox": "services.sandbox.app:create_app",
}


def app_factory(name: str) -> Callable[[], FastAPI]:
    if name not in SERVICES:
        raise KeyError(f"unknown service {name!r}; known: {', '.join(sorted(SERVICES))}")
    module_name, _, attr = SERVICES[name].partition(":")
    factory: Callable[[], FastAPI] = getattr(importlib.import_module(module_name), attr)
    return factory


def build_service_app(name: str) -> FastAPI:
    return app_factory(name)()
