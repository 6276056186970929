"""Agreement coefficients and accuracy tallies against hand-computed values (services/annotation/agreement.py)."""

from __future__ import annotations

import random

import krippendorff
import numpy as np
import pytest

from services.annotation import agreement
from services.annotation.agreement import (
    AMBIGUOUS,
    Rating,
    accuracy,
    alpha_figure,
    cohen_figure,
    cohen_kappa,
    fleiss_figure,
    fleiss_kappa,
    item_values,
    krippendorff_alpha,
    same_label,
    sparse_nominal_alpha,
    value_counts,
)
from services.annotation.models import LabelKind
from tests.conftest import require_module

# Wikipedia, "Fleiss' kappa", worked example: 10 subjects, 14 raters each, 5 categories.
FLEISS_TABLE = [
    [0, 0, 0, 0, 14],
    [0, 2, 6, 4, 2],
    [0, 0, 3, 5, 6],
    [0, 3, 9, 2, 0],
    [2, 2, 8, 1, 1],
    [7, 7, 0, 0, 0],
    [3, 2, 6, 3, 0],
    [2, 5, 3, 2, 2],
    [6, 5, 2, 1, 0],
    [0, 2, 2, 3, 7],
]


def units(matrix: list[list[int]]) -> list[dict[int, int]]:
    """Rows of a count matrix as the coefficients take them: value (column) → count."""
    return [dict(enumerate(row)) for row in matrix]


def test_krippendorff_alpha_two_coders_by_hand() -> None:
    # Units (a,a), (a,b), (b,b): o_aa = 2, o_ab = o_ba = 1, o_bb = 2; n_a = n_b = 3, n = 6.
    # D_o = 2/6, D_e = 2·3·3 / (6·5) = 0.6, alpha = 1 − (1/3)/0.6 = 4/9.
    assert krippendorff_alpha(units([[2, 0], [1, 1], [0, 2]])) == pytest.approx(4 / 9, abs=1e-12)


def test_krippendorff_alpha_with_missing_labels_by_hand() -> None:
    # Three coders, values a, b, c. u1 = (a,a,a), u2 = (a,b,–), u3 = (b,b,c), u4 = (c,–,–) is not pairable.
    # u1: o_aa += 3·2/2 = 3. u2: o_ab += 1, o_ba += 1. u3: o_bb += 2·1/2 = 1, o_bc += 2·1/2 = 1, o_cb += 1·2/2 = 1.
    # n_a = 4, n_b = 3, n_c = 1, n = 8. Σ_{c≠k} o_ck = 4 → D_o = 4/8.
    # Σ_{c≠k} n_c n_k = 2·(4·3 + 4·1 + 3·1) = 38 → D_e = 38/56. alpha = 1 − 0.5·56/38 = 10/38 = 0.263158.
    counts = [[3, 0, 0], [1, 1, 0], [0, 2, 1], [0, 0, 1]]
    assert krippendorff_alpha(units(counts)) == pytest.approx(10 / 38, abs=1e-12)
    assert round(10 / 38, 6) == 0.263158


def test_krippendorff_alpha_perfect_and_undefined() -> None:
    assert krippendorff_alpha(units([[2, 0], [0, 3]])) == pytest.approx(1.0)  # D_o = 0
    assert krippendorff_alpha(units([[1, 0], [0, 1]])) is None  # no unit has two labels
    assert krippendorff_alpha(units([[2, 0], [3, 0]])) is None  # one value only: D_e = 0
    assert krippendorff_alpha([]) is None


def test_sparse_alpha_by_hand() -> None:
    # Σ_u (m_u² − Σ_c n_uc²)/(m_u − 1): (2,0) → 0, (1,1) → (4 − 2)/1 = 2, (0,2) → 0; n = 6, n² − Σ n_c² = 36 − 18.
    # alpha = 1 − 5·2/18 = 4/9, as the coincidence form gives.
    assert sparse_nominal_alpha(units([[2, 0], [1, 1], [0, 2]])) == pytest.approx(4 / 9, abs=1e-12)
    # The missing-labels case: (9−9)/2 + (4−2)/1 + (9−5)/2 = 4; n = 8, 64 − (16+9+1) = 38; 1 − 7·4/38 = 10/38.
    missing = units([[3, 0, 0], [1, 1, 0], [0, 2, 1], [0, 0, 1]])
    assert sparse_nominal_alpha(missing) == pytest.approx(10 / 38, abs=1e-12)
    assert sparse_nominal_alpha(units([[2, 0], [3, 0]])) is None and sparse_nominal_alpha(units([[1, 0]])) is None


