"""The whole platform as one ASGI app: the gateway at the root, every other service mounted beneath it.

This is what the embedded default serves (``rewardhub up``), and what a training run's worker process
mounts in-process when no gateway URL is configured: the same apps and database as over HTTP, so a
run started on the embedded default scores rewards through the real routes without a server of its
own. Services are built by name from the registry (``services.common.registry``), so this module
imports none of them.
"""

from __future__ import annotations

from fastapi import FastAPI

from services.common.registry import build_service_app, services
from services.common.service_client import register_local_app

ROOT_SERVICE = "gateway"


def mount_path(name: str) -> str:
    """Where service ``name`` is served inside the platform app (the gateway at the root)."""
    return "" if name == ROOT_SERVICE else f"/services/{name}"


def build_platform_app() -> FastAPI:
    """Build every registered service, make each reachable in-process by name, and mount them all
    under the gateway's app, which is returned."""
    apps = {name: build_service_app(name) for name in services()}
    for name, app in apps.items():
        register_local_app(name, app)
    root = apps[ROOT_SERVICE]
    for name, app in apps.items():
        if name != ROOT_SERVICE:
            root.mount(mount_path(name), app)
    return root
