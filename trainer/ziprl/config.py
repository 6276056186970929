"""The ``ziprl`` section of a multi-turn run's config: every choice the spec leaves open, in one place.

``ZipRLConfig.from_dict`` reads the section (unknown keys and bad values are a ``ValueError`` naming
``ziprl.<key>``); ``build_memory`` makes the memory the section asks for, with the policy plugged in
as ``generate(prompt) -> text`` when ``rewriter: policy``. Defaults::

    ziprl:
      memory: graded            # graded | uniform | recency | full
      budget_tokens: 1024       # the memory's token budget (not used by full)
      thresholds: {verbatim: 0.45, trimmed: 0.30, summary: 0.20, key_facts: 0.10}
      gamma: 0.8                # chain relevance decay per hop
      rounds: 3                 # chain relevance propagation rounds
      rewriter: rule            # rule | policy (fine pass by the policy, rule fallback)
      coarse: threshold         # threshold | policy (coarse pass by the policy, threshold fallback)
      rewrite_max_tokens: 64    # tokens the policy may write per coarse/fine prompt (policy passes)
      hrr: {enabled: true, beta: 0.5, group_mean: per_turn, floor: 0.0, shape_zero_advantage: false}
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from trainer.ziprl.hrr import HRRConfig
from trainer.ziprl.memory import (
    DEFAULT_GAMMA,
    DEFAULT_ROUNDS,
    DEFAULT_THRESHOLDS,
    Assigner,
    CompressionMemory,
    FullHistory,
    Generate,
    Level,
    Memory,
    PolicyAssigner,
    PolicyRewriter,
    RecencyWindow,
    Rewriter,
    RuleRewriter,
    ThresholdAssigner,
    UniformTruncation,
)
from trainer.ziprl.text import TokenCounter, count_tokens

MEMORIES = ("graded", "uniform", "recency", "full")
THRESHOLD_KEYS = ("verbatim", "trimmed", "summary", "key_facts")


@dataclass(frozen=True)
class ZipRLConfig:
    memory: str = "graded"
    budget_tokens: int = 1024
    thresholds: tuple[tuple[Level, float], ...] = DEFAULT_THRESHOLDS
    gamma: float = DEFAULT_GAMMA
    rounds: int = DEFAULT_ROUNDS
    rewriter: str = "rule"
    coarse: str = "threshold"
    rewrite_max_tokens: int = 64
    hrr_enabled: bool = True
    hrr: HRRConfig = field(default_factory=HRRConfig)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | None) -> ZipRLConfig:
        raw = dict(raw or {})
        known = {"memory", "budget_tokens", "thresholds", "gamma", "rounds", "rewriter", "coarse", "hrr",
                 "rewrite_max_tokens"}
        for key in raw:
            if key not in known:
                raise ValueError(f"ziprl.{key}: unknown key (known: {', '.join(sorted(known))})")
        memory = raw.get("memory", "graded")
        if memory not in MEMORIES:
            raise ValueError(f"ziprl.memory: {memory!r} is not one of {', '.join(MEMORIES)}")
        budget = raw.get("budget_tokens", 1024)
        if not isinstance(budget, int) or isinstance(budget, bool) or budget < 1:
            raise ValueError("ziprl.budget_tokens: must be a whole number of tokens, at least 1")
        thresholds = _thresholds(raw.get("thresholds"))
        gamma = raw.get("gamma", DEFAULT_GAMMA)
        if not isinstance(gamma, int | float) or not 0.0 <= float(gamma) <= 1.0:
            raise ValueError("ziprl.gamma: must be a number within [0, 1]")
        rounds = raw.get("rounds", DEFAULT_ROUNDS)
        if not isinstance(rounds, int) or isinstance(rounds, bool) or not 0 <= rounds <= 16:
            raise ValueError("ziprl.rounds: must be a whole number within [0, 16]")
        rewriter, coarse = raw.get("rewriter", "rule"), raw.get("coarse", "threshold")
        if rewriter not in ("rule", "policy"):
            raise ValueError(f"ziprl.rewriter: {rewriter!r} is not rule or policy")
        if coarse not in ("threshold", "policy"):
            raise ValueError(f"ziprl.coarse: {coarse!r} is not threshold or policy")
        rewrite_max_tokens = raw.get("rewrite_max_tokens", 64)
        if not isinstance(rewrite_max_tokens, int) or isinstance(rewrite_max_tokens, bool) \
                or not 1 <= rewrite_max_tokens <= 4096:
            raise ValueError("ziprl.rewrite_max_tokens: must be a whole number within [1, 4096]")
        hrr_raw = raw.get("hrr") or {}
        if not isinstance(hrr_raw, Mapping):
            raise ValueError("ziprl.hrr: must be a mapping (enabled, beta, group_mean, floor, shape_zero_advantage)")
        hrr_raw = dict(hrr_raw)
        enabled = hrr_raw.pop("enabled", True)
        allowed = {f.name for f in fields(HRRConfig)}
        for key in hrr_raw:
            if key not in allowed:
                raise ValueError(f"ziprl.hrr.{key}: unknown key (known: enabled, {', '.join(sorted(allowed))})")
        try:
            hrr = HRRConfig(**hrr_raw)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"ziprl.hrr: {exc}") from exc
        return cls(memory=memory, budget_tokens=budget, thresholds=thresholds, gamma=float(gamma), rounds=rounds,
                   rewriter=rewriter, coarse=coarse, rewrite_max_tokens=rewrite_max_tokens, hrr_enabled=bool(enabled), hrr=hrr)


def _thresholds(raw: Any) -> tuple[tuple[Level, float], ...]:
    if raw is None:
        return DEFAULT_THRESHOLDS
    if not isinstance(raw, Mapping):
        raise ValueError("ziprl.thresholds: must map levels (verbatim, trimmed, summary, key_facts) to relevance")
    given = dict(zip(THRESHOLD_KEYS, (t for _, t in DEFAULT_THRESHOLDS), strict=True))
    for key, value in raw.items():
        if key not in THRESHOLD_KEYS:
            raise ValueError(f"ziprl.thresholds.{key}: not one of {', '.join(THRESHOLD_KEYS)}")
        if not isinstance(value, int | float) or not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"ziprl.thresholds.{key}: must be a number within [0, 1]")
        given[key] = float(value)
    values = [given[k] for k in THRESHOLD_KEYS]
    if values != sorted(values, reverse=True):
        raise ValueError("ziprl.thresholds: must not increase from verbatim to key_facts")
    return tuple((Level[k.upper()], given[k]) for k in THRESHOLD_KEYS)


def build_memory(config: ZipRLConfig, question: str, *, generate: Generate | None = None,
                 count: TokenCounter = count_tokens) -> Memory:
    """The memory ``config`` asks for; ``generate`` is the policy (needed for ``rewriter``/``coarse: policy``)."""
    if config.memory == "full":
        return FullHistory(question, count)
    if config.memory == "uniform":
        return UniformTruncation(question, config.budget_tokens, count)
    if config.memory == "recency":
        return RecencyWindow(question, config.budget_tokens, count)
    if (config.rewriter == "policy" or config.coarse == "policy") and generate is None:
        raise ValueError("ziprl: rewriter or coarse is 'policy' but no generate callable was given")
    threshold = ThresholdAssigner(config.thresholds)
    assigner: Assigner = PolicyAssigner(generate, threshold) if config.coarse == "policy" and generate else threshold
    rewriter: Rewriter = PolicyRewriter(generate, count=count) if config.rewriter == "policy" and generate \
        else RuleRewriter()
    return CompressionMemory(question, config.budget_tokens, assigner=assigner, rewriter=rewriter, count=count,
                             gamma=config.gamma, rounds=config.rounds)
