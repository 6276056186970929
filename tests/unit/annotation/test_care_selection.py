"""Top-p acquisition, the reliability gate, advantage weights, every policy's decision, and
validation of the per-project CARE parameters."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from services.annotation.care import CareParams, CareSelector, Decision, GroupView, validate_care_params
from services.annotation.care import acquisition as acq
from services.annotation.care.params import care_params_from
from services.annotation.models import Policy
from services.common.errors import InvalidInput


def test_quota_is_ceiling_without_float_noise() -> None:
    assert acq.quota(0.2, 10) == 2
    assert acq.quota(0.1, 30) == 3  # 0.1·30 = 3.0000000000000004
    assert acq.quota(0.2, 11) == 3
    assert acq.quota(0.25, 1) == 1


def test_top_p_select_respects_eligibility_and_breaks_ties_by_index() -> None:
    scores = [0.9, 0.5, 0.5, 0.8, 0.1]
    assert acq.top_p_select(scores, [True] * 5, 0.4) == [True, False, False, True, False]
    assert acq.top_p_select(scores, [False, True, True, True, True], 0.4) == [False, True, False, True, False]
    assert acq.top_p_select(scores, [False] * 5, 0.4) == [False] * 5


def test_reliability_gate_opens_after_warm_up() -> None:
    probs = np.array([0.2, 0.9, 0.6, 0.95])
    assert acq.reliability_gate(probs, 0.25, warmed_up=False) == [False] * 4
    assert acq.reliability_gate(probs, 0.25, warmed_up=True) == [False, False, False, True]
    assert acq.reliability_gate(probs, 0.5, warmed_up=True) == [False, True, False, True]


def test_weights_and_ranked_selection() -> None:
    assert acq.care_pseudo_weight(0.3, True) == 0.3
    assert acq.care_pseudo_weight(2.7, True) == 1.0
    assert acq.care_pseudo_weight(0.3, False) == 0.0
    d = Decision(scores=[0.1, 3.0, None, 3.0], reliability=[None] * 4, reliable=[False] * 4,
                 selected=[True, True, True, True], pseudo_weights=[0.0, 0.5, 0.0, 0.0])
    assert d.ranked_selection() == [1, 3, 0, 2]
    assert d.final_weights(bought={0}, labelled={3}) == [1.0, 0.5, 0.0, 1.0]


def _views(count: int, n: int = 8, dim: int = 6, seed: int = 0) -> list[GroupView]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        majority = 3 + i % 5
        clusters = [list(range(majority))] + ([list(range(majority, n))] if majority < n else [])
        out.append(GroupView(n=n, clusters=clusters, prompt_features=rng.normal(size=dim).astype(np.float32),
                             rollout_features=rng.normal(size=(n, dim)).astype(np.float32),
                             mean_token_probs=[0.9 - 0.05 * i] * n, known=(i == 0)))
    return out


@pytest.mark.parametrize("policy", list(Policy))
def test_every_policy_selects_top_p_of_the_batch_and_never_a_known_prompt(policy: Policy) -> None:
    views = _views(10)
    truth = [[j >= v.majority_size for j in range(8)] for v in views]  # majority always wrong
    decision = CareSelector(policy, CareParams(), 8).decide(views, step=0, truth=truth)
    assert sum(decision.selected) == 2  # ⌈0.2 · 10⌉
    assert not decision.selected[0]  # bought at an earlier step
    assert all(s is not None for s in decision.scores)


def test_low_consensus_and_oracle_pick_what_they_should() -> None:
    views = _views(10)
    low = CareSelector(Policy.low_consensus, CareParams(), 8).decide(views, step=0)
    # majority sizes 3,4,5,6,7,3,4,…: the two lowest-consensus unknown prompts are 5 (size 3) and 1 (size 4)
    assert [i for i, s in enumerate(low.selected) if s] == [1, 5]
    truth = [[False] * 8 for _ in views]
    truth[7][7] = True  # only prompt 7 has a correct rollout outside its majority
    oracle = CareSelector(Policy.oracle_cag, CareParams(), 8).decide(views, step=0, truth=truth)
    assert oracle.selected[7]
    with pytest.raises(InvalidInput):
        CareSelector(Policy.oracle_cag, CareParams(), 8).decide(views, step=0, truth=None)


def test_care_gate_keeps_reliable_prompts_out_and_weights_them_by_gap() -> None:
    params = replace(CareParams(), warmup_steps=1)
    selector = CareSelector(Policy.care, params, 8)
    views = _views(12)
    first = selector.decide(views, step=0)
    assert not any(first.reliable)  # warm-up: nothing gated
    assert first.pseudo_weights == [0.0] * 12
    second = selector.decide(views, step=1)
    assert sum(second.reliable) == 3  # ⌈0.25 · 12⌉
    for i in range(12):
        assert not (second.reliable[i] and second.selected[i])
        expected = min(max(second.scores[i] or 0.0, 0.0), 1.0) if second.reliable[i] else 0.0
        assert second.pseudo_weights[i] == pytest.approx(expected)
        # Every group splits (0 < x < 8), so every cost, cost(0) = √8 included, is ≥ √8 > 1: S ≥ √8 and a
        # reliable prompt trains at weight 1 exactly (with cost(0) = 0 it would get S < 1 when p(0) is high).
        assert second.pseudo_weights[i] == (1.0 if second.reliable[i] else 0.0)
        assert second.scores[i] is not None and second.scores[i] >= 2.8284271247461903 - 1e-9
    assert sum(second.selected) == 3  # ⌈0.2 · 12⌉ among the rest


def test_low_token_prob_buys_the_least_confident_prompts() -> None:
    views = _views(10)  # mean token probability 0.9 − 0.05·i: prompts 9 and 8 are the least confident
    decision = CareSelector(Policy.low_token_prob, CareParams(), 8).decide(views, step=0)
    assert [i for i, s in enumerate(decision.selected) if s] == [8, 9]
    assert decision.scores[9] == pytest.approx(1 - 0.45) and decision.scores[1] == pytest.approx(1 - 0.85)
    views[3] = replace(views[3], mean_token_probs=None)
    with pytest.raises(InvalidInput) as caught:
        CareSelector(Policy.low_token_prob, CareParams(), 8).decide(views, step=0)
    assert caught.value.field == "groups[3].mean_token_probs"


@pytest.mark.parametrize("policy", [p for p in Policy if p is not Policy.care])
@pytest.mark.parametrize(("mask_non_gt", "weight"), [(True, 0.0), (False, 1.0)])
def test_baselines_train_only_on_bought_prompts_unless_told_otherwise(policy: Policy, mask_non_gt: bool,
                                                                       weight: float) -> None:
    views = _views(10)
    truth = [[j >= v.majority_size for j in range(8)] for v in views]
    decision = CareSelector(policy, replace(CareParams(), mask_non_gt=mask_non_gt), 8).decide(
        views, step=0, truth=truth)
    assert decision.pseudo_weights == [weight] * 10
    bought = {i for i, s in enumerate(decision.selected) if s}
    assert decision.final_weights(bought=bought, labelled={0}) == [
        1.0 if i in bought or i == 0 else weight for i in range(10)]


def test_care_refuses_a_feature_width_change() -> None:
    selector = CareSelector(Policy.care, CareParams(), 8)
    selector.decide(_views(4, dim=6), step=0)
    with pytest.raises(InvalidInput) as caught:
        selector.decide(_views(4, dim=7), step=1)
    assert caught.value.field == "groups[0].prompt_features"


@pytest.mark.parametrize(("params", "field"), [
    ({"top_p": 0}, "care_params.top_p"),
    ({"top_p": 1.5}, "care_params.top_p"),
    ({"top_p": "0.2"}, "care_params.top_p"),
    ({"reliable_p": 1.0}, "care_params.reliable_p"),
    ({"warmup_steps": 2.5}, "care_params.warmup_steps"),
    ({"warmup_steps": True}, "care_params.warmup_steps"),
    ({"lr": -1e-4}, "care_params.lr"),
    ({"lr": float("nan")}, "care_params.lr"),
    ({"buffer_size": 0}, "care_params.buffer_size"),
    ({"class_weight_min": 0.9, "class_weight_max": 1.0, "aux_weight": -1}, "care_params.aux_weight"),
    ({"bogus": 1}, "care_params.bogus"),
])
def test_validation_names_the_parameter(params: dict, field: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        validate_care_params(params)
    assert caught.value.field == field
    assert field in caught.value.message


def test_validation_normalises_and_fills_defaults() -> None:
    assert validate_care_params({"top_p": 1, "warmup_steps": 5.0}) == {"top_p": 1.0, "warmup_steps": 5}
    params = care_params_from({"top_p": 0.3})
    assert params.top_p == 0.3 and params.reliable_p == 0.25 and params.warmup_steps == 20
    with pytest.raises(InvalidInput) as caught:
        validate_care_params({"class_weight_min": 1.0, "class_weight_max": 1.0 - 1e-9})
    assert caught.value.field == "care_params.class_weight_max"
