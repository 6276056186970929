"""Run rewardhub services as an unprivileged user, the way production does (uid 10001).

CI and developer machines run the suite as root, and the project's virtualenv uses an
interpreter under /root/.pyenv that nobody else may execute. ``build_runtime`` makes the project
runnable by a system account (``rewardhub-test``; when the tests are not root, the current user):

* ``native``: the tests are not root, so the project's own interpreter is already "non-root";
* ``site``: a venv on Debian's /usr/bin/python3.11 in a fresh 0755 temp dir, whose one ``.pth``
  line adds the project venv's site-packages (with the editable install's finder) - used when
  every component of those paths is traversable by the account;
* ``copy``: otherwise (a clone under /root, mode 0700), the same venv, plus a private
  site-packages holding the repo's packages and every site-packages entry of the distributions
  the project requires (rewardhub's metadata, walked transitively with the markers evaluated for
  the runtime's Python; torch is among them: services.annotation and services.trainer import it
  at import time). Files are hard-linked when world-readable and on the same filesystem (no bytes
  copied, the project venv never chmod-ed), copied 0644/0755 otherwise.

Requirements that only the runtime's older Python needs (redis wants async-timeout below 3.11.3:
Debian has 3.11.2, the project venv 3.11.7) get a stand-in doing what the package does on the
newer Python (``SHIMS``); others are reported in ``runtime.probe["unfilled_requirements"]``.
The runtime is proven by running ``id -u`` and the services' imports (compiled extensions
exercised) as the account.

``start_service`` then starts ``rewardhub serve <name>`` as that account (or as root), with an
environment made only of what it is given plus PATH/LANG/HOME, and waits for ``/healthz``.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import json
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO_ROOT = Path(__file__).resolve().parents[2]
SERVICE_USER = os.environ.get("REWARDHUB_TEST_NONROOT_USER", "rewardhub-test")
PREFERRED_UID = 10001  # production's uid (Dockerfile, Helm)
REPO_PACKAGES = ("rewardhub", "services", "trainer", "webui", "migrations")
REPO_FILES = ("alembic.ini",)
BASE_PYTHONS = ("/usr/bin/python3.11", "/usr/local/bin/python3.11")
READY_TIMEOUT_S = 180.0  # cold imports on a loaded two-core machine (torch, for annotation)
STOP_TIMEOUT_S = 15.0
BASE_ENV_KEYS = ("PATH", "LANG", "HOME")
# What every service start and the probe import: `rewardhub serve` and the pieces uvicorn picks at run time.
SERVE_MODULES = (
    "rewardhub.cli", "rewardhub.service_map", "services.common.tasks", "uvicorn", "uvicorn.config",
    "uvicorn.server", "uvicorn.main", "uvicorn.lifespan.on", "uvicorn.loops.auto", "uvicorn.loops.uvloop",
    "uvicorn.protocols.http.auto", "uvicorn.protocols.http.h11_impl", "uvicorn.protocols.http.httptools_impl",
    "uvicorn.protocols.websockets.auto", "uvicorn.protocols.websockets.websockets_impl", "uvicorn.logging",
    "celery", "kombu.transport.redis", "redis.asyncio",
    # What SQLAlchemy loads only on the first connection.
    "sqlalchemy.dialects.sqlite.pysqlite", "sqlalchemy.dialects.postgresql.psycopg", "psycopg", "psycopg_binary",
)
PROBE_MODULES = ("services.gateway.app", "services.verifier.app", *SERVE_MODULES)


class NonrootSetupError(RuntimeError):
    """The project cannot be made runnable by the unprivileged account (the message says why)."""


# --------------------------------------------------------------------------------------------
# The account


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int
    created: bool = False  # made by this session (it is left in place: other sessions may use it)

    @property
    def is_current(self) -> bool:
        return self.uid == os.geteuid()


def _id_free(number: int) -> bool:
    try:
        pwd.getpwuid(number)
    except KeyError:
        try:
            grp.getgrgid(number)
        except KeyError:
            return True
    return False


def ensure_account(name: str = SERVICE_USER, preferred_uid: int = PREFERRED_UID) -> Account:
    """The unprivileged account services run as: ``name`` (created when root), else the current user."""
    if os.geteuid() != 0:
        entry = pwd.getpwuid(os.geteuid())
        return Account(entry.pw_name, entry.pw_uid, entry.pw_gid)
    created = False
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    for attempt in range(8):
        with contextlib.suppress(KeyError):
            entry = pwd.getpwnam(name)
            if entry.pw_uid == 0:
                raise NonrootSetupError(f"account {name!r} exists with uid 0; it must be unprivileged")
            return Account(entry.pw_name, entry.pw_uid, entry.pw_gid, created)
        argv = [useradd, "--system", "--no-create-home", "--user-group", "--home-dir", "/nonexistent",
                "--shell", "/usr/sbin/nologin"]
        if _id_free(preferred_uid):
            argv += ["--uid", str(preferred_uid)]
        result = subprocess.run([*argv, name], capture_output=True, text=True, timeout=60)
        created = result.returncode == 0
        if not created:
            # 9: made meanwhile by a concurrent session; 4: the uid taken meanwhile; 10/1: passwd or
            # group file locked by one. Look again.
            if attempt == 7:
                raise NonrootSetupError(f"`{' '.join(argv)} {name}` failed ({result.returncode}): "
                                        f"{result.stderr.strip()}")
            time.sleep(0.2 * (attempt + 1))
    raise NonrootSetupError(f"could not create account {name!r}")


def _groups_of(account: Account) -> set[int]:
    # Services start with extra_groups=[]: only the primary group counts.
    return {account.gid}


def _allows(st: os.stat_result, account: Account, bits: int) -> bool:
    """Whether ``account`` has all of ``bits`` (r=4, w=2, x=1) on a file with status ``st``."""
    if account.uid == 0:
        return True
    if st.st_uid == account.uid:
        shift = 6
    elif st.st_gid in _groups_of(account):
        shift = 3
    else:
        shift = 0
    return (st.st_mode >> shift) & bits == bits


def blocked_component(path: Path, account: Account, *, readable: bool = True) -> Path | None:
    """The first component of ``path`` that ``account`` cannot traverse (or, last, read), else None."""
    path = Path(os.path.abspath(path))
    for component in [*reversed(path.parents), path]:
        try:
            st = component.stat()
        except OSError:
            return component
        need = 1
        if component == path and readable:
            need = 5 if stat.S_ISDIR(st.st_mode) else 4
        if not _allows(st, account, need):
            return component
    return None


# --------------------------------------------------------------------------------------------
# The runtime


def project_site_packages() -> list[Path]:
    """The test interpreter's (the project venv's) site-packages directories."""
    paths = sysconfig.get_paths()
    return sorted({Path(paths["purelib"]).resolve(), Path(paths["platlib"]).resolve()})


@dataclass
class NonrootRuntime:
    """An interpreter with the project importable, runnable by ``account``."""

    account: Account
    python: Path
    root: Path  # the session's temp dir (0755); everything the services get lives under it
    mode: str  # "native" | "site" | "copy"
    site_dir: Path | None = None  # the private site-packages (copy mode)
    setup_s: float = 0.0
    probe: dict[str, Any] = field(default_factory=dict)
    _counter: int = 0

    @property
    def tests_are_root(self) -> bool:
        return os.geteuid() == 0

    @property
    def bin_dir(self) -> Path:
        return self.python.parent

    def uid_for(self, as_root: bool) -> int:
        return 0 if as_root else self.account.uid

    def credentials(self, as_root: bool = False) -> dict[str, Any]:
        """Popen keyword arguments that drop to the account (nothing when already it, or as root)."""
        if as_root:
            if not self.tests_are_root:
                raise NonrootSetupError("as_root needs the tests to run as root")
            return {}
        if self.account.is_current:
            return {}
        return {"user": self.account.uid, "group": self.account.gid, "extra_groups": []}

    def base_env(self, home: Path) -> dict[str, str]:
        return {"PATH": f"{self.bin_dir}:/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(home)}

    def make_dir(self, prefix: str, *, as_root: bool = False, mode: int = 0o700) -> Path:
        """A fresh directory under the session root, owned by the account (or root) with ``mode``."""
        self._counter += 1
        path = Path(tempfile.mkdtemp(prefix=f"{prefix}-{self._counter}-", dir=self.root / "run"))
        path.chmod(mode)
        uid = self.uid_for(as_root)
        if self.tests_are_root and uid != 0:
            os.chown(path, uid, self.account.gid)
        return path

    def python_argv(self, *args: str) -> list[str]:
        return [str(self.python), *args]

    def rewardhub_argv(self, *args: str) -> list[str]:
        """``rewardhub ARGS`` on this runtime (the console script's entry point, run with -c)."""
        return self.python_argv("-c", "import sys; from rewardhub.cli import app; sys.argv[0] = 'rewardhub'; app()",
                                *args)

    def run(self, argv: list[str], *, env: Mapping[str, str] | None = None, as_root: bool = False,
            cwd: Path | None = None, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` as the account (or root) with only ``env`` plus PATH/LANG/HOME."""
        home = cwd or self.home
        full_env = {**self.base_env(home), **(env or {})}
        return subprocess.run(argv, env=full_env, cwd=home, capture_output=True, text=True, timeout=timeout,
                              **self.credentials(as_root))

    @property
    def home(self) -> Path:
        return self.root / "home"


PROBE = textwrap.dedent("""
    import importlib, json, os, sys
    out = {"uid": os.getuid(), "euid": os.geteuid(), "groups": os.getgroups(), "python": sys.version.split()[0],
           "executable": sys.executable, "failed": {}}
    for name in json.loads(sys.argv[1]):
        try:
            importlib.import_module(name)
        except BaseException as exc:
            out["failed"][name] = f"{type(exc).__name__}: {exc}"
    try:  # the compiled pieces, exercised rather than just imported
        import psycopg, pydantic, argon2, sqlalchemy, yaml, asyncio
        out["psycopg_impl"] = psycopg.pq.__impl__
        class M(pydantic.BaseModel):
            x: int
        assert M.model_validate({"x": "3"}).x == 3
        hasher = argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
        assert hasher.verify(hasher.hash("pw"), "pw")
        with sqlalchemy.create_engine("sqlite://").connect() as conn:
            assert conn.execute(sqlalchemy.text("select 1")).scalar() == 1
        assert yaml.CSafeLoader
        import uvloop
        uvloop.new_event_loop().close()
        import httptools
        httptools.HttpRequestParser(object())
    except BaseException as exc:
        out["failed"]["<compiled extensions>"] = f"{type(exc).__name__}: {exc}"
    out["module_files"] = sorted({str(getattr(mod, "__file__", "") or "") for mod in list(sys.modules.values())} - {""})
    out["extensions"] = sorted(name for name, mod in list(sys.modules.items())
                               if str(getattr(mod, "__file__", "") or "").endswith(".so"))
    print("PROBE " + json.dumps(out))
""")

# Requirements that only an older 3.11 needs (environment markers on python_full_version) are not in the
# project venv (3.11.7) but are imported on Debian's 3.11.2. Stand-ins for the known ones, each doing what
# the package does on the newer Python production runs:
SHIMS = {
    # redis: `async-timeout; python_full_version < '3.11.3'`, else asyncio.timeout.
    "async-timeout": ("async_timeout.py", (
        '"""Stand-in made by tests/security/nonroot.py: redis imports async_timeout below Python 3.11.3\n'
        'and asyncio.timeout from 3.11.3 on (as production does); this is asyncio\'s."""\n'
        "from asyncio import Timeout, timeout, timeout_at\n\n"
        '__all__ = ["Timeout", "timeout", "timeout_at"]\n')),
}

MARKER_ENV = textwrap.dedent("""
    import json, os, platform, sys
    print(json.dumps({"implementation_name": sys.implementation.name, "os_name": os.name,
                      "implementation_version": platform.python_version(), "platform_machine": platform.machine(),
                      "platform_python_implementation": platform.python_implementation(),
                      "platform_release": platform.release(), "platform_system": platform.system(),
                      "platform_version": platform.version(), "python_full_version": platform.python_version(),
                      "python_version": ".".join(platform.python_version_tuple()[:2]),
                      "sys_platform": sys.platform}))
""")


def marker_environment(python: Path) -> dict[str, str]:
    """PEP 508 marker variables of ``python`` (to evaluate requirements for the runtime's interpreter)."""
    result = subprocess.run([str(python), "-I", "-c", MARKER_ENV], check=True, capture_output=True, text=True,
                            timeout=60)
    return dict(json.loads(result.stdout))


@dataclass
class Closure:
    """The installed distributions ``root`` needs (its extras and transitive requirements)."""

    dists: dict[str, Any]  # canonical name -> importlib.metadata.Distribution
    unmet: list[tuple[str, str]]  # (needed by, requirement) not installed in the project venv
    skipped: list[str]


def requirement_closure(sites: list[Path], environment: Mapping[str, str], root: str = "rewardhub",
                        skip: Iterable[str] = (), root_extras: Iterable[str] = ("server", "train")) -> Closure:
    """Walk ``root``'s requirements (markers evaluated in ``environment``) over the dists in ``sites``.

    The project's own ``root_extras`` are followed (the services run as deployed: rewardhub[server,
    train]; the bare package is only the light client), its dev and gpu extras are not; extras named by
    a requirement (uvicorn[standard], psycopg[binary], celery[redis]) are.
    """
    import importlib.metadata

    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name

    installed = {}
    for dist in importlib.metadata.distributions(path=[str(s) for s in sites]):
        installed.setdefault(canonicalize_name(dist.metadata["Name"] or ""), dist)
    skip_names = {canonicalize_name(name) for name in skip}
    wanted: dict[str, set[str]] = {}
    closure = Closure({}, [], [])
    todo: list[tuple[str, str, frozenset[str]]] = [("", root, frozenset(root_extras))]
    while todo:
        _parent, name, extras = todo.pop()
        key = canonicalize_name(name)
        if key in skip_names:
            closure.skipped.append(key)
            continue
        known = wanted.get(key)
        if known is not None and extras <= known:
            continue
        wanted[key] = (known or set()) | set(extras)
        dist = installed.get(key)
        if dist is None:
            continue
        closure.dists[key] = dist
        for line in dist.requires or []:
            try:
                requirement = Requirement(line)
            except InvalidRequirement:
                continue
            marker = requirement.marker
            if marker is not None and not any(marker.evaluate({**environment, "extra": extra})
                                              for extra in ("", *sorted(wanted[key]))):
                continue
            if canonicalize_name(requirement.name) not in installed and canonicalize_name(
                    requirement.name) not in skip_names:
                closure.unmet.append((str(dist.metadata["Name"]), line))
                continue
            todo.append((key, requirement.name, frozenset(requirement.extras)))
    closure.skipped = sorted(set(closure.skipped))
    return closure


def top_level_entries(dist: Any) -> set[str]:
    """The site-packages entries a distribution installed (from its RECORD; top_level.txt without one)."""
    entries = set()
    for file in dist.files or []:
        parts = Path(str(file)).parts
        if parts and parts[0] != ".." and not parts[0].startswith("__editable__") and parts[0] != "__pycache__":
            entries.add(parts[0])
    if not entries:
        top_level = dist.read_text("top_level.txt") or ""
        entries = {line.strip() for line in top_level.splitlines() if line.strip()}
    return entries


def _fill_gaps(runtime: NonrootRuntime, own_site: Path, closure: Closure) -> None:
    """Stand-ins for the known requirements the runtime's Python needs and the project venv lacks."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    unfilled = []
    for needed_by, line in closure.unmet:
        shim = SHIMS.get(canonicalize_name(Requirement(line).name))
        if shim is None:
            unfilled.append(f"{needed_by}: {line}")
            continue
        target = own_site / shim[0]
        target.write_text(shim[1])
        target.chmod(0o644)
    runtime.probe["unmet_requirements"] = [f"{needed_by}: {line}" for needed_by, line in closure.unmet]
    # Reported, not fatal: the probe (and each service's start) fails if one of them is imported.
    runtime.probe["unfilled_requirements"] = unfilled


def _tagged_json(stdout: str, tag: str) -> dict[str, Any]:
    for line in reversed(stdout.splitlines()):
        if line.startswith(tag + " "):
            return json.loads(line[len(tag) + 1:])
    raise ValueError(f"no {tag} line")


def _base_python(account: Account) -> Path:
    override = os.environ.get("REWARDHUB_TEST_NONROOT_PYTHON")
    candidates = [override] if override else [*BASE_PYTHONS, sys._base_executable, sys.executable]
    reasons = []
    for candidate in filter(None, candidates):
        path = Path(candidate)
        if not path.exists():
            reasons.append(f"{path}: missing")
            continue
        blocked = blocked_component(path.resolve(), account)
        if blocked is not None:
            reasons.append(f"{path}: {blocked} is not accessible to uid {account.uid}")
            continue
        version = subprocess.run([str(path), "-c", "import sys; print(sys.version_info[:2] == (3, 11))"],
                                 capture_output=True, text=True, timeout=30)
        if version.stdout.strip() != "True":
            reasons.append(f"{path}: not Python 3.11 (the project venv's ABI)")
            continue
        return path
    raise NonrootSetupError("no Python 3.11 the unprivileged account can execute: " + "; ".join(reasons)
                            + " (install Debian's python3.11 or set REWARDHUB_TEST_NONROOT_PYTHON)")


def _session_parent(same_device_as: Path) -> Path:
    """A temp area everyone can traverse, on the same filesystem as the venv when one is (hard links)."""
    candidates = [Path(tempfile.gettempdir()), Path("/var/tmp"), Path("/tmp")]
    usable = [c for c in candidates if c.is_dir() and os.access(c, os.W_OK)
              and blocked_component(c, Account("other", 65534, 65534)) is None]
    if not usable:
        raise NonrootSetupError(f"none of {candidates} is writable and traversable by everyone")
    device = same_device_as.stat().st_dev
    for candidate in usable:
        if candidate.stat().st_dev == device:
            return candidate
    return usable[0]


# Build-time only (C++ headers, CMake files): never imported by a service, and most of torch's files.
NOT_NEEDED = ("torch/include", "torch/share")


def _place(source: str, target: str, st: os.stat_result, stats: dict[str, int]) -> None:
    """Hard-link a world-readable, not world-writable file, else copy it with 0644/0755."""
    if st.st_mode & stat.S_IROTH and not st.st_mode & stat.S_IWOTH:
        try:
            os.link(source, target)
            stats["linked"] += 1
            return
        except FileExistsError:
            return
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.EACCES):
                raise
    shutil.copy2(source, target)  # keeps mtimes, so a copied __pycache__ stays valid
    os.chmod(target, 0o755 if st.st_mode & stat.S_IXUSR else 0o644)
    stats["copied"] += 1
    stats["copied_bytes"] += st.st_size


def _materialize(source: Path, target: Path, stats: dict[str, int], skip: Iterable[str] = ()) -> None:
    """``source`` (a file or a tree) at ``target``, readable by everyone, never changing ``source``.

    New directories are 0755; files are hard-linked when that shares nothing more than everyone
    could read anyway, copied otherwise (the project venv is never chmod-ed).
    """
    source = Path(os.path.realpath(source))
    if not source.exists():
        return
    if not source.is_dir():
        _place(str(source), str(target), source.stat(), stats)
        return
    skipped = {str(source / relative) for relative in skip}
    os.makedirs(target, mode=0o755, exist_ok=True)
    for directory, dirnames, filenames in os.walk(source, followlinks=True):
        if directory in skipped:
            dirnames[:] = []
            continue
        relative = os.path.relpath(directory, source)
        out = str(target) if relative == "." else os.path.join(target, relative)
        if relative != ".":
            os.mkdir(out, 0o755)
        os.chmod(out, 0o755)  # a new directory (umask-proof)
        for filename in filenames:
            path = os.path.join(directory, filename)
            try:
                st = os.stat(path)
            except OSError:
                continue  # a dangling link
            if stat.S_ISREG(st.st_mode):
                _place(path, os.path.join(out, filename), st, stats)


def build_runtime(mode: str | None = None, skip: Iterable[str] | None = None) -> NonrootRuntime:
    """Make the project runnable by the unprivileged account and prove it (see the module docstring).

    ``mode`` (or REWARDHUB_TEST_NONROOT_MODE) forces "site" or "copy"; by default "site" when the
    project venv and the repo are traversable by the account, "copy" otherwise. ``skip`` (or
    REWARDHUB_TEST_NONROOT_SKIP, comma-separated) names distributions copy mode leaves out (e.g.
    "torch,transformers" where only cross-device copies are possible; annotation and trainer then
    cannot start).
    """
    started = time.monotonic()
    account = ensure_account()
    mode = mode or os.environ.get("REWARDHUB_TEST_NONROOT_MODE") or None
    if skip is None:
        skip = [name for name in os.environ.get("REWARDHUB_TEST_NONROOT_SKIP", "").split(",") if name.strip()]
    sites = project_site_packages()
    root = Path(tempfile.mkdtemp(prefix="rewardhub-nonroot-", dir=_session_parent(sites[0])))
    root.chmod(0o755)
    (root / "run").mkdir(mode=0o755)
    (root / "home").mkdir(mode=0o700)
    if os.geteuid() == 0:
        os.chown(root / "home", account.uid, account.gid)
    runtime = NonrootRuntime(account=account, python=Path(sys.executable), root=root, mode="native")
    try:
        if os.geteuid() != 0 and mode is None:
            pass  # the tests already run unprivileged: the project's interpreter is the runtime
        else:
            needed = [*sites, *(REPO_ROOT / package for package in REPO_PACKAGES)]
            blocked = [b for b in (blocked_component(p, account) for p in needed) if b is not None]
            if mode is None:
                mode = "copy" if blocked else "site"
            if mode not in ("site", "copy"):
                raise NonrootSetupError(f"unknown mode {mode!r}: site or copy")
            if mode == "site" and blocked:
                raise NonrootSetupError(f"mode site, but uid {account.uid} cannot traverse {blocked}")
            base = _base_python(account)
            venv = root / "venv"
            subprocess.run([str(base), "-m", "venv", "--without-pip", str(venv)], check=True,
                           capture_output=True, timeout=120)
            runtime.python, runtime.mode = venv / "bin" / "python", mode
            own_site = Path(subprocess.run(
                runtime.python_argv("-I", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"),
                check=True, capture_output=True, text=True, timeout=60).stdout.strip())
            closure = requirement_closure(sites, marker_environment(runtime.python),
                                          skip=skip if mode == "copy" else ())
            if mode == "site":
                lines = [f"import site; site.addsitedir({str(site)!r})" for site in sites]
            else:
                runtime.site_dir = root / "site"
                runtime.site_dir.mkdir(mode=0o755)
                linking = time.monotonic()
                runtime.probe["copy"] = _populate(runtime.site_dir, sites, closure)
                runtime.probe["copy"]["seconds"] = round(time.monotonic() - linking, 2)
                lines = [f"import site; site.addsitedir({str(runtime.site_dir)!r})"]
            (own_site / "rewardhub_project.pth").write_text("\n".join(lines) + "\n")
            (own_site / "rewardhub_project.pth").chmod(0o644)
            _fill_gaps(runtime, own_site, closure)
        proving = time.monotonic()
        _prove(runtime)
        runtime.probe["prove_seconds"] = round(time.monotonic() - proving, 2)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    runtime.setup_s = time.monotonic() - started
    return runtime


def _populate(private: Path, sites: list[Path], closure: Closure) -> dict[str, Any]:
    """The closure's site-packages entries and the repo's packages, linked or copied into ``private``."""
    stats: dict[str, Any] = {"linked": 0, "copied": 0, "copied_bytes": 0}
    entries: set[str] = set()
    for key, dist in closure.dists.items():
        if key == "rewardhub":
            continue  # the editable install's finder and .pth: the repo's packages are copied instead
        entries |= top_level_entries(dist)
    for entry in sorted(entries):
        for site in sites:
            if (site / entry).exists():
                _materialize(site / entry, private / entry, stats,
                             skip=[p.partition("/")[2] for p in NOT_NEEDED if p.partition("/")[0] == entry])
                break
    for name in (*REPO_PACKAGES, *REPO_FILES):
        if (REPO_ROOT / name).exists():
            _materialize(REPO_ROOT / name, private / name, stats)
    return {**stats, "dists": sorted(closure.dists), "entries": len(entries), "skipped": closure.skipped}


def _prove(runtime: NonrootRuntime) -> None:
    """``id -u`` and the services' imports, as the account; a clear failure otherwise."""
    who = runtime.run(["id", "-u"], timeout=30)
    if who.returncode != 0 or who.stdout.strip() != str(runtime.account.uid):
        raise NonrootSetupError(f"`id -u` as {runtime.account.name} gave {who.stdout.strip()!r} "
                                f"(rc {who.returncode}, {who.stderr.strip()}), expected {runtime.account.uid}")
    # The probe's first import is services.gateway.app; each failure is reported by module name.
    result = runtime.run(runtime.python_argv("-c", PROBE, json.dumps(PROBE_MODULES)), timeout=180)
    try:
        probe = _tagged_json(result.stdout, "PROBE")
    except ValueError:
        raise NonrootSetupError(f"the import probe as uid {runtime.account.uid} failed ({result.returncode}):\n"
                                f"{result.stderr[-4000:]}") from None
    runtime.probe.update(probe)
    problems = dict(probe["failed"])
    if probe["uid"] != runtime.account.uid or probe["euid"] != runtime.account.uid:
        problems["<uid>"] = f"ran as uid {probe['uid']}/{probe['euid']}, expected {runtime.account.uid}"
    if probe.get("psycopg_impl") not in ("binary", "c"):
        problems["psycopg"] = f"implementation {probe.get('psycopg_impl')!r}, expected the binary one"
    if problems:
        raise NonrootSetupError(f"as uid {runtime.account.uid} ({runtime.mode} mode, Python {probe['python']}) "
                                "these do not import/work: " + json.dumps(problems, indent=1))


def cleanup_runtime(runtime: NonrootRuntime) -> None:
    # Hard links are unlinked, never followed: the project venv is untouched.
    shutil.rmtree(runtime.root, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Services


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Service:
    """One ``rewardhub serve NAME`` process."""

    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path
    env: dict[str, str]  # exactly the environment it was started with
    data_dir: Path
    workdir: Path  # holds the log, ``home`` and (unless given) ``data_dir``
    home: Path  # its HOME and cwd, owned by its uid
    uid: int  # the uid it was started as
    as_root: bool

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def tail(self, chars: int = 4000) -> str:
        try:
            text = self.log.read_text(errors="replace")[-chars:]
        except OSError as exc:
            text = f"<log unreadable: {exc}>"
        return f"--- {self.name} (pid {self.pid}, uid {self.uid}) log {self.log} ---\n{text}"

    def proc_ids(self, field_name: str = "Uid") -> list[int]:
        """Real, effective, saved and filesystem ids from /proc/<pid>/status ("Uid" or "Gid")."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return [int(x) for x in line.split()[1:]]
        raise AssertionError(f"no {field_name} in /proc/{self.pid}/status")

    def proc_environ(self) -> dict[str, str]:
        raw = Path(f"/proc/{self.pid}/environ").read_bytes()
        return dict(item.decode(errors="replace").partition("=")[::2] for item in raw.split(b"\0") if item)

    def stop(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.pid, signal.SIGKILL)
                self.proc.wait(timeout=STOP_TIMEOUT_S)
        # Children that outlived their parent (the grader pool) still belong to its process group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)


ServiceFactory = Callable[..., Service]  # the fixtures' start(name, env=None, port=None, *, as_root=False)


def _owner_ok(path: Path, uid: int) -> bool:
    return path.is_dir() and path.stat().st_uid == uid


def wait_healthy(service: Service, timeout_s: float = READY_TIMEOUT_S, path: str = "/healthz") -> None:
    deadline = time.monotonic() + timeout_s
    delay = 0.05
    with httpx.Client(timeout=2) as client:
        while time.monotonic() < deadline:
            if service.proc.poll() is not None:
                raise ServiceExited(service)
            with contextlib.suppress(httpx.HTTPError):
                if client.get(service.url + path).status_code == 200:
                    return
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)
    raise AssertionError(f"{service.name} not healthy at {service.url}{path} after {timeout_s}s\n{service.tail()}")


class ServiceExited(AssertionError):
    def __init__(self, service: Service) -> None:
        self.service = service
        super().__init__(f"{service.name} exited with {service.proc.returncode} before it was healthy\n"
                         f"{service.tail()}")


def start_service(runtime: NonrootRuntime, name: str, env: Mapping[str, str] | None = None,
                  port: int | None = None, *, as_root: bool = False, ready_path: str = "/healthz",
                  timeout_s: float = READY_TIMEOUT_S, extra_args: Iterable[str] = ()) -> Service:
    """``rewardhub serve NAME --host 127.0.0.1 --port PORT`` as the account (or root), healthy.

    The environment is ``env`` plus PATH, LANG, HOME (a fresh private dir) and, unless ``env``
    names one, REWARDHUB_DATA_DIR (a fresh dir owned by the service's uid) - nothing inherited.
    """
    uid = runtime.uid_for(as_root)
    # The test's own dir (the log); the service's HOME, also its cwd (production: WORKDIR is the
    # account's home); its data dir.
    workdir = runtime.make_dir(f"{name}-{'root' if as_root else 'user'}", as_root=True, mode=0o755)
    home = workdir / "home"
    home.mkdir(mode=0o700)
    given = dict(env or {})
    if "REWARDHUB_DATA_DIR" in given:
        data_dir = Path(given["REWARDHUB_DATA_DIR"])
        if runtime.tests_are_root and not _owner_ok(data_dir, uid):
            raise ValueError(f"REWARDHUB_DATA_DIR {data_dir} must be a directory owned by uid {uid}, the uid "
                             f"{name} runs as (make one with runtime.make_dir or service_database)")
    else:
        data_dir = workdir / "data"
        data_dir.mkdir(mode=0o700)
    if runtime.tests_are_root:
        for path in (home, *([data_dir] if "REWARDHUB_DATA_DIR" not in given else [])):
            os.chown(path, uid, runtime.account.gid if uid else 0)
    full_env = {**runtime.base_env(home), "REWARDHUB_DATA_DIR": str(data_dir), **given}
    attempts = 1 if port is not None else 3
    for attempt in range(attempts):
        chosen = port if port is not None else free_port()
        log = workdir / (f"{name}.log" if attempt == 0 else f"{name}.{attempt}.log")
        argv = runtime.rewardhub_argv("serve", name, "--host", "127.0.0.1", "--port", str(chosen), *extra_args)
        with log.open("wb") as sink:
            proc = subprocess.Popen(argv, env=full_env, cwd=home, stdout=sink, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True, **runtime.credentials(as_root))
        service = Service(name=name, port=chosen, proc=proc, log=log, env=full_env, data_dir=data_dir,
                          workdir=workdir, home=home, uid=uid, as_root=as_root)
        try:
            wait_healthy(service, timeout_s, ready_path)
            return service
        except ServiceExited:
            service.stop()
            # Lost the race for a free port to another process: try another one.
            if attempt + 1 < attempts and "address already in use" in service.tail().lower():
                continue
            raise
        except BaseException:
            service.stop()
            raise
    raise AssertionError("unreachable")  # pragma: no cover


# --------------------------------------------------------------------------------------------
# Databases and tenants


@dataclass
class ServiceDatabase:
    """A database the services share: the env to give each of them, and where SQLite keeps it."""

    kind: str  # "sqlite" | "postgres"
    env: dict[str, str]
    data_dir: Path  # owned by the uid the services run as; holds the SQLite file
    as_root: bool = False


def sqlite_database(runtime: NonrootRuntime, *, as_root: bool = False) -> ServiceDatabase:
    data_dir = runtime.make_dir("data", as_root=as_root)
    return ServiceDatabase("sqlite", {"REWARDHUB_DATA_DIR": str(data_dir)}, data_dir, as_root)


def postgres_database(runtime: NonrootRuntime, url: str, *, as_root: bool = False) -> ServiceDatabase:
    data_dir = runtime.make_dir("data", as_root=as_root)
    return ServiceDatabase("postgres", {"DATABASE_URL": url, "REWARDHUB_DATA_DIR": str(data_dir)}, data_dir, as_root)


BOOTSTRAP = textwrap.dedent("""
    import json
    from services.common.auth import create_api_key
    from services.common.db import session_scope
    from services.common.migrate import upgrade
    from services.common.models import Project, Role
    upgrade()
    with session_scope() as session:
        a, b = Project(name="project-a"), Project(name="project-b")
        session.add_all([a, b])
        session.flush()
        keys = {"root": create_api_key(session, role=Role.admin, all_projects=True)[1]}
        for role in Role:
            keys[role.value] = create_api_key(session, role=role, projects=[a])[1]
        keys["admin_b"] = create_api_key(session, role=Role.admin, projects=[b])[1]
        out = {"project_a": a.id, "project_b": b.id, "keys": keys}
    print("TENANT " + json.dumps(out))
""")


def bootstrap_tenant(runtime: NonrootRuntime, database: ServiceDatabase) -> Any:
    """Migrate ``database`` and create tests.conftest's tenant (two projects, a key of every role).

    Runs as the uid the services will (so a SQLite file and its side files are theirs), on the
    same runtime, with only the database's env. Returns a ``tests.conftest.Tenant``.
    """
    from tests.conftest import Tenant

    result = runtime.run(runtime.python_argv("-c", BOOTSTRAP), env=database.env, as_root=database.as_root,
                         timeout=300)
    try:
        return Tenant(**_tagged_json(result.stdout, "TENANT"))
    except ValueError:
        raise AssertionError(f"bootstrapping the {database.kind} database failed ({result.returncode}):\n"
                             f"{result.stdout[-2000:]}\n{result.stderr[-4000:]}") from None


SECRET_KEY = "security-suite-secret-key-not-for-production"


def service_env(database: ServiceDatabase, **extra: str) -> dict[str, str]:
    """The usual env of a test service on ``database``: its DB settings, a secret key, plain logs."""
    return {**database.env, "REWARDHUB_SECRET_KEY": SECRET_KEY,
            "REWARDHUB_LOG_JSON": "false", **extra}
