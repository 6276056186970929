"""Under REWARDHUB_REQUIRE_SERVICES=1 every skip but a GPU test's is a failure (tests/conftest.py's hooks).

Each case runs a small pytest session in a subprocess whose conftest is the project's, so the hooks
and helpers under test are the real ones.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

CASES = '''
import pytest

from tests.conftest import require, require_module


def test_passes() -> None:
    pass


def test_missing_dev_dependency() -> None:
    pytest.importorskip("rewardhub_no_such_dev_dependency")


def test_missing_dev_dependency_through_the_helper() -> None:
    require_module("rewardhub_no_such_dev_dependency")


def test_missing_kernel_capability() -> None:
    require(False, "user namespaces are off")


@pytest.mark.skipif(True, reason="some platform condition")
def test_skipif() -> None:
    pass


@pytest.mark.gpu
def test_on_the_gpu() -> None:
    import torch

    assert torch.cuda.is_available()
'''

MODULE_SKIP = '''
import pytest

pytest.importorskip("rewardhub_no_such_dev_dependency")


def test_never_collected() -> None:
    pass
'''

BROKEN_PROJECT_IMPORT = '''
from tests.conftest import require_module


def test_broken_project_module() -> None:
    require_module("services.no_such_module")
'''


def session(tmp_path: Path, require_services: bool, *files: tuple[str, str]) -> tuple[dict[str, int], str]:
    """Run pytest on ``files`` with the project's conftest; the outcome counts and the output."""
    (tmp_path / "conftest.py").write_text("from tests.conftest import *  # noqa: F403 - the real hooks\n")
    for name, text in files:
        (tmp_path / name).write_text(text)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "REWARDHUB_REQUIRE_SERVICES": "1" if require_services else ""}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-ra", "-p", "no:cacheprovider", "-o", "addopts=",
                           "--continue-on-collection-errors", "--rootdir", str(tmp_path), str(tmp_path)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    summary = proc.stdout.strip().splitlines()[-1]
    counts = {word.rstrip("s") if word.startswith("error") else word: int(n)
              for n, word in re.findall(r"(\d+) (passed|failed|skipped|errors?)", summary)}
    return counts, proc.stdout


@pytest.mark.slow
def test_under_ci_only_gpu_tests_skip(tmp_path: Path) -> None:
    cuda = _cuda()
    counts, out = session(tmp_path, True, ("test_cases.py", CASES), ("test_module_skip.py", MODULE_SKIP))
    # The 3 skips in test bodies fail; the skipif (a setup skip) and the skipped module (a collection
    # skip) are errors; the GPU test skips without CUDA (passes with it).
    assert counts.get("failed") == 3, out
    assert counts.get("error") == 2, out
    assert counts.get("passed") == (2 if cuda else 1), out
    assert counts.get("skipped", 0) == (0 if cuda else 1), out
    assert "REWARDHUB_REQUIRE_SERVICES=1 makes this a failure" in out
    assert "user namespaces are off" in out and "rewardhub_no_such_dev_dependency" in out


@pytest.mark.slow
def test_outside_ci_the_same_tests_skip_with_their_reasons(tmp_path: Path) -> None:
    cuda = _cuda()
    counts, out = session(tmp_path, False, ("test_cases.py", CASES), ("test_module_skip.py", MODULE_SKIP))
    assert counts.get("failed", 0) == 0, out
    assert counts.get("skipped") == (5 if cuda else 6), out  # 4 tests, the module and (without CUDA) the GPU test
    assert "SKIPPED" in out and "user namespaces are off" in out  # -ra lists each skip with its reason
    assert "no CUDA device here" in out or cuda


@pytest.mark.slow
def test_a_broken_project_import_fails_even_outside_ci(tmp_path: Path) -> None:
    counts, out = session(tmp_path, False, ("test_broken.py", BROKEN_PROJECT_IMPORT))
    assert counts == {"failed": 1}, out
    assert "ModuleNotFoundError" in out and "services.no_such_module" in out


def _cuda() -> bool:
    from tests.conftest import _cuda_available

    return _cuda_available()
