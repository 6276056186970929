"""Corpus routes: create, list, read and delete corpora; upload passages (JSONL); search."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile as StarletteUploadFile

from services.common import idempotency
from services.common.auth import TrainerOrAdmin
from services.common.errors import InvalidInput
from services.common.idempotency import replayed_response
from services.common.pagination import DEFAULT_LIMIT, CursorParam, LimitParam, Page
from services.common.validation import IdempotencyKeyHeader
from services.retrieval import corpora
from services.retrieval.deps import CorpusIdPath, ListedProjects, SessionDep, UploadMode
from services.retrieval.schemas import (
    CorpusCreate,
    CorpusOut,
    DocumentOut,
    SearchRequest,
    SearchResponse,
    UploadOut,
)

router = APIRouter(prefix="/v1/corpora", tags=["retrieval"])


async def _upload_bytes(request: Request) -> bytes:
    """The JSONL: a multipart ``file`` part, or the raw body."""
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        form = await request.form()
        part = form.get("file")
        if not isinstance(part, StarletteUploadFile):
            raise InvalidInput("file: a multipart upload needs its JSONL in a part named 'file'", field="file")
        return await part.read()
    return await request.body()


@router.post("", response_model=CorpusOut, status_code=201)
def create_corpus(body: CorpusCreate, principal: TrainerOrAdmin, session: SessionDep,
                  idempotency_key: IdempotencyKeyHeader = None) -> CorpusOut | Response:
    """A new, empty corpus of the project (named, or the key's only one)."""
    created = corpora.create(session, principal, body, idempotency_key)
    return replayed_response(created) if isinstance(created, idempotency.Stored) else created


@router.get("", response_model=Page[CorpusOut])
def list_corpora(projects: ListedProjects, session: SessionDep, cursor: CursorParam = None,
                 limit: LimitParam = DEFAULT_LIMIT) -> Page[CorpusOut]:
    """The corpora of the key's projects (or of `project_id`), oldest first."""
    return corpora.list_corpora(session, projects, cursor, limit)


@router.get("/{corpus_id}", response_model=CorpusOut)
def get_corpus(corpus_id: CorpusIdPath, principal: TrainerOrAdmin, session: SessionDep) -> CorpusOut:
    return corpora.corpus_out(corpora.get_corpus(session, principal, corpus_id))


@router.delete("/{corpus_id}", status_code=204)
def delete_corpus(corpus_id: CorpusIdPath, principal: TrainerOrAdmin, session: SessionDep) -> Response:
    """The corpus, its passages and its index files."""
    corpora.delete_corpus(session, principal, corpus_id)
    return Response(status_code=204)


@router.post("/{corpus_id}/documents", response_model=UploadOut, openapi_extra={
    "requestBody": {"description": "JSONL (send it as application/x-ndjson, text/plain or a multipart file)",
                    "content": {"text/plain": {"schema": {"type": "string"}}}}})
async def upload_documents(corpus_id: CorpusIdPath, request: Request, principal: TrainerOrAdmin,
                           session: SessionDep, mode: UploadMode = "append",
                           idempotency_key: IdempotencyKeyHeader = None) -> UploadOut | Response:
    """Passages as JSONL (`{"id", "title"?, "text"}` a line; raw body or a multipart `file`); reindexes.

    A passage with an id already in the corpus replaces it; `mode=replace` makes the upload the whole
    corpus. A bad line is a 422 naming it (`documents[line 3].text`) and nothing is stored.
    """
    content = await _upload_bytes(request)
    done = await run_in_threadpool(corpora.upload, session, principal, corpus_id, content, mode, idempotency_key)
    return replayed_response(done) if isinstance(done, idempotency.Stored) else done


@router.get("/{corpus_id}/documents", response_model=Page[DocumentOut])
def list_documents(corpus_id: CorpusIdPath, principal: TrainerOrAdmin, session: SessionDep,
                   cursor: CursorParam = None, limit: LimitParam = DEFAULT_LIMIT) -> Page[DocumentOut]:
    """The corpus' passages in index order."""
    return corpora.list_documents(session, principal, corpus_id, cursor, limit)


@router.post("/{corpus_id}/search", response_model=SearchResponse)
def search(corpus_id: CorpusIdPath, body: SearchRequest, principal: TrainerOrAdmin,
           session: SessionDep) -> SearchResponse:
    """The best `k` passages for `query` by BM25 (passages sharing no term with it are left out)."""
    return corpora.search(session, principal, corpus_id, body)
