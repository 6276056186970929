"""`rewardhub up` as a user runs it: migrates, prints the UI, docs and metrics URLs and a first admin key,
serves the README's first reward, stops on Ctrl-C."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.slow
README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_ready(url: str, process: subprocess.Popen[str], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"process exited early with {process.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} not ready after {timeout_s}s")


def readme_first_reward(cli: Path, url: str, env: dict[str, str], cwd: Path) -> dict[str, object]:
    """The README's first-reward commands: a trainer key from the CLI, then its curl's body posted."""
    block = README.split("a first\nreward:", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    key_command = next(line for line in block.splitlines() if line.startswith("KEY=$("))
    args = shlex.split(key_command.removeprefix("KEY=$(").removesuffix(")"))
    assert args[0] == "rewardhub"
    key = subprocess.run([str(cli), *args[1:]], env=env, cwd=cwd, capture_output=True, text=True,
                         check=True, timeout=60).stdout.strip()
    curl = shlex.split(block.split("curl ", 1)[1].split("\n# ", 1)[0].replace("\\\n", " "))
    assert curl[curl.index("-X") + 1] == "POST" and curl[curl.index("-X") + 2] == "localhost:8000/v1/rewards"
    body = json.loads(curl[curl.index("-d") + 1])
    response = httpx.post(f"{url}/v1/rewards", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=30)
    assert response.status_code == 200, response.text
    (result,) = response.json()["results"]
    return {"score": result["score"], "status": result["status"]}


def test_up_serves_and_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env["REWARDHUB_DATA_DIR"] = str(tmp_path / "data")
    cli = Path(sys.executable).with_name("rewardhub")
    process = subprocess.Popen([str(cli), "up", "--port", str(port)], env=env, cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until_ready(f"http://127.0.0.1:{port}/readyz", process)
        key = (tmp_path / "data" / "admin-key.txt").read_text().strip()
        assert oct((tmp_path / "data" / "admin-key.txt").stat().st_mode & 0o777) == "0o600"
        projects = httpx.get(f"http://127.0.0.1:{port}/v1/projects", headers={"Authorization": f"Bearer {key}"})
        assert projects.status_code == 200
        assert [p["name"] for p in projects.json()["data"]] == ["default"]
        ui = httpx.get(f"http://127.0.0.1:{port}/", follow_redirects=True)  # the UI, at its login page
        assert ui.status_code == 200 and ui.url.path.startswith("/services/annotation/ui/")
        assert readme_first_reward(cli, f"http://127.0.0.1:{port}", env, tmp_path) == {"score": 1.0, "status": "ok"}
    finally:
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output
    assert f"http://127.0.0.1:{port}" in output
    for label, path in (("web UI", "/services/annotation/ui/"), ("API docs", "/docs"), ("metrics", "/metrics")):
        assert re.search(rf"{label}:\s+http://127\.0\.0\.1:{port}{path}", output), (label, output)
    assert re.search(r"first admin key .*\n\s+rh_[A-Za-z0-9_-]{20,}", output)
    assert "rewardhub stopped." in output
    assert (tmp_path / "data" / "rewardhub.db").exists()

    # The key is shown once: a later start says where it is saved and does not print it again.
    again = subprocess.Popen([str(cli), "up", "--port", str(port)], env=env, cwd=tmp_path,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until_ready(f"http://127.0.0.1:{port}/readyz", again)
    finally:
        again.send_signal(signal.SIGINT)
        second, _ = again.communicate(timeout=30)
    assert again.returncode == 0, second
    assert key not in second and "admin-key.txt" in second and "shown once" in second
