"""An episode loop with a memory, and a scripted (non-learned) agent for the benchmark and the stress test.

``run_episode`` is the engine-agnostic loop: the agent sees the question and the memory's render
(never the raw history); each tool result goes into the memory (one item per passage), which
compresses after every turn. It records the peak context tokens, the memory's ``TurnRecord`` per
turn and, with ``keep_renders``, the memory after each turn (for Hindsight Response Replay's h_t).

``ScriptedAgent`` is a test double of a policy, deterministic and stateless: all it knows is its
context. Each turn it parses the question's relation chain (``multihop.parse_question``) and follows
it through the facts it can read in the context; at the first hop it cannot resolve it searches
``<relation> of <entity>``; with the chain resolved it answers, or, before ``target_turns``, makes
an exploration search (a hobby or place word) so an episode lasts as long as the stress test asks.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from trainer.ziprl.env import MultiHopSearchEnv, question_of
from trainer.ziprl.memory import Memory, TurnRecord
from trainer.ziprl.multihop import EXPLORATION_WORDS, parse_question
from trainer.ziprl.text import TokenCounter, count_tokens


def find_fact(context: str, subject: str, relation: str) -> str | None:
    """The object of ``(subject, relation)`` as the context states it, in any of the memory's levels.

    Full sentences (``The <relation> of <subject> is <object>.``) and key-fact lines
    (``[id] <relation> <subject> <object>; …``); a truncated sentence without its full stop does not count.
    """
    sentence = re.search(rf"\bThe {re.escape(relation)} of {re.escape(subject)} is ([^.\n]+?)\.", context)
    if sentence:
        return sentence.group(1).strip()
    pattern = re.compile(rf"^{re.escape(relation)} {re.escape(subject)} (.+)$")
    for line in context.splitlines():
        _, bracket, rest = line.partition("] ")
        for segment in rest.split("; ") if bracket and line.startswith("[") else ():
            found = pattern.match(segment.strip())
            if found:
                return found.group(1).strip()
    return None


def resolve_chain(context: str, start: str, relations: list[str]) -> tuple[str, int]:
    """How far the context resolves the chain: (the entity reached, hops resolved)."""
    current = start
    for hop, relation in enumerate(relations):
        found = find_fact(context, current, relation)
        if found is None:
            return current, hop
        current = found
    return current, len(relations)


@dataclass
class ScriptedAgent:
    """A scripted (non-learned) agent; ``target_turns`` pads the episode with exploration searches."""

    target_turns: int | None = None

    def act(self, question: str, context: str, turn: int) -> str:
        parsed = parse_question(question)
        if parsed is None:
            return "answer: unknown"
        start, relations = parsed
        reached, hops = resolve_chain(context, start, relations)
        last_turn = self.target_turns is not None and turn >= self.target_turns - 1
        if hops < len(relations) and not last_turn:
            return f"search: {relations[hops]} of {reached}"
        if self.target_turns is not None and not last_turn:
            return f"search: {EXPLORATION_WORDS[turn % len(EXPLORATION_WORDS)]}"
        return f"answer: {reached}"


@dataclass
class EpisodeResult:
    correct: bool
    turns: int
    answer: str | None
    peak_context_tokens: int
    records: list[TurnRecord]
    renders: list[str] = field(default_factory=list)
    searches: int = 0


def run_episode(env: MultiHopSearchEnv, agent: ScriptedAgent, memory_factory: Callable[[str], Memory],
                prompt_row: Any, *, count: TokenCounter = count_tokens, keep_renders: bool = False) -> EpisodeResult:
    """One episode: the agent acts on (question, memory) until the environment says done."""
    env.reset(prompt_row)
    question, _, _ = question_of(prompt_row)
    memory = memory_factory(question)
    peak, searches, turn = 0, 0, 0
    renders: list[str] = []
    while True:
        context = memory.render()
        peak = max(peak, count(question) + count(context))
        result = env.step(agent.act(question, context, turn))
        if result.done:
            answer = result.info.get("answer")
            return EpisodeResult(correct=bool(result.info.get("correct")), turns=turn + 1, answer=answer,
                                 peak_context_tokens=peak, records=memory.records, renders=renders,
                                 searches=searches)
        passages = result.info.get("passages")
        if passages is not None:
            searches += 1
            for passage in passages:
                memory.observe(turn, passage["text"], item_id=passage["id"], title=passage["title"])
        else:
            memory.observe(turn, result.observation)
        memory.compress(turn)
        if keep_renders:
            renders.append(memory.render())
        turn += 1
