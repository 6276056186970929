"""The BM25 index files of each corpus: built on upload, persisted, cached, rebuilt when missing.

Each corpus' index lives in ``<retrieval_data_dir>/<corpus id>/<index key>/`` (bm25s' files and the
passage ids, ``trainer.ziprl.bm25``). An upload builds the index of the corpus' new state under a new
key and removes the older keys' folders. The database is the system of record: an index folder
that is missing (another replica's disk, a wiped volume, a key whose folder was removed) is rebuilt
from the passages and saved, so every replica answers the same. Loaded indexes are kept in a small
per-process cache keyed by (corpus, key). A disk that cannot be written (read-only, full) only costs
the persistence: the index is served from memory and the failure logged.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.common.settings import get_settings
from services.retrieval.models import Corpus, CorpusDocument
from trainer.ziprl.bm25 import BM25Index, passage_terms

log = logging.getLogger("rewardhub.retrieval")

CACHE_SIZE = 16
_cache: OrderedDict[tuple[str, str], BM25Index] = OrderedDict()
_lock = threading.Lock()


def root() -> Path:
    settings = get_settings()
    return settings.retrieval_data_dir or settings.data_dir / "retrieval"


def folder(corpus_id: str, index_key: str) -> Path:
    return root() / corpus_id / index_key


def _remember(corpus_id: str, index_key: str, index: BM25Index) -> None:
    with _lock:
        for cached in [k for k in _cache if k[0] == corpus_id and k[1] != index_key]:
            del _cache[cached]
        _cache[(corpus_id, index_key)] = index
        _cache.move_to_end((corpus_id, index_key))
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)


def build(session: Session, corpus: Corpus) -> BM25Index:
    """Index the corpus' passages (as this session sees them) in position order and save under its key."""
    rows = session.execute(select(CorpusDocument.doc_id, CorpusDocument.title, CorpusDocument.text)
                           .where(CorpusDocument.corpus_id == corpus.id).order_by(CorpusDocument.position))
    ids: list[str] = []
    corpus_terms: list[list[str]] = []
    for doc_id, title, text in rows:
        ids.append(doc_id)
        corpus_terms.append(passage_terms(title, text))
    index = BM25Index.build_from_terms(corpus_terms, ids)
    try:
        _save(index, folder(corpus.id, corpus.index_key))
    except OSError as exc:  # a read-only or full disk: serve from memory, rebuild in the next process
        log.warning("cannot save the index of corpus %s under %s: %s", corpus.id, root(), exc)
    _remember(corpus.id, corpus.index_key, index)
    return index


def _save(index: BM25Index, target: Path) -> None:
    # Written to a temporary folder and renamed into place, so a folder under a key is always a whole
    # index: when two builders race for one key, the first rename wins and the other's copy is discarded.
    if target.exists():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=target.parent))
    try:
        index.save(staging)
        staging.rename(target)
    except OSError:
        if not target.exists():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def prune(corpus_id: str, keep: str) -> None:
    """Remove the corpus' index folders other than ``keep`` (best effort: a reader rebuilds what it misses)."""
    base = root() / corpus_id
    if not base.is_dir():
        return
    for child in base.iterdir():
        if child.name != keep and not child.name.startswith(".building-"):
            shutil.rmtree(child, ignore_errors=True)


def get(session: Session, corpus: Corpus) -> BM25Index:
    """The corpus' current index: cached, else loaded from its folder, else rebuilt from the database."""
    key = (corpus.id, corpus.index_key)
    with _lock:
        cached = _cache.get(key)
        if cached is not None:
            _cache.move_to_end(key)
            return cached
    try:
        index = BM25Index.load(folder(corpus.id, corpus.index_key))
    except (OSError, ValueError):
        return build(session, corpus)
    _remember(corpus.id, corpus.index_key, index)
    return index


def forget(corpus_id: str) -> None:
    """Drop a deleted corpus' cached index and its files."""
    with _lock:
        for cached in [k for k in _cache if k[0] == corpus_id]:
            del _cache[cached]
    shutil.rmtree(root() / corpus_id, ignore_errors=True)
