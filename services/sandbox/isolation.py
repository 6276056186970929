"""How a run is isolated: the bubblewrap command line, and what this host allows.

``namespaces`` (the default): each run is its own ``bwrap`` with new user, mount, PID, network,
IPC, UTS (and, where possible, cgroup) namespaces, as the service's own unprivileged uid:

- the file system is a read-only view of ``/usr`` (the interpreters and their libraries) and a
  few files of ``/etc`` the toolchains need; ``/work``, ``/tmp`` and ``/dev/shm`` are private
  tmpfs mounts capped from the run's memory limit (``tmpfs_sizes``), bubblewrap's own ``/`` and
  ``/dev`` are read-only; ``/proc`` is the run's own (only its processes); there is no
  ``/var/run``, no host ``/tmp``, no socket of the host's;
- a seccomp filter (``seccomp.py``), passed to ``bwrap --seccomp`` on a fresh pipe per run;
- no network: a new network namespace holds only its own loopback;
- no capabilities, no further user namespaces (``--disable-userns``), a process group of its
  own (a session of its own when the service has a terminal: see ``service_has_terminal``),
  ``--die-with-parent``: if the service dies, the run dies;
- the supervisor (``inside/supervisor.py``; a tool session's ``inside/session.py``) is PID 1: when
  it ends, the kernel ends every other process of the run;
- a service running as root starts ``bwrap`` as ``nobody`` (uid 65534), so a run never holds root's
  uid even outside its namespaces; the supervisor's files are then served from a root-owned,
  read-only copy that ``nobody`` can read.

The probe (``probe``) starts one real sandbox with all of this at start-up and runs a program
under both filters that must see its calls refused; without that, no code runs.

``processes`` (weaker, opt-in with ``REWARDHUB_SANDBOX_ISOLATION=processes`` where user
namespaces are unavailable): the same supervisor runs as a plain child process in a fresh
temporary directory, under the same rlimits and process-group kill, and as ``nobody`` when the
service is root. It has the host's network, file system view and ``/proc``: see the README's
security section for what that leaves open.
"""

from __future__ import annotations

import base64
import ctypes
import errno
import functools
import json
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.sandbox import seccomp

INSIDE_DIR = Path(__file__).resolve().parent / "inside"
MOUNTED_INSIDE_DIR = "/opt/rewardhub"
WORK_DIR = "/work"
_ETC_FILES = ("/etc/alternatives", "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime",
              "/etc/nsswitch.conf")
_MERGED_DIRS = ("bin", "lib", "lib32", "lib64", "libx32", "sbin")
PROBE_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class Capability:
    """What the host allows, probed once per process."""

    bwrap: str | None
    namespaces: bool
    detail: str
    seccomp: str = "not probed"  # what the runs' seccomp filter refuses, once the probe saw it work


def find_bwrap() -> str | None:
    return shutil.which("bwrap") or next((p for p in ("/usr/bin/bwrap", "/usr/local/bin/bwrap")
                                          if os.access(p, os.X_OK)), None)


def sandbox_python(configured: str = "") -> str | None:
    """The interpreter runs use: it must lie under ``/usr``, the only tree the sandbox sees."""
    candidates = [configured] if configured else ["/usr/bin/python3", "/usr/local/bin/python3"]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK) and os.path.realpath(candidate).startswith("/usr/"):
            return candidate
    return None


@functools.cache
def service_has_terminal() -> bool:
    """Does this process have a controlling terminal (an interactive ``rewardhub up``)?

    Then every run gets a session of its own (``--new-session``), so no run can open the terminal
    (``/dev/tty``) to read what is typed or to inject input. Without one (containers, CI, any
    daemon) runs stay in the service's session, each in a process group of its own: on kernels with
    autogroup scheduling every session is a scheduling group with an equal CPU share, so a session
    per run would let a hundred busy runs starve the service's health checks, while in one session
    the runs' niceness yields the CPU to the service.
    """
    try:
        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError:
        return False
    os.close(fd)
    return True


@dataclass(frozen=True)
class TmpfsSizes:
    """Size caps, in MiB, of a run's writable mounts (all tmpfs: their pages are host memory)."""

    work_mb: int
    tmp_mb: int
    shm_mb: int

    @property
    def total_mb(self) -> int:
        return self.work_mb + self.tmp_mb + self.shm_mb


