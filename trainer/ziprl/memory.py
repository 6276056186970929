"""ZipRL's multi-granularity compression memory: a coarse level per item, a fine rewrite at that level.

The memory holds the agent's observations (one item per retrieved passage, or per plain
observation) *instead of* the raw history: each turn ``compress`` re-grades every retained item and
rewrites it in place, so what is cut is gone and the memory never exceeds its token budget.

Levels (``Level``), from most to least faithful: VERBATIM, TRIMMED, SUMMARY, KEY_FACTS, DROPPED.

**Relevance to the task** (``relevance``), the coarse pass's measure, in [0, 1]. With ``Q`` the
question's content terms (``text.terms``: lower-cased words, no stop words) and, for an item, the
score of a sentence ``s`` being ``|terms(s) ∩ Q| / |Q|``:

* direct relevance ``d_i`` = the best sentence score of item ``i`` (its title counts as a sentence);
* chain relevance: an item whose title terms all occur in a *best* sentence of item ``j`` (one that
  reaches ``d_j``, ties included) is a bridge that ``j`` points to (the next hop of a multi-hop
  question): ``r_i = max(d_i, γ · max_j r_j)`` over the items pointing to it, iterated ``rounds``
  times. Defaults γ = 0.8, rounds = 3 (enough for 4 hops).

**Coarse pass** (``assign_levels``): thresholds on r — VERBATIM r ≥ 0.45, TRIMMED ≥ 0.30, SUMMARY
≥ 0.20, KEY_FACTS ≥ 0.10, else DROPPED; an item never moves back up (levels are monotone: its
earlier text is gone). Then the **budget**: while the rendered memory is over ``budget_tokens``, the
least relevant item (ties: the oldest, then the first added) goes one level down; the items of the
newest turn (not yet read by the agent) go down only once every older item is dropped.

**Fine pass** (``RuleRewriter``, deterministic; ``PolicyRewriter`` prompts the policy): VERBATIM
keeps the text; TRIMMED keeps the first sentence and every sentence sharing a term with ``Q``;
SUMMARY keeps the best sentence, the first on a tie (prefixed ``title:`` when the title is not in
it); KEY_FACTS keeps only that sentence's content words; DROPPED removes the item. (Keeping every
tied sentence was measured too: lower evidence recall at every budget and lower stress accuracy on
the benchmark, the longer summaries crowding other items out; see docs/ziprl.md.) A policy rewrite that comes back
empty or longer than its input falls back to the rule (counted in ``TurnRecord.fallbacks``).

Each ``compress`` returns a ``TurnRecord``: the tokens the raw history would hold by then, the
memory's tokens, the saving, and the level counts.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from trainer.ziprl.text import STOPWORDS, TokenCounter, count_tokens, first_tokens, sentences, term_set


class Level(enum.IntEnum):
    VERBATIM = 0
    TRIMMED = 1
    SUMMARY = 2
    KEY_FACTS = 3
    DROPPED = 4


# (level, lowest relevance that earns it), most faithful first; below the last one: DROPPED.
DEFAULT_THRESHOLDS: tuple[tuple[Level, float], ...] = (
    (Level.VERBATIM, 0.45), (Level.TRIMMED, 0.30), (Level.SUMMARY, 0.20), (Level.KEY_FACTS, 0.10))
DEFAULT_GAMMA = 0.8
DEFAULT_ROUNDS = 3


@dataclass
class MemoryItem:
    """One retained observation: its current (possibly compressed) text and level."""

    id: str
    turn: int
    text: str
    title: str = ""
    level: Level = Level.VERBATIM
    order: int = 0  # when it was added (ties broken by it)

    def line(self) -> str:
        return f"[{self.id}] {self.text}"


def _normalise(text: str) -> str:
    return " ".join(text.split())


# ----------------------------------------------------------------------------------------- relevance


def sentence_score(sentence: str, question_terms: frozenset[str]) -> float:
    """``|terms(sentence) ∩ Q| / |Q|`` (0 when the question has no content term)."""
    if not question_terms:
        return 0.0
    return len(term_set(sentence) & question_terms) / len(question_terms)


def _units(item: MemoryItem) -> list[str]:
    return ([item.title] if item.title else []) + sentences(item.text)


def best_sentences(item: MemoryItem, question_terms: frozenset[str]) -> tuple[float, list[str]]:
    """The item's direct relevance and every sentence (or its title) that reaches it."""
    scored = [(sentence_score(s, question_terms), s) for s in _units(item)]
    if not scored:
        return 0.0, []
    best = max(score for score, _ in scored)
    return best, [s for score, s in scored if score == best]


