"""The Dockerfile, .dockerignore and the lock files the images install from, checked without a Docker engine.

The build stage copies a handful of paths and runs `pip wheel .`; the test does the same from
exactly those paths and checks the wheel holds every module and data file of the packages, so a
`docker build` cannot silently produce an image that lacks part of rewardhub. Which image a service
can run in is checked by importing it with every package its image's lock lacks made unimportable.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import os
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
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.conftest import REPO_ROOT

DOCKERFILE = REPO_ROOT / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
LOCKS = REPO_ROOT / "requirements"
TARGETS = {"light": "server.lock", "gpu": "gpu.lock", "trainer": "train.lock"}


def _load_locker() -> Any:
    # requirements/ is a folder of lock inputs, not a package: load the script by its path.
    spec = importlib.util.spec_from_file_location("rewardhub_lock_script", LOCKS / "lock.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


locker = _load_locker()
# What the light image must not carry: the training stack and its CUDA libraries.
HEAVY = {"torch", "transformers", "matplotlib", "triton", "deepspeed", "vllm", "flash-attn", "accelerate"}


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    stage: int


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped; stage = index of its FROM
    (-1 for the global ARGs before the first FROM)."""
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
        instructions.append(Instruction(keyword.upper(), " ".join(args.split()), stage))
    return instructions


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return parse_dockerfile(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def global_args(instructions: list[Instruction]) -> dict[str, str]:
    return dict(i.args.split("=", 1) for i in instructions if i.keyword == "ARG" and i.stage == -1)


def stages(instructions: list[Instruction]) -> dict[str, tuple[str, list[Instruction]]]:
    """Stage name -> (its base, resolved against the global ARG defaults; its instructions)."""
    defaults = global_args(instructions)
    found: dict[str, tuple[str, list[Instruction]]] = {}
    for inst in instructions:
        if inst.keyword == "FROM":
            base, _as, name = inst.args.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], base)
            found[name] = (base, [i for i in instructions if i.stage == inst.stage])
    return found


def runs(stage: list[Instruction]) -> list[tuple[list[str], str]]:
    """Each RUN of a stage as (its --mount options, the command)."""
    result = []
    for inst in stage:
        if inst.keyword == "RUN":
            words = inst.args.split(" ")
            mounts = [w.removeprefix("--mount=") for w in words if w.startswith("--mount=")]
            result.append((mounts, " ".join(w for w in words if not w.startswith("--mount="))))
    return result


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


# --- stages, bases, targets -----------------------------------------------------------------------

def test_the_targets_and_their_pinned_bases(instructions: list[Instruction]) -> None:
    found = stages(instructions)
    assert list(found) == ["build", "webui", "base", "light", "gpu", "trainer"]
    # `docker build .` builds the last stage: the CPU trainer image, which runs every component.
    assert list(found)[-1] == "trainer"
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", found["build"][0]), found["build"][0]
    assert found["base"][0] == found["build"][0], "the wheel is built on the runtime's Python"
    assert re.fullmatch(r"node:20\.\d+\.\d+-bookworm-slim", found["webui"][0]), found["webui"][0]
    for target in TARGETS:
        assert found[target][0] == "base", f"{target} must build on the shared base stage"
    for base, _ in found.values():
        assert "latest" not in base


def test_the_lock_script_targets_the_images_python_and_glibc(instructions: list[Instruction]) -> None:
    python = stages(instructions)["base"][0]
    assert python.removeprefix("python:").startswith(locker.PYTHON_VERSION + ".")
    # Debian bookworm ships glibc 2.36: the lock may hold wheels built for it, none newer.
    assert "bookworm" in python and locker.PYTHON_PLATFORM == "x86_64-manylinux_2_36"


def test_the_wheel_is_built_from_the_project(instructions: list[Instruction]) -> None:
    commands = [command for _, command in runs(stages(instructions)["build"][1])]
    assert any(re.fullmatch(r"pip wheel --no-deps --wheel-dir /wheels \.", c) for c in commands), commands


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_each_target_installs_its_lock_with_hashes_then_the_wheel_alone(
        instructions: list[Instruction], target: str) -> None:
    stage = stages(instructions)[target][1]
    copies = [i.args.split() for i in stage if i.keyword == "COPY" and not i.args.startswith("--from")]
    assert copies == [[f"requirements/{TARGETS[target]}", "/tmp/requirements.lock"]]
    (lock_mounts, lock_install), (wheel_mounts, wheel_install) = runs(stage)
    assert "type=cache,target=/root/.cache/pip" in lock_mounts, "pip downloads go to a BuildKit cache"
    assert re.fullmatch(r'pip install --require-hashes (--extra-index-url "\$\{TORCH_INDEX_URL\}" )?'
                        r"-r /tmp/requirements\.lock", lock_install), lock_install
    assert wheel_mounts == ["type=bind,from=build,source=/wheels,target=/tmp/wheels"]
    # --no-deps: the lock is the whole set; pip check fails the build when it is not.
    assert wheel_install == "pip install --no-cache-dir --no-deps /tmp/wheels/rewardhub-*.whl && pip check"


