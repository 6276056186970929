"""Export routes: preference-pair labels as JSONL in the pair format rubric_rm's pipeline reads."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from services.annotation import exports, projects
from services.annotation.deps import ProjectPath, SessionDep, Trainer
from services.annotation.label_schema import LabelSchema, PreferencePairQuestion
from services.common.db import session_scope

router = APIRouter(prefix="/v1/annotation", tags=["exports"])


def _fetch(annotation_project_id: str, question: PreferencePairQuestion):  # type: ignore[no-untyped-def]
    def fetch(after: int) -> tuple[list[dict[str, str]], int | None]:
        with session_scope() as session:
            return exports.preference_pairs(session, annotation_project_id, question, after)

    return fetch


@router.get("/projects/{annotation_project_id}/exports/preference-pairs",
            responses={200: {"content": {"application/x-ndjson": {}}}})
def export_preference_pairs(annotation_project_id: ProjectPath, principal: Trainer, session: SessionDep,
                            question_id: Annotated[str | None, Query(max_length=64, description=(
                                "The preference_pair question (needed only when the schema has several)."))] = None,
                            ) -> StreamingResponse:
    """Final preference labels as JSONL, one `{instruction, response_a, response_b, winner, instruction_id,
    pair_id}` per line (rubric_rm's `PreferencePair`), in label-feed order; ties are left out."""
    project = projects.accessible(session, principal, annotation_project_id)
    question = exports.preference_question(LabelSchema.model_validate(project.label_schema), question_id)
    return StreamingResponse(exports.stream_pairs(_fetch(annotation_project_id, question)),
                             media_type="application/x-ndjson",
                             headers={"Content-Disposition": f'attachment; filename="preference-pairs-'
                                                             f'{annotation_project_id}.jsonl"'})
