"""Regenerate the lock files the images install from (``make lock``).

Each lock pins every package an image installs, with the sha256 of each file pip may pick, for
CPython 3.11 on Linux x86_64 with glibc 2.36 (the Dockerfile's Debian bookworm base):

- ``server.lock``: the base dependencies and the ``server`` extra (the light image; no torch).
- ``train.lock``: ``server``, ``train`` and ``rec`` (rec_rm's embeddings and behaviour model), with
  torch's CPU build (``torch==2.13.0+cpu``).
- ``gpu.lock``: ``server`` and ``train`` with PyPI's CUDA build of torch 2.13.0, plus DeepSpeed.

uv resolves each set into a PEP 751 ``pylock.toml`` (which lists only the wheels that fit the
platform, with their hashes); this script writes it out as a pip requirements file, so the image
runs plain ``pip install --require-hashes`` and a reviewer reads one line per package with only
the hashes that matter (uv's requirements output would carry every platform's wheel hashes).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PYTHON_VERSION = "3.11"
# Debian bookworm's glibc is 2.36: wheels tagged up to manylinux_2_36 run in the image.
PYTHON_PLATFORM = "x86_64-manylinux_2_36"
PYPI = "https://pypi.org/simple"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
TORCH_CPU = "torch==2.13.0+cpu"


@dataclass(frozen=True)
class LockSet:
    name: str
    extras: tuple[str, ...]
    what: str
    # Extra requirements beyond the extras (a pinned torch build, the GPU extra's installable part).
    requirements: tuple[str, ...] = ()
    # Whether torch comes from its CPU index (or a local folder with that wheel).
    cpu_torch: bool = False
    notes: tuple[str, ...] = field(default=())


LOCK_SETS = (
    LockSet("server", ("server",), "the light image (gateway, verifier, sandbox, rubric_rm, retrieval)"),
    LockSet("train", ("server", "train", "rec"), "the CPU trainer image (annotation, rec_rm, teacher, trainer, worker)",
            requirements=(TORCH_CPU,), cpu_torch=True),
    # The gpu extra's vLLM and DeepSpeed; vLLM's release is the one built for torch 2.13.0 (as in
    # compose's vllm/vllm-openai image). flash-attn is left out: only an sdist, which needs nvcc.
    LockSet("gpu", ("server", "train"), "the GPU trainer image",
            requirements=("torch==2.13.0", "vllm==0.30.0", "deepspeed"),
            notes=("flash-attn (the gpu extra's third package) is not here: PyPI has only its sdist,",
                   "which needs CUDA's compiler; the trainer falls back to PyTorch's SDPA attention.")),
)


def requirement_lines(package: dict[str, Any]) -> list[str]:
    """One pinned requirement with its hashes: ``name==version[; marker]`` then ``--hash=sha256:…``.

    The hashes are those of the wheels the pylock lists (already only the platform's), or of the
    sdist when no wheel fits; sorted so that a regeneration shows only real changes in a diff.
    """
    files = package.get("wheels") or [f for f in (package.get("sdist"), package.get("archive")) if f]
    hashes = sorted({f["hashes"]["sha256"] for f in files})
    if not hashes:
        raise ValueError(f"{package['name']}: the pylock lists no file with a sha256")
    marker = f"; {package['marker']}" if package.get("marker") else ""
    head = f"{package['name']}=={package['version']}{marker}"
    return [f"{head} \\", *(f"    --hash=sha256:{h} \\" for h in hashes[:-1]), f"    --hash=sha256:{hashes[-1]}"]


def render_lock(pylock: dict[str, Any], header: list[str]) -> str:
    """The requirements file for a parsed pylock.toml, packages by name, below ``header`` comments."""
    packages = sorted(pylock["packages"], key=lambda p: str(p["name"]))
    lines = [f"# {line}" if line else "#" for line in header]
    for package in packages:
        lines.extend(requirement_lines(package))
    return "\n".join(lines) + "\n"


def uv_command(lock: LockSet, requirements_file: Path, output: Path, torch_find_links: str | None) -> list[str]:
    command = [os.environ.get("UV", "uv"), "pip", "compile", str(ROOT / "pyproject.toml"), str(requirements_file),
               *(arg for extra in lock.extras for arg in ("--extra", extra)),
               "--python-version", PYTHON_VERSION, "--python-platform", PYTHON_PLATFORM,
               "--index-url", PYPI, "--no-config", "--no-header", "--quiet", "--format", "pylock.toml", "-o", str(output)]
    if lock.cpu_torch:
        # The +cpu build is only on torch's index: search every index for the best match.
        source = ["--find-links", torch_find_links] if torch_find_links else ["--extra-index-url", TORCH_CPU_INDEX]
        command += [*source, "--index-strategy", "unsafe-best-match"]
    return command


def header_for(lock: LockSet) -> list[str]:
    extras = ",".join(lock.extras)
    return [f"rewardhub[{extras}] for {lock.what}: CPython {PYTHON_VERSION}, {PYTHON_PLATFORM}.",
            "Generated by requirements/lock.py (`make lock`); edit pyproject.toml, not this file.",
            *(f"Also: {r}" for r in lock.requirements), *lock.notes, ""]


def write_lock(lock: LockSet, torch_find_links: str | None) -> Path:
    with tempfile.TemporaryDirectory() as tmp:
        extra = Path(tmp) / "extra.txt"
        extra.write_text("".join(f"{r}\n" for r in lock.requirements))
        pylock = Path(tmp) / "pylock.toml"
        subprocess.run(uv_command(lock, extra, pylock, torch_find_links), check=True)
        parsed = tomllib.loads(pylock.read_text())
    target = HERE / f"{lock.name}.lock"
    target.write_text(render_lock(parsed, header_for(lock)))
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="lock sets to regenerate: server, train, gpu (default: all)")
    parser.add_argument("--torch-find-links", default=os.environ.get("TORCH_FIND_LINKS"),
                        help="a folder holding the torch CPU wheel, instead of torch's CPU index")
    args = parser.parse_args(argv)
    unknown = set(args.names) - {lock.name for lock in LOCK_SETS}
    if unknown:
        parser.error(f"unknown lock set(s) {sorted(unknown)}; known: server, train, gpu")
    for lock in LOCK_SETS:
        if not args.names or lock.name in args.names:
            print(write_lock(lock, args.torch_find_links))
    return 0


if __name__ == "__main__":
    sys.exit(main())
