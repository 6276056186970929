"""Plant the grader and ``multi`` bugs of issue 23 one at a time and check a named test catches each.

    .venv/bin/python scripts/planted_bugs.py

The issue planted small bugs that the suite let through. Some sit where mutmut cannot reach (it does
not mutate decorated functions such as pydantic validators), so each is planted here by hand in a
scratch copy of the checkout (never in the checkout itself) and the test named for it must fail.
Exits non-zero when a planted bug survives its test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COPIED = ("services", "rewardhub", "tests", "migrations", "pyproject.toml", "README.md", "alembic.ini")
NUMERIC = "services/verifier/graders/numeric.py"
MULTI = "services/verifier/graders/multi.py"
SPECS = "rewardhub/reward_specs.py"
NUMERIC_TESTS = "tests/unit/verifier/test_numeric.py"
MULTI_TESTS = "tests/unit/verifier/test_multi.py"


@dataclass(frozen=True)
class Planted:
    name: str
    path: str
    old: str  # must occur exactly once in path
    new: str
    test: str  # the pytest node id that must fail with the bug in place


BUGS = [
    Planted("numeric: the minus sign ignored", NUMERIC,
            'if match.group("sign") in ("-", "−"):', "if False:", f"{NUMERIC_TESTS}::test_signs"),
    Planted('numeric: extract "first" reads the last number', NUMERIC,
            'return found[0] if mode == "first" else found[-1]', "return found[-1]",
            f"{NUMERIC_TESTS}::test_first_mode_grades_the_first_number"),
    Planted("numeric: boxed_or_last ignores the box", NUMERIC,
            'if mode in ("boxed", "boxed_or_last") and boxed is not None:',
            'if mode == "boxed" and boxed is not None:',
            f"{NUMERIC_TESTS}::test_boxed_or_last_prefers_the_box_over_a_later_number"),
    Planted("numeric: the last number in a box, not the first", NUMERIC,
            "        if found:\n            return found[0]", "        if found:\n            return found[-1]",
            f"{NUMERIC_TESTS}::test_the_first_number_inside_the_last_box_is_the_answer"),
    Planted("numeric: abs_tol dropped", NUMERIC,
            "rel_tol=spec.rel_tol, abs_tol=spec.abs_tol)", "rel_tol=spec.rel_tol)",
            f"{NUMERIC_TESTS}::test_abs_tol_decides_near_zero_where_rel_tol_cannot"),
    Planted("multi: a name without a weight weighs 0 beside explicit weights", MULTI,
            "spec.weights.get(n, 1.0)", "spec.weights.get(n, 0.0 if spec.weights else 1.0)",
            f"{MULTI_TESTS}::test_a_name_without_a_weight_weighs_one_beside_explicit_weights"),
    Planted("multi: the strongest undecided status wins", MULTI,
            "status = min(", "status = max(", f"{MULTI_TESTS}::test_the_weakest_undecided_status_wins"),
    Planted("multi: gates only when normalised", MULTI,
            "    if failed_gates:", "    if failed_gates and spec.normalise:",
            f"{MULTI_TESTS}::test_gates_zero_an_unnormalised_sum_as_well"),
    Planted("multi: weights naming an unknown grader accepted", SPECS,
            "unknown = set(named) - set(graders)", "unknown: set[str] = set()",
            f"{MULTI_TESTS}::test_weights_naming_an_unknown_grader_are_rejected_naming_the_field"),
]


def copy_checkout(target: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis")
    for name in COPIED:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, target / name, ignore=ignore)
        else:
            shutil.copy2(source, target / name)


def run_test(root: Path, test: str) -> int:
    env = {k: v for k, v in os.environ.items() if k != "REWARDHUB_REQUIRE_SERVICES"}
    env["OMP_NUM_THREADS"] = "1"
    # `python -m pytest` from the copy puts the copy first on sys.path, ahead of the editable install.
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:randomly", "-p", "no:cacheprovider",
                           test], cwd=root, env=env, capture_output=True, text=True)
    return done.returncode


def check(root: Path, bug: Planted) -> bool:
    """True when the test passes on the copy as is and fails with the bug planted."""
    path = root / bug.path
    original = path.read_text()
    if original.count(bug.old) != 1:
        raise SystemExit(f"{bug.name}: {bug.old!r} occurs {original.count(bug.old)} times in {bug.path}")
    if run_test(root, bug.test) != 0:
        raise SystemExit(f"{bug.name}: {bug.test} fails without the bug; fix the checkout first")
    path.write_text(original.replace(bug.old, bug.new))
    try:
        return run_test(root, bug.test) != 0
    finally:
        path.write_text(original)


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="planted-") as scratch:
        root = Path(scratch)
        copy_checkout(root)
        survived = 0
        for bug in BUGS:
            caught = check(root, bug)
            survived += not caught
            print(f"{'killed  ' if caught else 'SURVIVED'} {bug.name}  <- {bug.test}")
    print(f"{len(BUGS) - survived} of {len(BUGS)} planted bugs killed")
    return 1 if survived else 0


if __name__ == "__main__":
    raise SystemExit(main())
