"""What each rubric_rm route does, beyond validation: rubric resolution, cached generation, judging.

Database work runs in short transactions on a worker thread, so no request holds a connection
(or SQLite's write lock) while it waits for the LLM.
"""

from __future__ import annotations

import asyncio

from services.common.auth import Principal, choose_project, ensure_project_access, get_accessible_project
from services.common.db import session_scope
from services.common.errors import InvalidInput, NotFound
from services.common.llm.types import ChatBackend
from services.rubric_rm import store
from services.rubric_rm.backends import generator_version
from services.rubric_rm.judging import judge_pairwise, judge_pointwise
from services.rubric_rm.models import StoredRubric
from services.rubric_rm.pipeline import generate_rubric, synthesise_rubric
from services.rubric_rm.rubric_text import parse_rubric_text
from services.rubric_rm.schemas import (
    GeneratedRubric,
    GenerateRubricRequest,
    PairwiseJudgeRequest,
    PairwiseJudgeResponse,
    PointwiseJudgeRequest,
    PointwiseJudgeResponse,
    Rubric,
    SynthesiseRequest,
    SynthesisOut,
)


def _project_sync(principal: Principal, requested: str | None) -> str:
    project_id = choose_project(principal, requested)
    with session_scope() as session:
        return get_accessible_project(session, principal, project_id).id


async def resolve_project(principal: Principal, requested: str | None) -> str:
    """The project a request acts in (named, or the key's only one), checked against the key's scope."""
    return await asyncio.to_thread(_project_sync, principal, requested)


def _load_rubric(principal: Principal, rubric_id: str) -> StoredRubric:
    with session_scope() as session:
        record = session.get(StoredRubric, rubric_id)
        # A rubric of a project outside the key's scope is reported absent, like the gateway does.
        if record is None or not principal.can_access(record.project_id):
            raise NotFound(f"rubric {rubric_id!r} not found", field="rubric_id")
        session.expunge(record)
        return record


async def get_stored_rubric(principal: Principal, rubric_id: str) -> StoredRubric:
    return await asyncio.to_thread(_load_rubric, principal, rubric_id)


async def resolve_rubric(principal: Principal, rubric: Rubric | None, rubric_text: str | None,
                         rubric_id: str | None) -> tuple[Rubric | None, str | None]:
    """The rubric a judge request names (inline, as text, or stored), with its stored id if any."""
    if rubric is not None:
        return rubric, None
    if rubric_text is not None:
        try:
            return parse_rubric_text(rubric_text), None
        except ValueError as exc:
            raise InvalidInput(f"rubric_text: {exc}", field="rubric_text") from exc
    if rubric_id is not None:
        record = await get_stored_rubric(principal, rubric_id)
        return store.rubric_of(record), record.id
    return None, None


def _lookup(project_id: str, instruction: str, version: str) -> tuple[Rubric, str, int] | None:
    with session_scope() as session:
        record = store.latest_rubric(session, project_id, instruction, version)
        return (store.rubric_of(record), record.id, record.version) if record is not None else None


def _save(project_id: str, instruction: str, version: str, rubric: Rubric, method: str) -> tuple[str, int]:
    with session_scope() as session:
        record = store.save_rubric(session, project_id, instruction, version, rubric, method)
        return record.id, record.version


async def generate_cached(project_id: str, body: GenerateRubricRequest, backend: ChatBackend) -> GeneratedRubric:
    """Reuse the newest stored rubric for (instruction, generator version), or generate and store one.

    Only a successful rubric is stored; a failure is returned with its status and cause.
    """
    version = generator_version(body.method)
    if body.use_cache:
        hit = await asyncio.to_thread(_lookup, project_id, body.instruction, version)
        if hit is not None:
            rubric, rubric_id, number = hit
            return GeneratedRubric(status="ok", rubric=rubric, method=body.method, rubric_id=rubric_id,
                                   version=number, generator_version=version, cached=True)
    generator = backend if body.method == "generator" else None
    diagnoser = backend if body.method == "diagnose_synthesise" else None
    result = await generate_rubric(body.instruction, body.response_a, body.response_b, generator=generator,
                                   diagnoser=diagnoser, seed=body.seed)
    out = GeneratedRubric(**result.model_dump(), generator_version=version)
    if result.rubric is not None:
        out.rubric_id, out.version = await asyncio.to_thread(_save, project_id, body.instruction, version,
                                                             result.rubric, body.method)
    return out


async def synthesise(principal: Principal, body: SynthesiseRequest, backend: ChatBackend) -> SynthesisOut:
    project_id = await resolve_project(principal, body.project_id) if body.store else None
    result = await synthesise_rubric(backend, body.instruction, body.diagnosis_a, body.diagnosis_b,
                                     expected_winner=body.expected_winner, seed=body.seed,
                                     max_rules=body.max_rules, max_principles=body.max_principles)
    out = SynthesisOut(**result.model_dump())
    if project_id is not None and result.rubric is not None:
        out.rubric_id, out.version = await asyncio.to_thread(
            _save, project_id, body.instruction, generator_version("diagnose_synthesise"), result.rubric,
            "diagnose_synthesise")
    return out


async def judge_pair(principal: Principal, body: PairwiseJudgeRequest, backend: ChatBackend) -> PairwiseJudgeResponse:
    """Both-order judgment with the named rubric, or with one generated (and cached) for the pair."""
    if body.project_id is not None:
        ensure_project_access(principal, body.project_id)
    rubric, rubric_id = await resolve_rubric(principal, body.rubric, body.rubric_text, body.rubric_id)
    cached: bool | None = None
    if rubric is None:
        project_id = await resolve_project(principal, body.project_id)
        generated = await generate_cached(project_id, GenerateRubricRequest(
            instruction=body.instruction, response_a=body.response_a, response_b=body.response_b,
            method=body.method, seed=body.seed, use_cache=body.use_cache), backend)
        if generated.rubric is None:
            return PairwiseJudgeResponse(status=generated.status,
                                         error=f"rubric generation failed: {generated.error}")
        rubric, rubric_id, cached = generated.rubric, generated.rubric_id, generated.cached
    verdict = await judge_pairwise(backend, body.instruction, body.response_a, body.response_b, rubric)
    return PairwiseJudgeResponse(**verdict.model_dump(), rubric=rubric, rubric_id=rubric_id, rubric_cached=cached)


async def judge_point(principal: Principal, body: PointwiseJudgeRequest,
                      backend: ChatBackend) -> PointwiseJudgeResponse:
    """A scalar reward in [0, 1] for one response; an unparseable judge output has no score."""
    if body.project_id is not None:
        ensure_project_access(principal, body.project_id)
    rubric, rubric_id = await resolve_rubric(principal, body.rubric, body.rubric_text, body.rubric_id)
    assert rubric is not None  # the request model requires one of the three
    judgment = await judge_pointwise(backend, body.instruction, body.response, rubric)
    return PointwiseJudgeResponse(**judgment.model_dump(), rubric_id=rubric_id)
