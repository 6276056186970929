"""The numeric grader against expected values written by hand, and properties of its number reading.

Every expected number below is typed in, not recomputed with the grader's parser; the property tests
build a text from a known value (Python's own formatting: ``f"{n:,}"``, ``f"{m}e{k}"``) and check
the grader reads that value back.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from pydantic import TypeAdapter

from rewardhub.reward_specs import RewardSpec
from services.verifier.graders.numeric import extract_number, gold_number, numbers_in
from services.verifier.graders.registry import grade
from services.verifier.graders.result import GradeResult

SPECS: TypeAdapter[Any] = TypeAdapter(RewardSpec)


def numeric(completion: str, truth: Any, **spec: Any) -> GradeResult:
    return grade(SPECS.validate_python({"type": "numeric", **spec}), completion, truth)


def score(completion: str, truth: Any, **spec: Any) -> float:
    result = numeric(completion, truth, **spec)
    assert result.status == "ok", result
    return result.score


# --- signs -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("completion", "truth", "expected"), [
    ("The answer is 3", "-3", 0.0),  # the minus sign of the gold is not dropped
    ("The answer is -3", "3", 0.0),  # nor the completion's
    ("The answer is -3", "-3", 1.0),
    ("The answer is −3", "-3", 1.0),  # U+2212, the minus LaTeX and typeset text use
    ("x = -3", -3, 1.0),
    ("The answer is (-3).", -3, 1.0),
    ("The answer is +3", "3", 1.0),
    ("It lost -$5 today", "-5", 1.0),
    ("It lost $-5 today", "-5", 1.0),
    (r"\boxed{-\frac{1}{2}}", "-0.5", 1.0),
    (r"\boxed{\frac{-1}{2}}", "-0.5", 1.0),
    ("5 - 3", "-3", 0.0),  # a spaced minus is an operator: the completion never states -3
    ("5 - 3", "3", 1.0),
])
def test_signs(completion: str, truth: Any, expected: float) -> None:
    assert score(completion, truth) == expected


def test_a_hyphen_inside_a_word_or_range_is_not_a_sign() -> None:
    assert numbers_in("pages 10-12") == [10.0, 12.0]
    assert numbers_in("x-3") == [3.0]


# --- separators, percentages, units, scientific notation ----------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("1,234", [1234.0]),
    ("1,234,567.25", [1234567.25]),
    ("-1,000", [-1000.0]),
    ("1,2345", [1.0, 2345.0]),  # not a thousands group: it would read 1234 and drop the 5
    ("1, 2, 3", [1.0, 2.0, 3.0]),
    ("12,34", [12.0, 34.0]),
    (".5", [0.5]),
    ("3.", [3.0]),
])
def test_thousands_separators_and_decimals(text: str, expected: list[float]) -> None:
    assert numbers_in(text) == expected


@pytest.mark.parametrize(("text", "as_fraction", "expected"), [
    ("50%", False, 50.0),
    ("50%", True, 0.5),
    ("12.5 %", True, 0.125),
    (r"50\%", True, 0.5),
    ("50 percent", True, 0.5),
    ("-4%", True, -0.04),
    ("50", True, 50.0),  # no percent sign, nothing divided
])
def test_percentages(text: str, as_fraction: bool, expected: float) -> None:
    assert numbers_in(text, percent_as_fraction=as_fraction) == [expected]


def test_a_percent_gold_matches_its_fraction() -> None:
    assert score("It rose 50%.", "50%", percent_as_fraction=True) == 1.0
    assert score("It rose 0.5.", "50%", percent_as_fraction=True) == 1.0
    assert score("It rose 0.5.", "50%") == 0.0


@pytest.mark.parametrize(("text", "expected"), [
    ("It weighs 12 kg", 12.0),
    ("The area is 25 m^2", 25.0),  # the 2 of m^2 is an exponent, not the answer
    ("The volume is 8 cm^{3}", 8.0),
    ("It costs $1,299.99", 1299.99),
    (r"It costs \$15", 15.0),
    ("60 km/h", 60.0),
    ("3 apples", 3.0),
])
def test_units_do_not_change_the_value(text: str, expected: float) -> None:
    assert extract_number(text, "last") == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("2.5e3", 2500.0),
    ("1E-3", 0.001),
    ("-4e2", -400.0),
    (r"3 \times 10^{8}", 300000000.0),
    (r"1.5 \times 10^{-2}", 0.015),
    ("6.02 × 10^23", 6.02e23),
    (r"10^{-3}", 0.001),
    (r"\boxed{10^{6}}", 1000000.0),
])
def test_scientific_notation(text: str, expected: float) -> None:
    assert extract_number(text, "boxed_or_last") == pytest.approx(expected, rel=1e-12)


def test_a_number_beyond_float_range_is_not_read_as_infinity() -> None:
    # float("1e999") is inf, and inf is "close" to inf: 1e999 against 1e400 must not score 1.
    assert numbers_in("1e999") == []
    assert numeric("1e999", "1e400").status == "invalid_input"
    assert numeric("5", 10**400).status == "invalid_input"
    assert numeric("5", float("inf")).status == "invalid_input"


# --- where the answer is taken from --------------------------------------------------------------


@pytest.mark.parametrize(("mode", "expected"), [
    ("first", 2.0), ("last", 9.0), ("boxed", 5.0), ("boxed_or_last", 5.0),
])
def test_extract_modes(mode: str, expected: float) -> None:
    text = r"From 2 apples we get \boxed{5}, then 9 pears."
    assert extract_number(text, mode) == expected


def test_first_mode_grades_the_first_number() -> None:
    assert score("7 is the answer; 8 was a guess", "7", extract="first") == 1.0
    assert score("7 is the answer; 8 was a guess", "7", extract="last") == 0.0


def test_boxed_or_last_prefers_the_box_over_a_later_number() -> None:
    assert score(r"\boxed{12} (checked in 3 steps)", "12") == 1.0
    assert score(r"\boxed{12} (checked in 3 steps)", "3") == 0.0


def test_boxed_or_last_falls_back_to_the_last_number() -> None:
    assert extract_number(r"\boxed{no number} so 4 then 6", "boxed_or_last") == 6.0
    assert extract_number("4 then 6", "boxed_or_last") == 6.0


def test_boxed_mode_needs_a_number_in_a_box() -> None:
    assert extract_number("4 then 6", "boxed") is None
    assert extract_number(r"\boxed{none} 6", "boxed") is None
    result = numeric("4 then 6", "6", extract="boxed")
    assert (result.status, result.score, result.details["reason"]) == ("ok", 0.0, "no number found")


def test_the_first_number_inside_the_last_box_is_the_answer() -> None:
    assert extract_number(r"\boxed{3 \text{ or } 4}", "boxed") == 3.0
    assert extract_number(r"\boxed{1} and finally \boxed{7, 8}", "boxed_or_last") == 7.0


# --- tolerances ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("completion", "spec", "expected"), [
    ("10.4", {"abs_tol": 0.5, "rel_tol": 0}, 1.0),
    ("10.6", {"abs_tol": 0.5, "rel_tol": 0}, 0.0),
    ("9.6", {"abs_tol": 0.5, "rel_tol": 0}, 1.0),
    ("9.4", {"abs_tol": 0.5, "rel_tol": 0}, 0.0),
    ("10.9", {"abs_tol": 0, "rel_tol": 0.1}, 1.0),  # |Δ| 0.9 ≤ 0.1 · max(10, 10.9)
    ("11.2", {"abs_tol": 0, "rel_tol": 0.1}, 0.0),  # |Δ| 1.2 > 0.1 · 11.2
    ("10.000001", {}, 1.0),  # the default tolerances, 1e-6, absorb float noise
    ("10.001", {}, 0.0),
    ("10.4", {"abs_tol": 0.5, "rel_tol": 0.01}, 1.0),  # either tolerance is enough
])
def test_abs_and_rel_tol(completion: str, spec: dict[str, float], expected: float) -> None:
    assert score(completion, "10", **spec) == expected


def test_abs_tol_decides_near_zero_where_rel_tol_cannot() -> None:
    assert score("0.0004", "0", abs_tol=0.001, rel_tol=0.5) == 1.0
    assert score("0.0004", "0", abs_tol=0, rel_tol=0.5) == 0.0


# --- gold parsing --------------------------------------------------------------------------------


@pytest.mark.parametrize(("truth", "expected"), [
    ("-3", -3.0), ("1,234", 1234.0), ("3/4", 0.75), (r"\frac{1}{8}", 0.125), ("$12", 12.0), (7, 7.0),
    (-2.5, -2.5), ("5 apples", 5.0),
    ("3 or 4", None), ("five", None), (True, None), ("", None),
])
def test_gold_number(truth: Any, expected: float | None) -> None:
    assert gold_number(truth, percent_as_fraction=False) == expected


# --- properties ----------------------------------------------------------------------------------

INTEGERS = st.integers(min_value=-10**15, max_value=10**15)


@given(INTEGERS)
@example(-3)
@example(-1000)
def test_an_integer_reads_back_with_its_sign_and_separators(n: int) -> None:
    assert numbers_in(f"The answer is {n}.") == [float(n)]
    assert numbers_in(f"The answer is {n:,}.") == [float(n)]


@given(st.integers(min_value=1, max_value=10**12))
def test_the_sign_decides_the_score(n: int) -> None:
    assert score(f"The answer is {n}", str(-n)) == 0.0
    assert score(f"The answer is -{n}", str(-n)) == 1.0
    assert score(f"The answer is −{n:,}", f"-{n}") == 1.0


@given(st.integers(min_value=-10**6, max_value=10**6), st.integers(min_value=0, max_value=99))
def test_a_percentage_is_a_hundredth_when_asked(whole: int, hundredths: int) -> None:
    text = f"{whole}.{hundredths:02d}%"
    value = float(f"{whole}.{hundredths:02d}")
    assert numbers_in(text) == [value]
    assert numbers_in(text, percent_as_fraction=True) == [pytest.approx(value / 100, rel=1e-12)]


@given(st.integers(min_value=-10**9, max_value=10**9),
       st.sampled_from(["km", "kg", "m/s", "meters", "USD", "m^2", "cm^{3}", "°C", "apples"]))
def test_a_unit_after_the_number_does_not_change_it(n: int, unit: str) -> None:
    assert extract_number(f"It is {n:,} {unit}.", "last") == float(n)


@given(st.integers(min_value=-999, max_value=999), st.integers(min_value=0, max_value=99),
       st.integers(min_value=-30, max_value=30))
def test_scientific_notation_reads_as_written(units: int, decimals: int, exponent: int) -> None:
    mantissa = f"{units}.{decimals:02d}"
    expected = float(f"{mantissa}e{exponent}")  # Python's float() of the same literal
    assert numbers_in(f"{mantissa}e{exponent}") == [expected]
    assert numbers_in(f"{mantissa}E{exponent:+d}") == [expected]
    assert numbers_in(rf"{mantissa} \times 10^{{{exponent}}}") == [expected]


@given(st.integers(min_value=-10**6, max_value=10**6), st.integers(min_value=1, max_value=10**6))
def test_a_boxed_answer_wins_over_any_later_number(boxed: int, later: int) -> None:
    text = rf"\boxed{{{boxed}}} and then {later}"
    assert extract_number(text, "boxed_or_last") == float(boxed)
    assert extract_number(text, "last") == float(later)
    assert extract_number(text, "first") == float(boxed)


@given(st.integers(min_value=-10**6, max_value=10**6), st.integers(min_value=1, max_value=1000))
def test_abs_tol_is_an_inclusive_band(gold: int, tol_thousandths: int) -> None:
    tol = tol_thousandths / 1000
    assert score(str(gold + tol / 2), gold, abs_tol=tol, rel_tol=0) == 1.0
    assert score(str(gold + 2 * tol), gold, abs_tol=tol, rel_tol=0) == 0.0
    assert score(str(gold - 2 * tol), gold, abs_tol=tol, rel_tol=0) == 0.0
