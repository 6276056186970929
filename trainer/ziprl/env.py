"""The multi-hop QA environment with a ``search`` tool, for any multi-turn engine.

It follows the engine's protocol: ``reset(prompt_row) -> observation`` and ``step(action_text) ->
StepResult(observation, done, info)``. An action is one of

* ``search: <query>`` or ``<search>query</search>``: the observation lists the top ``k`` passages
  (``[id] title: text`` lines) and ``info["passages"]`` holds them as ``{id, title, text, score}``;
* ``answer: <text>``, ``<answer>text</answer>`` or ``\\boxed{text}``: ends the episode;
  ``info["reward"]`` is 1.0 when the answer matches the ground truth (case and white space ignored).

Anything else is answered with a reminder of the action format (``info["status"] =
"invalid_action"``); a search backend that fails gives ``status = "error"`` with the cause, never an
exception; the episode ends (``info["truncated"]``, reward 0.0) after ``max_turns`` steps.

The search tool is a ``SearchBackend``: ``InProcessSearch`` (bm25s over the passages, the same code
path as the retrieval service) or ``HttpSearch`` (``POST /v1/corpora/{id}/search`` of the service).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Protocol

from trainer.ziprl.bm25 import BM25Index, Passage


@dataclass(frozen=True)
class SearchResult:
    id: str
    title: str
    text: str
    score: float


class SearchBackend(Protocol):
    def search(self, query: str, k: int) -> list[SearchResult]: ...


class InProcessSearch:
    """BM25 over passages held in this process (``trainer.ziprl.bm25``)."""

    def __init__(self, passages: Sequence[Passage]) -> None:
        self._passages = {p.id: p for p in passages}
        self._index = BM25Index.build(list(passages))

    def search(self, query: str, k: int) -> list[SearchResult]:
        return [SearchResult(h.id, self._passages[h.id].title, self._passages[h.id].text, h.score)
                for h in self._index.search(query, k)]


class HttpSearch:
    """The retrieval service's search over HTTP (a trainer key of the corpus' project)."""

    def __init__(self, base_url: str, api_key: str, corpus_id: str, *, timeout_s: float = 10.0,
                 client: Any = None) -> None:
        import httpx

        self._client = client or httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout_s)
        self._path = f"/v1/corpora/{corpus_id}/search"
        self._headers = {"Authorization": f"Bearer {api_key}"}

    def close(self) -> None:
        self._client.close()

    def search(self, query: str, k: int) -> list[SearchResult]:
        response = self._client.post(self._path, json={"query": query, "k": k}, headers=self._headers)
        response.raise_for_status()
        return [SearchResult(r["id"], r.get("title", ""), r["text"], float(r["score"]))
                for r in response.json()["results"]]


@dataclass
class StepResult:
    observation: str
    done: bool
    info: dict[str, Any] = field(default_factory=dict)


INSTRUCTIONS = ("Answer the question. Search with `search: <query>`; answer with `answer: <text>`.")
_SEARCH = re.compile(r"<search>(.*?)</search>|^\s*search:\s*(.+)$", re.IGNORECASE | re.MULTILINE | re.DOTALL)
_ANSWER = re.compile(r"<answer>(.*?)</answer>|\\boxed\{([^{}]*)\}|^\s*answer:\s*(.+)$",
                     re.IGNORECASE | re.MULTILINE | re.DOTALL)


def parse_action(action_text: str) -> tuple[str, str] | None:
    """``("search", query)`` or ``("answer", text)`` from the policy's action; None when it is neither."""
    answer = _ANSWER.search(action_text)
    search = _SEARCH.search(action_text)
    if answer and (not search or answer.start() <= search.start()):
        return "answer", next(g for g in answer.groups() if g is not None).strip()
    if search:
        return "search", next(g for g in search.groups() if g is not None).strip()
    return None


def normalise_answer(text: str) -> str:
    return " ".join(text.casefold().strip().rstrip(".").split())


