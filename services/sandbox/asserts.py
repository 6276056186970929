"""Rewrite a test's ``assert`` statements so that the sandbox's supervisor, not the tested code, decides them.

``assert f(2) == 4`` becomes ``__rh_check__("s0", ("value", f(2)))`` in the program the test
process runs, and the supervisor keeps the site ``s0 = cmp(==, probe 0, literal 4)``. The tested
code therefore never sees the expected literal, its return value is compared as plain data by a
process it cannot touch, and an exit before the end fails the test instead of passing it.

Decomposition, per assert (anywhere in the test: top level, loops, ``def check(candidate)``):

- ``not X`` → the supervisor negates X's verdict;
- a comparison chain (``==``, ``!=``, ``<``, ``<=``, ``>``, ``>=``, ``in``, ``not in``) with at
  least one literal operand → literal operands stay with the supervisor, the others are value
  probes (evaluated left to right, as Python does, but without chained short-circuiting);
- anything else (``is_prime(7)``, ``a and b``, comparisons of two computed values) → one truth
  probe: the test process reports ``bool(X)``. Such asserts are only as strong as that process is
  honest, which is the most a test that computes both sides can be.

Every rewritten assert must run at least once for its test to pass (a report that skips sites
is not a pass).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Any

CHECK_NAME = "__rh_check__"
_OPS = {ast.Eq: "==", ast.NotEq: "!=", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=",
        ast.In: "in", ast.NotIn: "not in"}


class InvalidTestSource(ValueError):
    """The test is not valid Python (the message says where)."""


@dataclass(frozen=True)
class RewrittenTest:
    program: str
    sites: dict[str, dict[str, Any]]


def rewrite(test_source: str) -> RewrittenTest:
    try:
        tree = ast.parse(test_source, "<test>", "exec")
    except SyntaxError as exc:
        raise InvalidTestSource(f"the test is not valid Python: {exc.msg} (line {exc.lineno})") from exc
    rewriter = _AssertRewriter()
    tree = ast.fix_missing_locations(rewriter.visit(tree))
    return RewrittenTest(program=ast.unparse(tree), sites=rewriter.sites)


def _is_literal(node: ast.expr) -> bool:
    try:
        ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False
    return True


class _AssertRewriter(ast.NodeTransformer):
    def __init__(self) -> None:
        self.sites: dict[str, dict[str, Any]] = {}

    def visit_Assert(self, node: ast.Assert) -> ast.stmt:
        site = f"s{len(self.sites)}"
        probes: list[ast.expr] = []
        tree = self._decompose(node.test, probes)
        self.sites[site] = {**tree, "line": node.lineno}
        call = ast.Call(func=ast.Name(id=CHECK_NAME, ctx=ast.Load()),
                        args=[ast.Constant(site), *probes], keywords=[])
        return ast.copy_location(ast.Expr(value=call), node)

    def _decompose(self, node: ast.expr, probes: list[ast.expr]) -> dict[str, Any]:
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            return {"op": "not", "arg": self._decompose(node.operand, probes)}
        if isinstance(node, ast.Compare) and all(type(op) in _OPS for op in node.ops):
            operands = [node.left, *node.comparators]
            if any(_is_literal(operand) for operand in operands):
                return {"op": "cmp", "ops": [_OPS[type(op)] for op in node.ops],
                        "operands": [self._operand(operand, probes) for operand in operands]}
        return self._probe(node, probes, truth=True)

    def _operand(self, node: ast.expr, probes: list[ast.expr]) -> dict[str, Any]:
        if _is_literal(node):
            return {"op": "lit", "value": ast.unparse(node)}
        return self._probe(node, probes, truth=False)

    @staticmethod
    def _probe(node: ast.expr, probes: list[ast.expr], *, truth: bool) -> dict[str, Any]:
        probes.append(ast.Tuple(elts=[ast.Constant("truth" if truth else "value"), node], ctx=ast.Load()))
        return {"op": "probe", "index": len(probes) - 1, "truth": truth}