def relevance(items: Sequence[MemoryItem], question: str, *, gamma: float = DEFAULT_GAMMA,
              rounds: int = DEFAULT_ROUNDS) -> list[float]:
    """Chain relevance of each item to ``question`` (see the module docstring), in [0, 1]."""
    q = term_set(question)
    direct: list[float] = []
    best_terms: list[list[frozenset[str]]] = []
    for item in items:
        score, best = best_sentences(item, q)
        direct.append(score)
        # A title is never a bridge to itself: only sentences of the text point to other items.
        best_terms.append([term_set(s) for s in best if s != item.title] if score > 0 else [])
    titles = [term_set(item.title) for item in items]
    scores = list(direct)
    for _ in range(rounds):
        updated = list(scores)
        for i, title in enumerate(titles):
            if not title:
                continue
            for j, bridges in enumerate(best_terms):
                if j != i and any(title <= terms for terms in bridges):
                    updated[i] = max(updated[i], gamma * scores[j])
        if updated == scores:
            break
        scores = updated
    return scores


def level_for(score: float, thresholds: Sequence[tuple[Level, float]] = DEFAULT_THRESHOLDS) -> Level:
    for level, lowest in thresholds:
        if score >= lowest:
            return level
    return Level.DROPPED


# ----------------------------------------------------------------------------------------- rewriters


class Rewriter(Protocol):
    def rewrite(self, item: MemoryItem, level: Level, question: str) -> str: ...


def _best_of_text(item: MemoryItem, q: frozenset[str]) -> str:
    """The sentence of the item's text with the highest score (on a tie, the first)."""
    parts = sentences(item.text)
    if not parts:
        return item.text
    scores = [sentence_score(s, q) for s in parts]
    return parts[scores.index(max(scores))]


_WORDS = re.compile(r"[A-Za-z0-9]+(?:'[A-Za-z]+)?")


class RuleRewriter:
    """The deterministic fine pass (module docstring); rewrites the item's *current* text."""

    def rewrite(self, item: MemoryItem, level: Level, question: str) -> str:
        q = term_set(question)
        if level == Level.VERBATIM:
            return item.text
        if level == Level.DROPPED:
            return ""
        parts = sentences(item.text)
        if level == Level.TRIMMED:
            kept = [s for k, s in enumerate(parts) if k == 0 or term_set(s) & q]
            return " ".join(kept) if kept else item.text
        best = _best_of_text(item, q)
        if level == Level.SUMMARY:
            if item.title and item.title.lower() not in best.lower():
                return f"{item.title}: {best}"
            return best
        # KEY_FACTS: the best sentence's content words, in order, as written.
        return " ".join(w for w in _WORDS.findall(best) if w.lower() not in STOPWORDS)


LEVEL_INSTRUCTIONS = {
    Level.TRIMMED: "Delete the sentences that do not help answer the task. Copy the others word for word.",
    Level.SUMMARY: "Summarise it in one sentence that keeps every name, number and fact the task may need.",
    Level.KEY_FACTS: "List only the key facts the task may need, as short 'subject relation object' phrases.",
}
FINE_PROMPT = (
    "You are compressing your own working memory for a multi-turn task.\n"
    "Task: {question}\n"
    "Observation [{id}]{title}:\n{text}\n\n"
    "{instruction}\nAnswer with the rewritten observation only.")
