"""Self-confinement once a helper has decided and is about to act: the code it has loaded
checked again (system/integrity.py: every module imported since start-up must be root's alone),
the capability bounding set, effective and permitted sets cut to the action's capabilities,
no_new_privs, not dumpable, and a seccomp filter allowing only the system calls the rest of the
run makes (issue 4). Whatever else the process tried would fail with EPERM, which the helper
reports like any error.
"""

import posix

from nsgate.system import credentials, integrity, kernel

REFUSAL_ERRNO = 1  # EPERM: what every system call outside the filter's list fails with

# What Python itself needs to keep running and to exit: memory, signals, time, its own ids.
_RUNTIME = ("brk", "mmap", "munmap", "mremap", "madvise", "mprotect", "futex",
            "rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "sigaltstack", "restart_syscall",
            "clock_gettime", "clock_nanosleep", "nanosleep", "getrandom", "getpid", "gettid",
            "getuid", "geteuid", "getgid", "getegid", "exit", "exit_group")
# Files through fds it already holds or opens relative to them, and syslog.
_FILES = ("read", "readv", "write", "writev", "pread64", "getdents64", "lseek", "close",
          "openat", "fstat", "newfstatat", "statx", "fcntl", "ioctl")
_SYSLOG = ("socket", "connect", "sendto", "sendmsg")
# The credential steps around the action and the final drop.
_CREDENTIALS = ("capget", "capset", "setresuid", "setresgid", "prctl")

MAP_WRITER = _RUNTIME + _FILES + _SYSLOG + _CREDENTIALS
# getsubids: reading files and asking NSS (which may talk to a daemon over a unix socket).
READER = _RUNTIME + _FILES + _SYSLOG
# lxc-user-nic after its privilege proof: rtnetlink, the database (lock, temp file, rename), the
# lock's timer, and reaping its Open vSwitch runner (system/ovs.py).
NIC_MAKER = (*MAP_WRITER, "bind", "setsockopt", "getsockopt", "getsockname", "recvfrom",
             "recvmsg", "flock", "fsync", "rename", "unlink", "fchown", "mkdir", "setitimer",
             "fstatfs", "wait4")


def _drop_bounding_set(keep: "list[int]") -> None:
    effective, _, _ = kernel.capabilities()
    if not effective & kernel.bit(kernel.CAP_SETPCAP):
        return  # a file-capabilities install cannot change it; its bounding set is the caller's
    fd = posix.open("/proc/sys/kernel/cap_last_cap", posix.O_RDONLY | posix.O_CLOEXEC)
    try:
        last = int(posix.read(fd, 16))
    finally:
        posix.close(fd)
    mask = 0
    for cap in keep:
        mask |= kernel.bit(cap)
    kernel.drop_bounding_set(mask, last)


def confine(keep_caps: "list[int]", syscalls: "tuple[str, ...]") -> None:
    integrity.verify_loaded_modules()
    _drop_bounding_set(keep_caps)
    credentials.limit_capabilities(keep_caps)
    kernel.prctl(kernel.PR_SET_NO_NEW_PRIVS, 1)
    kernel.prctl(kernel.PR_SET_DUMPABLE, 0)
    kernel.seccomp_allow_only(syscalls, REFUSAL_ERRNO)


def compile_filters() -> None:
    """nsgated, before it forks workers: every filter above generated once, so that confine()
    in a worker loads the very program it would otherwise generate on the request's path."""
    for syscalls in (MAP_WRITER, READER, NIC_MAKER):
        kernel.seccomp_compile(syscalls, REFUSAL_ERRNO)
