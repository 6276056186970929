"""RecRM service app: catalogs, interaction logs, reward configurations, behaviour models, scoring."""

from __future__ import annotations

from fastapi import FastAPI

from services.common.app_factory import create_service_app
from services.rec_rm import routes_catalogs, routes_configs, routes_interactions, routes_models, routes_score


def create_app() -> FastAPI:
    return create_service_app("rec_rm", [routes_catalogs.router, routes_interactions.router, routes_configs.router,
                                         routes_models.router, routes_score.router],
                              title="rewardhub rec_rm",
                              description="recommendation reward model: format, grounding, relevance and behaviour")
