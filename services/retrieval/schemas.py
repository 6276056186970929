"""Pydantic I/O of the retrieval API: corpora, uploads, passages and search."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from services.common.validation import ID_PATTERN, NameText, StoredText

MAX_K = 100


class CorpusCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: NameText = Field(min_length=1, max_length=200, description="Unique within the project.")
    description: StoredText = Field(default="", max_length=2000)
    project_id: str | None = Field(default=None, pattern=ID_PATTERN,
                                   description="The corpus' project; optional when the key has only one.")


class CorpusOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    project_id: str
    name: str
    description: str
    document_count: int
    created_at: datetime
    updated_at: datetime


class UploadOut(BaseModel):
    """What an upload did: passages added and replaced (same id), and the corpus after reindexing."""

    added: int
    replaced: int
    mode: Literal["append", "replace"]
    corpus: CorpusOut


class DocumentOut(BaseModel):
    id: str
    title: str
    text: str


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    query: StoredText = Field(min_length=1, max_length=4000)
    k: int = Field(default=5, ge=1, le=MAX_K, description=f"Passages to return (1–{MAX_K}).")


class SearchHit(BaseModel):
    id: str
    title: str
    text: str
    score: float = Field(description="BM25 score (Lucene variant, k1 = 1.5, b = 0.75); above 0.")


class SearchResponse(BaseModel):
    results: list[SearchHit] = Field(description="Best first; fewer than k when fewer passages share a term "
                                                 "with the query.")
