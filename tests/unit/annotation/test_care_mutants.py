"""CARE's pure helpers at their edges, written against mutmut's mutants (issue 23, item 1).

Expected values are typed in: each bound of every parameter (inclusive or not), the exact error
messages, quotas and top-k picks worked out by hand.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from services.annotation.care import acquisition as acq
from services.annotation.care.cag import STD_EPS, cag_cost, expected_gap, grpo_advantage
from services.annotation.care.features import GroupView
from services.annotation.care.params import validate_care_params
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
