"""The runs' seccomp filters, loaded for real in a forked child (no bubblewrap needed), and the tmpfs caps.

Each filter is installed with ``prctl(PR_SET_SECCOMP)`` in a child of the test process, which
then makes the calls the filter must refuse and reports their errno on a pipe; the parent checks
them against what the filter says it does (``EPERM``, or ``ENOSYS`` where callers fall back).
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import signal

import pytest

from services.sandbox import isolation, seccomp
from tests.conftest import require

libc = ctypes.CDLL(None, use_errno=True)
libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
libc.syscall.restype = ctypes.c_long


def _programs() -> seccomp.Programs:
    try:
        return seccomp.programs()
    except seccomp.SeccompUnavailable as exc:
        missing = f"libseccomp is not usable here: {exc}"
    require(False, missing)
    raise AssertionError("unreachable: require(False, ...) skips or fails")


class _Fprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _in_filtered_child(programs: list[bytes], calls: list[tuple[str, tuple[int | bytes, ...]]]) -> tuple[dict[str, int], int]:
    """Fork; in the child load ``programs`` and make each call; return {name: errno or 0}, exit status."""
    buffers = [ctypes.create_string_buffer(p, len(p)) for p in programs]
    fprogs = [_Fprog(len(p) // 8, ctypes.addressof(b)) for p, b in zip(programs, buffers, strict=True)]
    numbers = {name: seccomp.syscall_number(name) for name, _ in calls}
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: only os-level calls, then _exit
        try:
            os.close(read_end)
            assert libc.prctl(38, 1, 0, 0, 0) == 0  # PR_SET_NO_NEW_PRIVS
            for fprog in fprogs:
                assert libc.prctl(22, 2, ctypes.addressof(fprog), 0, 0) == 0  # PR_SET_SECCOMP, MODE_FILTER
            seen = {}
            for name, args in calls:
                result = libc.syscall(numbers[name], *args)
                seen[name] = ctypes.get_errno() if result == -1 else 0
            os.write(write_end, json.dumps(seen).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as handle:
        data = handle.read()
    _, status = os.waitpid(pid, 0)
    return (json.loads(data) if data else {}), status


def test_programs_are_whole_bpf_instructions() -> None:
    programs = _programs()
    assert programs.run and len(programs.run) % 8 == 0
    assert programs.child and len(programs.child) % 8 == 0
    assert "memfd_create" in programs.denied and "io_uring_setup" in programs.denied
    assert programs.instructions == (len(programs.run) + len(programs.child)) // 8


def test_the_run_filter_refuses_each_family_with_its_errno() -> None:
    programs = _programs()
    calls: list[tuple[str, tuple[int | bytes, ...]]] = [
        ("io_uring_setup", (8, 0)), ("clone3", (0, 0)), ("bpf", (0, 0, 0)), ("userfaultfd", (1,)),
        ("perf_event_open", (0, 0, -1, -1, 0)), ("keyctl", (1, 0)), ("unshare", (0x00020000,)),
        ("setns", (-1, 0)), ("mount", (b"none", b"/tmp", b"tmpfs", 0, 0)), ("fsopen", (b"tmpfs", 0)),
        ("ptrace", (0, 0, 0, 0)), ("process_vm_readv", (os.getpid(), 0, 0, 0, 0, 0)),
        ("personality", (0x0040000,)), ("acct", (0,)), ("reboot", (0, 0, 0, 0)),
        # clone with CLONE_NEWNET: refused before the kernel would fork (a fork here would run on)
        ("clone", (0x40000000 | signal.SIGCHLD, 0, 0, 0, 0)),
    ]
    seen, status = _in_filtered_child([programs.run], calls)
    expected = {name: errno.ENOSYS if name in seccomp.UNIMPLEMENTED else errno.EPERM for name, _ in calls}
    assert seen == expected
    assert os.WIFEXITED(status)


def test_the_run_filter_leaves_what_programs_need() -> None:
    """memfd_create stays the supervisor's; personality(PER_LINUX) and getpid pass."""
    programs = _programs()
    seen, _ = _in_filtered_child([programs.run], [("memfd_create", (b"ok", 0)), ("personality", (0,)),
                                                  ("getpid", ())])
    assert seen == {"memfd_create": 0, "personality": 0, "getpid": 0}


def test_the_child_filter_stacks_memfd_create_on_top() -> None:
    programs = _programs()
    seen, _ = _in_filtered_child([programs.run, programs.child], [("memfd_create", (b"x", 0)),
                                                                  ("io_uring_setup", (8, 0))])
    assert seen == {"memfd_create": errno.EPERM, "io_uring_setup": errno.ENOSYS}


