"""BM25 over passages with ``bm25s``: the one code path of the retrieval service and in-process search.

``BM25Index.build(passages)`` indexes each passage's title and text (``text.terms``: lower-cased
words without stop words, no stemming); ``search(query, k)`` scores every passage with bm25s'
Lucene BM25 (k1 = 1.5, b = 0.75) and returns the best ``k`` with a score above 0, best first, ties
by corpus order (a passage sharing no term with the query is not a match, so fewer than ``k`` may
come back). ``save``/``load`` persist the index (bm25s' own files plus the passage ids) in a folder.

bm25s is imported when an index is built or loaded, so importing this module needs only the
standard library.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.ziprl.text import terms

IDS_FILE = "passage_ids.json"
K1, B = 1.5, 0.75


@dataclass(frozen=True)
class Passage:
    id: str
    text: str
    title: str = ""


@dataclass(frozen=True)
class Hit:
    """A passage that matched: its position in the corpus, its id and its BM25 score."""

    position: int
    id: str
    score: float


def passage_terms(title: str, text: str) -> list[str]:
    terms_ = terms(f"{title}\n{text}" if title else text)
    # bm25s cannot index an empty document: a passage with no content term gets a term no query has.
    return terms_ or ["\x00empty"]


class BM25Index:
    """A built (or loaded) BM25 index over passages, searched in memory."""

    def __init__(self, retriever: Any, ids: list[str]) -> None:
        self._retriever = retriever
        self.ids = ids

    @classmethod
    def build(cls, passages: Sequence[Passage]) -> BM25Index:
        return cls.build_from_terms([passage_terms(p.title, p.text) for p in passages], [p.id for p in passages])

    @classmethod
    def build_from_terms(cls, corpus_terms: list[list[str]], ids: list[str]) -> BM25Index:
        if len(corpus_terms) != len(ids):
            raise ValueError("one id per passage")
        if not ids:
            return cls(None, [])
        import bm25s

        retriever = bm25s.BM25(k1=K1, b=B, method="lucene", backend="numpy", csc_backend="numpy")
        retriever.index(corpus_terms, show_progress=False)
        return cls(retriever, list(ids))

    def __len__(self) -> int:
        return len(self.ids)

    def search(self, query: str, k: int) -> list[Hit]:
        """The best ``k`` passages for ``query`` with a score above 0, best first (ties: corpus order)."""
        if k < 1:
            raise ValueError("k must be at least 1")
        query_terms = [t for t in terms(query) if self._retriever is not None and t in self._retriever.vocab_dict]
        if not query_terms:
            return []
        import numpy as np

        scores = np.asarray(self._retriever.get_scores(query_terms), dtype=np.float64)
        # Stable sort on the negated score: equal scores keep corpus order, so results are reproducible.
        order = np.argsort(-scores, kind="stable")[:k]
        return [Hit(int(i), self.ids[int(i)], float(scores[i])) for i in order if scores[i] > 0]

    def save(self, folder: Path) -> None:
        """Write the index into ``folder`` (created; an existing index there is overwritten)."""
        folder.mkdir(parents=True, exist_ok=True)
        if self._retriever is not None:
            self._retriever.save(str(folder), show_progress=False)
        (folder / IDS_FILE).write_text(json.dumps(self.ids), encoding="utf-8")

    @classmethod
    def load(cls, folder: Path) -> BM25Index:
        """The index ``save`` wrote into ``folder``; FileNotFoundError when there is none."""
        ids = json.loads((folder / IDS_FILE).read_text(encoding="utf-8"))
        if not ids:
            return cls(None, [])
        import bm25s

        retriever = bm25s.BM25.load(str(folder), load_corpus=False, show_progress=False)
        return cls(retriever, [str(i) for i in ids])