def question_of(prompt_row: Any) -> tuple[str, str, dict[str, Any]]:
    """(question, ground truth, extra_info) of a veRL-schema row (a mapping or a ``PromptRow``)."""
    if isinstance(prompt_row, Mapping):
        prompt, truth = prompt_row.get("prompt"), (prompt_row.get("reward_model") or {}).get("ground_truth")
        extra = prompt_row.get("extra_info") or {}
    else:
        prompt, truth, extra = prompt_row.prompt, prompt_row.ground_truth, prompt_row.extra_info or {}
    if isinstance(prompt, list):
        prompt = next((m["content"] for m in reversed(prompt) if m.get("role") == "user"), "")
    if not isinstance(prompt, str) or not prompt:
        raise ValueError("prompt_row: needs a non-empty prompt (text or chat messages with a user turn)")
    return prompt, str(truth if truth is not None else ""), dict(extra)


class MultiHopSearchEnv:
    """One episode at a time: ``reset`` with a question row, then ``step`` until ``done``."""

    def __init__(self, search: SearchBackend, *, k: int = 3, max_turns: int = 8) -> None:
        if k < 1 or max_turns < 1:
            raise ValueError("k and max_turns must be at least 1")
        self.search, self.k, self.max_turns = search, k, max_turns
        self.question, self.answer = "", ""
        self.extra: dict[str, Any] = {}
        self.turn = 0
        self.done = True

    def reset(self, prompt_row: Any) -> str:
        self.question, self.answer, self.extra = question_of(prompt_row)
        self.turn, self.done = 0, False
        return f"{INSTRUCTIONS}\nQuestion: {self.question}"

    def needed_units(self) -> list[list[str]]:
        """What the answer needs (Hindsight Response Replay's N): the chain's facts as (subject,
        relation, object) from ``extra_info.chain``; without a chain, the answer alone."""
        chain = self.extra.get("chain")
        if isinstance(chain, list) and chain:
            return [[str(part) for part in fact] for fact in chain]
        return [[self.answer]] if self.answer else []

    def step(self, action_text: str) -> StepResult:
        if self.done:
            raise RuntimeError("the episode is over: call reset first")
        self.turn += 1
        result = self._step(action_text)
        if not result.done and self.turn >= self.max_turns:
            result = StepResult(result.observation, True, {**result.info, "truncated": True, "reward": 0.0})
        self.done = result.done
        result.info["turn"] = self.turn
        return result

    def _step(self, action_text: str) -> StepResult:
        action = parse_action(action_text)
        if action is None:
            return StepResult(f"Unrecognised action. {INSTRUCTIONS}", False, {"status": "invalid_action"})
        kind, argument = action
        if kind == "answer":
            correct = normalise_answer(argument) == normalise_answer(self.answer)
            return StepResult("", True, {"status": "ok", "answer": argument, "correct": correct,
                                         "reward": 1.0 if correct else 0.0})
        if not argument:
            return StepResult("The search query is empty.", False, {"status": "invalid_action"})
        try:
            hits = self.search.search(argument, self.k)
        except Exception as exc:  # the tool's failure is an observation, never the episode's crash
            return StepResult(f"search failed: {type(exc).__name__}: {exc}", False,
                              {"status": "error", "error": f"{type(exc).__name__}: {exc}"})
        lines = [f"[{h.id}] {h.title}: {h.text}" if h.title else f"[{h.id}] {h.text}" for h in hits]
        return StepResult("\n".join(lines) or "No passage matches the query.", False,
                          {"status": "ok", "query": argument,
                           "passages": [{"id": h.id, "title": h.title, "text": h.text, "score": h.score}
                                        for h in hits]})


@lru_cache(maxsize=8)
def _world_search(seed: int) -> InProcessSearch:
    from trainer.ziprl.multihop import generate_world

    return InProcessSearch(generate_world(seed=seed).documents)


def synthetic_env(prompt_row: Any) -> MultiHopSearchEnv:
    """``multi_turn.environment: trainer.ziprl.env:synthetic_env`` — the synthetic multi-hop task's
    environment for a row of ``multihop.generate_questions`` (its world from ``extra_info.world_seed``,
    default 0; the index is built once per world), ``k`` = 3, at most 256 steps (the engine's
    ``max_turns`` ends it first)."""
    _, _, extra = question_of(prompt_row)
    seed = extra.get("world_seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError("extra_info.world_seed: must be a whole number")
    return MultiHopSearchEnv(_world_search(seed), k=3, max_turns=256)
