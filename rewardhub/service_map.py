"""The services rewardhub runs, by name, and how to build each one's app.

Derived from the one service registry (``services.common.registry``): a service declares its app once,
in its package's ``SERVICE``.
"""

from __future__ import annotations

from services.common.registry import app_factory, build_service_app, services

# name -> "module:factory", in the order the embedded default builds them (the gateway first).
SERVICES: dict[str, str] = {name: spec.app for name, spec in services().items()}

__all__ = ["SERVICES", "app_factory", "build_service_app"]
