"""CARE's pure helpers at their edges, written against mutmut's mutants (issue 23, item 1).

Expected values are typed in: each bound of every parameter (inclusive or not), the exact error
messages, quotas and top-k picks worked out by hand.
"""

from __future__ import annotations

import io
import math
import pickle
from dataclasses import replace

import numpy as np
import pytest
import torch

from services.annotation.care import acquisition as acq
from services.annotation.care import features as prf
from services.annotation.care import probes
from services.annotation.care.cag import STD_EPS, cag_cost, expected_gap, grpo_advantage
from services.annotation.care.features import GroupView, LabelledView
from services.annotation.care.params import CareParams, validate_care_params
from services.annotation.care.selector import BufferEntry, CareSelector, HistoryLoader
from services.annotation.models import Policy
from services.common.errors import InvalidInput

# name, a value on each accepted edge, a value just outside each edge
EDGES = [
    ("top_p", [1e-9, 1.0], [0.0, 1.0 + 1e-9]),  # (0, 1]
    ("reliable_p", [0.0, 0.999], [-1e-9, 1.0]),  # [0, 1)
    ("warmup_steps", [0, 1_000_000], [-1, 1_000_001]),
    ("buffer_size", [1, 1_000_000], [0, 1_000_001]),
    ("history_samples", [0, 100_000], [-1, 100_001]),
    ("train_steps", [0, 1000], [-1, 1001]),
    ("lr", [1e-12, 1.0], [0.0, 1.5]),  # (0, 1]
    ("weight_decay", [0.0, 10.0], [-0.1, 10.1]),
    ("grad_clip", [1e-6, 1e6], [0.0, 1e6 + 1]),
    ("aux_weight", [0.0, 100.0], [-0.1, 100.1]),
    ("class_weight_min", [1e-6, 1.0], [0.0, 1.01]),  # (0, 1]
    ("class_weight_max", [4.0, 1e6], [0.99, 1e6 + 1]),
    ("length_scale", [1e-3, 1e9], [0.0, 2e9]),
    ("prompt_hidden", [1, 4096], [0, 4097]),
    ("response_hidden", [1, 4096], [0, 4097]),
    ("response_out", [1, 4096], [0, 4097]),
    ("head_hidden", [1, 4096], [0, 4097]),
    ("seed", [0, 2**63 - 1], [-1, 2**63]),
]


@pytest.mark.parametrize(("name", "accepted", "rejected"), EDGES)
def test_every_parameter_bound_is_where_the_spec_puts_it(name: str, accepted: list[float],
                                                         rejected: list[float]) -> None:
    for value in accepted:
        assert validate_care_params({name: value}) == {name: value}, (name, value)
    for value in rejected:
        with pytest.raises(InvalidInput) as caught:
            validate_care_params({name: value})
        assert caught.value.field == f"care_params.{name}", (name, value)


@pytest.mark.parametrize(("params", "message"), [
    ({"top_p": 0}, "care_params.top_p must lie in (0, 1], got 0.0"),
    ({"reliable_p": 1}, "care_params.reliable_p must lie in [0, 1), got 1.0"),
    ({"warmup_steps": -1}, "care_params.warmup_steps must lie in [0, 1e+06], got -1"),
    ({"train_steps": 2.5}, "care_params.train_steps must be a whole number, got 2.5"),
    ({"lr": "0.1"}, "care_params.lr must be a number, got str"),
    ({"lr": True}, "care_params.lr must be a number, got bool"),
    ({"lr": math.inf}, "care_params.lr must be finite"),
    ({"class_weight_min": 1.0, "class_weight_max": 1.0 - 1e-9},
     "care_params.class_weight_max must lie in [1, 1e+06], got 0.999999999"),
])
def test_error_messages(params: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        validate_care_params(params)
    assert caught.value.message == message


def test_equal_class_weight_bounds_are_allowed() -> None:
    # min ≤ 1 ≤ max by their own bounds, so min = max = 1 is the one case where they meet.
    assert validate_care_params({"class_weight_min": 1.0, "class_weight_max": 1.0}) == {
        "class_weight_min": 1.0, "class_weight_max": 1.0}


def test_whole_floats_become_ints_and_ints_become_floats() -> None:
    out = validate_care_params({"warmup_steps": 5.0, "lr": 1})
    assert out == {"warmup_steps": 5, "lr": 1.0}
    assert type(out["warmup_steps"]) is int and type(out["lr"]) is float


def test_care_params_must_be_an_object() -> None:
    with pytest.raises(InvalidInput) as caught:
        validate_care_params([("top_p", 0.2)])  # type: ignore[arg-type]
    assert (caught.value.field, caught.value.message) == ("care_params", "care_params must be an object")


# --- acquisition ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("share", "batch", "expected"), [
    (0.0, 10, 0), (0.05, 10, 1), (0.3, 10, 3), (0.31, 10, 4), (1.0, 7, 7), (0.5, 0, 0),
])
def test_quota(share: float, batch: int, expected: int) -> None:
    assert acq.quota(share, batch) == expected


