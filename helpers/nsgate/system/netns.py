"""Network namespaces as file descriptors: opened once, with the caller's credentials, checked
for their kind, and used by fd from then on (lxc-user-nic.md §10 items 2, 5, 10)."""

import fcntl
import posix

from nsgate.errors import Refusal
from nsgate.system import kernel

TYPE_CHECKING = False
if TYPE_CHECKING:
    from nsgate.system.handed import Handed

CLONE_NEWNET = 0x40000000
NS_GET_NSTYPE = 0xB703
O_PATH = 0o10000000


def _is_netns(fd: int) -> bool:
    try:
        return (kernel.fstatfs_type(fd) == kernel.NSFS_MAGIC
                and fcntl.ioctl(fd, NS_GET_NSTYPE) == CLONE_NEWNET)
    except OSError:
        return False


def open_of_pid(pid: int, handed: "Handed | None" = None) -> int:
    """The network namespace of `pid`. Call with the caller's credentials: the kernel's ptrace
    check then decides whether the caller may reach it at all. From nsgated, `handed` is the
    caller's own open of it."""
    if handed is None:
        try:
            fd = posix.open(f"/proc/{pid}/ns/net", posix.O_RDONLY | posix.O_CLOEXEC)
        except OSError as err:
            raise _no_netns_of(pid, err.strerror or "") from None
    elif handed.fd is None:
        raise _no_netns_of(pid, handed.strerror())
    else:
        fd = handed.fd
    if not _is_netns(fd):
        posix.close(fd)
        raise Refusal(f"/proc/{pid}/ns/net is not a network namespace")
    return fd


def _no_netns_of(pid: int, why: str) -> Refusal:
    return Refusal(f"cannot open the network namespace of pid {pid}: {why}",
                   "is the process running, and is it yours?")


def open_path(path: bytes, handed: "Handed | None" = None) -> int:
    """A network namespace named by path (delete). Call with the caller's credentials; from
    nsgated, `handed` is the caller's own O_PATH open of it. Every failure gives the same text,
    so the answer says nothing about paths the caller cannot see (CVE-2022-47952); the path is
    never opened for I/O unless it is an nsfs file (CVE-2018-6556)."""
    shown = repr(path[:200])[2:-1]
    failure = Refusal(f'Failed while opening netns file for "{shown}"')
    if handed is None:
        try:
            handle = posix.open(path, O_PATH | posix.O_CLOEXEC)
        except OSError:
            raise failure from None
    elif handed.fd is None:
        raise failure
    else:
        handle = handed.fd
    try:
        if kernel.fstatfs_type(handle) != kernel.NSFS_MAGIC:
            raise failure
        fd = posix.open(f"/proc/self/fd/{handle}", posix.O_RDONLY | posix.O_CLOEXEC)
    except OSError:
        raise failure from None
    finally:
        posix.close(handle)
    if not _is_netns(fd):
        posix.close(fd)
        raise failure
    return fd


def enter(fd: int) -> None:
    kernel.setns(fd, CLONE_NEWNET)
