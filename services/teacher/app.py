"""The teacher app: teacher models, score, reflect, modulate and the pi-Play examiner."""

from __future__ import annotations

from fastapi import FastAPI

from services.common.app_factory import create_service_app
from services.teacher import routes_examiner, routes_models, routes_reflect, routes_scoring


def create_app() -> FastAPI:
    return create_service_app("teacher", [routes_models.router, routes_scoring.router, routes_reflect.router,
                                          routes_examiner.router],
                              title="rewardhub teacher",
                              description="self-distillation teachers: score, reflect, modulate, examiner")