def test_top_k_takes_the_highest_eligible_scores_earlier_index_on_ties() -> None:
    assert acq.top_k([0.1, 0.7, 0.7, 0.3], [True, True, True, True], 2) == [False, True, True, False]
    assert acq.top_k([0.1, 0.7, 0.7, 0.3], [True, True, True, True], 1) == [False, True, False, False]
    assert acq.top_k([0.1, 0.7, 0.7, 0.3], [True, False, True, True], 2) == [False, False, True, True]
    assert acq.top_k([-1.0, -2.0], [True, True], 1) == [True, False]  # negative scores order the same way
    assert acq.top_k([0.5, 0.2], [True, True], 0) == [False, False]
    assert acq.top_k([0.5, 0.2], [True, True], 5) == [True, True]


def test_advantage_weight() -> None:
    assert acq.advantage_weight(has_label=True, pseudo_weight=0.25) == 1.0
    assert acq.advantage_weight(has_label=False, pseudo_weight=0.25) == 0.25


def test_care_pseudo_weight_clips_to_the_unit_interval() -> None:
    assert acq.care_pseudo_weight(-0.5, True) == 0.0
    assert acq.care_pseudo_weight(1.0, True) == 1.0
    assert acq.care_pseudo_weight(0.0, True) == 0.0


# --- cag -----------------------------------------------------------------------------------------


def test_grpo_advantage_is_zero_only_below_the_std_floor() -> None:
    assert STD_EPS == 1e-8
    # r = [0, 2]: mean 1, population std 1 → A = [−1, 1]
    assert grpo_advantage(np.array([0.0, 2.0])).tolist() == [-1.0, 1.0]
    # std 5e-9 < 1e-8: treated as constant
    assert grpo_advantage(np.array([0.0, 1e-8])).tolist() == [0.0, 0.0]
    # std 1e-8 exactly is not below the floor: [−1, 1] again
    assert grpo_advantage(np.array([0.0, 2e-8])) == pytest.approx([-1.0, 1.0])


def test_expected_gap_sums_each_row() -> None:
    probs = np.array([[1.0, 0.0], [0.25, 0.75]])
    costs = np.array([[3.0, 5.0], [4.0, 8.0]])
    assert expected_gap(probs, costs).tolist() == [3.0, 7.0]  # 1·3; 0.25·4 + 0.75·8


# --- the survivors of the CARE run after the mask_non_gt change (issue 23, item 1) ------------------


def test_the_mask_non_gt_flag_is_kept_and_checked() -> None:
    """params mutants 12–19: the flag is a boolean, kept as given, and the parameters after it are read."""
    assert validate_care_params({"mask_non_gt": False}) == {"mask_non_gt": False}
    assert validate_care_params({"mask_non_gt": True, "top_p": 0.5}) == {"mask_non_gt": True, "top_p": 0.5}
    with pytest.raises(InvalidInput) as caught:
        validate_care_params({"mask_non_gt": 1})
    assert (caught.value.field, caught.value.message) == (
        "care_params.mask_non_gt", "care_params.mask_non_gt must be true or false, got int")


