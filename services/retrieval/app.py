"""Retrieval service app."""

from __future__ import annotations

from fastapi import FastAPI

from services.common.app_factory import create_service_app
from services.retrieval.routes_corpora import router


def create_app() -> FastAPI:
    return create_service_app("retrieval", [router], title="rewardhub retrieval",
                              description="BM25 search over project corpora for agent environments")
