"""Rewriting asserts: literals stay with the supervisor, probes go to the tested process."""

from __future__ import annotations

import ast

import pytest

from services.sandbox.asserts import CHECK_NAME, InvalidTestSource, rewrite


def test_a_comparison_with_a_literal_keeps_the_literal_out_of_the_program() -> None:
    rewritten = rewrite("assert f(2) == 4")
    assert "4" not in rewritten.program.replace(CHECK_NAME, "")
    assert rewritten.program == "__rh_check__('s0', ('value', f(2)))"
    assert rewritten.sites == {"s0": {"op": "cmp", "ops": ["=="], "line": 1, "operands": [
        {"op": "probe", "index": 0, "truth": False}, {"op": "lit", "value": "4"}]}}


def test_negative_literals_tuples_and_chains() -> None:
    site = rewrite("assert -1 < g(x) <= (1, 2)").sites["s0"]
    assert site["ops"] == ["<", "<="]
    assert [o["op"] for o in site["operands"]] == ["lit", "probe", "lit"]
    assert site["operands"][0]["value"] == "-1"


def test_not_is_decided_by_the_supervisor() -> None:
    rewritten = rewrite("assert not is_prime(8)")
    assert rewritten.sites["s0"] == {"op": "not", "line": 1, "arg": {"op": "probe", "index": 0, "truth": True}}
    assert rewritten.program == "__rh_check__('s0', ('truth', is_prime(8)))"


@pytest.mark.parametrize("source", ["assert f(1) == g(1)", "assert a and b", "assert f(1) is None",
                                    "assert isclose(f(1), 2.5)"])
def test_other_asserts_are_one_truth_probe(source: str) -> None:
    assert rewrite(source).sites["s0"] == {"op": "probe", "index": 0, "truth": True, "line": 1}


def test_asserts_inside_functions_and_loops_are_rewritten_with_their_lines() -> None:
    source = "def check(candidate):\n    for x in range(3):\n        assert candidate(x) == x * 2\n" \
             "    assert candidate(10) == 20, 'message'\n\ncheck(double)\n"
    rewritten = rewrite(source)
    assert "assert" not in rewritten.program
    assert [site["line"] for site in rewritten.sites.values()] == [3, 4]
    assert rewritten.sites["s1"]["operands"][1] == {"op": "lit", "value": "20"}
    ast.parse(rewritten.program)  # still valid Python


def test_syntax_errors_name_the_line() -> None:
    with pytest.raises(InvalidTestSource, match="line 2"):
        rewrite("x = 1\nassert (")
