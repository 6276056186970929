"""The multi-turn rollout engine: drives a single-turn engine (transformers or vLLM) turn by turn.

Each turn samples with the wrapped engine's own ``generate`` (the same exact sampling as single-turn
runs: full softmax at the temperature, every parameter explicit) from the trajectory so far, with
the turn's stop markers as stop strings. A turn ends at a stop marker, an EOS id, the per-turn token
limit or the episode's token budget; the environment's observation is tokenised and appended with
loss mask 0. The episode ends when the environment says done (a final answer), at an EOS, at
``max_turns`` or when the budget (sampled + observation tokens) is spent.

The generated tokens are kept as sampled (never re-tokenised from text), so the loss scores exactly
the tokens the policy drew; only observations are tokenised.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from trainer.agent.environment import EnvironmentFactory, close_environment
from trainer.checkpoint import derive_seed
from trainer.data import PromptRow
from trainer.rollout import Rollout, RolloutEngine, SamplingSettings


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

    @property
    def remaining(self) -> int:
        return self.max_tokens - len(self.ids)

    max_tokens: int = 0


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
                 settings: AgentSettings) -> None:
        self.engine = engine
        self.tokenizer = tokenizer
        self.make_env = make_env
        self.settings = settings
        self.timings = {"generation_s": 0.0, "environment_s": 0.0}

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
                episodes.append(_Episode(index, list(ids) + list(extra), env, max_tokens=s.max_episode_tokens))
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
        outputs = self.engine.generate([e.prompt_ids + e.ids for e in active], turn_sampling, seed)
        self.timings["generation_s"] += time.perf_counter() - started
        for episode, output in zip(active, outputs, strict=True):
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
            observation = (self.tokenizer(result.observation, add_special_tokens=False)["input_ids"]
                           if result.observation else [])
            observation = observation[:min(s.max_observation_tokens, episode.remaining)]
            episode.ids.extend(observation)
            episode.mask.extend([0] * len(observation))
            if episode.logprobs is not None:
                episode.logprobs.extend([math.nan] * len(observation))
            if episode.remaining <= 0:  # the observation spent the budget: no room for another turn
                episode.done, episode.truncated = True, True

    def _rollout(self, e: _Episode) -> Rollout:
        logprobs = e.logprobs if e.logprobs is not None and len(e.logprobs) == len(e.ids) and e.ids else None
        stats = dict(e.stats)
        stats["observation_tokens"] = float(len(e.mask) - sum(e.mask))
        stats["sampled_tokens"] = float(sum(e.mask))
        return Rollout(prompt_index=e.prompt_index, prompt_ids=e.prompt_ids, completion_ids=list(e.ids),
                       text=self._decode(e.ids), truncated=e.truncated, rollout_logprobs=logprobs,
                       loss_mask=list(e.mask), turn_bounds=list(e.bounds), episode_stats=stats)
