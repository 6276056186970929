"""The languages one-shot runs support, each a source file name, an optional compile step and a run step.

Toolchains come from the host's ``/usr`` (Debian's ``g++``, ``nodejs``, ``bash`` and the sandbox
Python with ``numpy`` and ``sympy``), which is all the sandbox sees. A language whose toolchain is
missing is listed as unavailable, and a run of it is ``Failed`` with that reason (a request error,
which SandboxFusion clients do not retry), never a platform fault.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

from services.sandbox import isolation


@dataclass(frozen=True)
class Language:
    name: str
    source_file: str
    tool: str  # the executable that must exist under /usr
    compile_argv: Callable[[str], list[str]] | None
    run_argv: Callable[[str], list[str]]
    address_space_limit: bool = True  # False: V8 and the like reserve far more than they use
    compile_memory_mb: int = 2048


def _tool(name: str) -> str | None:
    found = shutil.which(name, path="/usr/local/bin:/usr/bin")
    return found if found and os.path.realpath(found).startswith("/usr/") else None


# SandboxFusion links these when the toolchain has them (its probe compiles with each in turn).
CPP_OPTIONAL_LIBRARIES = ("crypto", "ssl", "pthread")


@functools.cache
def cpp_link_flags(gxx: str) -> tuple[str, ...]:
    """``-l`` flags for the optional libraries ``gxx`` can link (asked once: ``-print-file-name``)."""
    return tuple(f"-l{library}" for library in CPP_OPTIONAL_LIBRARIES
                 if any(_linkable(gxx, f"lib{library}{suffix}") for suffix in (".so", ".a")))


def _linkable(gxx: str, file_name: str) -> bool:
    try:
        found = subprocess.run([gxx, f"-print-file-name={file_name}"], capture_output=True, text=True,
                               timeout=10, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return False
    return os.path.isabs(found)  # the bare name back: the linker would not find it


def _cpp_compile(gxx: str) -> list[str]:
    # SandboxFusion's command: C++17, no optimisation flag (so the same programs time out), the
    # optional libraries last. -pipe keeps the compiler's temporaries out of the run's small /tmp.
    return [gxx, "-std=c++17", "-pipe", "main.cpp", "-o", "main", *cpp_link_flags(gxx)]


LANGUAGES: dict[str, Language] = {
    "python": Language("python", "main.py", "python3", None, lambda python: [python, "main.py"]),
    "cpp": Language("cpp", "main.cpp", "g++", _cpp_compile, lambda _gxx: ["./main"]),
    "nodejs": Language("nodejs", "main.js", "node", None, lambda node: [node, "main.js"],
                       address_space_limit=False),
    "bash": Language("bash", "main.sh", "bash", None, lambda bash: [bash, "main.sh"]),
}
ALIASES = {"python3": "python", "c++": "cpp", "javascript": "nodejs", "js": "nodejs", "node": "nodejs",
           "sh": "bash", "shell": "bash"}


def resolve(name: str) -> Language | None:
    return LANGUAGES.get(ALIASES.get(name.lower(), name.lower()))


def tool_path(language: Language, python_setting: str = "") -> str | None:
    if language.name == "python":
        return isolation.sandbox_python(python_setting)
    return _tool(language.tool)


def available(python_setting: str = "") -> dict[str, bool]:
    return {name: tool_path(language, python_setting) is not None for name, language in LANGUAGES.items()}
