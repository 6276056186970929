"""Text helpers and the bm25s index (hand-computed BM25 scores), saved and loaded."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from trainer.ziprl.bm25 import BM25Index, Passage
from trainer.ziprl.text import count_tokens, first_tokens, sentences, terms


def test_text_helpers() -> None:
    assert count_tokens("Hi, Bo.") == 4  # Hi , Bo .
    assert terms("The Cat and the hat of Bo") == ["cat", "hat", "bo"]
    assert sentences("One two. Three? Four!  ") == ["One two.", "Three?", "Four!"]
    assert first_tokens("The cat, the hat.", 3) == "The cat,"
    assert first_tokens("x y", 0) == ""


CORPUS = [Passage("a", "cat mat"), Passage("b", "dog"), Passage("c", "cat dog bird")]


def test_bm25_scores_match_the_formula() -> None:
    # Lucene BM25, k1 = 1.5, b = 0.75: idf = ln(1 + (N - df + 0.5) / (df + 0.5)), tf part
    # tf / (tf + k1 (1 - b + b dl / avgdl)). N = 3, avgdl = (2 + 1 + 3) / 3 = 2; "cat": df = 2,
    # idf = ln(1 + 1.5 / 2.5) = ln 1.6 = 0.470004.
    # a: dl = 2: 1 / (1 + 1.5 (0.25 + 0.75)) = 0.4 -> 0.188001; c: dl = 3: 1 / (1 + 1.5 (0.25 + 1.125)) = 0.326531
    # -> 0.153471. "b" shares no term: not returned.
    hits = BM25Index.build(CORPUS).search("Cat", 5)
    assert [h.id for h in hits] == ["a", "c"]
    assert hits[0].score == pytest.approx(math.log(1.6) * 0.4, rel=1e-5)
    assert hits[1].score == pytest.approx(math.log(1.6) / 3.0625, rel=1e-5)
    assert BM25Index.build(CORPUS).search("cat", 1)[0].id == "a"
    assert BM25Index.build(CORPUS).search("the of", 3) == []  # stop words only
    assert BM25Index.build([]).search("cat", 3) == []
    with pytest.raises(ValueError):
        BM25Index.build(CORPUS).search("cat", 0)


def test_bm25_save_and_load(tmp_path: Path) -> None:
    index = BM25Index.build([*CORPUS, Passage("t", "", title="Bird Cat")])
    index.save(tmp_path / "ix")
    loaded = BM25Index.load(tmp_path / "ix")
    assert loaded.ids == ["a", "b", "c", "t"]
    assert [(h.id, round(h.score, 5)) for h in loaded.search("bird", 3)] == \
        [(h.id, round(h.score, 5)) for h in index.search("bird", 3)]
    assert {h.id for h in loaded.search("bird", 3)} == {"c", "t"}  # the title is indexed too
    with pytest.raises(FileNotFoundError):
        BM25Index.load(tmp_path / "missing")
