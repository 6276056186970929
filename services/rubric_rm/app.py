"""The rubric_rm app: CDRRM rubrics, rubric-guided judging and batch jobs."""

from __future__ import annotations

from fastapi import FastAPI

from services.common.app_factory import create_service_app
from services.rubric_rm import routes_jobs, routes_judge, routes_rubrics


def create_app() -> FastAPI:
    return create_service_app("rubric_rm", [routes_rubrics.router, routes_judge.router, routes_jobs.router],
                              title="rewardhub rubric_rm",
                              description="CDRRM: contrast-driven rubric synthesis and rubric-guided LLM judging.")