def test_sparse_alpha_matches_the_krippendorff_package_on_random_data() -> None:
    rng = random.Random(7)
    for _ in range(20):
        values = rng.randint(2, 6)
        counts = [[0] * values for _ in range(rng.randint(2, 30))]
        for row in counts:
            for _ in range(rng.randint(0, 5)):
                row[rng.randrange(values)] += 1
        counts.append([1, 1] + [0] * (values - 2))  # at least one pairable unit with two values
        reference = krippendorff.alpha(value_counts=np.array(counts), level_of_measurement="nominal")
        assert sparse_nominal_alpha(units(counts)) == pytest.approx(float(reference), abs=1e-9)


def test_large_data_takes_the_sparse_form(monkeypatch: pytest.MonkeyPatch) -> None:
    def dense(**_: object) -> float:
        raise AssertionError("the dense package path was taken")

    monkeypatch.setattr(agreement, "DENSE_ALPHA_CELLS", 3 * 2**2 - 1)  # 3 units × 2 values² is one cell over
    monkeypatch.setattr(krippendorff, "alpha", dense)
    assert krippendorff_alpha(units([[2, 0], [1, 1], [0, 2]])) == pytest.approx(4 / 9, abs=1e-12)


def test_cohen_kappa_wikipedia_example_by_hand() -> None:
    # 50 items: yes/yes 20, yes/no 5, no/yes 10, no/no 15. p_o = 35/50 = 0.7;
    # rater 1 says yes 25/50, rater 2 30/50: p_e = 0.5·0.6 + 0.5·0.4 = 0.5; kappa = 0.2/0.5 = 0.4.
    pairs = [("yes", "yes")] * 20 + [("yes", "no")] * 5 + [("no", "yes")] * 10 + [("no", "no")] * 15
    assert cohen_kappa(pairs) == pytest.approx(0.4, abs=1e-12)


def test_cohen_kappa_edges() -> None:
    # (a,b), (b,a): p_o = 0, p_e = 0.5·0.5 + 0.5·0.5 = 0.5, kappa = −0.5/0.5 = −1.
    assert cohen_kappa([("a", "b"), ("b", "a")]) == pytest.approx(-1.0)
    assert cohen_kappa([("a", "a"), ("a", "a")]) is None  # p_e = 1
    assert cohen_kappa([]) is None


def test_fleiss_kappa_wikipedia_example_by_hand() -> None:
    # Σ_i (Σ_j n_ij² − 14) = 182+46+56+80+60+84+44+32+52+52 = 688 → P̄ = 688 / (10·14·13) = 0.378022.
    # Column totals 20, 28, 39, 21, 32 of 140 → P̄_e = (400+784+1521+441+1024) / 140² = 4170/19600 = 0.212755.
    # kappa = (0.378022 − 0.212755) / (1 − 0.212755) = 0.209931, Wikipedia's 0.210.
    kappa = fleiss_kappa(units(FLEISS_TABLE))
    assert kappa == pytest.approx((688 / 1820 - 4170 / 19600) / (1 - 4170 / 19600), abs=1e-12)
    assert kappa is not None and kappa == pytest.approx(0.209931, abs=1e-6) and round(kappa, 3) == 0.210


def test_fleiss_kappa_edges() -> None:
    with pytest.raises(ValueError, match="same number"):
        fleiss_kappa(units([[2, 0], [1, 2]]))
    with pytest.raises(ValueError, match="same number"):
        fleiss_kappa(units([[1, 0], [0, 1]]))  # one rater per item
    assert fleiss_kappa(units([[3, 0], [3, 0]])) is None  # P̄_e = 1
    assert fleiss_kappa([]) is None