def test_an_unknown_parameter_lists_the_known_ones() -> None:
    """params mutants 21, 23, 25: every field of CareParams, sorted, comma-separated."""
    with pytest.raises(InvalidInput) as caught:
        validate_care_params({"top_k": 3})
    assert caught.value.field == "care_params.top_k"
    assert caught.value.message == (
        "care_params.top_k is not a CARE parameter; known: aux_weight, buffer_size, class_weight_max, "
        "class_weight_min, grad_clip, head_hidden, history_samples, length_scale, lr, mask_non_gt, "
        "prompt_hidden, reliable_p, response_hidden, response_out, seed, top_p, train_steps, warmup_steps, "
        "weight_decay")


def test_unparseable_rollouts_are_singleton_clusters_in_the_entropy() -> None:
    """acquisition mutant 5: n = 3, nothing parses → three singletons, H = ln 3 (not 3 clusters of 2)."""
    view = GroupView(n=3, clusters=[])
    assert acq.cluster_entropy(view) == pytest.approx(math.log(3), rel=1e-15)
    # One cluster {0, 1} and one unparseable: sizes 2, 1 → H = −(2/3 ln 2/3 + 1/3 ln 1/3) = ln 3 − (2/3) ln 2.
    view = GroupView(n=3, clusters=[[0, 1]])
    assert acq.cluster_entropy(view) == pytest.approx(math.log(3) - 2 / 3 * math.log(2), rel=1e-12)


def test_low_token_prob_needs_the_probabilities_by_name() -> None:
    """acquisition mutants 2, 3, 4: the exact message."""
    with pytest.raises(ValueError, match=r"^low_token_prob needs each rollout's mean token probability$"):
        acq.low_token_prob_score(GroupView(n=2, clusters=[[0, 1]]))


def test_cag_cost_names_an_impossible_count() -> None:
    """cag mutant 10: x = 3 of n = 4 leaves room for at most 1 other correct rollout, not 2."""
    with pytest.raises(ValueError, match=r"^need 0 ≤ x ≤ n and 0 ≤ c ≤ n − x \(n=4, x=3, c=2\)$"):
        cag_cost(4, 3, 2)


def test_grpo_advantage_is_float64_for_any_input() -> None:
    """cag mutants 3, 5: integer and float32 rewards are read as float64, the constant case too."""
    # r = [0, 2]: mean 1, population std 1 → [−1, 1].
    advantage = grpo_advantage(np.array([0, 2]))
    assert advantage.dtype == np.float64 and advantage.tolist() == [-1.0, 1.0]
    assert grpo_advantage(np.array([1, 1])).dtype == np.float64
    assert grpo_advantage(np.array([0.0, 2.0], dtype=np.float32)).dtype == np.float64


# --- features: the probes' inputs ----------------------------------------------------------------

# n = 2, both rollouts in one cluster, lengths 2000 and 8000 tokens at L = 4000 → 0.5 and 1 (capped).
FEATURED = GroupView(n=2, clusters=[[0, 1]], prompt_features=np.array([[0.5, -1.0]]),
                     rollout_features=np.array([[1.0, 2.0], [3.0, 4.0]]), response_lengths=[2000, 8000])
BARE = GroupView(n=2, clusters=[[0, 1]], response_lengths=[2000, 8000])


def test_prompt_input_is_the_hidden_state_then_the_group_stats_in_float32() -> None:
    """features prompt_input mutants 2–9, 11, 13, 16.

    Stats: [valid ratio 2/2 = 1, sorted sizes / n = 2/2 = 1 padded with 0, lengths 0.5, 1].
    """
    featured = prf.prompt_input(FEATURED, 2, 4000.0)
    assert featured.dtype == np.float32
    assert featured.tolist() == [0.5, -1.0, 1.0, 1.0, 0.0, 0.5, 1.0]
    bare = prf.prompt_input(BARE, 3, 4000.0)  # no hidden state: three zeros
    assert bare.dtype == np.float32
    assert bare.tolist() == [0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.5, 1.0]


