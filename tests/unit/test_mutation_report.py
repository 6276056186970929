"""scripts/mutation_report.py's rewrite of registration decorators, which lets mutmut 3 mutate them."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "mutation_report.py"


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mutation_report", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SOURCE = '''\
@register("a")
def first(x):
    return x + 1


@outer(1)
@inner(k=2)
def second(x):
    return x


@staticmethod_like
def bare(x):
    return x


class Kept:
    @register("m")
    def method(self):
        return 0
'''

EXPECTED = '''\
def first(x):
    return x + 1
first = register("a")(first)


def second(x):
    return x
second = outer(1)(inner(k=2)(second))


@staticmethod_like
def bare(x):
    return x


class Kept:
    @register("m")
    def method(self):
        return 0
'''


def test_call_decorators_of_module_level_functions_become_assignments() -> None:
    # Decorators apply bottom-up: @outer(1) @inner(k=2) def f is f = outer(1)(inner(k=2)(f)). A bare
    # name decorator and methods inside classes are left as they are.
    assert load_script().undecorate_source(SOURCE) == EXPECTED


def test_the_rewritten_module_registers_the_same_functions() -> None:
    registered: dict[str, object] = {}

    def register(name: str):  # type: ignore[no-untyped-def]
        def add(fn):  # type: ignore[no-untyped-def]
            registered[name] = fn
            return fn
        return add

    namespace: dict[str, object] = {"register": register}
    exec(load_script().undecorate_source('@register("a")\ndef f(x):\n    return 2 * x\n'), namespace)
    assert registered["a"] is namespace["f"]
    assert namespace["f"](3) == 6  # type: ignore[operator]
