"""The README's curl examples, run as written by bash and curl against `rewardhub up`.

Each driven section's ```bash blocks run in order, in one shell per block, with `localhost:8000`
pointed at the test's server. curl fails on any 4xx/5xx (``--fail-with-body``), every command must
succeed (``set -euo pipefail``), and each ``# {...}`` comment under a command is the shape its
output must have (``...`` stands for any text; whitespace is ignored on both sides), so a README
example that stops working fails here.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.test_embedded_up import free_port, wait_until_ready
from tests.unit.deploy.readme_commands import README

pytestmark = pytest.mark.slow

# The README sections (## or ###) whose examples are driven here (others have tests of their own).
DRIVEN_SECTIONS = (
    "Recommendation reward model (RecRM)",
    "Question types (label schemas)",
    "Annotation data: import, browse, export",
    "Agent tools: sandbox sessions and search",
    "Self-distillation teachers (AMR-SD, π-Play)",
)
SHELL_PRELUDE = 'set -euo pipefail\ncurl() { command curl --fail-with-body --max-time 60 "$@"; echo; }\n'


def heading_text(heading: str) -> str:
    """The README's text under the ``##`` or ``###`` ``heading``, up to the next heading of any level."""
    match = re.search(rf"^#{{2,3}} {re.escape(heading)}\n(.*?)(?=^#{{2,3}} |\Z)", README, re.DOTALL | re.MULTILINE)
    assert match, f"the README has no section {heading!r}"
    return match.group(1)


def bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, re.DOTALL)


def expected_shapes(block: str) -> list[re.Pattern[str]]:
    """The ``# {...}`` comment lines of a block, as patterns (``...`` matches anything)."""
    shapes = [line.strip()[2:] for line in block.splitlines() if line.strip().startswith("# {")]
    return [re.compile(".*?".join(re.escape(unspaced(part)) for part in shape.split("..."))) for shape in shapes]


def unspaced(text: str) -> str:
    return re.sub(r"\s+", "", text)


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, str], Path]:
    root = tmp_path_factory.mktemp("readme")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env["REWARDHUB_DATA_DIR"] = str(root / "data")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    process = subprocess.Popen([str(Path(sys.executable).with_name("rewardhub")), "up", "--port", str(port)],
                               env=env, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until_ready(f"http://127.0.0.1:{port}/readyz", process)
        yield f"127.0.0.1:{port}", env, root
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=30)


@pytest.mark.parametrize("heading", DRIVEN_SECTIONS)
def test_the_sections_examples_run_as_written(heading: str, embedded: tuple[str, dict[str, str], Path]) -> None:
    address, env, cwd = embedded
    blocks = bash_blocks(heading_text(heading))
    assert blocks, f"the README's {heading!r} section has no bash example"
    for block in blocks:
        script = SHELL_PRELUDE + block.replace("localhost:8000", address)
        result = subprocess.run(["bash", "-c", script], env=env, cwd=cwd, capture_output=True, text=True,
                                timeout=240)
        assert result.returncode == 0, f"{heading}:\n{block}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        for shape in expected_shapes(block):
            assert shape.search(unspaced(result.stdout)), f"{heading}: no output like {shape.pattern!r} in\n{result.stdout}"
