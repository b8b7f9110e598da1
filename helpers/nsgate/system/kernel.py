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


# Every C type the wrappers below allocate (ffi.new parses its string once per process).
_CTYPES = ("uint64_t[3]", "char[]", "const char *[]", "unsigned char[]", "char[512]", "bool *",
           "struct nsg_subid_range[]", "int *")


class KernelError(OSError):
    """A failed system call, with errno and the call's name."""


def prepare_bindings() -> None:
    """nsgated, before its first fork: every function of the module looked up and every C
    type parsed, once; cffi builds either on first use, which would otherwise be on a
    request's path in every worker."""
    for name in dir(lib):
        getattr(lib, name)
    for ctype in _CTYPES:
        ffi.typeof(ctype)


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


def drop_bounding_set(keep: int, last: int) -> None:
    """Drop every capability 0..last not in the mask `keep` from the bounding set."""
    _check(lib.nsg_capbset_drop(keep, last), f"prctl({PR_CAPBSET_DROP})")


def fstatfs_type(fd: int) -> int:
    return _check(lib.nsg_fstatfs_type(fd), "fstatfs")


def ioprio_set_default() -> None:
    _check(lib.nsg_ioprio_set_default(), "ioprio_set")


def populate_write(start: int, length: int) -> None:
    _check(lib.nsg_populate_write(start, length), "madvise(MADV_POPULATE_WRITE)")


# Filters compiled in advance (nsgated, before its first fork): (syscalls, errno) -> program.
_COMPILED: "dict[tuple[tuple[str, ...], int], bytes]" = {}
_MAX_PROGRAM = 65536


def seccomp_allow_only(syscalls: "tuple[str, ...]", refusal_errno: int) -> None:
    """Allow only `syscalls` from now on; any other fails with `refusal_errno`."""
    compiled = _COMPILED.get((syscalls, refusal_errno))
    if compiled is not None:
        result = lib.nsg_seccomp_load(compiled, len(compiled))
    else:
        names = [ffi.new("char[]", name.encode()) for name in syscalls]  # alive for the call
        result = lib.nsg_seccomp_allow_only(ffi.new("const char *[]", names), len(names),
                                            refusal_errno)
    if result != 0:
        raise KernelError(-result, f"seccomp: {posix.strerror(-result)}")


def seccomp_compile(syscalls: "tuple[str, ...]", refusal_errno: int) -> None:
    """Generate now the filter seccomp_allow_only(syscalls, refusal_errno) will install, so
    that it only loads it: the same program, without libseccomp's work on the way."""
    names = [ffi.new("char[]", name.encode()) for name in syscalls]  # alive for the call
    out = ffi.new("unsigned char[]", _MAX_PROGRAM)
    length = lib.nsg_seccomp_compile(ffi.new("const char *[]", names), len(names),
                                     refusal_errno, out, _MAX_PROGRAM)
    if length < 0:
        raise KernelError(-length, f"seccomp: {posix.strerror(-length)}")
    _COMPILED[syscalls, refusal_errno] = bytes(ffi.buffer(out, length))


def setns(fd: int, nstype: int) -> None:
    _check(lib.setns(fd, nstype), "setns")


class SubidPlugin:
    """A libsubid NSS plugin, loaded once and kept for the life of the process (a process may
    hold several: one per module of the `subid:` line)."""

    __slots__ = ("_plugin",)

    def __init__(self, plugin: object) -> None:
        self._plugin = plugin

    def has_range(self, owner: bytes, start: int, count: int, idtype: int) -> tuple[int, bool]:
        """shadow_subid_has_range: (status, whether `owner` holds [start, start + count))."""
        result = ffi.new("bool *")
        status = lib.nsg_plugin_has_range(self._plugin, owner, start, count, idtype, result)
        return int(status), bool(result[0])

    def list_ranges(self, owner: bytes, idtype: int,
                    maximum: int) -> tuple[int, list[tuple[int, int]]]:
        """shadow_subid_list_owner_ranges: (status, at most `maximum` (start, count))."""
        ranges = ffi.new("struct nsg_subid_range[]", maximum)
        count = ffi.new("int *")
        status = lib.nsg_plugin_list_ranges(self._plugin, owner, idtype, ranges, maximum, count)
        return int(status), [(int(ranges[i].start), int(ranges[i].count))
                             for i in range(count[0])]


def plugin_open(libname: bytes) -> SubidPlugin | str:
    """dlopen a libsubid NSS plugin: the plugin, or the loader's error."""
    err = ffi.new("char[512]")
    plugin = lib.nsg_plugin_open(libname, err, 512)
    if plugin == ffi.NULL:
        return bytes(ffi.string(err)).decode("utf-8", "backslashreplace")
    return SubidPlugin(plugin)
