"""The multi-turn rollout engine: drives a single-turn engine (transformers or vLLM) turn by turn.

Each turn samples with the wrapped engine's own ``generate`` (the same exact sampling as single-turn
runs: full softmax at the temperature, every parameter explicit) from the trajectory so far, with
the turn's stop markers as stop strings. A turn ends at a stop marker, an EOS id, the per-turn token
limit or the episode's token budget; the environment's observation is tokenised and appended with
loss mask 0. The episode ends when the environment says done (a final answer), at an EOS, at
``max_turns`` or when the budget (sampled + observation tokens) is spent.

The generated tokens are kept as sampled (never re-tokenised from text), so the loss scores exactly
the tokens the policy drew; only observations are tokenised.

**ZipRL** (``ziprl``: a :class:`trainer.ziprl.config.ZipRLConfig`): the context is not the growing
trajectory but a compression memory. After each turn the observation goes into the episode's memory
(one item per retrieved passage, ``info["passages"]``, else one item for the text), the memory
re-levels and rewrites every retained item (``compress``), and the next turn's prompt is rebuilt:
the prompt (with the environment's opening), ``Memory:`` and the items of earlier turns as the memory
holds them, then ``Observation:`` and the latest observation as it came (cut to
``max_observation_tokens``). The policy's own earlier actions are not in it (the memory holds
observations). Each turn's prompt is kept (``Rollout.turn_prompts``) so the loss scores the turn's
tokens under the context they were sampled with; ``completion_ids`` are the sampled tokens only and
the episode's token budget counts them only (the memory's budget bounds the context). The memory
counts tokens with the policy's tokenizer. After the episode, h_t of each turn (Hindsight Response
Replay, ``trainer.ziprl.hrr``) is taken from the memory after that turn (the last turn, which adds no
observation: the memory it was sampled with) against the environment's ``needed_units()`` (else the
ground truth alone).
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any

import torch

from trainer.agent.environment import EnvironmentFactory, close_environment
from trainer.checkpoint import derive_seed
from trainer.data import PromptRow
from trainer.rollout import Rollout, RolloutEngine, SamplingSettings
from trainer.ziprl.config import ZipRLConfig, build_memory
from trainer.ziprl.env import question_of
from trainer.ziprl.hrr import hindsight_scores
from trainer.ziprl.memory import Memory


@dataclass(frozen=True)
class AgentSettings:
    stop_markers: tuple[str, ...] = ("<tool_call>",)
    max_turns: int = 5
    max_episode_tokens: int = 256  # sampled and observation tokens of one episode, together
    max_turn_tokens: int | None = None  # sampled tokens of one turn; None: the remaining budget
    max_observation_tokens: int = 128


@dataclass
class _Episode:
    prompt_index: int
    prompt_ids: list[int]
    env: Any
    ids: list[int] = field(default_factory=list)
    mask: list[int] = field(default_factory=list)
    bounds: list[tuple[int, int]] = field(default_factory=list)
    logprobs: list[float] | None = field(default_factory=list)
    stats: dict[str, float] = field(default_factory=dict)
    done: bool = False
    truncated: bool = False
    # ZipRL: the memory, the next turn's prompt, each turn's prompt, the memory after each turn.
    memory: Memory | None = None
    context: list[int] = field(default_factory=list)
    turn_prompts: list[list[int]] = field(default_factory=list)
    renders: list[str] = field(default_factory=list)
    needed: list[list[str]] = field(default_factory=list)

    @property
    def remaining(self) -> int:
        return self.max_tokens - len(self.ids)

    max_tokens: int = 0


def needed_units(env: Any, row: PromptRow) -> list[list[str]]:
    """What the final answer needs (HRR's N): the environment's ``needed_units()`` where it has one,
    else the ground truth alone (nothing when there is none)."""
    units = getattr(env, "needed_units", None)
    if callable(units):
        return [list(unit) for unit in units()]
    truth = row.ground_truth
    return [[str(truth)]] if truth not in (None, "") else []


def cut_turn(tokens: list[int], decode: Any, eos: set[int], markers: tuple[str, ...],
             budget: int) -> tuple[list[int], str]:
    """The turn's kept tokens and why it ended: ``eos`` (the EOS kept), ``marker`` (the shortest
    prefix whose text holds a marker), ``budget`` (cut at the episode budget) or ``length``."""
    end, reason = len(tokens), "length"
    for k, token in enumerate(tokens):
        if token in eos:
            end, reason = k + 1, "eos"
            break
    if markers:
        text = decode(tokens[:end])
        if any(marker in text for marker in markers):
            for k in range(1, end + 1):
                if any(marker in decode(tokens[:k]) for marker in markers):
                    end, reason = k, "marker"
                    break
    if end > budget:
        return tokens[:budget], "budget"
    return tokens[:end], reason


class AgentRolloutEngine:
    """Multi-turn episodes with ``make_env`` environments, sampled by ``engine`` (a
    :class:`~trainer.rollout.TransformersEngine` or :class:`~trainer.rollout.VLLMEngine`)."""

    def __init__(self, engine: RolloutEngine, tokenizer: Any, make_env: EnvironmentFactory,
                 settings: AgentSettings, ziprl: ZipRLConfig | None = None) -> None:
        self.engine = engine
        self.tokenizer = tokenizer
        self.make_env = make_env
        self.settings = settings
        self.ziprl = ziprl
        self.timings = {"generation_s": 0.0, "environment_s": 0.0, "compression_s": 0.0}

        @lru_cache(maxsize=1 << 16)
        def count(text: str) -> int:
            return len(self._encode(text))
        self._count: Callable[[str], int] = count

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []

    def _policy_text(self, sampling: SamplingSettings, seed: int) -> Callable[[str], str]:
        """The policy as ``generate(prompt) -> text`` for the policy-prompted coarse and fine passes: one
        sample at the run's temperature, at most ``ziprl.rewrite_max_tokens`` tokens, a seed per call.
        These tokens are not trained on (they are not in any turn)."""
        calls = itertools.count()
        limit = self.ziprl.rewrite_max_tokens if self.ziprl is not None else 64

        def generate(prompt: str) -> str:
            settings = replace(sampling, group_size=1, max_new_tokens=limit, stop_strings=())
            started = time.perf_counter()
            output = self.engine.generate([self._encode(prompt)], settings, derive_seed(seed, 7_919, next(calls)))
            self.timings["generation_s"] += time.perf_counter() - started
            return self._decode(output[0].completion_ids)
        return generate

    def sync_weights(self, model: torch.nn.Module) -> None:
        self.engine.sync_weights(model)

    def _eos(self) -> set[int]:
        eos = getattr(self.engine, "eos_ids", None)
        return set(eos() if callable(eos) else eos or [])

    def _decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))

    def generate(self, prompts: list[list[int]], sampling: SamplingSettings, seed: int,
                 rows: list[PromptRow] | None = None) -> list[Rollout]:
        """``sampling.group_size`` episodes per prompt, grouped (prompt 0's G first); ``rows[i]`` is
        prompt i's row, given to its environments' ``reset``."""
        if rows is None or len(rows) != len(prompts):
            raise ValueError("rows: the agent engine needs each prompt's row for its environments")
        s = self.settings
        eos = self._eos()
        episodes: list[_Episode] = []
        for index, (ids, row) in enumerate(zip(prompts, rows, strict=True)):
            for _ in range(sampling.group_size):
                env = self.make_env(row)
                started = time.perf_counter()
                opening = env.reset(row)
                self.timings["environment_s"] += time.perf_counter() - started
                extra = self.tokenizer(opening, add_special_tokens=False)["input_ids"] if opening else []
                episode = _Episode(index, list(ids) + list(extra), env, max_tokens=s.max_episode_tokens)
                if self.ziprl is not None:
                    question, _, _ = question_of(row)
                    episode.memory = build_memory(self.ziprl, question, generate=self._policy_text(sampling, seed),
                                                  count=self._count)
                    episode.context = list(episode.prompt_ids)
                    episode.needed = needed_units(env, row)
                episodes.append(episode)
        try:
            for turn in range(s.max_turns):
                active = [e for e in episodes if not e.done]
                if not active:
                    break
                self._turn(active, sampling, derive_seed(seed, turn), eos, last=turn == s.max_turns - 1)
        finally:
            for episode in episodes:
                close_environment(episode.env)
        return [self._rollout(e) for e in episodes]

    def _turn(self, active: list[_Episode], sampling: SamplingSettings, seed: int, eos: set[int],
              last: bool) -> None:
        s = self.settings
        longest = max(e.remaining for e in active)
        limit = min(longest, s.max_turn_tokens) if s.max_turn_tokens else longest
        turn_sampling = replace(sampling, group_size=1, max_new_tokens=max(1, limit), stop_strings=s.stop_markers)
        started = time.perf_counter()
        contexts = [list(e.context) if self.ziprl is not None else e.prompt_ids + e.ids for e in active]
        outputs = self.engine.generate(contexts, turn_sampling, seed)
        self.timings["generation_s"] += time.perf_counter() - started
        for episode, output, context in zip(active, outputs, contexts, strict=True):
            if self.ziprl is not None:
                episode.turn_prompts.append(context)
                episode.stats["context_tokens"] = episode.stats.get("context_tokens", 0.0) + len(context)
                episode.stats["peak_context_tokens"] = max(episode.stats.get("peak_context_tokens", 0.0),
                                                           float(len(context)))
            budget = min(episode.remaining, s.max_turn_tokens or episode.remaining)
            kept, reason = cut_turn(output.completion_ids, self._decode, eos, s.stop_markers, budget)
            start = len(episode.ids)
            episode.ids.extend(kept)
            episode.mask.extend([1] * len(kept))
            episode.bounds.append((start, len(episode.ids)))
            if episode.logprobs is not None:
                if output.rollout_logprobs is None:
                    episode.logprobs = None
                else:
                    episode.logprobs.extend(output.rollout_logprobs[:len(kept)])
            episode.stats["turns"] = episode.stats.get("turns", 0.0) + 1.0
            started = time.perf_counter()
            result = episode.env.step(self._decode(kept))
            self.timings["environment_s"] += time.perf_counter() - started
            for name, value in result.info.items():
                if isinstance(value, int | float):  # numbers (and flags) are counted; lists and texts are not
                    episode.stats[name] = episode.stats.get(name, 0.0) + float(value)
            if result.done or reason == "eos":
                episode.done = True
                continue
            if reason in ("budget", "length") and episode.remaining <= 0:
                episode.done, episode.truncated = True, True
                continue
            if last:
                episode.done = True
                episode.stats["turn_limit"] = 1.0
                continue
            if self.ziprl is not None:
                self._remember(episode, result, int(episode.stats["turns"]) - 1)
                continue
            observation = (self.tokenizer(result.observation, add_special_tokens=False)["input_ids"]
                           if result.observation else [])
            observation = observation[:min(s.max_observation_tokens, episode.remaining)]
            episode.ids.extend(observation)
            episode.mask.extend([0] * len(observation))
            if episode.logprobs is not None:
                episode.logprobs.extend([math.nan] * len(observation))
            if episode.remaining <= 0:  # the observation spent the budget: no room for another turn
                episode.done, episode.truncated = True, True

    def _remember(self, episode: _Episode, result: Any, turn: int) -> None:
        """ZipRL: the observation into the memory, the memory compressed, the next turn's prompt built."""
        assert episode.memory is not None
        started = time.perf_counter()
        memory = episode.memory
        tokens = self._encode(result.observation)
        cap = self.settings.max_observation_tokens
        latest = self._decode(tokens[:cap]) if len(tokens) > cap else result.observation
        passages = result.info.get("passages")
        if isinstance(passages, list) and passages:
            for passage in passages:
                memory.observe(turn, str(passage.get("text", "")), item_id=str(passage.get("id") or "") or None,
                               title=str(passage.get("title", "")))
        elif latest.strip():
            memory.observe(turn, latest)
        record = memory.compress(turn)
        episode.renders.append(memory.render())
        for name, value in (("memory_tokens", record.memory_tokens), ("raw_history_tokens", record.raw_tokens),
                            ("saved_tokens", record.saved_tokens), ("compressions", 1),
                            ("compression_fallbacks", record.fallbacks)):
            episode.stats[name] = episode.stats.get(name, 0.0) + float(value)
        if record.raw_tokens:
            episode.stats["saved_fraction"] = (episode.stats.get("saved_fraction", 0.0)
                                               + record.saved_tokens / record.raw_tokens)
        older = "\n".join(item.line() for item in getattr(memory, "items", []) if item.turn < turn)
        text = (f"\nMemory:\n{older}\n" if older else "") + (f"\nObservation:\n{latest}\n" if latest.strip() else "")
        episode.context = list(episode.prompt_ids) + self._encode(text)
        self.timings["compression_s"] += time.perf_counter() - started

    def _rollout(self, e: _Episode) -> Rollout:
        logprobs = e.logprobs if e.logprobs is not None and len(e.logprobs) == len(e.ids) and e.ids else None
        stats = dict(e.stats)
        stats["observation_tokens"] = float(len(e.mask) - sum(e.mask))
        stats["sampled_tokens"] = float(sum(e.mask))
        turn_prompts, turn_h = None, None
        if self.ziprl is not None and e.memory is not None:
            renders = list(e.renders)
            while len(renders) < len(e.bounds):  # the last turn adds no observation: the memory it was sampled with
                renders.append(e.memory.render())
            turn_h = hindsight_scores(renders[:len(e.bounds)], e.needed)
            turn_prompts = [list(p) for p in e.turn_prompts]
            stats["hrr_h_sum"] = float(sum(turn_h))
        return Rollout(prompt_index=e.prompt_index, prompt_ids=e.prompt_ids, completion_ids=list(e.ids),
                       text=self._decode(e.ids), truncated=e.truncated, rollout_logprobs=logprobs,
                       loss_mask=list(e.mask), turn_bounds=list(e.bounds), episode_stats=stats,
                       turn_prompts=turn_prompts, turn_h=turn_h)
