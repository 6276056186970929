"""Rewriting asserts: literals and the comparison stay with the supervisor, probes go to the tested process."""

from __future__ import annotations

import ast

import pytest

from services.sandbox.asserts import CHECK_NAME, InvalidTestSource, defined_names, rewrite

PROBE0 = {"op": "probe", "index": 0}


def test_a_comparison_with_a_literal_keeps_the_literal_out_of_the_program() -> None:
    rewritten = rewrite("assert f(2) == 4")
    assert "4" not in rewritten.program.replace(CHECK_NAME, "")
    assert rewritten.program == "__rh_check__('s0', f(2))"
    assert rewritten.sites == {"s0": {"op": "cmp", "ops": ["=="], "line": 1,
                                      "operands": [PROBE0, {"op": "lit", "value": "4"}]}}


def test_arithmetic_and_builtins_are_the_supervisors() -> None:
    site = rewrite("assert abs(mean([1.0, 2.0]) - 1.5) < 1e-6").sites["s0"]
    assert site["operands"][0] == {"op": "call", "fn": "abs", "kwargs": {}, "args": [
        {"op": "bin", "kind": "-", "left": PROBE0, "right": {"op": "lit", "value": "1.5"}}]}
    iscl = rewrite("import math\nassert math.isclose(f(1), 2.5, rel_tol=1e-9)").sites["s0"]
    assert iscl["arg"]["fn"] == "math.isclose" and iscl["arg"]["kwargs"]["rel_tol"] == {"op": "lit", "value": "1e-09"}


def test_a_builtin_the_solution_defines_is_probed_not_evaluated() -> None:
    site = rewrite("assert sum([1, 2]) == 3", solution_source="def sum(xs):\n    return 0\n").sites["s0"]
    assert site["operands"][0] == PROBE0
    assert "sum" in defined_names("def sum(xs): pass") and "np" in defined_names("import numpy as np")


def test_two_computed_sides_are_both_probed_and_compared_by_the_supervisor() -> None:
    rewritten = rewrite("for x, y in [(1, 2)]:\n    assert double(x) == y")
    assert rewritten.sites["s0"]["operands"] == [PROBE0, {"op": "probe", "index": 1}]
    assert "__rh_check__('s0', double(x), y)" in rewritten.program


def test_and_is_split_and_not_and_identity_are_decided_by_the_supervisor() -> None:
    rewritten = rewrite("assert f(1) is None and not is_prime(8)")
    assert list(rewritten.sites) == ["s0", "s1"]
    assert rewritten.sites["s0"]["ops"] == ["is"]
    assert rewritten.sites["s1"] == {"op": "not", "line": 1, "arg": {"op": "truth", "arg": PROBE0}}


def test_asserts_inside_functions_and_loops_are_rewritten_with_their_lines() -> None:
    source = "def check(candidate):\n    for x in range(3):\n        assert candidate(x) == x * 2\n" \
             "    assert candidate(10) == 20, 'message'\n\ncheck(double)\n"
    rewritten = rewrite(source)
    assert "assert" not in rewritten.program
    assert [site["line"] for site in rewritten.sites.values()] == [3, 4]
    assert rewritten.sites["s1"]["operands"][1] == {"op": "lit", "value": "20"}
    ast.parse(rewritten.program)


def test_a_test_without_asserts_is_refused() -> None:
    with pytest.raises(InvalidTestSource, match="no assert"):
        rewrite("if add(1, 2) != 3:\n    raise AssertionError")


def test_syntax_errors_name_the_line() -> None:
    with pytest.raises(InvalidTestSource, match="line 2"):
        rewrite("x = 1\nassert (")
