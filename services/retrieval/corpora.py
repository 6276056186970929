"""What the corpus routes do: create, list, read, delete corpora, upload passages, search.

Tenancy as everywhere: a corpus of a project outside the key's scope is reported absent (404 naming
``corpus_id``). Creates and uploads take an ``Idempotency-Key`` (transaction mode of
``services.common.idempotency``: the stored answer commits with the rows).
"""

from __future__ import annotations

import hashlib

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from services.common import idempotency
from services.common.auth import Principal, choose_project, get_accessible_project
from services.common.db import utcnow
from services.common.errors import Conflict, NotFound
from services.common.models import new_id
from services.common.pagination import Page, keyset_page
from services.common.settings import get_settings
from services.retrieval import index_store
from services.retrieval.jsonl import parse_documents
from services.retrieval.models import Corpus, CorpusDocument
from services.retrieval.schemas import (
    CorpusCreate,
    CorpusOut,
    DocumentOut,
    SearchHit,
    SearchRequest,
    SearchResponse,
    UploadOut,
)

CREATE_ENDPOINT = "retrieval/corpora"
ID_BATCH = 500


def corpus_out(corpus: Corpus) -> CorpusOut:
    return CorpusOut.model_validate(corpus, from_attributes=True)


def create(session: Session, principal: Principal, body: CorpusCreate,
           idempotency_key: str | None) -> CorpusOut | idempotency.Stored:
    project_id = get_accessible_project(session, principal, choose_project(principal, body.project_id)).id
    request_hash = idempotency.fingerprint(body.model_dump(mode="json"))
    if idempotency_key is not None:
        stored = idempotency.replay(session, project_id, CREATE_ENDPOINT, idempotency_key, request_hash)
        if stored is not None:
            return stored
    corpus = Corpus(project_id=project_id, name=body.name, description=body.description, document_count=0,
                    index_key=new_id())
    try:
        with session.begin_nested():
            session.add(corpus)
            session.flush()
    except IntegrityError as exc:
        raise Conflict(f"this project already has a corpus named {body.name!r}", field="name") from exc
    out = corpus_out(corpus)
    if idempotency_key is not None:
        idempotency.remember(session, project_id, CREATE_ENDPOINT, idempotency_key, request_hash, 201,
                             out.model_dump_json())
    return out


def get_corpus(session: Session, principal: Principal, corpus_id: str, *, for_update: bool = False) -> Corpus:
    query = select(Corpus).where(Corpus.id == corpus_id)
    if for_update:
        query = query.with_for_update()  # uploads to one corpus take turns (PostgreSQL; SQLite serialises writes)
    corpus = session.scalar(query)
    if corpus is None or not principal.can_access(corpus.project_id):
        raise NotFound(f"corpus {corpus_id!r} not found", field="corpus_id")
    return corpus


def list_corpora(session: Session, projects: set[str] | None, cursor: str | None, limit: int) -> Page[CorpusOut]:
    query = select(Corpus)
    if projects is not None:
        query = query.where(Corpus.project_id.in_(projects))
    rows, next_cursor = keyset_page(session, query, (Corpus.created_at, Corpus.id), cursor, limit)
    return Page(data=[corpus_out(c) for c in rows], next_cursor=next_cursor)


def delete_corpus(session: Session, principal: Principal, corpus_id: str) -> None:
    corpus = get_corpus(session, principal, corpus_id, for_update=True)
    session.execute(delete(CorpusDocument).where(CorpusDocument.corpus_id == corpus.id))
    session.delete(corpus)
    session.flush()
    index_store.forget(corpus.id)


def list_documents(session: Session, principal: Principal, corpus_id: str, cursor: str | None,
                   limit: int) -> Page[DocumentOut]:
    corpus = get_corpus(session, principal, corpus_id)
    query = select(CorpusDocument).where(CorpusDocument.corpus_id == corpus.id)
    rows, next_cursor = keyset_page(session, query, (CorpusDocument.position,), cursor, limit)
    return Page(data=[DocumentOut(id=r.doc_id, title=r.title, text=r.text) for r in rows], next_cursor=next_cursor)


def upload(session: Session, principal: Principal, corpus_id: str, content: bytes, mode: str,
           idempotency_key: str | None) -> UploadOut | idempotency.Stored:
    """Add (or, with ``mode=replace``, set) the corpus' passages and rebuild its index.

    A passage whose id is already in the corpus replaces that passage in place (same position).
    """
    corpus = get_corpus(session, principal, corpus_id, for_update=True)
    endpoint = f"retrieval/corpora/{corpus.id}/documents"
    request_hash = idempotency.fingerprint({"sha256": hashlib.sha256(content).hexdigest(), "mode": mode})
    if idempotency_key is not None:
        stored = idempotency.replay(session, corpus.project_id, endpoint, idempotency_key, request_hash)
        if stored is not None:
            return stored
    settings = get_settings()
    documents = parse_documents(content, max_text_chars=settings.retrieval_max_document_chars,
                                max_documents=settings.retrieval_max_documents_per_upload)
    replaced = 0
    if mode == "replace":
        session.execute(delete(CorpusDocument).where(CorpusDocument.corpus_id == corpus.id))
        session.add_all(CorpusDocument(corpus_id=corpus.id, doc_id=d.id, position=i, title=d.title, text=d.text)
                        for i, d in enumerate(documents))
    else:
        existing: dict[str, CorpusDocument] = {}
        ids = [d.id for d in documents]
        for start in range(0, len(ids), ID_BATCH):  # bounded IN lists (SQLite and psycopg cap parameters)
            existing.update((row.doc_id, row) for row in session.scalars(select(CorpusDocument).where(
                CorpusDocument.corpus_id == corpus.id, CorpusDocument.doc_id.in_(ids[start:start + ID_BATCH]))))
        last = session.scalar(select(func.max(CorpusDocument.position)).where(CorpusDocument.corpus_id == corpus.id))
        position = 0 if last is None else last + 1
        for document in documents:
            row = existing.get(document.id)
            if row is not None:
                row.title, row.text = document.title, document.text
                replaced += 1
            else:
                session.add(CorpusDocument(corpus_id=corpus.id, doc_id=document.id, position=position,
                                           title=document.title, text=document.text))
                position += 1
    session.flush()
    corpus.document_count = session.scalar(select(func.count()).select_from(CorpusDocument)
                                           .where(CorpusDocument.corpus_id == corpus.id)) or 0
    corpus.index_key, corpus.updated_at = new_id(), utcnow()
    session.flush()
    index_store.build(session, corpus)
    index_store.prune(corpus.id, keep=corpus.index_key)
    out = UploadOut(added=len(documents) - replaced, replaced=replaced, mode="replace" if mode == "replace"
                    else "append", corpus=corpus_out(corpus))
    if idempotency_key is not None:
        idempotency.remember(session, corpus.project_id, endpoint, idempotency_key, request_hash, 200,
                             out.model_dump_json())
    return out


def search(session: Session, principal: Principal, corpus_id: str, body: SearchRequest) -> SearchResponse:
    corpus = get_corpus(session, principal, corpus_id)
    hits = index_store.get(session, corpus).search(body.query, body.k)
    if not hits:
        return SearchResponse(results=[])
    rows = {row.doc_id: row for row in session.scalars(select(CorpusDocument).where(
        CorpusDocument.corpus_id == corpus.id, CorpusDocument.doc_id.in_([h.id for h in hits])))}
    return SearchResponse(results=[SearchHit(id=h.id, title=rows[h.id].title, text=rows[h.id].text, score=h.score)
                                   for h in hits if h.id in rows])