def test_rollout_input_is_each_hidden_state_then_its_extras_in_float32() -> None:
    """features rollout_input mutants 2–8, 14, 16, 22.

    Extras per rollout: [valid 1, own cluster size / n = 1, in majority 1, length 0.5 or 1].
    """
    featured = prf.rollout_input(FEATURED, 2, 4000.0)
    assert featured.dtype == np.float32
    assert featured.tolist() == [[1.0, 2.0, 1.0, 1.0, 1.0, 0.5], [3.0, 4.0, 1.0, 1.0, 1.0, 1.0]]
    bare = prf.rollout_input(BARE, 1, 4000.0)
    assert bare.dtype == np.float32
    assert bare.tolist() == [[0.0, 1.0, 1.0, 1.0, 0.5], [0.0, 1.0, 1.0, 1.0, 1.0]]


def test_lengths_are_scaled_in_float32() -> None:
    """features _lengths mutants 13, 15: 3 tokens at L = 7.7 is float32(3) / float32(7.7) = 0.3896104
    (the float64 quotient rounds to the next float32, 0.38961038)."""
    view = GroupView(n=1, clusters=[[0]], response_lengths=[3])
    assert prf.prompt_stats(view, 7.7)[-1] == np.float32(3) / np.float32(7.7)
    assert prf.rollout_extras(view, 7.7)[0, 3] == np.float32(3) / np.float32(7.7)


# --- selector: messages, decisions, probe settings and the saved state -----------------------------


class NotAllowedInAState:
    """A test double: any object torch's weights-only unpickler must refuse."""


def care_views(count: int, dim: int = 3) -> list[GroupView]:
    """n = 2 groups whose features are their index; odd groups agree, even ones split."""
    return [GroupView(n=2, clusters=[[0, 1]] if i % 2 else [[0], [1]],
                      prompt_features=np.full(dim, float(i), dtype=np.float32),
                      rollout_features=np.full((2, dim), float(i), dtype=np.float32),
                      response_lengths=[10, 20]) for i in range(count)]


SMALL = CareParams(prompt_hidden=5, response_hidden=6, response_out=7, head_hidden=8, lr=0.01, weight_decay=0.5)


def test_baseline_messages_and_fields() -> None:
    """selector decide mutants 30, 34, 35, 43–50."""
    with pytest.raises(InvalidInput) as caught:
        CareSelector(Policy.low_token_prob, CareParams(), 2).decide(care_views(2), step=0)
    assert (caught.value.field, caught.value.message) == (
        "groups[0].mean_token_probs", "policy low_token_prob needs each rollout's mean token probability")
    with pytest.raises(InvalidInput) as caught:
        CareSelector(Policy.oracle_cag, CareParams(), 2).decide(care_views(2), step=0, truth=[[True, False], None])
    assert (caught.value.field, caught.value.message) == (
        "policy", "oracle_cag needs the answer key of every prompt in the step")


def test_a_baseline_decision_has_no_reliability_and_counts_its_steps() -> None:
    """selector decide mutants 76, 77, 88, 90."""
    selector = CareSelector(Policy.low_consensus, CareParams(), 2)
    decision = selector.decide(care_views(2), step=0)
    assert (decision.reliability, decision.reliable) == ([None, None], [False, False])
    selector.decide(care_views(2), step=1)
    assert selector.steps_seen == 2


def test_care_feature_widths_are_checked_by_name() -> None:
    """selector _decide_care mutants 4–11, _check_dim mutant 6."""
    mixed = care_views(1, dim=2) + care_views(2, dim=3)[1:] + care_views(1, dim=4)
    with pytest.raises(InvalidInput) as caught:
        CareSelector(Policy.care, SMALL, 2).decide(mixed, step=0)
    assert (caught.value.field, caught.value.message) == (
        "groups[0].prompt_features", "feature vectors must all have one width; found [2, 3, 4]")
    # Two widths are already too many.
    with pytest.raises(InvalidInput, match=r"found \[2, 3\]"):
        CareSelector(Policy.care, SMALL, 2).decide(care_views(1, dim=2) + care_views(2, dim=3)[1:], step=0)
    selector = CareSelector(Policy.care, SMALL, 2)
    selector.decide(care_views(2, dim=3), step=0)
    with pytest.raises(InvalidInput) as caught:
        selector.decide(care_views(2, dim=2), step=1)
    assert (caught.value.field, caught.value.message) == (
        "groups[0].prompt_features", "feature vectors have width 2, but this project's probes were built for width 3")


