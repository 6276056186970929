"""Service calls carry the tenant they work for (the sandbox's fairness key) and the request id."""

from __future__ import annotations

import asyncio

from fastapi import FastAPI, Request

from services.common.service_client import (
    TENANT_HEADER,
    register_local_app,
    service_client,
    tenant_of,
    tenant_var,
    unregister_local_apps,
)


def test_the_tenant_of_a_caller_is_its_one_project_else_its_key() -> None:
    assert tenant_of("k1", frozenset({"p1"}), False) == "p1"
    assert tenant_of("k1", frozenset({"p1", "p2"}), False) == "key:k1"
    assert tenant_of("k1", frozenset({"p1"}), True) == "key:k1"


def test_a_service_call_sends_the_current_tenant_and_only_when_set() -> None:
    echo = FastAPI()

    @echo.get("/headers")
    async def headers(request: Request) -> dict[str, str | None]:
        return {"tenant": request.headers.get(TENANT_HEADER)}

    async def call(tenant: str | None) -> str | None:
        if tenant is not None:
            tenant_var.set(tenant)
        async with service_client("echo") as client:
            return (await client.get("/headers")).json()["tenant"]  # type: ignore[no-any-return]

    register_local_app("echo", echo)
    try:
        # Each asyncio.run has its own context: a tenant set in one call does not leak into the next.
        assert asyncio.run(call("project-a")) == "project-a"
        assert asyncio.run(call(None)) is None
    finally:
        unregister_local_apps()
