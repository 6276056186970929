"""Dataset routes: upload a project's prompt datasets and list them."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile as StarletteUploadFile

from services.common.auth import TrainerOrAdmin, get_accessible_project
from services.common.errors import InvalidInput
from services.common.pagination import DEFAULT_LIMIT, CursorParam, LimitParam, Page
from services.common.validation import ProjectIdPath
from services.trainer import datasets
from services.trainer.deps import DatasetFormat, DatasetName, SessionDep
from services.trainer.schemas import DatasetOut

router = APIRouter(prefix="/v1/projects/{project_id}/datasets", tags=["datasets"])


async def _upload_bytes(request: Request) -> bytes:
    """The dataset's bytes: a multipart ``file`` part, or the raw body (JSONL or Parquet)."""
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        form = await request.form()
        part = form.get("file")
        if not isinstance(part, StarletteUploadFile):
            raise InvalidInput("file: a multipart upload needs its dataset in a part named 'file'", field="file")
        return await part.read()
    return await request.body()


@router.post("", response_model=DatasetOut, status_code=201,
             responses={200: {"model": DatasetOut, "description": "The same dataset was uploaded before."}})
async def upload_dataset(project_id: ProjectIdPath, request: Request, response: Response, name: DatasetName,
                         principal: TrainerOrAdmin, session: SessionDep, format: DatasetFormat = None) -> DatasetOut:
    """Keep a veRL-schema dataset (JSONL or Parquet) in the project's area; runs of the project name it.

    Idempotent by content: the same bytes under the same name again answer 200 with the stored dataset.
    """
    await run_in_threadpool(get_accessible_project, session, principal, project_id)
    upload = datasets.Upload(name=name, content=await _upload_bytes(request), declared_format=format)
    dataset, new = await run_in_threadpool(datasets.store, session, project_id, upload)
    if not new:
        response.status_code = 200
    return DatasetOut.from_dataset(dataset)


@router.get("", response_model=Page[DatasetOut])
def list_datasets(project_id: ProjectIdPath, principal: TrainerOrAdmin, session: SessionDep,
                  cursor: CursorParam = None, limit: LimitParam = DEFAULT_LIMIT) -> Page[DatasetOut]:
    """The project's datasets by name, a page at a time."""
    get_accessible_project(session, principal, project_id)
    rows, next_cursor = datasets.list_page(session, project_id, cursor, limit)
    return Page(data=[DatasetOut.from_dataset(d) for d in rows], next_cursor=next_cursor)
