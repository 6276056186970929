"""The code sandbox: every hostile program ends with a status and leaves the test process healthy."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.verifier import sandbox
from services.verifier.sandbox import SandboxResult, run_python

IS_ROOT = os.geteuid() == 0
PLAN = sandbox._plan()
needs_root = pytest.mark.skipif(not IS_ROOT, reason="the uid drop to nobody needs the service to run as root")
needs_netns = pytest.mark.skipif(not PLAN.isolate_network, reason="no network namespace here (not root or no "
                                                                 "CAP_SYS_ADMIN): only the audit hook applies")


def run(code: str, **kwargs: object) -> SandboxResult:
    options: dict[str, object] = {"timeout_s": 2.0, "memory_mb": 256, **kwargs}
    return run_python(code, **options)  # type: ignore[arg-type]


def assert_healthy() -> None:
    """After a hostile run the sandbox (and we) still work."""
    result = run("print(6 * 7)")
    assert (result.status, result.stdout) == ("success", "42\n")


def session_members(session_id: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[3]) == session_id:  # fields after the name: state ppid pgrp session ...
            members.append(int(entry.name))
    return members


def test_prints_and_reads_stdin() -> None:
    result = run("name = input()\nprint(f'hello {name}')", stdin="world\n")
    assert result.status == "success" and result.exit_code == 0
    assert result.stdout == "hello world\n" and not result.truncated


def test_runtime_error_reports_exit_code_and_traceback() -> None:
    result = run("raise ValueError('boom')")
    assert result.status == "runtime_error" and result.exit_code == 1
    assert "ValueError: boom" in result.stderr


def test_infinite_loop_times_out() -> None:
    result = run("while True:\n    pass", timeout_s=1.0)
    assert result.status == "timeout" and result.exit_code is None
    assert result.wall_s < 10
    assert_healthy()


def test_sleeping_program_times_out_on_wall_clock() -> None:
    result = run("import time\nprint('started', flush=True)\ntime.sleep(600)", timeout_s=1.0)
    assert result.status == "timeout" and result.stdout == "started\n"


def test_fork_bomb_is_contained_and_reaped() -> None:
    code = ("import os, sys\nprint(os.getsid(0), flush=True)\n"
            "while True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n")
    result = run(code, timeout_s=1.5)
    assert result.status == "timeout"
    session_id = int(result.stdout.split()[0])
    assert session_members(session_id) == []
    assert_healthy()


def test_memory_bomb_is_stopped() -> None:
    result = run("chunks = []\nwhile True:\n    chunks.append(bytearray(10 * 1024 * 1024))", memory_mb=128)
    assert result.status in ("memory_exceeded", "runtime_error")
    assert result.status == "memory_exceeded"  # RLIMIT_AS turns it into a MemoryError we recognise
    assert_healthy()


def test_output_is_truncated_at_the_cap() -> None:
    result = run("import sys\nfor _ in range(1000):\n    sys.stdout.write('x' * 1000)", max_output_bytes=5000)
    assert result.status == "success" and result.truncated
    assert result.stdout == "x" * 5000


def test_temp_dir_is_fresh_cwd_and_removed() -> None:
    first = run("import os\nprint(os.getcwd())\nprint(sorted(os.listdir('.')))\nopen('mine.txt', 'w').write('x')")
    second = run("import os\nprint(os.getcwd())")
    cwd = first.stdout.splitlines()[0]
    assert first.status == "success" and first.stdout.splitlines()[1] == "['solution.py']"
    assert cwd != second.stdout.strip()
    assert not Path(cwd).exists()


def test_files_are_written_and_fetched_without_following_links() -> None:
    code = ("import os\nprint(open('data/in.txt').read())\nopen('out.txt', 'w').write('result')\n"
            "os.symlink('/etc/passwd', 'leak.txt')")
    result = run(code, files={"data/in.txt": "given"}, fetch_files=["out.txt", "leak.txt", "missing.txt", "../x"])
    assert result.status == "success" and result.stdout == "given\n"
    assert result.files == {"out.txt": b"result"}


def test_file_names_cannot_escape_the_dir() -> None:
    result = run("print(1)", files={"../escape.txt": "x"})
    assert result.status == "sandbox_error" and "leaves the sandbox directory" in result.stderr


@needs_root
def test_writing_outside_its_dir_fails(tmp_path: Path) -> None:
    repo_file = Path(__file__).resolve().parents[3] / "sandbox_escape_probe.txt"
    for target in (repo_file, Path("/root/sandbox_escape_probe.txt"), tmp_path / "probe.txt"):
        result = run(f"open({str(target)!r}, 'w').write('escaped')")
        assert result.status == "runtime_error", target
        assert "PermissionError" in result.stderr
        assert not target.exists()


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.1)
    yield server
    server.close()


def test_socket_connect_is_refused_by_the_audit_hook(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    result = run(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\nprint('connected')")
    assert result.status == "runtime_error" and "connected" not in result.stdout
    assert "network access is disabled" in result.stderr
    with pytest.raises(TimeoutError):
        listener.accept()


@needs_netns
def test_network_namespace_blocks_code_that_bypasses_the_hook(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    # A grandchild interpreter has no audit hook: only the namespace stops it.
    inner = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=2); print('connected')"
    code = f"import subprocess, sys\nsubprocess.run([sys.executable, '-c', {inner!r}], check=True)"
    result = run(code)
    assert result.status == "runtime_error" and "connected" not in result.stdout
    assert "Network is unreachable" in result.stderr or "Cannot assign requested address" in result.stderr
    with pytest.raises(TimeoutError):
        listener.accept()


def test_service_secrets_are_not_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SANDBOX_PROBE_API_KEY", "s3cret-value")
    monkeypatch.setenv("DATABASE_URL", "postgresql://user:s3cret-value@db/prod")
    code = ("import os\nprint(sorted(os.environ))\n"
            "try:\n    print(open(f'/proc/{os.getppid()}/environ', 'rb').read())\n"
            "except OSError as exc:\n    print('denied', type(exc).__name__)\n")
    result = run(code)
    assert result.status == "success"
    assert result.stdout.splitlines()[0] == "['LANG', 'PATH']"
    assert result.stdout.splitlines()[1].startswith("denied")
    assert "s3cret-value" not in result.stdout + result.stderr


@needs_root
def test_parent_environ_unreadable_even_without_the_hook() -> None:
    # `cat` is not Python: the audit hook does not apply, the uid drop must.
    code = ("import os, subprocess\n"
            "done = subprocess.run(['cat', f'/proc/{os.getppid()}/environ'], capture_output=True)\n"
            "print(done.returncode, len(done.stdout))\nprint(os.getuid())")
    result = run(code)
    assert result.status == "success"
    returncode, leaked = result.stdout.split()[:2]
    assert returncode != "0" and leaked == "0"
    assert result.stdout.split()[2] == str(sandbox.NOBODY_UID)


def test_missing_interpreter_is_a_sandbox_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox, "_plan", lambda: sandbox._Plan(interpreter=None, drop_to_nobody=False,
                                                                 isolate_network=False))
    result = run("print(1)")
    assert result.status == "sandbox_error" and "no Python interpreter" in result.stderr


def test_rejects_non_positive_limits() -> None:
    with pytest.raises(ValueError, match="positive"):
        run_python("print(1)", timeout_s=0, memory_mb=64)
