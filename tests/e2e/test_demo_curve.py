"""The README's demo reward curve is what `rewardhub demo` prints (its first ten steps, measured here)."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text()


def test_the_readme_demo_curve_starts_as_the_demo_does(tmp_path: Path) -> None:
    printed = re.search(r"^steps  1-10: ([0-9. ]+)$", README, re.MULTILINE)
    assert printed, "the README's demo table is missing"
    expected = [float(v) for v in printed.group(1).split()]
    # The schedule is constant, so the first ten steps of a 10-step demo are those of the 60-step one.
    result = subprocess.run([sys.executable, "-c", "from rewardhub.entry import main; main()", "demo", "--steps", "10", "--work-dir",
                             str(tmp_path / "demo")], capture_output=True, text=True, timeout=600, cwd=REPO_ROOT,
                            env={**os.environ, "COLUMNS": "1000"})  # rich wraps long lines at 80 columns otherwise
    assert result.returncode == 0, result.stdout + result.stderr
    line = re.search(r"^reward per step: (\[.*\])$", result.stderr, re.MULTILINE)  # the console writes to stderr
    assert line, result.stderr
    assert [round(v, 2) for v in ast.literal_eval(line.group(1))] == expected
