"""Rewrite a test's ``assert`` statements so that the sandbox's supervisor, not the tested code, decides them.

``assert f(2) == 4`` becomes ``__rh_check__("s0", ("value", f(2)))`` in the program the test
process runs, and the supervisor keeps the site ``s0 = cmp(==, probe 0, literal 4)``. The tested
code therefore never sees the expected literal, its return value is compared as plain data by a
process it cannot touch, and an exit before the end fails the test instead of passing it.

Decomposition, per assert (anywhere in the test: top level, loops, ``def check(candidate)``):

- ``assert A and B`` → two asserts (short-circuit kept: the first failure ends the test);
- ``not X`` → the supervisor negates X's verdict;
- comparisons (``==``, ``!=``, ``<``, ``<=``, ``>``, ``>=``, ``in``, ``not in``; ``is``/``is not``
  against ``None``, ``True``, ``False``), arithmetic (``+ - * / // % **``, unary ``-``/``+``) and
  calls of a few built-ins (``abs``, ``round``, ``len``, ``min``, ``max``, ``sum``, ``sorted``,
  ``list``, ``tuple``, ``set``, ``int``, ``float``, ``str``, ``bool``, ``math.isclose``/``sqrt``/
  ``floor``/``ceil``/``fabs``) are evaluated by the supervisor; literals stay with it;
- every other sub-expression is a value probe: the tested process reports its value as plain data
  (exact built-in types, or what a numpy value's ``tolist()`` gives), and a value that is not plain
  data (an object with a rigged ``__eq__`` or ``__bool__``) fails the assert.

So an object's own ``__eq__``, a patched ``builtins.bool`` or ``abs`` never takes part in a
verdict. What the test program itself computes (a loop variable, ``expected = f_ref(x)``) is
still computed in the tested process: code written against this harness could forge such values,
not literals. A built-in name the solution or the test redefines is probed, not evaluated here.
Tests with no ``assert`` are refused (their verdict could only come from the tested process), and
every assert that has probes must run at least once for its test to pass.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Any

CHECK_NAME = "__rh_check__"
_OPS = {ast.Eq: "==", ast.NotEq: "!=", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=",
        ast.In: "in", ast.NotIn: "not in", ast.Is: "is", ast.IsNot: "is not"}
_BINARY = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//", ast.Mod: "%",
           ast.Pow: "**"}
_UNARY = {ast.USub: "-", ast.UAdd: "+"}
SAFE_CALLS = frozenset({"abs", "round", "len", "min", "max", "sum", "sorted", "list", "tuple", "set", "int",
                        "float", "str", "bool"})
SAFE_MATH = frozenset({"isclose", "sqrt", "floor", "ceil", "fabs"})
_SINGLETONS = ("None", "True", "False")


class InvalidTestSource(ValueError):
    """The test cannot be run as given (the message says why)."""


@dataclass(frozen=True)
class RewrittenTest:
    program: str
    sites: dict[str, dict[str, Any]]


def defined_names(source: str) -> frozenset[str]:
    """Names a program binds anywhere (functions, classes, assignments, imports): a built-in of the
    same name is then the program's own, not the supervisor's to evaluate."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return frozenset()
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.alias):
            names.add((node.asname or node.name).split(".")[0])
    return frozenset(names)


def rewrite(test_source: str, solution_source: str = "") -> RewrittenTest:
    try:
        tree = ast.parse(test_source, "<test>", "exec")
    except SyntaxError as exc:
        raise InvalidTestSource(f"the test is not valid Python: {exc.msg} (line {exc.lineno})") from exc
    except ValueError as exc:
        raise InvalidTestSource(f"the test is not valid Python: {exc}") from exc
    rewriter = _AssertRewriter(defined_names(test_source) | defined_names(solution_source))
    tree = ast.fix_missing_locations(rewriter.visit(tree))
    if not rewriter.sites:
        raise InvalidTestSource("the test has no assert statement: its verdict could only come from the tested "
                                "code itself; write its checks as asserts")
    return RewrittenTest(program=ast.unparse(tree), sites=rewriter.sites)


def _is_literal(node: ast.expr) -> bool:
    try:
        ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False
    return True


class _AssertRewriter(ast.NodeTransformer):
    def __init__(self, shadowed: frozenset[str]) -> None:
        self.sites: dict[str, dict[str, Any]] = {}
        self.shadowed = shadowed

    def visit_Assert(self, node: ast.Assert) -> ast.stmt | list[ast.stmt]:
        if isinstance(node.test, ast.BoolOp) and isinstance(node.test.op, ast.And):
            parts = [ast.copy_location(ast.Assert(test=value, msg=None), node) for value in node.test.values]
            return [stmt for part in parts for stmt in _as_list(self.visit_Assert(part))]
        site = f"s{len(self.sites)}"
        probes: list[ast.expr] = []
        tree = self._test(node.test, probes)
        self.sites[site] = {**tree, "line": node.lineno}
        call = ast.Call(func=ast.Name(id=CHECK_NAME, ctx=ast.Load()),
                        args=[ast.Constant(site), *probes], keywords=[])
        return ast.copy_location(ast.Expr(value=call), node)

    def _test(self, node: ast.expr, probes: list[ast.expr]) -> dict[str, Any]:
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            return {"op": "not", "arg": self._test(node.operand, probes)}
        if isinstance(node, ast.Compare) and all(self._supported(op, node) for op in node.ops):
            return {"op": "cmp", "ops": [_OPS[type(op)] for op in node.ops],
                    "operands": [self._expr(operand, probes) for operand in [node.left, *node.comparators]]}
        return {"op": "truth", "arg": self._expr(node, probes)}

    @staticmethod
    def _supported(op: ast.cmpop, node: ast.Compare) -> bool:
        if type(op) not in _OPS:
            return False
        if isinstance(op, ast.Is | ast.IsNot):  # identity only against the singletons
            return any(isinstance(o, ast.Constant) and repr(o.value) in _SINGLETONS
                       for o in [node.left, *node.comparators])
        return True

    def _expr(self, node: ast.expr, probes: list[ast.expr]) -> dict[str, Any]:
        if _is_literal(node):
            return {"op": "lit", "value": ast.unparse(node)}
        if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            return {"op": "bin", "kind": _BINARY[type(node.op)], "left": self._expr(node.left, probes),
                    "right": self._expr(node.right, probes)}
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return {"op": "unary", "kind": _UNARY[type(node.op)], "arg": self._expr(node.operand, probes)}
        function = self._safe_function(node)
        if function is not None and isinstance(node, ast.Call):
            return {"op": "call", "fn": function, "args": [self._expr(a, probes) for a in node.args],
                    "kwargs": {k.arg: self._expr(k.value, probes) for k in node.keywords}}
        probes.append(node)
        return {"op": "probe", "index": len(probes) - 1}

    def _safe_function(self, node: ast.expr) -> str | None:
        if not isinstance(node, ast.Call) or any(isinstance(a, ast.Starred) for a in node.args) \
                or any(k.arg is None for k in node.keywords):
            return None
        func = node.func
        if isinstance(func, ast.Name) and func.id in SAFE_CALLS and func.id not in self.shadowed:
            return func.id
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "math" \
                and func.attr in SAFE_MATH:
            return f"math.{func.attr}"
        return None


def _as_list(stmt: ast.stmt | list[ast.stmt]) -> list[ast.stmt]:
    return stmt if isinstance(stmt, list) else [stmt]
