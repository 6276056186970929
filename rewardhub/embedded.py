"""The embedded default: every service in one process, talking over in-process ASGI transports."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse
from sqlalchemy import select

from services.common.auth import create_api_key
from services.common.db import session_scope
from services.common.migrate import upgrade
from services.common.models import ApiKey, Project, Role
from services.common.platform import build_platform_app, mount_path
from services.common.registry import services
from services.common.settings import Settings

DEFAULT_PROJECT = "default"
# The web UI a person opening the root URL is sent to: the annotation service's home page.
UI_ROUTE = "ui_home"


def build_embedded_app() -> FastAPI:
    """The gateway at the root; each other service under /services/<name> and reachable in-process.

    ``/`` redirects to the web UI (``app.state.ui_path``), and the gateway's API docs link every
    service's own docs.
    """
    root = build_platform_app()
    ui_path = str(root.url_path_for(UI_ROUTE))  # the route lives in the annotation app, mounted under root
    root.state.ui_path = ui_path

    async def to_the_ui(_request: Request) -> RedirectResponse:
        return RedirectResponse(ui_path, status_code=307)

    root.add_route("/", to_the_ui, include_in_schema=False)
    root.description = (root.state.base_description + "\n\n" + docs_index()).strip()
    return root


def docs_index() -> str:
    """Markdown linking each service's Swagger UI and ReDoc pages, shown atop the gateway's docs."""
    lines = ["**Every service's API docs** (all served by this process):", ""]
    for name, spec in services().items():
        prefix = mount_path(name)
        lines.append(f"- [{name}]({prefix}/docs) ([ReDoc]({prefix}/redoc), "
                     f"[OpenAPI]({prefix}/openapi.json)): {spec.summary}")
    return "\n".join(lines)


@dataclass
class Bootstrap:
    admin_key: str | None
    admin_key_file: Path
    project_id: str
    newly_created: bool


def bootstrap(settings: Settings) -> Bootstrap:
    """Migrate, then make sure a default project and a first admin key exist."""
    upgrade()
    key_file = settings.data_dir / "admin-key.txt"
    with session_scope() as session:
        project = session.scalar(select(Project).where(Project.name == DEFAULT_PROJECT))
        if project is None:
            project = Project(name=DEFAULT_PROJECT, description="Created by `rewardhub up`.")
            session.add(project)
            session.flush()
        has_admin = session.scalar(
            select(ApiKey.id).where(ApiKey.role == Role.admin, ApiKey.all_projects.is_(True),
                                    ApiKey.revoked_at.is_(None)).limit(1)) is not None
        if has_admin:
            existing = key_file.read_text().strip() if key_file.exists() else None
            return Bootstrap(existing, key_file, project.id, newly_created=False)
        _, clear = create_api_key(session, role=Role.admin, all_projects=True, name="first admin")
        project_id = project.id
    # Owner-only file: the embedded default is a single-user install, and losing the key would
    # lock the user out of their own data.
    # Created 0600 (never briefly world-readable), then chmod-ed in case it existed with wider modes.
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, stat.S_IRUSR | stat.S_IWUSR)
    with os.fdopen(fd, "w") as handle:
        handle.write(clear + "\n")
    os.chmod(key_file, stat.S_IRUSR | stat.S_IWUSR)
    return Bootstrap(clear, key_file, project_id, newly_created=True)