def test_fleiss_kappa_matches_statsmodels() -> None:
    inter_rater = require_module("statsmodels.stats.inter_rater")
    assert fleiss_kappa(units(FLEISS_TABLE)) == pytest.approx(float(inter_rater.fleiss_kappa(FLEISS_TABLE)), abs=1e-12)


def test_cohen_kappa_matches_scikit_learn() -> None:
    metrics = require_module("sklearn.metrics")
    pairs = [("yes", "yes")] * 20 + [("yes", "no")] * 5 + [("no", "yes")] * 10 + [("no", "no")] * 15
    expected = metrics.cohen_kappa_score([a for a, _ in pairs], [b for _, b in pairs])
    assert cohen_kappa(pairs) == pytest.approx(float(expected), abs=1e-12)


def test_values_follow_the_queue_equivalence() -> None:
    labels = [(LabelKind.answer, "1/2"), (LabelKind.answer, "0.5"), (LabelKind.ambiguous, None),
              (LabelKind.answer, " $3$ "), (LabelKind.ambiguous, None)]
    assert item_values(labels) == ["1/2", "1/2", AMBIGUOUS, "3", AMBIGUOUS]
    assert same_label((LabelKind.answer, "\\frac{8}{2}"), (LabelKind.answer, "4"))
    assert same_label((LabelKind.ambiguous, None), (LabelKind.ambiguous, None))
    assert not same_label((LabelKind.ambiguous, None), (LabelKind.answer, "4"))
    assert not same_label((LabelKind.answer, "5"), (LabelKind.answer, "4"))


def test_value_counts_per_item() -> None:
    items = [[Rating("a", "x"), Rating("b", "y")], [Rating("a", "y"), Rating("b", "y"), Rating("c", "z")]]
    assert value_counts(items) == [{"x": 1, "y": 1}, {"y": 2, "z": 1}]


def test_accuracy_tallies_right_and_judged() -> None:
    assert accuracy([("a", True), ("a", False), ("b", False), ("a", True)]) == {"a": (2, 3), "b": (0, 1)}
    assert accuracy([]) == {}


def _pairs(*values: tuple[str, str]) -> list[list[Rating]]:
    return [[Rating("alice", first), Rating("bob", second)] for first, second in values]


def test_figures_with_two_annotators_by_hand() -> None:
    items = _pairs(("4", "4"), ("4", "5"), ("5", "5"))
    # alpha: the first test's data, 4/9.
    assert alpha_figure(items).model_dump() == {"value": pytest.approx(4 / 9), "items": 3, "labels": 6, "note": None}
    # Cohen: p_o = 2/3; alice 4,4,5 and bob 4,5,5: p_e = (2·1 + 1·2)/9 = 4/9; (2/3 − 4/9)/(5/9) = 0.4.
    assert cohen_figure(items).value == pytest.approx(0.4)
    # Fleiss (n = 2): P_i = 1, 0, 1 → P̄ = 2/3; p_4 = p_5 = 1/2 → P̄_e = 1/2; (2/3 − 1/2)/(1/2) = 1/3.
    assert fleiss_figure(items).value == pytest.approx(1 / 3)


def test_figures_say_why_they_do_not_apply() -> None:
    items = _pairs(("4", "4"), ("4", "5"))
    items[0].append(Rating("carol", "4"))
    cohen, fleiss = cohen_figure(items), fleiss_figure(items)
    assert cohen.value is None and cohen.note == "needs exactly two annotators; 3 labelled these tasks"
    assert fleiss.value is None and fleiss.note == "needs the same number of labels on every task; these have 2 to 3"
    assert (cohen.items, cohen.labels) == (2, 5)
    for figure in (alpha_figure([]), cohen_figure([]), fleiss_figure([])):
        assert figure.model_dump() == {"value": None, "items": 0, "labels": 0, "note": "no task has two labels yet"}
    same = _pairs(("4", "4"), ("4", "4"))
    for figure in (alpha_figure(same), cohen_figure(same), fleiss_figure(same)):
        assert figure.value is None and figure.note is not None and figure.note.startswith("undefined")
        assert (figure.items, figure.labels) == (2, 4)