COARSE_PROMPT = (
    "You are compressing your own working memory for a multi-turn task.\n"
    "Task: {question}\n"
    "For each observation below choose how much of it to keep: verbatim, trimmed, summary, key_facts or "
    "dropped. Keep what the task needs; drop what it does not.\n\n{observations}\n\n"
    "Answer with one line per observation: <id>: <level>.")


def fine_prompt(item: MemoryItem, level: Level, question: str) -> str:
    """The policy's fine-pass prompt for rewriting ``item`` at ``level`` (TRIMMED, SUMMARY or KEY_FACTS)."""
    return FINE_PROMPT.format(question=question, id=item.id, title=f" ({item.title})" if item.title else "",
                              text=item.text, instruction=LEVEL_INSTRUCTIONS[level])


def coarse_prompt(items: Sequence[MemoryItem], question: str) -> str:
    """The policy's coarse-pass prompt: one level for every retained item."""
    listing = "\n".join(f"[{item.id}] ({item.level.name.lower()}) {item.text}" for item in items)
    return COARSE_PROMPT.format(question=question, observations=listing)


_LEVEL_LINE = re.compile(r"^\s*\[?([^\]:\s]+)\]?\s*:\s*(verbatim|trimmed|summary|key[ _]facts|dropped)\b",
                         re.IGNORECASE | re.MULTILINE)


def parse_coarse_answer(answer: str) -> dict[str, Level]:
    """``{id: level}`` from the policy's ``<id>: <level>`` lines (unparseable lines are skipped)."""
    out: dict[str, Level] = {}
    for match in _LEVEL_LINE.finditer(answer):
        out[match.group(1)] = Level[match.group(2).upper().replace(" ", "_")]
    return out


Generate = Callable[[str], str]


@dataclass
class PolicyRewriter:
    """The fine pass by the policy: ``generate(prompt) -> text`` (the engine plugs its policy in).

    A rewrite that is empty or has more tokens than the item's current text is refused and the rule
    rewrite used instead (``fallbacks`` counts them).
    """

    generate: Generate
    fallback: Rewriter = field(default_factory=RuleRewriter)
    count: TokenCounter = count_tokens
    fallbacks: int = 0

    def rewrite(self, item: MemoryItem, level: Level, question: str) -> str:
        if level in (Level.VERBATIM, Level.DROPPED):
            return RuleRewriter().rewrite(item, level, question)
        text = _normalise(self.generate(fine_prompt(item, level, question)))
        if not text or self.count(text) > self.count(item.text):
            self.fallbacks += 1
            return self.fallback.rewrite(item, level, question)
        return text


class Assigner(Protocol):
    def assign(self, items: Sequence[MemoryItem], scores: Sequence[float], question: str) -> list[Level]: ...


@dataclass
class ThresholdAssigner:
    """The rule coarse pass: a level from each item's relevance by ``thresholds``."""

    thresholds: Sequence[tuple[Level, float]] = DEFAULT_THRESHOLDS

    def assign(self, items: Sequence[MemoryItem], scores: Sequence[float], question: str) -> list[Level]:
        return [level_for(s, self.thresholds) for s in scores]


@dataclass
class PolicyAssigner:
    """The coarse pass by the policy (``coarse_prompt``); items it gives no level get the threshold's."""

    generate: Generate
    fallback: ThresholdAssigner = field(default_factory=ThresholdAssigner)
    fallbacks: int = 0

    def assign(self, items: Sequence[MemoryItem], scores: Sequence[float], question: str) -> list[Level]:
        chosen = parse_coarse_answer(self.generate(coarse_prompt(items, question)))
        default = self.fallback.assign(items, scores, question)
        levels = []
        for item, level in zip(items, default, strict=True):
            if item.id in chosen:
                levels.append(chosen[item.id])
            else:
                self.fallbacks += 1
                levels.append(level)
        return levels


# ------------------------------------------------------------------------------------------- memories