def tmpfs_sizes(*, disk_mb: int, memory_mb: int) -> TmpfsSizes:
    """Each mount is capped at ``disk_mb`` and, together, at the run's memory limit (half for
    ``/work``, a quarter each for ``/tmp`` and ``/dev/shm``): files there are memory no resident
    set shows, and the supervisor counts them into ``memory_limit_MB`` too, so a run's hold on
    host memory stays within about that limit plus the rest of its tmpfs room."""
    return TmpfsSizes(work_mb=max(1, min(disk_mb, memory_mb // 2)), tmp_mb=max(1, min(disk_mb, memory_mb // 4)),
                      shm_mb=max(1, min(disk_mb, memory_mb // 4)))


def bwrap_argv(bwrap: str, command: list[str], *, sizes: TmpfsSizes, seccomp_fd: int | None,
               new_session: bool | None = None) -> list[str]:
    """The ``bwrap`` command line that runs ``command`` (paths as seen inside) in a fresh sandbox;
    ``seccomp_fd`` holds the filter bwrap loads just before it starts ``command``."""
    session = ["--new-session"] if (service_has_terminal() if new_session is None else new_session) else []
    argv = [bwrap, "--unshare-user", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
            "--unshare-cgroup-try", "--disable-userns", "--die-with-parent", *session, "--as-pid-1",
            "--hostname", "sandbox", "--clearenv",
            "--setenv", "PATH", "/usr/local/bin:/usr/bin:/bin", "--setenv", "LANG", "C.UTF-8",
            "--setenv", "HOME", WORK_DIR, "--setenv", "RH_WORK_DIR", WORK_DIR,
            "--ro-bind", "/usr", "/usr"]
    if Path("/usr/local/etc").is_dir():  # host configuration (npmrc, tokens) is no run's business
        # an empty mask: read-only and one page, as every tmpfs of a run needs a cap (its pages are RAM)
        argv += ["--size", "4096", "--tmpfs", "/usr/local/etc", "--remount-ro", "/usr/local/etc"]
    for name in _MERGED_DIRS:
        host = Path("/") / name
        if host.is_symlink():
            argv += ["--symlink", os.readlink(host), f"/{name}"]
        elif host.is_dir():
            argv += ["--ro-bind", str(host), f"/{name}"]
    for path in _ETC_FILES:
        argv += ["--ro-bind-try", path, path]
    argv += ["--proc", "/proc", "--dev", "/dev",
             "--size", _bytes(sizes.shm_mb), "--tmpfs", "/dev/shm",
             "--size", _bytes(sizes.tmp_mb), "--tmpfs", "/tmp",
             "--size", _bytes(sizes.work_mb), "--tmpfs", WORK_DIR,
             "--ro-bind", str(inside_dir()), MOUNTED_INSIDE_DIR,
             # bwrap's own tmpfs for / and /dev have no size cap (half the host's RAM): read-only
             # instead, each alone (the mounts under them keep their own flags)
             "--remount-ro", "/dev", "--remount-ro", "/",
             *(["--seccomp", str(seccomp_fd)] if seccomp_fd is not None else []),
             "--chdir", WORK_DIR, *command]
    return argv


def _bytes(mb: int) -> str:
    return str(mb * 1024 * 1024)


NOBODY = 65534


_KEYCTL_JOIN_SESSION_KEYRING = 1
_SYS_KEYCTL = {"x86_64": 250, "aarch64": 219}.get(platform.machine())
_LIBC = ctypes.CDLL(None, use_errno=True)  # loaded here: a preexec_fn must not load libraries


def own_keyring() -> None:
    """Join a new, empty session keyring: a run must not read the service's keys (the session
    keyring is inherited and not namespaced), nor leave keys behind for a later run to find."""
    if _SYS_KEYCTL is not None:
        _LIBC.syscall(_SYS_KEYCTL, _KEYCTL_JOIN_SESSION_KEYRING, None)


def drop_to_nobody() -> None:
    """preexec_fn for ``bwrap`` when the service is root: the run starts as ``nobody``."""
    own_keyring()
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


def weak_preexec() -> Callable[[], None]:
    """preexec_fn for the weak mode's supervisor (which no seccomp filter guards)."""
    return drop_to_nobody if os.geteuid() == 0 else own_keyring


def bwrap_spawn_options() -> dict[str, Any]:
    """``Popen`` options that start ``bwrap``: no preexec_fn, so that Python can ``vfork`` (as a
    non-root service) or at least skip running Python code in the child (as root: the C-level
    setuid). A preexec_fn made each spawn copy the service's page tables and wait for the child to
    run Python code, in the event loop: a hundred simultaneous runs queued behind each other.
    Joining a fresh keyring (``own_keyring``) is not needed here: the run's seccomp filter refuses
    ``keyctl``, ``add_key`` and ``request_key``, so no key can be read or left behind."""
    if os.geteuid() == 0:
        return {"user": NOBODY, "group": NOBODY, "extra_groups": []}
    return {}


@functools.cache
def inside_dir() -> Path:
    """The supervisor's folder as ``bwrap`` will bind it: the package's own, or (as root, when the
    package sits where ``nobody`` cannot read it) a root-owned copy with world-readable files."""
    if os.geteuid() != 0:
        return INSIDE_DIR
    copy = Path(tempfile.mkdtemp(prefix="rewardhub-sandbox-lib-"))
    for source in INSIDE_DIR.glob("*.py"):
        target = copy / source.name
        shutil.copyfile(source, target)
        target.chmod(0o644)
    copy.chmod(0o755)
    return copy


# Run by the probe's supervisor as a child, under both filters: each call must be refused as a run's
# would be (prints: not PID 1, io_uring_setup's errno, memfd_create's, personality(ADDR_NO_RANDOMIZE)'s).
_PROBE_CODE = """import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
def errno_of(*args):
    return ctypes.get_errno() if libc.syscall(*args) == -1 else 0
print(os.getpid() != 1, errno_of({io_uring}, 1, None), errno_of({memfd}, b"probe", 0), errno_of({personality}, 0x40000))
"""
_PROBE_EXPECTED = f"True {errno.ENOSYS} {errno.EPERM} {errno.EPERM}"


@functools.cache
def probe(python: str | None) -> Capability:
    """Can this process start a sandbox? (A real one, with the flags and filters every run gets.)"""
    bwrap = find_bwrap()
    if python is None:
        return Capability(bwrap, False, "no Python interpreter under /usr for the sandbox")
    if bwrap is None:
        return Capability(None, False, "bubblewrap (bwrap) is not installed")
    try:
        programs = seccomp.programs()
    except seccomp.SeccompUnavailable as exc:
        return Capability(bwrap, False, f"no seccomp filter for the runs: {exc}")
    numbers = {name: seccomp.syscall_number(name) for name in ("io_uring_setup", "memfd_create", "personality")}
    code = _PROBE_CODE.format(io_uring=numbers["io_uring_setup"], memfd=numbers["memfd_create"],
                              personality=numbers["personality"])
    job = {"mode": "run", "files": {}, "limits": {"cpu_s": 10, "memory_mb": 256, "address_space_mb": 0, "file_mb": 1,
                                                  "processes": 16, "open_files": 64},
           "seccomp": [base64.b64encode(programs.child).decode()],
           "run": {"argv": [python, "-I", "-S", "-c", code], "timeout_s": PROBE_TIMEOUT_S / 2, "stdin": ""}}
    fd = seccomp.program_fd(programs.run)
    argv = bwrap_argv(bwrap, supervisor_command(python, inside_path=MOUNTED_INSIDE_DIR),
                      sizes=tmpfs_sizes(disk_mb=1, memory_mb=4), seccomp_fd=fd)
    try:
        done = subprocess.run(argv, input=json.dumps(job).encode(), capture_output=True, timeout=PROBE_TIMEOUT_S,
                              check=False, pass_fds=(fd,), **bwrap_spawn_options())
    except (OSError, subprocess.SubprocessError) as exc:
        return Capability(bwrap, False, f"bwrap failed to start: {type(exc).__name__}: {exc}")
    finally:
        os.close(fd)
    seen = _probe_output(done.stdout)
    if done.returncode != 0 or seen is None:
        reason = done.stderr.decode("utf-8", "replace").strip()[:300] or f"exit {done.returncode}"
        return Capability(bwrap, False, f"bwrap cannot create the run's namespaces here: {reason}")
    if seen != _PROBE_EXPECTED:
        return Capability(bwrap, False, f"the seccomp filter is not in force in the sandbox (probe saw {seen!r}, "
                                        f"expected {_PROBE_EXPECTED!r})")
    return Capability(bwrap, True, "namespaces", seccomp=f"{len(programs.denied)} system calls refused")


def _probe_output(stdout: bytes) -> str | None:
    """The probe program's printed line, out of the supervisor's JSON result (None: no result)."""
    try:
        result = json.loads(stdout)
        return base64.b64decode(result["run"]["stdout"]).decode().strip()
    except (ValueError, KeyError, TypeError):
        return None


def supervisor_command(python: str, *, inside_path: str, entry: str = "supervisor.py") -> list[str]:
    """The sandbox's PID 1: ``supervisor.py`` for one-shot runs, ``session.py`` for a tool session."""
    # -S: the supervisor needs only the standard library, and site-packages would cost start-up time.
    return [python, "-I", "-S", f"{inside_path}/{entry}"]