def test_care_probes_and_optimisers_take_the_projects_settings() -> None:
    """selector _ensure_probes mutants 14–17, 34, 43, 52, 58, 59; _decide_care mutant 20 (lengths scaled)."""
    selector = CareSelector(Policy.care, SMALL, 2)
    selector.decide(care_views(2), step=0)
    assert selector.stage1 is not None and selector.stage2 is not None
    for probe, classes in ((selector.stage1, 2), (selector.stage2, 3)):  # n + 1 = 3 values of c
        # prompt: dim + 1 + 2n = 3 + 1 + 4 = 8 inputs → 5; response: dim + 4 = 7 → 6 → 7; head 5 + 7 → 8 → classes.
        assert probe.prompt[1].weight.shape == (5, 8)
        assert probe.response[1].weight.shape == (6, 7) and probe.response[3].weight.shape == (7, 6)
        assert probe.head[0].weight.shape == (8, 12) and probe.head[2].weight.shape == (classes, 8)
    for opt in (selector.opt1, selector.opt2):
        assert opt is not None
        assert [(g["lr"], g["weight_decay"]) for g in opt.param_groups] == [(0.01, 0.5)]


def test_a_restored_selector_takes_the_current_lr_and_decay() -> None:
    """selector from_bytes mutants 94–97: saved lr 0.01 / decay 0.5, restored under 0.02 / 0.25."""
    selector = CareSelector(Policy.care, SMALL, 2)
    selector.decide(care_views(2), step=0)
    state = selector.to_bytes()
    assert torch.load(io.BytesIO(state), weights_only=True)["policy"] == "care"  # to_bytes mutants 4, 5
    restored = CareSelector.from_bytes(state, policy=Policy.care, params=replace(SMALL, lr=0.02, weight_decay=0.25),
                                       n=2)
    for opt in (restored.opt1, restored.opt2):
        assert opt is not None
        assert [(g["lr"], g["weight_decay"]) for g in opt.param_groups] == [(0.02, 0.25)]


def test_a_state_holding_an_arbitrary_object_is_refused() -> None:
    """selector from_bytes mutant 7: the state is unpickled weights-only, so no code can ride in it."""
    out = io.BytesIO()
    state = torch.load(io.BytesIO(CareSelector(Policy.care, SMALL, 2).to_bytes()), weights_only=True)
    torch.save(state | {"policy": NotAllowedInAState()}, out)
    with pytest.raises(pickle.UnpicklingError):
        CareSelector.from_bytes(out.getvalue(), policy=Policy.care, params=SMALL, n=2)


def test_care_trains_only_with_a_positive_step_count() -> None:
    """selector observe mutants 21, 22: train_steps 0 builds no probes; 1 step does."""
    examples = [LabelledView(f"k{i}", v, [True, False]) for i, v in enumerate(care_views(2))]
    idle = CareSelector(Policy.care, replace(SMALL, train_steps=0), 2)
    idle.observe(examples)
    assert idle.stage1 is None and len(idle.buffer) == 2
    once = CareSelector(Policy.care, replace(SMALL, train_steps=1), 2)
    once.observe(examples)
    assert once.stage1 is not None


def test_oracle_cag_needs_one_answer_key_per_group() -> None:
    """selector decide mutants 59, 62, 63: a shorter answer key is an error, not a shorter score list."""
    with pytest.raises(ValueError, match="zip"):
        CareSelector(Policy.oracle_cag, CareParams(), 2).decide(care_views(2), step=0, truth=[[True, False]])


def buffered_selector(keys: int, history_samples: int) -> CareSelector:
    params = replace(SMALL, history_samples=history_samples)
    selector = CareSelector(Policy.care, params, 2)
    selector.buffer = [BufferEntry(f"k{i}", [True, False], 1, 0) for i in range(keys)]
    return selector