def test_the_cpu_trainer_takes_torch_from_its_cpu_index(instructions: list[Instruction]) -> None:
    stage = stages(instructions)["trainer"][1]
    args = dict(i.args.split("=", 1) for i in stage if i.keyword == "ARG" and "=" in i.args)
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu" == locker.TORCH_CPU_INDEX
    gpu_install = runs(stages(instructions)["gpu"][1])[0][1]
    assert "--extra-index-url" not in gpu_install, "the GPU image's CUDA torch is PyPI's own build"


def test_no_pip_cache_is_disabled_where_a_cache_mount_serves(instructions: list[Instruction]) -> None:
    # PIP_NO_CACHE_DIR would make every cache mount useless.
    envs = " ".join(i.args for i in instructions if i.keyword == "ENV")
    assert "PIP_NO_CACHE_DIR" not in envs
    apt = next(command for _, command in runs(stages(instructions)["base"][1]) if "apt-get install" in command)
    assert "tini" in apt.split(), "tini is the init process"


def test_runs_as_a_non_root_user_under_tini(instructions: list[Instruction], pyproject: dict[str, Any]) -> None:
    found = stages(instructions)
    base = found["base"][1]
    entrypoint = [json.loads(i.args) for i in base if i.keyword == "ENTRYPOINT"]
    assert entrypoint == [["/usr/bin/tini", "--", "rewardhub"]]
    assert "rewardhub" in pyproject["project"]["scripts"]
    assert any("useradd" in command and "--uid 10001" in command for _, command in runs(base))
    for target in TARGETS:
        stage = found[target][1]
        users = [n for n, i in enumerate(stage) if i.keyword == "USER"]
        assert users and stage[users[-1]].args == "rewardhub", f"{target} must run as rewardhub"
        last_run = max(n for n, i in enumerate(stage) if i.keyword in ("RUN", "COPY"))
        assert users[-1] > last_run, f"{target}: nothing may run or be copied as root after USER"
        assert not any(i.keyword == "ENTRYPOINT" for i in stage), f"{target} must keep tini as PID 1"
    for name, (_, stage) in found.items():
        assert all(i.args not in ("root", "0") for i in stage if i.keyword == "USER"), name


def test_oci_labels(instructions: list[Instruction]) -> None:
    found = stages(instructions)
    labels = " ".join(i.args for i in found["base"][1] if i.keyword == "LABEL")
    keys = set(re.findall(r"org\.opencontainers\.image\.([a-z.]+)=", labels))
    assert keys >= {"title", "description", "version", "revision", "created", "licenses", "source", "base.name"}
    build_args = {i.args.split("=")[0] for i in found["base"][1] if i.keyword == "ARG"}
    assert {"VERSION", "REVISION", "CREATED", "SOURCE_URL", "PYTHON_IMAGE"} <= build_args
    for target in TARGETS:
        title = [i.args for i in found[target][1] if i.keyword == "LABEL"]
        expected = "rewardhub-" + target
        assert title == [f'org.opencontainers.image.title="{expected}"'], target


def test_the_default_version_label_is_the_projects(instructions: list[Instruction], pyproject: dict[str, Any]) -> None:
    args = dict(i.args.split("=", 1) for i in stages(instructions)["base"][1] if i.keyword == "ARG" and "=" in i.args)
    assert args["VERSION"] == pyproject["project"]["version"]


def test_every_stage_copying_webui_libraries_targets_the_installed_package(instructions: list[Instruction]) -> None:
    for target in TARGETS:
        copies = [i.args for i in stages(instructions)[target][1] if i.keyword == "COPY" and i.args.startswith("--from")]
        assert copies == ["--from=webui /webui/node_modules /usr/local/lib/python3.11/site-packages/webui/node_modules"]


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
    for source in copied_sources(stages(instructions)["build"][1]):
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


# --- the lock files ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Pin:
    name: str
    version: str
    marker: str
    hashes: tuple[str, ...]


