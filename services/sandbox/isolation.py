"""How a run is isolated: the bubblewrap command line, and what this host allows.

``namespaces`` (the default): each run is its own ``bwrap`` with new user, mount, PID, network,
IPC, UTS (and, where possible, cgroup) namespaces, as the service's own unprivileged uid:

- the file system is a read-only view of ``/usr`` (the interpreters and their libraries) and a
  few files of ``/etc`` the toolchains need; ``/work``, ``/tmp`` and ``/dev/shm`` are private
  tmpfs mounts with a size cap; ``/proc`` is the run's own (only its processes); there is no
  ``/var/run``, no host ``/tmp``, no socket of the host's;
- no network: a new network namespace holds only its own loopback;
- no capabilities, no further user namespaces (``--disable-userns``), a process group of its
  own (a session of its own when the service has a terminal: see ``service_has_terminal``),
  ``--die-with-parent``: if the service dies, the run dies;
- the supervisor (``inside/supervisor.py``) is PID 1: when it ends, the kernel ends every other
  process of the run;
- a service running as root starts ``bwrap`` as ``nobody`` (uid 65534), so a run never holds root's
  uid even outside its namespaces; the supervisor's files are then served from a root-owned,
  read-only copy that ``nobody`` can read.

``processes`` (weaker, opt-in with ``REWARDHUB_SANDBOX_ISOLATION=processes`` where user
namespaces are unavailable): the same supervisor runs as a plain child process in a fresh
temporary directory, under the same rlimits and process-group kill, and as ``nobody`` when the
service is root. It has the host's network, file system view and ``/proc``: see the README's
security section for what that leaves open.
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

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


def bwrap_argv(bwrap: str, command: list[str], *, disk_mb: int, new_session: bool | None = None) -> list[str]:
    """The ``bwrap`` command line that runs ``command`` (paths as seen inside) in a fresh sandbox."""
    size = str(disk_mb * 1024 * 1024)
    session = ["--new-session"] if (service_has_terminal() if new_session is None else new_session) else []
    argv = [bwrap, "--unshare-user", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
            "--unshare-cgroup-try", "--disable-userns", "--die-with-parent", *session, "--as-pid-1",
            "--hostname", "sandbox", "--clearenv",
            "--setenv", "PATH", "/usr/local/bin:/usr/bin:/bin", "--setenv", "LANG", "C.UTF-8",
            "--setenv", "HOME", WORK_DIR, "--setenv", "RH_WORK_DIR", WORK_DIR,
            "--ro-bind", "/usr", "/usr"]
    if Path("/usr/local/etc").is_dir():  # host configuration (npmrc, tokens) is no run's business
        argv += ["--tmpfs", "/usr/local/etc"]
    for name in _MERGED_DIRS:
        host = Path("/") / name
        if host.is_symlink():
            argv += ["--symlink", os.readlink(host), f"/{name}"]
        elif host.is_dir():
            argv += ["--ro-bind", str(host), f"/{name}"]
    for path in _ETC_FILES:
        argv += ["--ro-bind-try", path, path]
    argv += ["--proc", "/proc", "--dev", "/dev",
             "--size", size, "--tmpfs", "/dev/shm",
             "--size", size, "--tmpfs", "/tmp",
             "--size", size, "--tmpfs", WORK_DIR,
             "--ro-bind", str(inside_dir()), MOUNTED_INSIDE_DIR,
             "--chdir", WORK_DIR, *command]
    return argv


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


def bwrap_preexec() -> Callable[[], None]:
    return drop_to_nobody if os.geteuid() == 0 else own_keyring


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


@functools.cache
def probe(python: str | None) -> Capability:
    """Can this process start a sandbox? (A real one, with the same flags every run gets.)"""
    bwrap = find_bwrap()
    if python is None:
        return Capability(bwrap, False, "no Python interpreter under /usr for the sandbox")
    if bwrap is None:
        return Capability(None, False, "bubblewrap (bwrap) is not installed")
    argv = bwrap_argv(bwrap, [python, "-I", "-c", "import os; print(os.getpid())"], disk_mb=1)
    try:
        done = subprocess.run(argv, capture_output=True, timeout=PROBE_TIMEOUT_S, check=False,
                              preexec_fn=bwrap_preexec())
    except (OSError, subprocess.SubprocessError) as exc:
        return Capability(bwrap, False, f"bwrap failed to start: {type(exc).__name__}: {exc}")
    if done.returncode != 0 or done.stdout.strip() != b"1":
        reason = done.stderr.decode("utf-8", "replace").strip()[:300] or f"exit {done.returncode}"
        return Capability(bwrap, False, f"bwrap cannot create the run's namespaces here: {reason}")
    return Capability(bwrap, True, "namespaces")


def supervisor_command(python: str, *, inside_path: str) -> list[str]:
    # -S: the supervisor needs only the standard library, and site-packages would cost start-up time.
    return [python, "-I", "-S", f"{inside_path}/supervisor.py"]
