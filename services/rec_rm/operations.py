"""What rec_rm's routes do beyond validation: imports with idempotency, and scoring a batch.

Database work runs in short transactions on a worker thread; the format checks go to the verifier
over HTTP (``POST /v1/grade``, its ``json_schema`` and ``instruction`` graders) with the caller's
key, so the checks are the verifier's own and the caller's scope applies.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Any

import httpx

from services.common import idempotency
from services.common.auth import Principal, choose_project, get_accessible_project
from services.common.db import session_scope
from services.common.errors import ApiError, NotFound
from services.common.llm.types import ChatBackend
from services.common.service_client import service_client
from services.rec_rm import items as item_io
from services.rec_rm import store, training
from services.rec_rm.config import RecConfig
from services.rec_rm.hybrid import DimensionResult
from services.rec_rm.items import Item
from services.rec_rm.schemas import (
    CatalogVersionOut,
    DimensionOut,
    InteractionImportOut,
    RewardConfigOut,
    ScoreRequest,
    ScoreResponse,
    ScoreResultOut,
)
from services.rec_rm.scoring import Request, Scorer, requested_dimensions

CATALOG_ENDPOINT = "rec_rm.catalogs"
INTERACTIONS_ENDPOINT = "rec_rm.interactions"
CONFIG_ENDPOINT = "rec_rm.reward_configs"


def check_project(principal: Principal, project_id: str) -> str:
    with session_scope() as session:
        return get_accessible_project(session, principal, project_id).id


async def resolve_project(principal: Principal, requested: str | None) -> str:
    return await asyncio.to_thread(check_project, principal, choose_project(principal, requested))


def upload_hash(fmt: str, data: bytes) -> str:
    return hashlib.sha256(fmt.encode() + b"\0" + data).hexdigest()


def import_catalog(project_id: str, fmt: str, data: bytes, key: str | None) -> CatalogVersionOut | idempotency.Stored:
    request_hash = upload_hash(fmt, data)
    parsed = item_io.parse_items(data, fmt)
    with session_scope() as session:
        if key is not None:
            stored = idempotency.replay(session, project_id, CATALOG_ENDPOINT, key, request_hash)
            if stored is not None:
                return stored
        out = store.catalog_out(store.create_catalog(session, project_id, fmt, parsed))
        if key is not None:
            idempotency.remember(session, project_id, CATALOG_ENDPOINT, key, request_hash, 201, out.model_dump_json())
        return out


def import_interactions(project_id: str, fmt: str, data: bytes,
                        key: str | None) -> InteractionImportOut | idempotency.Stored:
    request_hash = upload_hash(fmt, data)
    events = item_io.parse_events(data, fmt)
    with session_scope() as session:
        if key is not None:
            stored = idempotency.replay(session, project_id, INTERACTIONS_ENDPOINT, key, request_hash)
            if stored is not None:
                return stored
        out = store.create_interactions(session, project_id, events)
        if key is not None:
            idempotency.remember(session, project_id, INTERACTIONS_ENDPOINT, key, request_hash, 201,
                                 out.model_dump_json())
        return out


def put_config(project_id: str, config: RecConfig, key: str | None) -> RewardConfigOut | idempotency.Stored:
    request_hash = idempotency.fingerprint(config.model_dump(mode="json", by_alias=True))
    with session_scope() as session:
        if key is not None:
            stored = idempotency.replay(session, project_id, CONFIG_ENDPOINT, key, request_hash)
            if stored is not None:
                return stored
        out = store.config_out(store.save_config(session, project_id, config))
        if key is not None:
            idempotency.remember(session, project_id, CONFIG_ENDPOINT, key, request_hash, 201,
                                 out.model_dump_json())
        return out


# ------------------------------------------------------------------------------------------ scoring

def _from_grade(result: dict[str, Any]) -> DimensionResult:
    status = str(result.get("status"))
    details = result.get("details") or {}
    if status == "ok":
        return DimensionResult("ok", float(result["score"]), {"checks": result.get("sub_scores") or {},
                                                              "details": details})
    return DimensionResult(status if status in ("invalid_input", "timeout", "error") else "error", None,
                           {"reason": str(details.get("reason") or f"verifier status {status!r}"), "details": details})


def verifier_checker(auth: str | None, timeout_s: float) -> Any:
    """The format checker: the verifier's graders over HTTP, one call per distinct spec."""

    async def check(planned: list[tuple[str, dict[str, Any], str]]) -> dict[str, DimensionResult]:
        groups: dict[str, list[tuple[str, str]]] = {}
        specs: dict[str, dict[str, Any]] = {}
        for item_id, spec, response in planned:
            key = json.dumps(spec, sort_keys=True)
            specs[key] = spec
            groups.setdefault(key, []).append((item_id, response))
        out: dict[str, DimensionResult] = {}
        headers = {"Authorization": auth} if auth else {}
        try:
            client = service_client("verifier", timeout_s=timeout_s + 5, headers=headers)
        except RuntimeError as exc:
            return {item_id: DimensionResult("error", None, {"reason": str(exc)}) for item_id, _, _ in planned}
        async with client:
            for key, members in groups.items():
                body = {"spec": specs[key], "items": [{"id": i, "completion": r} for i, r in members],
                        "deadline_s": timeout_s}
                try:
                    answer = await client.post("/v1/grade", json=body)
                except httpx.TimeoutException:
                    out.update({i: DimensionResult("timeout", None, {"reason": "the verifier did not answer in time"})
                                for i, _ in members})
                    continue
                except httpx.HTTPError as exc:
                    out.update({i: DimensionResult("error", None, {"reason": f"verifier unreachable: {exc}"})
                                for i, _ in members})
                    continue
                if answer.status_code != 200:
                    status = "invalid_input" if 400 <= answer.status_code < 500 else "error"
                    try:
                        reason = str(answer.json()["error"]["message"])
                    except (ValueError, KeyError, TypeError):
                        reason = f"verifier answered {answer.status_code}"
                    out.update({i: DimensionResult(status, None, {"reason": f"format spec: {reason}"})
                                for i, _ in members})
                    continue
                for result in answer.json().get("results", []):
                    out[str(result["id"])] = _from_grade(result)
        for item_id, _, _ in planned:
            out.setdefault(item_id, DimensionResult("error", None, {"reason": "the verifier returned no result"}))
        return out

    return check