def parse_lock(text: str) -> dict[str, Pin]:
    """name -> pin for a pip requirements file written as ``name==version[; marker] \\`` + hash lines."""
    pins: dict[str, Pin] = {}
    joined = re.sub(r"\\\n\s*", " ", text)
    for line in joined.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        requirement, *options = line.split(" --hash=")
        spec, _, marker = requirement.partition(";")
        match = re.fullmatch(r"([A-Za-z0-9._-]+)==(\S+)", spec.strip())
        assert match, f"not pinned with ==: {line[:80]!r}"
        name = str(canonicalize_name(match.group(1)))
        assert name not in pins, f"{name} is pinned twice"
        pins[name] = Pin(name, match.group(2), marker.strip(), tuple(h.strip() for h in options))
    return pins


@pytest.fixture(scope="module")
def locks() -> dict[str, dict[str, Pin]]:
    return {target: parse_lock((LOCKS / name).read_text()) for target, name in TARGETS.items()}


def test_parse_lock_reads_pins_markers_and_hashes() -> None:
    text = ("# header\nFoo_Bar==1.2 \\\n    --hash=sha256:aa \\\n    --hash=sha256:bb\n"
            "baz==3; python_version < '3.12' \\\n    --hash=sha256:cc\n")
    assert parse_lock(text) == {"foo-bar": Pin("foo-bar", "1.2", "", ("sha256:aa", "sha256:bb")),
                                "baz": Pin("baz", "3", "python_version < '3.12'", ("sha256:cc",))}
    with pytest.raises(AssertionError, match="not pinned"):
        parse_lock("foo>=1 \\\n    --hash=sha256:aa\n")


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_every_package_is_pinned_with_sha256_hashes(locks: dict[str, dict[str, Pin]], target: str) -> None:
    pins = locks[target]
    assert len(pins) > 50, f"{TARGETS[target]} is suspiciously small"
    for pin in pins.values():
        assert pin.hashes, f"{pin.name} has no hash"
        for digest in pin.hashes:
            assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest), f"{pin.name}: {digest}"
        Version(pin.version)  # a real version, not a range


def test_torch_is_the_projects_pin_in_each_build(locks: dict[str, dict[str, Pin]], pyproject: dict[str, Any]) -> None:
    pin = next(Requirement(d) for d in pyproject["project"]["optional-dependencies"]["train"] if d.startswith("torch"))
    assert str(pin.specifier) == "==2.13.0"
    assert locks["trainer"]["torch"].version == "2.13.0+cpu" == locker.TORCH_CPU.split("==")[1]
    assert locks["gpu"]["torch"].version == "2.13.0"
    for target in ("trainer", "gpu"):
        assert pin.specifier.contains(locks[target]["torch"].version), target
    # The CPU build carries no CUDA libraries; the GPU build does.
    assert not any(name.startswith("nvidia-") for name in locks["trainer"])
    assert any(name.startswith("nvidia-cudnn") for name in locks["gpu"])
    assert {"deepspeed", "vllm"} <= set(locks["gpu"])


def test_the_light_lock_holds_no_training_stack(locks: dict[str, dict[str, Pin]]) -> None:
    light = set(locks["light"])
    assert not light & HEAVY, light & HEAVY
    assert not any(name.startswith(("nvidia-", "cuda-")) for name in light)
    # What the sandbox's Python and the verifier's graders need is there.
    assert {"numpy", "sympy", "math-verify", "fastapi", "uvicorn", "psycopg-binary", "pyseccomp"} <= light


def requirements_of(pyproject: dict[str, Any], extras: tuple[str, ...]) -> list[Requirement]:
    deps = [*pyproject["project"]["dependencies"]]
    for extra in extras:
        deps += pyproject["project"]["optional-dependencies"][extra]
    return [Requirement(d) for d in deps]


@pytest.mark.parametrize(("target", "extras"), [("light", ("server",)), ("trainer", ("server", "train", "rec")),
                                                ("gpu", ("server", "train"))])
def test_each_lock_satisfies_pyprojects_requirements(
        locks: dict[str, dict[str, Pin]], pyproject: dict[str, Any], target: str, extras: tuple[str, ...]) -> None:
    # A stale lock (pyproject raised a floor or added a package) fails here, before any build.
    pins = locks[target]
    for requirement in requirements_of(pyproject, extras):
        name = str(canonicalize_name(requirement.name))
        assert name in pins, f"{TARGETS[target]} lacks {requirement} (run `make lock`)"
        assert requirement.specifier.contains(pins[name].version, prereleases=True), \
            f"{TARGETS[target]} pins {name}=={pins[name].version}, outside {requirement} (run `make lock`)"


