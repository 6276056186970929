"""Import the real veRL / OpenRLHF client code in tests without their heavy dependency trees.

Neither installs into this project's environment with its dependencies (veRL pins transformers < 5.11
and Ray; OpenRLHF needs DeepSpeed, vLLM and Ray; both wheels also ship a top-level ``tests`` package that
would shadow ours). They are installed ``--no-deps`` into a separate folder with the few modules their
reward code imports, listed in ``framework-requirements.txt`` beside this file:

    .venv/bin/pip install --no-deps --target .venv/frameworks -r tests/integration/framework-requirements.txt

That folder (or ``REWARDHUB_FRAMEWORKS_DIR``) is appended to ``sys.path``, after the project's own
packages; a test that needs a framework that is not there is skipped, saying how to install it.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from types import ModuleType

from tests.conftest import require

ROOT = Path(__file__).resolve().parents[2]
REQUIREMENTS = Path(__file__).with_name("framework-requirements.txt")


def frameworks_dir() -> Path:
    return Path(os.environ.get("REWARDHUB_FRAMEWORKS_DIR") or ROOT / ".venv" / "frameworks")


def load(module: str) -> ModuleType:
    """Import ``module`` (e.g. ``verl.protocol``), from the environment or the frameworks folder; else skip."""
    try:
        return importlib.import_module(module)
    except ImportError:
        pass
    folder = frameworks_dir()
    if folder.is_dir() and str(folder) not in sys.path:
        sys.path.append(str(folder))
        importlib.invalidate_caches()
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        missing = f"{module} is not importable ({exc})"
    require(False, f"{missing}; install the framework sources with `.venv/bin/pip "
                   f"install --no-deps --target {folder} -r {REQUIREMENTS.relative_to(ROOT)}`")
    raise AssertionError("unreachable: require(False, ...) skips or fails")
