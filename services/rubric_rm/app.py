"""rubric_rm routes: CDRRM diagnosis, rubric synthesis/filtering/generation, rubric-guided judging, jobs.

Every LLM failure (unreachable backend, timeout, unparseable output) is a result with a
``status`` and its cause, never a hang or a 500; bad input is a 4xx naming the field.
"""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Header, Path
from fastapi.responses import Response

from services.common import idempotency
from services.common.app_factory import create_service_app
from services.common.auth import Principal, require_roles
from services.common.llm.types import ChatBackend
from services.common.models import Role
from services.common.tasks import BrokerUnavailable
from services.common.validation import ID_PATTERN
from services.rubric_rm import jobs, operations, tasks
from services.rubric_rm.backends import judge_backend
from services.rubric_rm.pipeline import consistency_filter, diagnose_response, run_cdrrm_pipeline
from services.rubric_rm.schemas import (
    DiagnoseRequest,
    DiagnosisResult,
    FilterReport,
    FilterRequest,
    GeneratedRubric,
    GenerateRubricRequest,
    JobOut,
    JobRequest,
    PairwiseJudgeRequest,
    PairwiseJudgeResponse,
    PointwiseJudgeRequest,
    PointwiseJudgeResponse,
    SftExportRequest,
    StoredRubricOut,
    SynthesiseRequest,
    SynthesisOut,
)
from services.rubric_rm.sft_export import export_generator_sft

IdPath = Annotated[str, Path(pattern=ID_PATTERN, description="An id (32 hex characters).")]
trainers = require_roles(Role.admin, Role.trainer)
# The judge endpoints are what the verifier's rubric grader calls with the scoring caller's key.
judges = require_roles(Role.admin, Role.trainer, Role.reward)
router = APIRouter(tags=["rubric_rm"])
# The LLM backend as a dependency: settings pick it; tests override `judge_backend` with a test double.
Backend = Annotated[ChatBackend, Depends(judge_backend)]


async def _filter(body: FilterRequest, backend: ChatBackend) -> FilterReport:
    if body.examples is not None:
        return consistency_filter(body.examples)
    assert body.pairs is not None
    return await run_cdrrm_pipeline(backend, body.pairs, seed=body.seed)


@router.post("/v1/diagnose", response_model=DiagnosisResult)
async def diagnose(body: DiagnoseRequest, backend: Backend,
                   _principal: Principal = Depends(trainers)) -> DiagnosisResult:
    """CDRRM step 1: a structured diagnosis of one response."""
    return await diagnose_response(backend, body.instruction, body.response)


@router.post("/v1/rubrics/synthesise", response_model=SynthesisOut)
async def synthesise(body: SynthesiseRequest, backend: Backend,
                     principal: Principal = Depends(trainers)) -> SynthesisOut:
    """CDRRM step 2: a rubric from both diagnoses, blind to which response won (stored with `store`)."""
    return await operations.synthesise(principal, body, backend)


@router.post("/v1/rubrics/filter", response_model=FilterReport)
async def filter_rubrics(body: FilterRequest, backend: Backend,
                         _principal: Principal = Depends(trainers)) -> FilterReport:
    """CDRRM step 3: drop every pair of an instruction if any of its rubrics predicts the wrong winner."""
    return await _filter(body, backend)


@router.post("/v1/rubrics/generate", response_model=GeneratedRubric)
async def generate(body: GenerateRubricRequest, backend: Backend,
                   principal: Principal = Depends(trainers)) -> GeneratedRubric:
    """A rubric for a new pair, reused from the store when the instruction and generator version match."""
    project_id = await operations.resolve_project(principal, body.project_id)
    return await operations.generate_cached(project_id, body, backend)


@router.get("/v1/rubrics/{rubric_id}", response_model=StoredRubricOut)
async def get_rubric(rubric_id: IdPath, principal: Principal = Depends(trainers)) -> StoredRubricOut:
    record = await operations.get_stored_rubric(principal, rubric_id)
    return StoredRubricOut.model_validate(record, from_attributes=True)


@router.post("/v1/rubrics/sft-export", responses={200: {"content": {"application/x-ndjson": {}}}})
async def sft_export(body: SftExportRequest, backend: Backend, _principal: Principal = Depends(trainers)) -> Response:
    """The rubric generator's SFT set as chat JSONL, the chosen answer first in exactly half the records.

    Counts are in the headers `X-Chosen-First`, `X-Chosen-Second`, `X-Skipped` (examples without a rubric).
    """
    examples = body.examples if body.examples is not None else (await _filter(body, backend)).kept
    export = export_generator_sft(examples, seed=body.seed)
    text = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in export.records)
    return Response(text, media_type="application/x-ndjson",
                    headers={"X-Chosen-First": str(export.chosen_first), "X-Chosen-Second": str(export.chosen_second),
                             "X-Skipped": str(export.skipped)})


@router.post("/v1/judge/pairwise", response_model=PairwiseJudgeResponse)
async def judge_pairwise(body: PairwiseJudgeRequest, backend: Backend,
                         principal: Principal = Depends(judges)) -> PairwiseJudgeResponse:
    """Judge in both orders with a rubric (given, stored, or generated); the verdict is order-invariant."""
    return await operations.judge_pair(principal, body, backend)


@router.post("/v1/judge/pointwise", response_model=PointwiseJudgeResponse)
async def judge_pointwise(body: PointwiseJudgeRequest, backend: Backend,
                          principal: Principal = Depends(judges)) -> PointwiseJudgeResponse:
    """A scalar reward in [0, 1]: the share of hard rules passed, principles as a tie-break."""
    return await operations.judge_point(principal, body, backend)


@router.post("/v1/jobs", response_model=JobOut, status_code=202,
             responses={503: {"description": "The task broker is unreachable; nothing was created. Retry after "
                                             "`Retry-After` seconds with the same Idempotency-Key."}})
async def create_job(body: JobRequest, principal: Principal = Depends(trainers),
                     idempotency_key: str | None = Header(
                         default=None, alias="Idempotency-Key", min_length=1, max_length=200,
                         description="Send one so a retry (after a 503 or a lost answer) never creates a second job."),
                     ) -> JobOut | Response:
    """Run a large judge or generate batch on a worker; poll `GET /v1/jobs/{id}` for progress and results.

    The job is committed before it is queued; if the broker is down the job is withdrawn and the answer
    is 503 with `Retry-After` (error field `broker`). A job whose submission is lost otherwise (the
    service died in between) is submitted by the workers' sweeper.
    """
    project_id = await operations.resolve_project(principal, body.project_id)
    created = await asyncio.to_thread(jobs.create_job, principal, body, project_id, idempotency_key)
    if isinstance(created, idempotency.Stored):
        return Response(created.body, status_code=created.status_code, media_type="application/json",
                        headers={idempotency.REPLAYED_HEADER: "true"})
    try:
        await asyncio.to_thread(tasks.submit_job, created.id)
    except BrokerUnavailable:
        if await asyncio.to_thread(jobs.withdraw_job, created.id, project_id, idempotency_key):
            raise
    return jobs.job_out(created)


@router.get("/v1/jobs/{job_id}", response_model=JobOut)
async def get_job(job_id: IdPath, principal: Principal = Depends(trainers)) -> JobOut:
    return await asyncio.to_thread(jobs.get_job, principal, job_id)


def create_app() -> FastAPI:
    return create_service_app("rubric_rm", [router], title="rewardhub rubric_rm",
                              description="CDRRM: contrast-driven rubric synthesis and rubric-guided LLM judging.")