def loader_double(missing: frozenset[str] = frozenset()) -> tuple[list[list[str]], HistoryLoader]:
    """A history loader test double: records each request, returns a view per key except ``missing``."""
    asked: list[list[str]] = []

    def load(keys: list[str]) -> dict[str, GroupView]:
        asked.append(list(keys))
        return {k: care_views(1)[0] for k in keys if k not in missing}

    return asked, load


def test_replay_draws_distinct_buffered_groups_outside_the_batch() -> None:
    """selector _replayed mutants 2, 10, 11, 20, 21, 24, 30."""
    _, load = loader_double()
    # 5 buffered, k0 in this batch, history_samples 5: the other four, each once.
    picked = buffered_selector(5, 5)._replayed({"k0"}, load)
    assert sorted(b.key for b in picked) == ["k1", "k2", "k3", "k4"]
    # The whole buffer, each once (drawing with replacement would repeat some).
    assert sorted(b.key for b in buffered_selector(5, 5)._replayed(set(), load)) == ["k0", "k1", "k2", "k3", "k4"]
    assert len(buffered_selector(5, 1)._replayed(set(), load)) == 1
    # A key the loader no longer has is skipped.
    _, partial = loader_double(frozenset({"k1"}))
    assert [b.key for b in buffered_selector(2, 2)._replayed(set(), partial)] == ["k0"]


def test_replay_is_seeded_by_project_seed_and_observation_count() -> None:
    """selector _replayed mutant 13: 3 of 10 drawn by default_rng([seed 0, observations 0]), which
    picks indices 5, 9, 6 (NumPy's documented PCG64 stream for that seed)."""
    _, load = loader_double()
    assert [b.key for b in buffered_selector(10, 3)._replayed(set(), load)] == ["k5", "k9", "k6"]


def labelled(key: str, clusters: list[list[int]], correct: list[bool]) -> LabelledView:
    view = replace(care_views(1)[0], clusters=clusters)
    return LabelledView(key, view, correct)


def test_training_uses_the_class_weights_of_every_known_label(monkeypatch: pytest.MonkeyPatch) -> None:
    """selector _train mutants 47, 53, 54, 56–58, 64, 65, 67, 68, 80, 96; 19, 20 (two groups train).

    Labels (y₁, y₂): split [1|0] right → (1, 0); agreeing right → (1, 0); split, first right → (1, 0);
    split, second right → (0, 1). y₁ counts [1, 3]: w ∝ [1, 1/√3] / mean = [1.268, 0.732], clipped to
    [0.8, 1.1] → [1.1, 0.8]. y₂ counts [3, 1, 0]: [0.732, 1.268] → [0.8, 1.1], absent class 1.
    """
    seen: dict[str, list[object]] = {"stage1": [], "stage2": []}
    real1, real2 = probes.stage1_loss, probes.stage2_loss

    def recording_stage1_loss(probe, batch, weights, aux_weight):  # type: ignore[no-untyped-def]
        seen["stage1"].append(weights)
        return real1(probe, batch, weights, aux_weight)

    def recording_stage2_loss(probe, batch, weights):  # type: ignore[no-untyped-def]
        seen["stage2"].append(weights)
        return real2(probe, batch, weights)

    monkeypatch.setattr(probes, "stage1_loss", recording_stage1_loss)
    monkeypatch.setattr(probes, "stage2_loss", recording_stage2_loss)
    params = replace(SMALL, train_steps=1, class_weight_min=0.8, class_weight_max=1.1)
    selector = CareSelector(Policy.care, params, 2)
    selector.observe([labelled("a", [[0], [1]], [True, False]), labelled("b", [[0, 1]], [True, True]),
                      labelled("c", [[0], [1]], [True, False]), labelled("d", [[0], [1]], [False, True])])
    (w1,), (w2,) = seen["stage1"], seen["stage2"]
    assert w1.tolist() == pytest.approx([1.1, 0.8])  # type: ignore[attr-defined]
    assert w2.tolist() == pytest.approx([0.8, 1.1, 1.0])  # type: ignore[attr-defined]
    # Two groups, all wrong: y₁ counts [2, 0] → weights [1, 1] (the absent class keeps 1); training runs.
    seen["stage1"].clear()
    selector2 = CareSelector(Policy.care, params, 2)
    selector2.observe([labelled("e", [[0], [1]], [False, False]), labelled("f", [[0, 1]], [False, False])])
    assert [w.tolist() for w in seen["stage1"]] == [[1.0, 1.0]]  # type: ignore[attr-defined]


