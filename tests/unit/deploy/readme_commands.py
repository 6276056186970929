"""The README's commands as a newcomer runs them: its shell blocks, with continuation lines joined and
``$(python3 -c '…')`` substitutions run, so a test can drive exactly what the README says."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys

from tests.conftest import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text()
_PYTHON_SUBSTITUTION = re.compile(r"\$\(python3 -c '([^']*)'\)")


def section(heading: str) -> str:
    """The README's text under ``## heading``, up to the next ``## `` heading."""
    start = README.index(f"\n## {heading}\n")
    end = README.find("\n## ", start + 1)
    return README[start:end if end != -1 else None]


def bash_commands(text: str) -> list[str]:
    """Each command of the ```bash blocks in ``text``: comments dropped, continuations joined."""
    commands: list[str] = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.DOTALL):
        joined = block.replace("\\\n", " ")
        commands.extend(line.split(" #", 1)[0].strip() for line in joined.splitlines()
                        if line.strip() and not line.lstrip().startswith("#"))
    return commands


def run_substitutions(command: str) -> str:
    """``command`` with each ``$(python3 -c '…')`` replaced by what it prints (this interpreter runs it)."""
    def output(match: re.Match[str]) -> str:
        return subprocess.run([sys.executable, "-c", match.group(1)], capture_output=True, text=True,
                              check=True, timeout=30).stdout.strip()

    return _PYTHON_SUBSTITUTION.sub(output, command)


def argv(command: str) -> list[str]:
    return shlex.split(run_substitutions(command))