def test_an_x32_system_call_kills_the_process() -> None:
    require(os.uname().machine == "x86_64", "the x32 ABI exists on x86-64 only")
    programs = _programs()
    x32_getpid = 0x40000000 | 39
    buffers = ctypes.create_string_buffer(programs.run, len(programs.run))
    fprog = _Fprog(len(programs.run) // 8, ctypes.addressof(buffers))
    pid = os.fork()
    if pid == 0:
        try:
            libc.prctl(38, 1, 0, 0, 0)
            libc.prctl(22, 2, ctypes.addressof(fprog), 0, 0)
            libc.syscall(x32_getpid)
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGSYS


def test_program_fd_reads_back_the_program() -> None:
    programs = _programs()
    fd = seccomp.program_fd(programs.run)
    try:
        assert os.read(fd, len(programs.run) + 1) == programs.run
        assert os.read(fd, 1) == b""  # EOF: bwrap reads to the end
    finally:
        os.close(fd)


@pytest.mark.parametrize(("memory_mb", "disk_mb", "expected"), [
    (512, 64, (64, 64, 64)),     # the defaults: each mount at the disk cap, 192 MiB < 512
    (64, 64, (32, 16, 16)),      # a small limit: the mounts together hold at most the limit
    (32, 64, (16, 8, 8)),
    (8192, 16, (16, 16, 16)),
])
def test_tmpfs_sizes_follow_the_memory_limit(memory_mb: int, disk_mb: int, expected: tuple[int, int, int]) -> None:
    sizes = isolation.tmpfs_sizes(disk_mb=disk_mb, memory_mb=memory_mb)
    assert (sizes.work_mb, sizes.tmp_mb, sizes.shm_mb) == expected
    assert sizes.total_mb <= max(memory_mb, 3)


def test_bwrap_argv_sizes_every_tmpfs_and_passes_the_filter() -> None:
    argv = isolation.bwrap_argv("/usr/bin/bwrap", ["true"], sizes=isolation.TmpfsSizes(32, 16, 8), seccomp_fd=7,
                                new_session=False)
    mounts = {argv[i + 3]: int(argv[i + 1]) for i, arg in enumerate(argv) if arg == "--size"}
    assert {k: v for k, v in mounts.items() if k != "/usr/local/etc"} == {
        "/work": 32 << 20, "/tmp": 16 << 20, "/dev/shm": 8 << 20}
    tmpfs_targets = [argv[i + 1] for i, arg in enumerate(argv) if arg == "--tmpfs"]
    assert all(target in mounts for target in tmpfs_targets)  # every tmpfs has a cap: its pages are RAM
    assert argv[argv.index("--seccomp") + 1] == "7"


def test_without_a_filter_nothing_runs_and_readiness_says_why(isolated_env: object,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from fastapi.testclient import TestClient

    from services.sandbox.app import create_app
    from tests.unit.sandbox.conftest import require_namespaces

    require_namespaces()

    def unavailable() -> seccomp.Programs:
        raise seccomp.SeccompUnavailable("libseccomp is missing (test)")

    monkeypatch.setattr(seccomp, "programs", unavailable)
    isolation.probe.cache_clear()
    try:
        client = TestClient(create_app())
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert "libseccomp is missing" in ready.json()["checks"]["seccomp"]
        body = client.post("/run_code", json={"code": "print(1)", "run_timeout": 5}).json()
        assert body["status"] == "SandboxError" and "no seccomp filter" in body["message"]
    finally:
        isolation.probe.cache_clear()


def test_ready_sandbox_reports_the_filter(isolated_env: object) -> None:
    from fastapi.testclient import TestClient

    from services.sandbox.app import create_app
    from tests.unit.sandbox.conftest import require_namespaces

    require_namespaces()
    client = TestClient(create_app())
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"]["seccomp"] == "ok"
    assert "system calls refused" in client.get("/v1/info").json()["seccomp"]


def test_weak_isolation_children_get_the_filter_too(isolated_env: object, monkeypatch: pytest.MonkeyPatch) -> None:
    from fastapi.testclient import TestClient

    from services.common.settings import reset_settings_cache
    from services.sandbox.app import create_app

    _programs()
    monkeypatch.setenv("REWARDHUB_SANDBOX_ISOLATION", "processes")
    reset_settings_cache()
    client = TestClient(create_app())
    code = ("import os\ntry:\n    os.memfd_create('x')\n    print('ALLOWED')\nexcept OSError as exc:\n"
            "    print('refused', exc.errno)\n")
    body = client.post("/run_code", json={"code": code, "run_timeout": 5}).json()
    assert body["run_result"]["stdout"] == f"refused {errno.EPERM}\n", body