def test_one_labelled_group_builds_the_probes_and_waits() -> None:
    """selector _train mutant 3: one example is fine (batch norm needs two, so it only joins the buffer)."""
    selector = CareSelector(Policy.care, replace(SMALL, train_steps=1), 2)
    selector.observe([labelled("a", [[0], [1]], [True, False])])
    assert selector.stage1 is not None and [e.key for e in selector.buffer] == ["a"]


def test_training_replays_history_of_this_width_and_n_only() -> None:
    """selector _train mutants 12, 16; observe mutant 25: the loader is asked, and groups of another n are dropped."""
    params = replace(SMALL, train_steps=1, history_samples=2)
    selector = CareSelector(Policy.care, params, 2)
    selector.observe([labelled("a", [[0], [1]], [True, False]), labelled("b", [[0, 1]], [True, True])])
    asked: list[list[str]] = []

    def other_n(keys: list[str]) -> dict[str, GroupView]:  # a loader double: the old groups now have n = 3
        asked.append(sorted(keys))
        return {k: GroupView(n=3, clusters=[[0, 1, 2]], prompt_features=np.zeros(3, dtype=np.float32),
                             rollout_features=np.zeros((3, 3), dtype=np.float32)) for k in keys}

    selector.observe([labelled("c", [[0], [1]], [True, False]), labelled("d", [[0], [1]], [False, True])], other_n)
    assert asked == [["a", "b"]]
    assert [e.key for e in selector.buffer] == ["a", "b", "c", "d"]


# --- probes ----------------------------------------------------------------------------------------


def test_class_weights_clip_at_four_by_default() -> None:
    """probes class_weights mutant 2: counts [1, 10⁴ × 5]: raw [1, 0.01 × 5], mean 0.175 → [5.71, 0.057 …],
    clipped to the default [0.25, 4] → [4, 0.25 × 5]."""
    assert probes.class_weights(np.array([1, 10000, 10000, 10000, 10000, 10000])).tolist() == [4.0] + [0.25] * 5


def test_probe_defaults_and_layers() -> None:
    """probes Probe.__init__ mutants 1–4, 11, 27: the spec's sizes 128 / 64 / 512 / 256 and every ReLU."""
    probe = probes.Probe(10, 7, 2)
    assert probe.prompt[1].weight.shape == (128, 10) and isinstance(probe.prompt[2], torch.nn.ReLU)
    assert probe.response[1].weight.shape == (64, 7) and probe.response[3].weight.shape == (512, 64)
    assert isinstance(probe.response[4], torch.nn.ReLU)
    assert probe.head[0].weight.shape == (256, 128 + 512)


def test_the_probe_pools_the_masked_responses_by_their_mean() -> None:
    """probes Probe.forward mutants 25, 30, 32: pooled = Σ_j m_j h_j / max(Σ_j m_j, 1) per group,
    checked against the submodules applied by hand (two groups: two pooled responses, then one)."""
    torch.manual_seed(0)
    probe = probes.Probe(3, 2, 2, prompt_hidden=4, response_hidden=3, response_out=5, head_hidden=6).eval()
    prompt_x, rollout_x = torch.randn(2, 3), torch.randn(2, 3, 2)
    pool = torch.tensor([[True, True, False], [False, True, False]])
    logits, _ = probe(prompt_x, rollout_x, pool)
    with torch.no_grad():
        h = probe.response(rollout_x.reshape(6, 2)).reshape(2, 3, 5)
        pooled = torch.stack([(h[0, 0] + h[0, 1]) / 2, h[1, 1]])
        expected = probe.head(torch.cat([probe.prompt(prompt_x), pooled], dim=-1))
    assert torch.allclose(logits, expected, atol=1e-6)


