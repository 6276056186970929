"""CDRRM rubric routes: diagnosis, synthesis, the consistency filter, generation, the store, the SFT export.

Every LLM failure (unreachable backend, timeout, unparseable output) is a result with a
``status`` and its cause, never a hang or a 500; bad input is a 4xx naming the field.
"""

from __future__ import annotations

import json

from fastapi import APIRouter
from fastapi.responses import Response

from services.common.auth import TrainerOrAdmin
from services.common.llm.types import ChatBackend
from services.common.pagination import DEFAULT_LIMIT, CursorParam, LimitParam, Page
from services.common.validation import RubricIdPath
from services.rubric_rm import operations, store
from services.rubric_rm.deps import Backend, ListedProjects, SessionDep
from services.rubric_rm.pipeline import consistency_filter, diagnose_response, run_cdrrm_pipeline
from services.rubric_rm.schemas import (
    DiagnoseRequest,
    DiagnosisResult,
    FilterReport,
    FilterRequest,
    GeneratedRubric,
    GenerateRubricRequest,
    SftExportRequest,
    StoredRubricOut,
    SynthesiseRequest,
    SynthesisOut,
)
from services.rubric_rm.sft_export import export_generator_sft, raise_for_llm_failures

router = APIRouter(tags=["rubric_rm"])


async def _filter(body: FilterRequest, backend: ChatBackend) -> FilterReport:
    if body.examples is not None:
        return consistency_filter(body.examples)
    assert body.pairs is not None
    return await run_cdrrm_pipeline(backend, body.pairs, seed=body.seed)


@router.post("/v1/diagnose", response_model=DiagnosisResult)
async def diagnose(body: DiagnoseRequest, backend: Backend, _principal: TrainerOrAdmin) -> DiagnosisResult:
    """CDRRM step 1: a structured diagnosis of one response."""
    return await diagnose_response(backend, body.instruction, body.response)


@router.post("/v1/rubrics/synthesise", response_model=SynthesisOut)
async def synthesise(body: SynthesiseRequest, backend: Backend, principal: TrainerOrAdmin) -> SynthesisOut:
    """CDRRM step 2: a rubric from both diagnoses, blind to which response won (stored with `store`)."""
    return await operations.synthesise(principal, body, backend)


@router.post("/v1/rubrics/filter", response_model=FilterReport)
async def filter_rubrics(body: FilterRequest, backend: Backend, _principal: TrainerOrAdmin) -> FilterReport:
    """CDRRM step 3: drop every pair of an instruction if any of its rubrics predicts the wrong winner."""
    return await _filter(body, backend)


@router.post("/v1/rubrics/generate", response_model=GeneratedRubric)
async def generate(body: GenerateRubricRequest, backend: Backend, principal: TrainerOrAdmin) -> GeneratedRubric:
    """A rubric for a new pair, reused from the store when the instruction and generator version match."""
    project_id = await operations.resolve_project(principal, body.project_id)
    return await operations.generate_cached(project_id, body, backend)


@router.get("/v1/rubrics", response_model=Page[StoredRubricOut])
def list_rubrics(projects: ListedProjects, session: SessionDep, cursor: CursorParam = None,
                 limit: LimitParam = DEFAULT_LIMIT) -> Page[StoredRubricOut]:
    """The stored rubrics (every version) of the key's projects, or of `project_id`, oldest first."""
    return store.list_rubrics(session, projects, cursor, limit)


@router.get("/v1/rubrics/{rubric_id}", response_model=StoredRubricOut)
async def get_rubric(rubric_id: RubricIdPath, principal: TrainerOrAdmin) -> StoredRubricOut:
    record = await operations.get_stored_rubric(principal, rubric_id)
    return StoredRubricOut.model_validate(record, from_attributes=True)


@router.post("/v1/rubrics/sft-export", responses={
    200: {"content": {"application/x-ndjson": {}}},
    502: {"description": "The LLM answered, but with nothing usable for any pair (error field `llm`)."},
    503: {"description": "The LLM backend failed for some pairs; nothing was exported. Retry after `Retry-After`."}})
async def sft_export(body: SftExportRequest, backend: Backend, _principal: TrainerOrAdmin) -> Response:
    """The rubric generator's SFT set as chat JSONL, the chosen answer first in exactly half the records.

    Counts are in the headers `X-Chosen-First`, `X-Chosen-Second`, `X-Skipped` (examples without a rubric).
    Built from `pairs`, the export fails as a whole (502/503) when the LLM does, never a 200 missing records.
    """
    if body.examples is not None:
        examples = body.examples
    else:
        report = await _filter(body, backend)
        raise_for_llm_failures([*report.kept, *report.dropped])
        examples = report.kept
    export = export_generator_sft(examples, seed=body.seed)
    text = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in export.records)
    return Response(text, media_type="application/x-ndjson",
                    headers={"X-Chosen-First": str(export.chosen_first), "X-Chosen-Second": str(export.chosen_second),
                             "X-Skipped": str(export.skipped)})
