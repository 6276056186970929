"""SIGTERM (what the kubelet sends after preStop) lets the request in flight finish: `rewardhub serve`
as the containers run it, on loopback, with a sandbox run held open across the signal.

The run blocks on FIFOs, so every step is ordered by the run itself, not by time: opening the
``started`` FIFO returns once the program is running; the program ends once the test writes
``release``, which it does only after the server has received SIGTERM.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import IO

import httpx

from tests.conftest import REPO_ROOT


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until_listening(url: str, proc: subprocess.Popen[bytes]) -> None:
    # Connection attempts until the server has bound its port; each fails at once before that.
    transport = httpx.HTTPTransport(retries=200)
    with httpx.Client(transport=transport, timeout=30) as client:
        for _ in range(50):
            assert proc.poll() is None, "the server exited"
            try:
                client.get(url + "/livez")
                return
            except httpx.ConnectError:
                continue
    raise AssertionError("the server never listened")


def read_until(stream: IO[bytes], marker: str) -> str:
    """The server's log lines up to and including the first one containing ``marker``."""
    seen = []
    for raw in stream:
        seen.append(raw.decode(errors="replace"))
        if marker in seen[-1]:
            return "".join(seen)
    raise AssertionError(f"the server exited without logging {marker!r}:\n{''.join(seen)[-3000:]}")


def fifos() -> tuple[Path, Path]:
    """Two FIFOs the run can open: a service running as root starts runs as ``nobody``."""
    folder = Path(tempfile.mkdtemp(prefix="rewardhub-shutdown-"))
    folder.chmod(0o755)
    for name in ("started", "release"):
        os.mkfifo(folder / name)
        (folder / name).chmod(0o666)
    return folder / "started", folder / "release"


def unblock(fifo: Path) -> None:
    """Open ``fifo`` for writing if someone waits to read it (the run failed before it could)."""
    with contextlib.suppress(OSError):  # ENXIO: no reader waits
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


def test_sigterm_lets_the_request_in_flight_finish(tmp_path: Path) -> None:
    started, release = fifos()
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("REWARDHUB_") and key not in ("DATABASE_URL", "REDIS_URL")}
    env.update({"REWARDHUB_DATA_DIR": str(tmp_path / "data"), "REWARDHUB_SANDBOX_ISOLATION": "processes",
                "REWARDHUB_LOG_JSON": "false"})
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    rewardhub = Path(sys.executable).with_name("rewardhub")
    proc = subprocess.Popen([str(rewardhub), "serve", "sandbox", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_until_listening(url, proc)
        code = (f"open({str(started)!r}, 'w').write('running')\n"
                f"print(open({str(release)!r}).read())\n")
        answer: list[httpx.Response] = []

        def call() -> None:
            try:
                answer.append(httpx.post(url + "/run_code", json={"code": code, "run_timeout": 60}, timeout=90))
            finally:
                unblock(started)  # a run that never started must not leave the test waiting on it

        caller = threading.Thread(target=call)
        caller.start()
        assert started.read_text() == "running", answer  # returns once the run is executing
        proc.send_signal(signal.SIGTERM)  # the kubelet's signal, mid-request
        assert proc.stdout is not None
        before = read_until(proc.stdout, "Shutting down")  # the server has begun its shutdown...
        release.write_text("finished after SIGTERM")  # ...and only then does the run end
        caller.join(timeout=90)
        assert answer, "the request in flight got no answer"
        body = answer[0].json()
        assert answer[0].status_code == 200 and body["status"] == "Success", body
        assert body["run_result"]["stdout"] == "finished after SIGTERM\n"
        # Then the server exits: uvicorn re-raises the SIGTERM it handled once it has shut down.
        assert proc.wait(timeout=60) in (0, -signal.SIGTERM)
        log = before + proc.stdout.read().decode()
        assert "Finished server process" in log, log[-3000:]
    finally:
        unblock(release)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(started.parent, ignore_errors=True)
