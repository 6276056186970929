"""Text helpers every ZipRL part shares: words, content terms, sentences and a default token count.

Deterministic and dependency-free, so the memory, the relevance measure, the multi-hop generator and
the BM25 index all read text the same way. ``count_tokens`` is the default token measure (words and
punctuation marks); the engine can pass its tokenizer's count instead (``TokenCounter``).
"""

from __future__ import annotations

import re
from collections.abc import Callable

TokenCounter = Callable[[str], int]

_WORD = re.compile(r"[A-Za-z0-9]+(?:'[A-Za-z]+)?")
_TOKEN = re.compile(r"\w+|[^\w\s]")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")

# A small English stop list: function words carry no evidence (BM25 and relevance both drop them).
STOPWORDS: frozenset[str] = frozenset(["a", "an", "and", "are", "as", "at", "be", "been", "but", "by", "can", "could", "did", "do", "does", "for", "from", "had", "has", "have", "he", "her", "his", "how", "i", "if", "in", "into", "is", "it", "its", "itself", "me", "my", "no", "not", "of", "on", "or", "our", "she", "so", "than", "that", "the", "their", "them", "then", "there", "these", "they", "this", "those", "to", "was", "we", "were", "what", "when", "where", "which", "while", "who", "whom", "why", "will", "with", "would", "you", "your"])


def count_tokens(text: str) -> int:
    """Words and punctuation marks: ``count_tokens("Hi, Bo.") == 4``."""
    return len(_TOKEN.findall(text))


def words(text: str) -> list[str]:
    """Lower-cased alphanumeric words, in order."""
    return [w.lower() for w in _WORD.findall(text)]


def terms(text: str) -> list[str]:
    """Content terms: ``words`` without stop words (duplicates kept, in order)."""
    return [w for w in words(text) if w not in STOPWORDS]


def term_set(text: str) -> frozenset[str]:
    return frozenset(terms(text))


def sentences(text: str) -> list[str]:
    """Sentences split after ``.``, ``!`` or ``?`` followed by white space; blank ones dropped."""
    return [s.strip() for s in _SENTENCE_END.split(text.strip()) if s.strip()]


def first_tokens(text: str, n: int) -> str:
    """The text cut after its ``n``-th token (``count_tokens``' tokens), as written."""
    if n <= 0:
        return ""
    end = 0
    for count, match in enumerate(_TOKEN.finditer(text), start=1):
        end = match.end()
        if count == n:
            break
    return text[:end]