@dataclass(frozen=True)
class TurnRecord:
    """Token accounting of one ``compress``: what the full raw history would hold vs. the memory."""

    turn: int
    raw_tokens: int
    memory_tokens: int
    levels: dict[str, int]
    fallbacks: int = 0

    @property
    def saved_tokens(self) -> int:
        return self.raw_tokens - self.memory_tokens


def savings_summary(records: Sequence[TurnRecord]) -> dict[str, float]:
    """An episode's token accounting for the run's metrics: mean and peak memory tokens, and the share
    of the raw history's tokens the memory saved on average over turns (0 with no turn or no raw token)."""
    if not records:
        return {"memory_tokens_mean": 0.0, "memory_tokens_peak": 0.0, "saved_fraction_mean": 0.0}
    fractions = [r.saved_tokens / r.raw_tokens if r.raw_tokens else 0.0 for r in records]
    return {"memory_tokens_mean": sum(r.memory_tokens for r in records) / len(records),
            "memory_tokens_peak": float(max(r.memory_tokens for r in records)),
            "saved_fraction_mean": sum(fractions) / len(fractions)}


class Memory(Protocol):
    """What the engine (and the benchmark) needs of a memory: observe, compress, render, records."""

    records: list[TurnRecord]

    def observe(self, turn: int, text: str, *, item_id: str | None = None, title: str = "") -> None: ...

    def compress(self, turn: int) -> TurnRecord: ...

    def render(self) -> str: ...

    def tokens(self) -> int: ...


class _BaseMemory:
    def __init__(self, question: str, budget_tokens: int | None, count: TokenCounter = count_tokens) -> None:
        if budget_tokens is not None and budget_tokens < 1:
            raise ValueError("budget_tokens must be at least 1")
        self.question = question
        self.budget_tokens = budget_tokens
        self.count = count
        self.items: list[MemoryItem] = []
        self.records: list[TurnRecord] = []
        self.raw_tokens = 0  # every observation's tokens as first seen: the full history's size
        self._added = 0
        self.replace_same_id = True

    def observe(self, turn: int, text: str, *, item_id: str | None = None, title: str = "") -> None:
        """Add one observation (a passage, a tool output) seen at ``turn``."""
        item = MemoryItem(id=item_id or f"t{turn}.{self._added}", turn=turn, text=_normalise(text),
                          title=_normalise(title), order=self._added)
        self._added += 1
        if self.replace_same_id:  # the same passage read again replaces its (compressed) earlier copy
            self.items = [kept for kept in self.items if kept.id != item.id]
        self.raw_tokens += self.count(item.line())
        self.items.append(item)

    def render(self) -> str:
        """The memory as the next turn's context: one ``[id] text`` line per retained item."""
        return "\n".join(item.line() for item in self.items)

    def tokens(self) -> int:
        return sum(self.count(item.line()) for item in self.items)

    def _record(self, turn: int, fallbacks: int = 0) -> TurnRecord:
        counts = {level.name.lower(): 0 for level in Level}
        for item in self.items:
            counts[item.level.name.lower()] += 1
        record = TurnRecord(turn=turn, raw_tokens=self.raw_tokens, memory_tokens=self.tokens(), levels=counts,
                            fallbacks=fallbacks)
        self.records.append(record)
        return record