def small_batch(correct: list[list[bool]], clusters: list[list[list[int]]]) -> probes.Batch:
    views = [replace(care_views(1)[0], clusters=c) for c in clusters]
    return probes.make_batch(views, 3, 4000.0, correct=correct)


def test_make_batch_majority_sizes_and_a_view_without_features() -> None:
    """probes make_batch mutants 10, 20."""
    batch = small_batch([[True, False], [True, True]], [[[0], [1]], [[0, 1]]])
    assert batch.majority.tolist() == [1, 2]
    bare = probes.make_batch([BARE], 3, 4000.0)
    assert tuple(bare.prompt_x.shape) == (1, 3 + 1 + 2 * 2)


def test_the_stage_losses_are_the_weighted_formulas() -> None:
    """probes stage1_loss 15, 18, 21, 22, 25; stage2_loss 11, 14.

    stage 1: CE_w(logits, y₁) + a · BCE(aux over parseable responses, r); stage 2: CE_w over c with
    the invalid classes at −∞ — each rebuilt here from the probe's outputs and torch's functions.
    """
    torch.manual_seed(0)
    batch = small_batch([[True, False], [False, True], [True, True]], [[[0], [1]], [[0], [1]], [[0, 1]]])
    probe1 = probes.Probe(8, 7, 2, prompt_hidden=4, response_hidden=3, response_out=5, head_hidden=6).eval()
    probe2 = probes.Probe(8, 7, 3, prompt_hidden=4, response_hidden=3, response_out=5, head_hidden=6).eval()
    w1, w2 = torch.tensor([2.0, 0.5]), torch.tensor([0.5, 2.0, 1.0])
    assert batch.y1 is not None and batch.yr is not None and batch.y2 is not None
    with torch.no_grad():
        logits, aux = probe1(batch.prompt_x, batch.rollout_x, torch.ones_like(batch.valid))
        expected1 = (torch.nn.functional.cross_entropy(logits, batch.y1, weight=w1) + 0.5
                     * torch.nn.functional.binary_cross_entropy_with_logits(aux[batch.valid], batch.yr[batch.valid]))
        assert probes.stage1_loss(probe1, batch, w1, 0.5).item() == pytest.approx(expected1.item(), rel=1e-6)
        logits2, _ = probe2(batch.prompt_x, batch.rollout_x, batch.pool2)
        expected2 = torch.nn.functional.cross_entropy(logits2.masked_fill(~batch.class2, float("-inf")), batch.y2,
                                                      weight=w2)
        assert probes.stage2_loss(probe2, batch, w2).item() == pytest.approx(expected2.item(), rel=1e-6)


def test_no_parseable_response_leaves_the_aux_term_out() -> None:
    """probes stage1_loss mutant 19: with nothing parseable the BCE would be over an empty set (NaN)."""
    torch.manual_seed(0)
    batch = small_batch([[False, False], [False, False]], [[], []])
    probe = probes.Probe(8, 7, 2, prompt_hidden=4, response_hidden=3, response_out=5, head_hidden=6)
    assert math.isfinite(probes.stage1_loss(probe, batch, torch.ones(2), 1.5).item())


def test_a_head_without_gradient_this_step_is_not_moved() -> None:
    """probes train_step mutants 1, 2: gradients are set to None, so AdamW skips a parameter that got
    none this step (the aux head when no response parses) instead of decaying it with a zero gradient."""
    selector = CareSelector(Policy.care, replace(SMALL, train_steps=1), 2)
    selector.observe([labelled("a", [[0], [1]], [True, False]), labelled("b", [[0, 1]], [True, True])])
    assert selector.stage1 is not None
    before = selector.stage1.aux.weight.detach().clone()
    selector.observe([labelled("c", [], [False, False]), labelled("d", [], [False, False])])
    assert torch.equal(selector.stage1.aux.weight.detach(), before)