def _prepare(project_id: str, body: ScoreRequest) -> dict[str, Any]:
    with session_scope() as session:
        config_out = store.latest_config(session, project_id)
        config = body.config or config_out.config
        catalog = None
        try:
            catalog = store.get_catalog(session, project_id, body.catalog_version)
        except NotFound:
            if body.catalog_version is not None:
                raise
        model, model_version, model_problem = training.load_trained(session, project_id,
                                                                    config.behaviour.model_version)
        return {"config": config, "config_version": None if body.config else config_out.version,
                "catalog_id": catalog.id if catalog else None, "catalog_version": catalog.version if catalog else None,
                "model": model, "model_version": model_version, "model_problem": model_problem}


async def score(principal: Principal, body: ScoreRequest, auth: str | None, llm: ChatBackend | None) -> ScoreResponse:
    project_id = await resolve_project(principal, body.project_id)
    duplicates = sorted({i.id for i in body.items if [j.id for j in body.items].count(i.id) > 1})
    if duplicates:
        raise ApiError(f"items: duplicate ids: {', '.join(duplicates[:10])}", field="items", status_code=422,
                       code="invalid_input")
    ready = await asyncio.to_thread(_prepare, project_id, body)
    config: RecConfig = ready["config"]
    catalog_id: str | None = ready["catalog_id"]

    async def lookup(ids: set[str], keys: set[str]) -> tuple[dict[str, Item], dict[str, Item]]:
        if catalog_id is None:
            return {}, {}

        def run() -> tuple[dict[str, Item], dict[str, Item]]:
            with session_scope() as session:
                return store.lookup_items(session, catalog_id, ids, keys)

        return await asyncio.to_thread(run)

    scorer = Scorer(config, requested_dimensions(config, list(body.dimensions) if body.dimensions else None), lookup=lookup,
                    catalog_key=catalog_id, format_checker=verifier_checker(auth, body.timeout_s),
                    behaviour=ready["model"], behaviour_problem=ready["model_problem"], llm=llm)
    requests = [Request(id=i.id, query=i.query, response=i.response, user_id=i.user_id,
                        context_items=[Item(c.item_id, c.title, c.attributes) for c in i.context.items],
                        constraints=[c.model_dump(mode="json") for c in i.constraints], json_schema=i.json_schema,
                        n_items=i.n_items) for i in body.items]
    scored = await scorer.score(requests)
    return ScoreResponse(catalog_version=ready["catalog_version"], config_version=ready["config_version"],
                         behaviour_model_version=ready["model_version"], results=[
                             ScoreResultOut(id=s.id, status=s.hybrid.status, score=s.hybrid.score,
                                            vetoed_by=s.hybrid.vetoed_by, reason=s.hybrid.reason,
                                            dimensions={n: DimensionOut(status=d.status, score=d.score,
                                                                        evidence=d.evidence)
                                                        for n, d in s.dimensions.items()})
                             for s in scored])