class CompressionMemory(_BaseMemory):
    """ZipRL's relevance-graded memory (module docstring)."""

    def __init__(self, question: str, budget_tokens: int | None = None, *, assigner: Assigner | None = None,
                 rewriter: Rewriter | None = None, count: TokenCounter = count_tokens, gamma: float = DEFAULT_GAMMA,
                 rounds: int = DEFAULT_ROUNDS) -> None:
        super().__init__(question, budget_tokens, count)
        self.assigner: Assigner = assigner or ThresholdAssigner()
        self.rewriter: Rewriter = rewriter or RuleRewriter()
        self.gamma, self.rounds = gamma, rounds

    def _set_level(self, item: MemoryItem, level: Level) -> None:
        if level <= item.level:
            return
        item.text = _normalise(self.rewriter.rewrite(item, level, self.question)) if level != Level.DROPPED else ""
        item.level = level

    def compress(self, turn: int) -> TurnRecord:
        before = _fallbacks(self.assigner) + _fallbacks(self.rewriter)
        scores = relevance(self.items, self.question, gamma=self.gamma, rounds=self.rounds)
        for item, level in zip(self.items, self.assigner.assign(self.items, scores, self.question), strict=True):
            self._set_level(item, level)
        if self.budget_tokens is not None:
            self._fit(scores, turn)
        self.items = [item for item in self.items if item.level != Level.DROPPED]
        return self._record(turn, _fallbacks(self.assigner) + _fallbacks(self.rewriter) - before)

    def _fit(self, scores: Sequence[float], turn: int) -> None:
        assert self.budget_tokens is not None
        score_of = {id(item): s for item, s in zip(self.items, scores, strict=True)}
        cost = {id(item): self.count(item.line()) if item.level != Level.DROPPED else 0 for item in self.items}
        total = sum(cost.values())
        while total > self.budget_tokens:
            live = [item for item in self.items if item.level != Level.DROPPED]
            older = [item for item in live if item.turn < turn]
            pool = older or live
            if not pool:
                return
            victim = min(pool, key=lambda item: (score_of[id(item)], item.turn, item.order))
            self._set_level(victim, Level(victim.level + 1))
            new_cost = self.count(victim.line()) if victim.level != Level.DROPPED else 0
            total += new_cost - cost[id(victim)]
            cost[id(victim)] = new_cost


def _fallbacks(part: object) -> int:
    return int(getattr(part, "fallbacks", 0))


class FullHistory(_BaseMemory):
    """No compression: the raw history, every observation as it came (the baseline without a budget)."""

    def __init__(self, question: str, count: TokenCounter = count_tokens) -> None:
        super().__init__(question, None, count)
        self.replace_same_id = False

    def compress(self, turn: int) -> TurnRecord:
        return self._record(turn)


class UniformTruncation(_BaseMemory):
    """Uniform compression to the budget: every item cut by the same ratio (its first tokens kept).

    Over budget, each item keeps ``floor(ρ · n_i)`` of its ``n_i`` text tokens with
    ``ρ = budget / total``, ``total`` the rendered memory's tokens; an item cut to nothing is dropped;
    repeated (one token off the longest item) until the memory fits. Relevance plays no part: the
    "uniform method" of ZipRL's theorem.
    """

    def __init__(self, question: str, budget_tokens: int, count: TokenCounter = count_tokens) -> None:
        super().__init__(question, budget_tokens, count)

    def compress(self, turn: int) -> TurnRecord:
        assert self.budget_tokens is not None
        total = self.tokens()
        if total > self.budget_tokens:
            ratio = self.budget_tokens / total
            for item in self.items:
                n = count_tokens(item.text)
                item.text = first_tokens(item.text, int(ratio * n))
                if item.text != "":
                    item.level = max(item.level, Level.TRIMMED)
            self.items = [item for item in self.items if item.text]
            while self.items and self.tokens() > self.budget_tokens:
                longest = max(self.items, key=lambda item: (count_tokens(item.text), -item.order))
                longest.text = first_tokens(longest.text, count_tokens(longest.text) - 1)
                self.items = [item for item in self.items if item.text]
        return self._record(turn)


class RecencyWindow(_BaseMemory):
    """A sliding window: the oldest items are dropped until the memory fits the budget."""

    def __init__(self, question: str, budget_tokens: int, count: TokenCounter = count_tokens) -> None:
        super().__init__(question, budget_tokens, count)

    def compress(self, turn: int) -> TurnRecord:
        assert self.budget_tokens is not None
        while self.items and self.tokens() > self.budget_tokens:
            self.items.pop(0)
        return self._record(turn)
