"""The gateway app: tenancy (projects, API keys), stored reward specs and the public reward API."""

from __future__ import annotations

from fastapi import FastAPI

from services.common.app_factory import create_service_app
from services.gateway import routes_docs, routes_reward_specs, routes_rewards, routes_tenancy

DESCRIPTION = ("Projects, API keys and the public reward API (`/v1/rewards`). "
               "Every endpoint except health and metrics needs `Authorization: Bearer <key>`.")


def create_app() -> FastAPI:
    app = create_service_app(
        "gateway", [routes_tenancy.router, routes_rewards.router, routes_reward_specs.router, routes_docs.router],
        title="rewardhub gateway", description=DESCRIPTION + "\n\n" + routes_docs.docs_index_markdown())
    # The embedded default serves every service itself and replaces the index with links to those.
    app.state.base_description = DESCRIPTION
    return app
