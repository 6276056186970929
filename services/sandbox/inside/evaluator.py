"""One test's process: load the solution, then run the rewritten test program, reporting probe values.

``python3 -I evaluator.py SOLUTION TEST_FD REPORT_FD``. The solution runs as ``__main__``; the test
program then runs in the same namespace, where each ``assert`` has become
``__rh_check__(site, *probes)``. This process never sees an assert's expected literals: it only
reports what the probes evaluate to (as ``repr`` of plain data) on ``REPORT_FD``, and the
supervisor decides. ``{"end": true}`` is reported once the test program has run to its end.

Nothing here is trusted: the solution shares this process and may replace any of it. That is
why verdicts are never taken from here, only values.
"""

import json
import os
import sys
from typing import Any

_MAX_DEPTH = 50


def _plain(value: Any, depth: int = 0) -> Any:
    """The value as built-in data whose ``repr`` ``ast.literal_eval`` reads back (numpy included)."""
    if depth > _MAX_DEPTH:
        raise ValueError("value nested too deeply")
    if value is None or type(value) in (bool, int, float, complex, str, bytes):
        return value
    for base in (bool, int, float, complex, str, bytes):
        if isinstance(value, base):  # a subclass: its plain value (its own __eq__ takes no part)
            return base(value)  # type: ignore[arg-type]
    if type(value).__module__ == "numpy" and hasattr(value, "tolist"):
        return _plain(value.tolist(), depth + 1)
    if isinstance(value, (list, tuple)):
        items = [_plain(item, depth + 1) for item in value]
        return items if isinstance(value, list) else tuple(items)
    if isinstance(value, (set, frozenset)):
        return {_plain(item, depth + 1) for item in value}
    if isinstance(value, dict):
        return {_plain(key, depth + 1): _plain(item, depth + 1) for key, item in value.items()}
    raise TypeError(f"a {type(value).__name__} is not plain data")


def main() -> None:
    solution_path, test_path, report_fd = sys.argv[1], sys.argv[2], int(sys.argv[3])
    report = os.fdopen(report_fd, "w", buffering=1, encoding="utf-8")
    write, dumps = report.write, json.dumps

    # Bound before the solution runs, so a patched builtins.repr (or json) cannot reach them by name.
    plain, represent = _plain, repr

    def check(site: str, *probes: Any) -> None:
        values: list[Any] = []
        for value in probes:
            try:
                values.append(represent(plain(value)))
            except (TypeError, ValueError, RecursionError):
                values.append(None)  # not plain data: the assert fails in the supervisor
        write(dumps({"site": site, "values": values}) + "\n")

    sys.argv = [solution_path]
    sys.path.insert(0, os.path.dirname(os.path.abspath(solution_path)))
    namespace = {"__name__": "__main__", "__file__": solution_path, "__builtins__": __builtins__}
    with open(solution_path, encoding="utf-8") as handle:
        solution = compile(handle.read(), solution_path, "exec")
    with os.fdopen(int(test_path), encoding="utf-8") as handle:  # the supervisor's descriptor
        test = compile(handle.read(), "<test>", "exec")
    exec(solution, namespace)
    namespace["__rh_check__"] = check
    exec(test, namespace)
    write(dumps({"end": True}) + "\n")
    report.flush()


main()
