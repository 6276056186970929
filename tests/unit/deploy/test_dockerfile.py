"""The Dockerfile and .dockerignore, checked without a Docker engine.

The build stage copies a handful of paths and runs `pip wheel .`; the test does the same from
exactly those paths and checks the wheel holds every module and data file of the packages, so a
`docker build` cannot silently produce an image that lacks part of rewardhub.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO_ROOT

DOCKERFILE = REPO_ROOT / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    stage: int


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped; stage = index of its FROM."""
    instructions: list[Instruction] = []
    stage, pending = -1, ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        keyword, _, args = line.partition(" ")
        if keyword.upper() == "FROM":
            stage += 1
        instructions.append(Instruction(keyword.upper(), args.strip(), stage))
    return instructions


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return parse_dockerfile(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    last = max(i.stage for i in instructions)
    return [i for i in instructions if i.stage == last]


def copied_sources(instructions: list[Instruction]) -> list[str]:
    """Build-context paths the Dockerfile copies (COPY --from=... copies between stages, not from the context)."""
    sources: list[str] = []
    for inst in instructions:
        if inst.keyword == "COPY" and not inst.args.startswith("--from"):
            *srcs, _dest = inst.args.split()
            sources.extend(srcs)
    return sources


def package_roots(pyproject: dict[str, Any]) -> list[str]:
    return sorted({pattern.rstrip("*").rstrip(".") for pattern in
                   pyproject["tool"]["setuptools"]["packages"]["find"]["include"]})


def ignore_patterns() -> list[str]:
    lines = DOCKERIGNORE.read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def ignored(path: str, patterns: list[str]) -> bool:
    # Docker matches each pattern against the path and its parents (Go filepath.Match semantics,
    # `**` spanning directories); fnmatch is close enough for the plain patterns used here.
    parts = Path(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(fnmatch.fnmatch(prefix, pattern.removeprefix("**/")) or fnmatch.fnmatch(prefix, pattern)
               for pattern in patterns for prefix in prefixes)


def test_python_stages_start_from_python_3_11_slim(instructions: list[Instruction]) -> None:
    bases = [i.args.split()[0] for i in instructions if i.keyword == "FROM"]
    # The one other stage only runs `npm ci` for the web UI's libraries.
    assert [b for b in bases if not b.startswith("node:")] == ["python:3.11-slim"] * 2, bases
    assert len(bases) == 3, bases


def test_torch_is_the_pinned_cpu_build_installed_before_rewardhub(
        instructions: list[Instruction], pyproject: dict[str, Any]) -> None:
    pin = next(dep for dep in pyproject["project"]["optional-dependencies"]["train"] if dep.startswith("torch"))
    stage = final_stage(instructions)
    args = {i.args.split("=", 1)[0]: i.args.split("=", 1)[1] for i in stage if i.keyword == "ARG" and "=" in i.args}
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    runs = [i.args for i in stage if i.keyword == "RUN"]
    torch_run = next(n for n, run in enumerate(runs) if re.search(r"pip install .*\btorch==", run))
    assert pin in runs[torch_run].split(), f"the image must install the project's own pin {pin}"
    assert '--index-url "${TORCH_INDEX_URL}"' in runs[torch_run]
    rewardhub_run = next(n for n, run in enumerate(runs)
                         if re.search(r'pip install "\$\(ls /tmp/wheels/rewardhub-\*\.whl\)\[server,train\]"', run))
    assert torch_run < rewardhub_run, "torch must be in place first, or pip resolves the CUDA build from PyPI"


def test_the_wheel_is_built_from_the_project(instructions: list[Instruction]) -> None:
    runs = [i.args for i in instructions if i.keyword == "RUN" and i.stage == 0]
    assert any(re.fullmatch(r"pip wheel --no-deps --wheel-dir /wheels \.", run) for run in runs), runs


def test_runs_as_a_non_root_user_with_the_rewardhub_entrypoint(
        instructions: list[Instruction], pyproject: dict[str, Any]) -> None:
    stage = final_stage(instructions)
    users = [i.args for i in stage if i.keyword == "USER"]
    assert users and users[-1] not in ("root", "0"), users
    assert any("useradd" in i.args and users[-1] in i.args.split() for i in stage if i.keyword == "RUN")
    entrypoint = [i.args for i in stage if i.keyword == "ENTRYPOINT"]
    assert [json.loads(e) for e in entrypoint] == [["rewardhub"]]
    assert "rewardhub" in pyproject["project"]["scripts"]
    last_instruction = {i.keyword: n for n, i in enumerate(stage)}
    assert last_instruction["USER"] > last_instruction["RUN"], "nothing may run as root after USER"


def test_the_build_stage_copies_what_pip_install_needs(
        instructions: list[Instruction], pyproject: dict[str, Any]) -> None:
    sources = set(copied_sources(instructions))
    needed = {"pyproject.toml", pyproject["project"]["readme"], *package_roots(pyproject)}
    assert needed <= sources, f"the Dockerfile does not copy {needed - sources}"
    for source in sources:
        assert (REPO_ROOT / source).exists(), f"COPY {source}: no such path"


def test_dockerignore_keeps_out_local_state_but_not_what_is_copied(instructions: list[Instruction]) -> None:
    patterns = ignore_patterns()
    for local in (".git", ".venv", "data", "rewardhub.egg-info", "services/__pycache__/x.pyc", "models"):
        assert ignored(local, patterns), f"{local} would be sent to the Docker daemon"
    for source in copied_sources(instructions):
        assert not ignored(source, patterns), f".dockerignore excludes {source}, which the Dockerfile copies"


def test_dockerignore_matcher_sees_nested_paths() -> None:
    assert ignored("services/common/__pycache__/db.cpython-311.pyc", ["**/__pycache__"])
    assert not ignored("services/common/db.py", ["**/__pycache__", "tests"])


def expected_package_files(root: Path, package_dirs: list[str], data_patterns: list[str]) -> set[str]:
    files = set()
    for top in package_dirs:
        for path in (root / top).rglob("*"):
            if "__pycache__" in path.parts or "node_modules" in path.parts or not path.is_file():
                continue
            relative = path.relative_to(root).as_posix()
            if path.suffix == ".py" or any(fnmatch.fnmatch(path.name, pattern) for pattern in data_patterns):
                files.add(relative)
    return files


@pytest.mark.slow
def test_a_wheel_built_from_the_copied_files_contains_every_module_and_data_file(
        instructions: list[Instruction], pyproject: dict[str, Any], tmp_path: Path) -> None:
    context = tmp_path / "context"
    context.mkdir()
    for source in copied_sources(instructions):
        origin = REPO_ROOT / source
        if origin.is_dir():
            shutil.copytree(origin, context / source,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "node_modules"))
        else:
            shutil.copy2(origin, context / source)
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                             "--wheel-dir", str(tmp_path / "wheels"), "."],
                            cwd=context, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = (tmp_path / "wheels").glob("rewardhub-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        packaged = {name for name in archive.namelist() if ".dist-info/" not in name}
        entry_points = next(archive.read(n).decode() for n in archive.namelist() if n.endswith("entry_points.txt"))
    data_patterns = pyproject["tool"]["setuptools"]["package-data"]["*"]
    expected = expected_package_files(REPO_ROOT, package_roots(pyproject), data_patterns)
    missing = sorted(expected - packaged)
    assert not missing, (f"`pip install .` in the image would lack {missing}: a package directory without "
                         "__init__.py, or a data file outside tool.setuptools.package-data")
    assert "migrations/versions/0001_tenancy.py" in packaged and "migrations/script.py.mako" in packaged
    assert re.search(r"^rewardhub = rewardhub\.entry:main$", entry_points, re.MULTILINE)
