"""The seccomp filters every run gets: the kernel interfaces no tested program needs, refused.

Namespaces and dropped capabilities already refuse most of these calls, but each one here is
kernel attack surface (io_uring, BPF, userfaultfd, keyrings, …) or a way around a limit
(``memfd_create`` pages and System V segments are nobody's resident memory), so they are refused before the kernel
looks at them. Two classic-BPF programs, built with libseccomp (through ``pyseccomp``) once per
process:

- ``run``: loaded by ``bwrap --seccomp`` on the whole sandbox, the supervisor included;
- ``child``: stacked by the supervisor on each process it starts (``inside/supervisor.py``),
  adding what the supervisor itself needs and the tested code must not have: ``memfd_create``
  (the supervisor hands the job's stdin and test program over on memfds).

A denied call fails with ``EPERM``, or ``ENOSYS`` where callers fall back on something older
(``clone3`` -> glibc's ``clone``, whose flags a filter can read, so namespace flags are refused
there; io_uring -> libuv's thread pool). A system call of another ABI (32-bit ``int 0x80``, x32)
kills the process: a filter written for one ABI's numbers says nothing about another's.
"""

from __future__ import annotations

import errno
import functools
import os
import tempfile
from dataclasses import dataclass

# Refused with EPERM: kernel attack surface, other processes, the file system view, namespaces.
DENIED = (
    "bpf", "perf_event_open", "userfaultfd", "memfd_secret",
    "keyctl", "add_key", "request_key",
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "mount", "umount2", "pivot_root", "chroot", "open_tree", "move_mount", "fsopen", "fsmount", "fspick",
    "mount_setattr", "unshare", "setns",
    "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd",
    "acct", "swapon", "swapoff", "reboot", "ioperm", "iopl", "quotactl", "syslog", "vhangup",
    "lookup_dcookie", "uselib", "name_to_handle_at", "open_by_handle_at",
    # System V shared memory and message queues: a segment or queue holds memory after it is
    # detached, where no resident set shows it (POSIX shm lives in the run's capped /dev/shm).
    "shmget", "msgget",
)
# Refused with ENOSYS: the caller falls back on an older call (or goes without).
UNIMPLEMENTED = ("clone3", "io_uring_setup", "io_uring_enter", "io_uring_register")
# Only the children: the supervisor needs these to hand data over, the tested code must not have them.
DENIED_TO_CHILDREN = ("memfd_create",)

# clone(2)'s flags that create namespaces (CLONE_NEWTIME exists only for clone3 and unshare).
CLONE_NAMESPACE_FLAGS = {"CLONE_NEWNS": 0x00020000, "CLONE_NEWCGROUP": 0x02000000, "CLONE_NEWUTS": 0x04000000,
                         "CLONE_NEWIPC": 0x08000000, "CLONE_NEWUSER": 0x10000000, "CLONE_NEWPID": 0x20000000,
                         "CLONE_NEWNET": 0x40000000}
# personality(2) bits: the execution domain (low byte) and the flags that weaken ASLR or W^X
# (ADDR_NO_RANDOMIZE, READ_IMPLIES_EXEC, MMAP_PAGE_ZERO, …). Any of them set is refused, and so is
# the query 0xffffffff, which sets them all (no test program needs to ask).
PERSONALITY_REFUSED_BITS = tuple(1 << bit for bit in (*range(8), *range(17, 28)))


class SeccompUnavailable(RuntimeError):
    """libseccomp (or its Python binding) is missing here, or refused to build the filter."""


@dataclass(frozen=True)
class Programs:
    """The compiled filters (``struct sock_filter`` arrays, 8 bytes an instruction)."""

    run: bytes
    child: bytes
    denied: tuple[str, ...]  # every call refused to the tested code, for reports

    @property
    def instructions(self) -> int:
        return (len(self.run) + len(self.child)) // 8


def _filter(names: tuple[str, ...], *, namespaces_and_personality: bool) -> bytes:
    try:
        import pyseccomp as sc
    except (ImportError, RuntimeError) as exc:  # RuntimeError: the binding found no libseccomp
        raise SeccompUnavailable(f"pyseccomp/libseccomp is not usable: {exc}") from exc
    rules = sc.SyscallFilter(sc.ALLOW)
    rules.set_attr(sc.Attr.ACT_BADARCH, sc.KILL_PROCESS)
    for name in names:
        action = sc.ERRNO(errno.ENOSYS) if name in UNIMPLEMENTED else sc.ERRNO(errno.EPERM)
        rules.add_rule(action, name)
    if namespaces_and_personality:
        for flag in CLONE_NAMESPACE_FLAGS.values():
            rules.add_rule(sc.ERRNO(errno.EPERM), "clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))
        for bit in PERSONALITY_REFUSED_BITS:  # the kernel reads an unsigned int: the low 32 bits only
            rules.add_rule(sc.ERRNO(errno.EPERM), "personality", sc.Arg(0, sc.MASKED_EQ, bit, bit))
    with tempfile.TemporaryFile() as handle:
        rules.export_bpf(handle)
        handle.seek(0)
        return handle.read()


@functools.cache
def programs() -> Programs:
    """Build both filters (once per process); raises ``SeccompUnavailable``."""
    # Calls the architecture lacks (ioperm on aarch64, …) are left out; an x86-64 host has them all.
    run_names = tuple(name for name in (*DENIED, *UNIMPLEMENTED) if syscall_number(name) is not None)
    if not run_names:
        raise SeccompUnavailable("pyseccomp/libseccomp is not usable (no system call could be resolved)")
    try:
        run = _filter(run_names, namespaces_and_personality=True)
        child = _filter(DENIED_TO_CHILDREN, namespaces_and_personality=False)
    except OSError as exc:
        raise SeccompUnavailable(f"libseccomp refused the filter: {exc}") from exc
    denied = (*run_names, *DENIED_TO_CHILDREN, "clone with namespace flags", "personality changes")
    return Programs(run=run, child=child, denied=denied)


def program_fd(program: bytes) -> int:
    """A fresh pipe's read end holding ``program``, for ``bwrap --seccomp FD`` (it reads to EOF).

    One per run: a shared descriptor would share its file offset between concurrent ``bwrap``s.
    The program (a few hundred instructions) fits the pipe's buffer, so the write never blocks.
    """
    if len(program) > 65536:
        raise SeccompUnavailable(f"the seccomp program ({len(program)} bytes) does not fit a pipe's buffer")
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, program)
    finally:
        os.close(write_end)
    return read_end


def syscall_number(name: str) -> int | None:
    """The native number of ``name`` (for probes and tests), or None when unknown here."""
    try:
        import pyseccomp as sc
        number = int(sc.resolve_syscall(sc.Arch.NATIVE, name))
    except (ImportError, RuntimeError, OSError):
        return None
    return number if number >= 0 else None