def test_the_cpu_images_share_versions(locks: dict[str, dict[str, Pin]]) -> None:
    # The light and trainer images run the same code for every package they both hold (the GPU
    # image may differ where vLLM's own pins decide, e.g. NumPy).
    assert set(locks["light"]) <= set(locks["trainer"]), set(locks["light"]) - set(locks["trainer"])
    differ = {n: (p.version, locks["trainer"][n].version) for n, p in locks["light"].items()
              if p.version != locks["trainer"][n].version}
    assert not differ, f"server.lock and train.lock disagree: {differ}"


def test_the_lock_headers_say_how_to_regenerate() -> None:
    for name in TARGETS.values():
        text = (LOCKS / name).read_text()
        assert "requirements/lock.py (`make lock`)" in text.splitlines()[1], name
    makefile = (REPO_ROOT / "Makefile").read_text()
    assert re.search(r"^lock:", makefile, re.MULTILINE) and "requirements/lock.py" in makefile


# --- the lock script's pure parts -------------------------------------------------------------------

def test_requirement_lines_pin_the_wheels_hashes_sorted() -> None:
    package = {"name": "foo", "version": "1.0", "marker": "sys_platform == 'linux'",
               "sdist": {"hashes": {"sha256": "ff"}},
               "wheels": [{"hashes": {"sha256": "bb"}}, {"hashes": {"sha256": "aa"}}]}
    assert locker.requirement_lines(package) == [
        "foo==1.0; sys_platform == 'linux' \\", "    --hash=sha256:aa \\", "    --hash=sha256:bb"]


def test_requirement_lines_fall_back_to_the_sdist_or_fail() -> None:
    assert locker.requirement_lines({"name": "bar", "version": "2", "sdist": {"hashes": {"sha256": "cc"}}}) == [
        "bar==2 \\", "    --hash=sha256:cc"]
    with pytest.raises(ValueError, match="bar: the pylock lists no file"):
        locker.requirement_lines({"name": "bar", "version": "2", "wheels": [], "sdist": None})


def test_render_lock_sorts_packages_under_the_header() -> None:
    pylock = {"packages": [{"name": "zed", "version": "1", "wheels": [{"hashes": {"sha256": "11"}}]},
                           {"name": "abc", "version": "2", "wheels": [{"hashes": {"sha256": "22"}}]}]}
    assert locker.render_lock(pylock, ["one", ""]) == (
        "# one\n#\nabc==2 \\\n    --hash=sha256:22\nzed==1 \\\n    --hash=sha256:11\n")
    assert parse_lock(locker.render_lock(pylock, [])) == {
        "abc": Pin("abc", "2", "", ("sha256:22",)), "zed": Pin("zed", "1", "", ("sha256:11",))}


def test_uv_command_takes_torch_from_its_cpu_index_only_for_the_cpu_set(tmp_path: Path) -> None:
    lock_sets = {lock.name: lock for lock in locker.LOCK_SETS}
    assert set(lock_sets) == {Path(name).stem for name in TARGETS.values()}
    server = locker.uv_command(lock_sets["server"], tmp_path / "r.txt", tmp_path / "pylock.toml", None)
    assert "--extra-index-url" not in server and "--find-links" not in server
    assert server[server.index("--python-platform") + 1] == "x86_64-manylinux_2_36"
    train = locker.uv_command(lock_sets["train"], tmp_path / "r.txt", tmp_path / "pylock.toml", None)
    assert train[train.index("--extra-index-url") + 1] == "https://download.pytorch.org/whl/cpu"
    assert train[train.index("--index-strategy") + 1] == "unsafe-best-match"
    offline = locker.uv_command(lock_sets["train"], tmp_path / "r.txt", tmp_path / "pylock.toml", "/opt/wheels")
    assert offline[offline.index("--find-links") + 1] == "/opt/wheels" and "--extra-index-url" not in offline
    assert lock_sets["train"].requirements == ("torch==2.13.0+cpu",)


# --- which image each service can run in -----------------------------------------------------------

