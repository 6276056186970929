"""Export routes: labels and adjudications (JSONL, CSV, Parquet, `datasets`), veRL's parquet, and
preference-pair labels as JSONL in the pair format rubric_rm's pipeline reads."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from services.annotation import browse, data_exports, exports, projects
from services.annotation.deps import BrowseFilters, ProjectPath, SessionDep, Trainer
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


_MEDIA = {"jsonl": ("application/x-ndjson", "jsonl"), "csv": ("text/csv; charset=utf-8", "csv"),
          "parquet": ("application/vnd.apache.parquet", "parquet"),
          "datasets": ("application/vnd.apache.parquet", "parquet"), "verl": ("application/vnd.apache.parquet", "parquet")}


def _batches(annotation_project_id: str, schema: LabelSchema, filters: browse.Filters,
             kind: str) -> Iterator[list[dict[str, Any]]]:
    """The records, one short session per batch (a slow client never holds a transaction open)."""
    def fetch(position: Any) -> tuple[list[dict[str, Any]], Any]:
        with session_scope() as session:
            tasks = browse.filtered(session, annotation_project_id, schema, filters)
            if kind == "raw":
                return data_exports.raw_batch(session, annotation_project_id, tasks, position)
            return data_exports.final_batch(session, annotation_project_id, tasks, position)

    return data_exports.records(fetch, ("annotation", "") if kind == "raw" else 0)


def _download(body: Iterator[bytes], fmt: str, name: str) -> StreamingResponse:
    media, suffix = _MEDIA[fmt]
    return StreamingResponse(body, media_type=media,
                             headers={"Content-Disposition": f'attachment; filename="{name}.{suffix}"'})


@router.get("/projects/{annotation_project_id}/exports/labels",
            responses={200: {"content": {m: {} for m, _ in _MEDIA.values()}}})
def export_labels(annotation_project_id: ProjectPath, principal: Trainer, session: SessionDep,
                  filters: BrowseFilters,
                  format: Annotated[Literal["jsonl", "csv", "parquet", "datasets"], Query(description=(
                      "datasets: the Parquet file, which datasets.Dataset.from_parquet loads."))] = "jsonl",
                  kind: Annotated[Literal["final", "raw"], Query(description=(
                      "final: one row per labelled task; raw: every annotation, then every adjudication."))] = "final",
                  csv_safe: Annotated[bool, Query(description=(
                      "csv: prefix text cells starting with = + - @ (a spreadsheet would run them as formulas) "
                      "with ' . Off by default: it changes the text, and the exports are data for training."))] = False,
                  ) -> StreamingResponse:
    """Labels and adjudications of the tasks the filters keep (the browser's filters), streamed page by page.
    CSV and Parquet flatten `values` one column per question (docs/annotation_data.md)."""
    project = projects.accessible(session, principal, annotation_project_id)
    schema = LabelSchema.model_validate(project.label_schema)
    browse.filtered(session, project.id, schema, filters)  # a bad filter is a 422 before the stream starts
    batches = _batches(project.id, schema, filters, kind)
    base = data_exports.RAW_BASE if kind == "raw" else data_exports.FINAL_BASE
    columns = data_exports.flat_columns(schema)
    if format == "jsonl":
        body = data_exports.stream_jsonl(batches)
    elif format == "csv":
        body = data_exports.stream_csv(batches, columns, base, spreadsheet=csv_safe)
    else:
        body = data_exports.stream_flat_parquet(batches, columns, base)
    return _download(body, format, f"labels-{kind}-{project.id}")


@router.get("/projects/{annotation_project_id}/exports/verl",
            responses={200: {"content": {"application/vnd.apache.parquet": {}}}})
def export_verl(annotation_project_id: ProjectPath, principal: Trainer, session: SessionDep, filters: BrowseFilters,
                question_id: Annotated[str | None, Query(max_length=64, description=(
                    "The question whose final value is the ground truth; unset: the math answer."))] = None,
                data_source: Annotated[str | None, Query(max_length=200, description=(
                    "veRL's data_source (picks its reward function); unset: the project's name."))] = None,
                ability: Annotated[str, Query(max_length=100)] = "math",
                split: Annotated[str, Query(max_length=100, description="extra_info.split")] = "train",
                ) -> StreamingResponse:
    """Final answers in veRL's parquet schema: data_source, prompt (a chat list), ability,
    reward_model {style: rule, ground_truth}, extra_info {split, index, prompt_id, task_id}."""
    project = projects.accessible(session, principal, annotation_project_id)
    schema = LabelSchema.model_validate(project.label_schema)
    browse.filtered(session, project.id, schema, filters)
    data_exports.check_question(schema, question_id)
    if question_id is None:
        data_exports.verl_ground_truth(schema, {}, None)  # no math question: 422 before the stream
    body = data_exports.stream_verl(_batches(project.id, schema, filters, "final"), schema, question_id,
                                    data_source or project.name, ability, split)
    return _download(body, "verl", f"verl-{project.id}")
