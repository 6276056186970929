"""Corpora and their passages: the system of record the BM25 index files are built from.

A corpus belongs to one project; its passages are keyed by (corpus, passage id). ``index_key`` names
the index folder built from the passages as they are now: every upload writes a new key, so an index
built for passages that were never committed (a failed commit) is never read.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from services.common.db import Base, utcnow
from services.common.models import new_id


class Corpus(Base):
    __tablename__ = "retrieval_corpora"
    __table_args__ = (UniqueConstraint("project_id", "name", name="uq_retrieval_corpora_project_name"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    document_count: Mapped[int] = mapped_column(Integer, default=0)
    index_key: Mapped[str] = mapped_column(String(32), default=new_id)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class CorpusDocument(Base):
    """One passage of a corpus; ``position`` is its place in the index (upload order, 0-based)."""

    __tablename__ = "retrieval_documents"

    corpus_id: Mapped[str] = mapped_column(ForeignKey("retrieval_corpora.id", ondelete="CASCADE"),
                                           primary_key=True)
    doc_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    position: Mapped[int] = mapped_column(Integer)
    title: Mapped[str] = mapped_column(Text, default="")
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
