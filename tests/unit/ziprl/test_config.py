"""The ziprl run-config section: defaults, every open choice settable, bad values named."""

from __future__ import annotations

import pytest

from trainer.ziprl.config import ZipRLConfig, build_memory
from trainer.ziprl.memory import CompressionMemory, Level, PolicyAssigner, PolicyRewriter, RecencyWindow


def test_defaults_and_choices() -> None:
    default = ZipRLConfig.from_dict(None)
    assert (default.memory, default.budget_tokens, default.gamma, default.rounds) == ("graded", 1024, 0.8, 3)
    assert default.hrr.beta == 0.5 and default.hrr.group_mean == "per_turn" and default.hrr.floor == 0.0
    assert default.thresholds[0] == (Level.VERBATIM, 0.45)
    custom = ZipRLConfig.from_dict({"budget_tokens": 64, "thresholds": {"verbatim": 0.9},
                                    "hrr": {"beta": 0.2, "group_mean": "pooled", "enabled": False}})
    assert custom.thresholds[0] == (Level.VERBATIM, 0.9) and custom.thresholds[1] == (Level.TRIMMED, 0.30)
    assert custom.hrr.group_mean == "pooled" and custom.hrr_enabled is False
    memory = build_memory(custom, "q?")
    assert isinstance(memory, CompressionMemory) and memory.budget_tokens == 64
    assert isinstance(build_memory(ZipRLConfig.from_dict({"memory": "recency"}), "q?"), RecencyWindow)
    policy = build_memory(ZipRLConfig.from_dict({"rewriter": "policy", "coarse": "policy"}), "q?",
                          generate=lambda prompt: "p1: summary")
    assert isinstance(policy, CompressionMemory)
    assert isinstance(policy.rewriter, PolicyRewriter) and isinstance(policy.assigner, PolicyAssigner)


@pytest.mark.parametrize(("raw", "field"), [
    ({"memroy": "graded"}, "ziprl.memroy"),
    ({"memory": "zip"}, "ziprl.memory"),
    ({"budget_tokens": 0}, "ziprl.budget_tokens"),
    ({"gamma": 1.5}, "ziprl.gamma"),
    ({"rounds": -1}, "ziprl.rounds"),
    ({"thresholds": {"verbatim": 0.1}}, "ziprl.thresholds"),  # below trimmed's 0.30
    ({"thresholds": {"dropped": 0.1}}, "ziprl.thresholds.dropped"),
    ({"hrr": {"beta": -1}}, "ziprl.hrr"),
    ({"hrr": {"group_mean": "median"}}, "ziprl.hrr"),
    ({"hrr": {"betta": 1}}, "ziprl.hrr.betta"),
    ({"rewriter": "llm"}, "ziprl.rewriter"),
])
def test_bad_values_name_the_key(raw: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        ZipRLConfig.from_dict(raw)


def test_policy_memory_needs_the_policy() -> None:
    with pytest.raises(ValueError, match="generate"):
        build_memory(ZipRLConfig.from_dict({"rewriter": "policy"}), "q?")
