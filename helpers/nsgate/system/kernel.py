"""Thin typed wrappers over the cffi module `_nsgate_sys`: the system calls Python 3.11 lacks."""

import posix

from _nsgate_sys import ffi, lib

CAP_SETGID = 6
CAP_SETUID = 7
CAP_NET_ADMIN = 12
CAP_SETPCAP = 8
CAP_SYS_ADMIN = 21
CAP_SYS_NICE = 23
CAP_SETFCAP = 31
CAP_NAMES = {CAP_SETGID: "CAP_SETGID", CAP_SETUID: "CAP_SETUID", CAP_NET_ADMIN: "CAP_NET_ADMIN",
             CAP_SYS_ADMIN: "CAP_SYS_ADMIN", CAP_SYS_NICE: "CAP_SYS_NICE",
             CAP_SETFCAP: "CAP_SETFCAP"}

PR_SET_DUMPABLE = 4
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAPBSET_READ = 23
PR_SET_TIMERSLACK = 29
PR_GET_NO_NEW_PRIVS = 39
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4

PROC_SUPER_MAGIC = 0x9FA0
NSFS_MAGIC = 0x6E736673


class KernelError(OSError):
    """A failed system call, with errno and the call's name."""


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ffi.errno
        raise KernelError(err, f"{what}: {posix.strerror(err)}")
    return result


def capabilities() -> tuple[int, int, int]:
    """(effective, permitted, inheritable) of this process, as bit masks."""
    sets = ffi.new("uint64_t[3]")
    _check(lib.nsg_capget(sets, sets + 1, sets + 2), "capget")
    return int(sets[0]), int(sets[1]), int(sets[2])


def set_capabilities(effective: int, permitted: int, inheritable: int = 0) -> None:
    _check(lib.nsg_capset(effective, permitted, inheritable), "capset")


def bit(cap: int) -> int:
    return 1 << cap


def prctl(option: int, arg2: int = 0, arg3: int = 0) -> int:
    return _check(lib.prctl(option, arg2, arg3, 0, 0), f"prctl({option})")


def fstatfs_type(fd: int) -> int:
    return _check(lib.nsg_fstatfs_type(fd), "fstatfs")


def ioprio_set_default() -> None:
    _check(lib.nsg_ioprio_set_default(), "ioprio_set")


def populate_write(start: int, length: int) -> None:
    _check(lib.nsg_populate_write(start, length), "madvise(MADV_POPULATE_WRITE)")


def seccomp_allow_only(syscalls: "tuple[str, ...]", refusal_errno: int) -> None:
    names = [ffi.new("char[]", name.encode()) for name in syscalls]
    array = ffi.new("const char *[]", names)
    result = lib.nsg_seccomp_allow_only(array, len(names), refusal_errno)
    if result != 0:
        raise KernelError(-result, f"seccomp: {posix.strerror(-result)}")


def setns(fd: int, nstype: int) -> None:
    _check(lib.setns(fd, nstype), "setns")


def plugin_open(libname: bytes) -> str | None:
    """dlopen a libsubid NSS plugin; None on success, else the loader's error."""
    err = ffi.new("char[512]")
    if lib.nsg_plugin_open(libname, err, 512) == 0:
        return None
    return bytes(ffi.string(err)).decode("utf-8", "backslashreplace")


def plugin_has_range(owner: bytes, start: int, count: int, idtype: int) -> tuple[int, bool]:
    result = ffi.new("bool *")
    status = lib.nsg_plugin_has_range(owner, start, count, idtype, result)
    return int(status), bool(result[0])


def plugin_list_ranges(owner: bytes, idtype: int,
                       maximum: int) -> tuple[int, list[tuple[int, int]]]:
    ranges = ffi.new("struct nsg_subid_range[]", maximum)
    count = ffi.new("int *")
    status = lib.nsg_plugin_list_ranges(owner, idtype, ranges, maximum, count)
    return int(status), [(int(ranges[i].start), int(ranges[i].count)) for i in range(count[0])]