# Run in a fresh interpreter: every top-level module whose distributions are all outside the image's
# lock is made unimportable (as in the image, where they are not installed), then the service starts.
_PROBE = r'''
import importlib, importlib.abc, importlib.metadata, importlib.util, re, sys
allowed = set(sys.argv[1].split(","))
norm = lambda name: re.sub(r"[-_.]+", "-", name).lower()
blocked = {top for top, dists in importlib.metadata.packages_distributions().items()
           if not any(norm(d) in allowed for d in dists)}
local = {"rewardhub", "services", "trainer", "webui", "migrations", "tests"}
class NotInImage(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top in blocked and top not in local:
            raise ModuleNotFoundError(f"No module named {name!r} (not in this image)", name=name)
        return None
sys.meta_path.insert(0, NotInImage())
# importlib.util.find_spec("x") is how optional imports probe: for a missing module it answers None.
_find_spec = importlib.util.find_spec
def find_spec(name, package=None):
    if name.partition(".")[0] in blocked - local:
        return None
    return _find_spec(name, package)
importlib.util.find_spec = find_spec
kind, what = sys.argv[2], sys.argv[3]
if kind == "app":
    module, _, factory = what.partition(":")
    getattr(importlib.import_module(module), factory)()
elif kind == "modules":
    for module in what.split(","):
        importlib.import_module(module)
else:
    from rewardhub.entry import main
    sys.argv = ["rewardhub", *what.split()]
    try:
        main()
    except SystemExit as exited:  # typer exits 0 when the command succeeds
        if exited.code not in (0, None):
            raise
print("torch" in sys.modules)
'''

# Compose service -> how its container starts, for the probe.
LIGHT_STARTS = {
    "gateway": ("app", "services.gateway.app:create_app"),
    "verifier": ("app", "services.verifier.app:create_app"),
    "sandbox": ("app", "services.sandbox.app:create_app"),
    "rubric_rm": ("app", "services.rubric_rm.app:create_app"),
    "retrieval": ("app", "services.retrieval.app:create_app"),
    "migrate": ("cli", "migrate"),
}
TRAINER_STARTS = {
    "annotation": ("app", "services.annotation.app:create_app"),
    "trainer": ("app", "services.trainer.app:create_app"),
    # The Celery worker imports every task module at start.
    "worker": ("modules", "services.common.tasks,services.annotation.tasks,services.trainer.supervisor,"
                          "services.rubric_rm.tasks,services.rec_rm.tasks"),
}
# On the trainer image for what they import when they work (sentence-transformers, scikit-learn,
# torch for the teacher's models), though they start without torch: checked to start on that image.
LAZY_TORCH_STARTS = {
    "rec_rm": ("app", "services.rec_rm.app:create_app"),
    "teacher": ("app", "services.teacher.app:create_app"),
}


def probe(target: str, kind: str, what: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    allowed = {*locks_for(target), "rewardhub"}
    env = {k: v for k, v in os.environ.items() if not k.startswith("REWARDHUB_") and k != "DATABASE_URL"}
    env.update(REWARDHUB_DATABASE_URL=f"sqlite:///{tmp_path}/probe.db", REWARDHUB_DATA_DIR=str(tmp_path),
               REWARDHUB_SECRET_KEY="probe-secret-key", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO_ROOT))
    return subprocess.run([sys.executable, "-c", _PROBE, ",".join(sorted(allowed)), kind, what], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=240)


def locks_for(target: str) -> set[str]:
    return set(parse_lock((LOCKS / TARGETS[target]).read_text()))


@pytest.mark.slow
@pytest.mark.parametrize("service", sorted(LIGHT_STARTS))
def test_light_services_start_with_only_the_light_lock(service: str, tmp_path: Path) -> None:
    result = probe("light", *LIGHT_STARTS[service], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "False", f"{service} imported torch"
    if service == "migrate":
        assert "migrated" in result.stdout + result.stderr and (tmp_path / "probe.db").stat().st_size > 0


@pytest.mark.slow
@pytest.mark.parametrize("service", sorted(TRAINER_STARTS))
def test_torch_services_start_with_the_trainer_lock_but_not_the_light_one(service: str, tmp_path: Path) -> None:
    result = probe("trainer", *TRAINER_STARTS[service], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    # They need torch at start: if one stops needing it, move it to the light image (compose, README).
    light = probe("light", *TRAINER_STARTS[service], tmp_path)
    assert light.returncode != 0, light.stdout
    assert "No module named 'torch' (not in this image)" in light.stderr, light.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.parametrize("service", sorted(LAZY_TORCH_STARTS))
def test_lazily_torch_services_start_with_the_trainer_lock(service: str, tmp_path: Path) -> None:
    result = probe("trainer", *LAZY_TORCH_STARTS[service], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
