"""RLAVR in the trainer (trainer/rlavr.py): extraction, rewards vs label / pseudo-label, the pending rule,
A × w, mean token probability, the step metrics, the features' positions and the step client's retries.
Expected numbers are worked out by hand in the comments."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from trainer.config import ConfigError, parse_config
from trainer.data import PromptRow
from trainer.rlavr import (
    GroupDecision,
    RlavrError,
    RlavrSession,
    annotation_url,
    effective_weight,
    extract_answer,
    extract_boxed,
    group_rewards,
    match_rewards,
    mean_token_probability,
    normalise,
    policy_features,
    prompt_id_of,
    step_metrics,
    training_target,
    weight_advantages,
)


def decision(status: str, *, pseudo: str | None = None, label: str | None = None, weight: float = 1.0) -> GroupDecision:
    return GroupDecision(prompt_id="p", pseudo_label=pseudo, label_status=status, label=label, advantage_weight=weight)


# ---------------------------------------------------------------- extraction and matching


def test_extract_boxed_takes_the_last_balanced_box() -> None:
    assert extract_boxed(r"first \boxed{\frac{1}{2}}, finally \boxed{3}") == "3"
    assert extract_boxed(r"so \boxed{\frac{1}{2}}.") == r"\frac{1}{2}"
    assert extract_boxed(r"\boxed{4} then \boxed{5") == "4"  # the last one never closes
    assert extract_boxed("no box here") is None
    assert extract_boxed(r"\boxed{ }") is None
    assert extract_boxed(r"\fbox {12} and \boxed{x}^2") == "x"
    assert extract_boxed(r"\boxed {12}") == "12"


def test_extract_answer_text_and_unknown_extractor() -> None:
    assert extract_answer("  42 \n", "text") == "42"
    assert extract_answer("   ", "text") is None
    assert extract_answer(r"x = \boxed{7}", "boxed") == "7"
    with pytest.raises(ValueError, match=r"rlavr\.extractor"):
        extract_answer("7", "last_number")


def test_a_nul_in_an_answer_is_dropped_not_sent() -> None:
    # An undertrained policy can sample NUL, which the annotation service refuses (422): the run died.
    assert extract_answer("\\boxed{4\x002}", "boxed") == "42"
    assert extract_answer("\x00\x00", "text") is None
    assert extract_answer("\\boxed{\x00}", "boxed") is None


def test_rollouts_carry_the_dataset_row_they_were_sampled_from(tmp_path: Path) -> None:
    # Two rows with the same prompt text have the same prompt tokens: RLAVR once found a group's row by
    # its tokens, so both groups were posted under one prompt id (a 422) or, across epochs, a group
    # under the other row's id, silently. The trainer now records the row on each rollout.
    from trainer.grpo import GRPOTrainer
    from trainer.rewards import CallableRewards

    data = tmp_path / "twins.jsonl"
    data.write_text("".join(json.dumps({"prompt": "Compute 2 + 2.", "reward_model": {"ground_truth": truth},
                                        "extra_info": {"index": i}}) + "\n" for i, truth in enumerate(["4", "5"])))
    config = parse_config({"model": {"tiny": {"seed": 0, "hidden_size": 32}}, "dataset": str(data), "group_size": 2,
                           "prompts_per_step": 2, "max_steps": 1, "max_completion_length": 3, "seed": 0,
                           "output_dir": str(tmp_path / "out"), "export_hf": "none"}, local=True)
    trainer = GRPOTrainer(config, rewards=CallableRewards(lambda *_: 0.0))
    rollouts, _, _, _ = trainer._rollouts([1, 0], seed=3)
    assert trainer.encode_prompt(0) == trainer.encode_prompt(1)  # indistinguishable by their tokens
    assert [r.row_index for r in rollouts] == [1, 1, 0, 0]


def test_match_rewards_exact_after_normalisation() -> None:
    assert normalise("$ 1 / 2 $") == "1/2"
    assert match_rewards(["4", " 4 ", "$4$", "5", None], "4") == [1.0, 1.0, 1.0, 0.0, 0.0]
    assert match_rewards(["4", None], None) == [0.0, 0.0]


def test_rewards_use_the_label_where_known_else_the_pseudo_label() -> None:
    labelled = decision("labelled", pseudo="3", label="7")  # the vote (3) was wrong; GT 7 rewards the minority
    unbought = decision("none", pseudo="2")
    pending = decision("pending", pseudo="9")  # no label yet: rewards against the vote (trained at weight 0)
    assert training_target(labelled) == "7" and training_target(unbought) == "2" and training_target(pending) == "9"
    answers: list[list[str | None]] = [["3", "3", "7", None], ["2", "1", "2", "2"], ["9", "8", "9", "9"]]
    assert group_rewards(answers, [labelled, unbought, pending]) == [0, 0, 1, 0, 1, 0, 1, 1, 1, 0, 1, 1]


def test_pending_labels_train_at_weight_zero() -> None:
    assert effective_weight(decision("pending", weight=1.0)) == 0.0
    assert effective_weight(decision("labelled", label="1", weight=1.0)) == 1.0
    assert effective_weight(decision("none", weight=0.7)) == 0.7
    with pytest.raises(ValueError, match=r"rlavr\.pending_rule"):
        effective_weight(decision("none"), "replay")


def test_weight_advantages_scales_each_prompt() -> None:
    # Group 1 rewards [0, 0, 1, 0]: mean 0.25, population std sqrt(0.25 * 0.75) = 0.4330127, so
    # A = 0.75 / 0.4330127 = 1.7320508 and -0.25 / 0.4330127 = -0.5773503; weight 0 silences it.
    # Group 2 rewards [1, 0, 1, 0]: A = ±0.5 / 0.5 = ±1; weight 0.5 -> ±0.5.
    advantages = torch.tensor([-0.5773503, -0.5773503, 1.7320508, -0.5773503, 1.0, -1.0, 1.0, -1.0])
    out = weight_advantages(advantages, [0.0, 0.5], group_size=4)
    assert torch.allclose(out, torch.tensor([0.0, 0.0, 0.0, 0.0, 0.5, -0.5, 0.5, -0.5]))
    with pytest.raises(ValueError, match="8 advantages for 3 groups of 4"):
        weight_advantages(advantages, [1.0, 1.0, 1.0], group_size=4)


def test_mean_token_probability_is_the_arithmetic_mean() -> None:
    # Row 1: probabilities 0.5 and 0.25 (the third token is padding): (0.5 + 0.25) / 2 = 0.375
    # (exp of the mean log-prob would be sqrt(0.125) = 0.3536). Row 2: one token, 0.8. Row 3: empty, 0.
    logp = torch.log(torch.tensor([[0.5, 0.25, 0.9], [0.8, 0.1, 0.1], [0.3, 0.3, 0.3]]))
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    assert mean_token_probability(logp, mask) == pytest.approx([0.375, 0.8, 0.0])


def test_step_metrics() -> None:
    decisions = [decision("labelled", pseudo="3", label="7"), decision("none", pseudo="2", weight=0.5),
                 decision("pending", pseudo="1"), decision("labelled", pseudo="$5$", label="5")]
    weights = [1.0, 0.5, 0.0, 1.0]
    metrics = step_metrics(decisions, weights, purchased=1, budget={"total": 10, "spent": 4, "left": 6},
                           budget_exhausted=False)
    # 2 of 4 prompts train with a known label; 3 of 4 train at all; mean weight 2.5 / 4 = 0.625;
    # of the 2 known labels the vote matched one ("$5$" = "5"): 0.5.
    assert metrics == {"rlavr/gt_share": 0.5, "rlavr/trained_share": 0.75, "rlavr/mean_advantage_weight": 0.625,
                       "rlavr/purchased": 1.0, "rlavr/pending": 1.0, "rlavr/labels_known": 2.0,
                       "rlavr/budget_spent": 4.0, "rlavr/budget_left": 6.0, "rlavr/budget_exhausted": 0.0,
                       "rlavr/pseudo_label_accuracy": 0.5}
    none_known = step_metrics([decision("none", pseudo="2")], [1.0], purchased=0,
                              budget={"total": 1, "spent": 1, "left": 0}, budget_exhausted=True)
    assert "rlavr/pseudo_label_accuracy" not in none_known and none_known["rlavr/budget_exhausted"] == 1.0


# ---------------------------------------------------------------- config and identity


def rlavr_config(tmp_path: Path, **overrides: Any) -> Any:
    data: dict[str, Any] = {"model": {"tiny": {}}, "dataset": str(tmp_path / "d.jsonl"), "group_size": 4,
                            "output_dir": str(tmp_path / "run"), "rlavr": {"annotation_project_id": "ap1"},
                            "reward": {"spec": {"type": "math"}, "url": "http://platform:9/"}}
    data.update(overrides)
    return parse_config(data, local=True)


def test_config_defaults_and_contradictions_name_the_field(tmp_path: Path) -> None:
    config = rlavr_config(tmp_path)
    assert config.rlavr.extractor == "boxed" and config.rlavr.pending_rule == "weight_zero"
    assert annotation_url(config.rlavr, config.reward) == "http://platform:9/services/annotation"
    explicit = rlavr_config(tmp_path, rlavr={"annotation_project_id": "ap1", "url": "http://ann:8001/"})
    assert annotation_url(explicit.rlavr, explicit.reward) == "http://ann:8001"
    for field, value in [("dynamic_sampling", True), ("kl_in_reward", True), ("scale_rewards", "reinforce_pp"),
                         ("overlong", {"enabled": True, "cache_length": 8})]:
        extra = {"beta": 0.1} if field == "kl_in_reward" else {}
        named = "overlong.enabled" if field == "overlong" else field
        with pytest.raises(ConfigError, match=f"^{re.escape(named)}: .*rlavr"):
            rlavr_config(tmp_path, **{field: value}, **extra)
    with pytest.raises(ConfigError, match=r"^rlavr\.extractor: "):
        rlavr_config(tmp_path, rlavr={"annotation_project_id": "ap1", "extractor": "regex"})


def test_prompt_id_and_idempotency_key(tmp_path: Path) -> None:
    assert prompt_id_of(PromptRow(index=3, prompt="q", ground_truth="1")) == "3"
    assert prompt_id_of(PromptRow(index=3, prompt="q", ground_truth="1", extra_info={"prompt_id": "gsm-17"})) == "gsm-17"
    config = rlavr_config(tmp_path, rlavr={"annotation_project_id": "ap1", "run_id": "exp1"})
    assert RlavrSession(config, tmp_path).idempotency_key(5) == "rlavr-exp1-step-5"
    assert RlavrSession(config, tmp_path, rank=1, world_size=2).idempotency_key(5) == "rlavr-exp1-rank-1-step-5"
    # Unset run_id: derived from the output dir, the same for the same run, different for another.
    default = rlavr_config(tmp_path)
    assert RlavrSession(default, tmp_path / "a").key_prefix == RlavrSession(default, tmp_path / "a").key_prefix
    assert RlavrSession(default, tmp_path / "a").key_prefix != RlavrSession(default, tmp_path / "b").key_prefix


# ---------------------------------------------------------------- the step client


STEP_ANSWER = {"groups": [], "purchased": 0, "budget": {"total": 1, "spent": 0, "left": 1}}


def test_post_step_retries_a_lost_response_with_the_same_key(tmp_path: Path) -> None:
    seen: list[tuple[str, str, dict[str, Any]]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.url.path, request.headers["Idempotency-Key"], json.loads(request.content)))
        if len(seen) == 1:
            raise httpx.ReadError("connection reset", request=request)
        return httpx.Response(200, json=STEP_ANSWER)

    config = rlavr_config(tmp_path, rlavr={"annotation_project_id": "ap1", "run_id": "r"})
    session = RlavrSession(config, tmp_path, api_key="k", transport=httpx.MockTransport(handler))
    assert session.post_step(2, [{"prompt_id": "a"}]) == STEP_ANSWER
    assert [s[0] for s in seen] == ["/services/annotation/v1/annotation/projects/ap1/steps"] * 2
    assert [s[1] for s in seen] == ["rlavr-r-step-2"] * 2 and seen[0][2] == seen[1][2] == {
        "step": 2, "groups": [{"prompt_id": "a"}]}


def test_post_step_refusal_raises_with_the_service_message(tmp_path: Path) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(422, json={"error": {"field": "groups[0].answers"}})

    config = rlavr_config(tmp_path, rlavr={"annotation_project_id": "ap1", "max_retries": 0})
    session = RlavrSession(config, tmp_path, api_key="k", transport=httpx.MockTransport(handler))
    with pytest.raises(RlavrError, match=r"HTTP 422.*groups\[0\].answers"):
        session.post_step(0, [{"prompt_id": "a"}])


# ---------------------------------------------------------------- features from the policy


class _Batch:
    def __init__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, completion_ids: torch.Tensor) -> None:
        self.input_ids, self.attention_mask, self.completion_ids = input_ids, attention_mask, completion_ids
        self.position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)


def test_policy_features_read_the_last_prompt_and_response_tokens(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    from trainer.tiny_models import build_tiny_causal_lm

    model = AutoModelForCausalLM.from_pretrained(str(build_tiny_causal_lm(tmp_path / "m")), local_files_only=True)
    # Row 0: prompt [5, 6, 7], completion [8, 9]; row 1: prompt [11, 12] (left-padded), completion [13] (right-padded).
    pad = 0
    input_ids = torch.tensor([[5, 6, 7, 8, 9], [pad, 11, 12, 13, pad]])
    attention = torch.tensor([[1, 1, 1, 1, 1], [0, 1, 1, 1, 0]])
    completion_mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    batch = _Batch(input_ids, attention, input_ids[:, 3:])
    got = policy_features(model, batch, completion_mask, 1.0, device="cpu", micro_batch_size=1)
    with torch.no_grad():
        alone0 = model(input_ids=torch.tensor([[5, 6, 7, 8, 9]]), output_hidden_states=True)
        alone1 = model(input_ids=torch.tensor([[11, 12, 13]]), output_hidden_states=True)
    h0, h1 = alone0.hidden_states[-1][0], alone1.hidden_states[-1][0]
    assert torch.allclose(torch.tensor(got.prompt[0]), h0[2], atol=1e-5)  # last prompt token: 7
    assert torch.allclose(torch.tensor(got.response[0]), h0[4], atol=1e-5)  # last response token: 9
    assert torch.allclose(torch.tensor(got.prompt[1]), h1[1], atol=1e-5)  # 12
    assert torch.allclose(torch.tensor(got.response[1]), h1[2], atol=1e-5)  # 13
    # Row 1's one completion token 13 has probability softmax(logits at 12)[13].
    p13 = float(torch.softmax(alone1.logits[0, 1], -1)[13])
    assert got.mean_token_probs[1] == pytest.approx(p13, rel=1e-4)
    p8, p9 = (float(torch.softmax(alone0.logits[0, i], -1)[t]) for i, t in ((2, 8), (3, 9)))
    assert got.mean_token_probs[0] == pytest.approx((p8 + p9) / 2, rel=1e-4)
    assert all(not math.isnan(v) for v in got.prompt[0])
