"""The target process, through one /proc/<pid> directory fd: resolving it, proving things about
it, and the two writes newuidmap/newgidmap make (setgroups, then the map).

The pid is looked up once; every later check and write goes through the same directory fd, so
pid reuse cannot redirect them (security-cases C10). Opens never follow symlinks.
"""

import errno
import fcntl
import posix

from nsgate.errors import Refusal
from nsgate.system import kernel

TYPE_CHECKING = False
if TYPE_CHECKING:
    from nsgate.system.handed import Handed

_S_IFMT = 0o170000
_S_IFDIR = 0o040000
_FILE_FLAGS = posix.O_NOFOLLOW | posix.O_CLOEXEC | posix.O_NOCTTY
NS_GET_PARENT = 0xB702


def open_target(pid: int | None, fd: int | None, handed: "Handed | None" = None) -> int:
    """A directory fd on /proc/<pid>. Called with the caller's credentials (§11 item 8); from
    nsgated, `handed` is what the caller opened itself (pid) or its own fd:N."""
    if handed is not None:
        return _handed_target(pid, fd, handed)
    if fd is None:
        try:
            return posix.open(f"/proc/{pid}", posix.O_RDONLY | posix.O_DIRECTORY | _FILE_FLAGS)
        except OSError as err:
            raise _no_proc_dir(pid, err.strerror or "") from None
    return _checked_proc_dir(fd, f"fd:{fd}")


def _no_proc_dir(pid: int | None, why: str) -> Refusal:
    return Refusal(f"Could not open proc directory for target {pid}: {why}",
                   "is the process still running, and is it yours?")


def _handed_target(pid: int | None, fd: int | None, handed: "Handed") -> int:
    if handed.fd is None:
        if fd is not None and handed.errno == errno.EBADF:
            raise Refusal(f"fd:{fd} is not an open file descriptor", usage=True)
        raise _no_proc_dir(pid if fd is None else fd, handed.strerror())
    shown = f"fd:{fd}" if fd is not None else f"the descriptor handed over for target {pid}"
    return _checked_proc_dir(handed.fd, shown)


def _checked_proc_dir(fd: int, shown: str) -> int:
    """`fd` if it is a process's /proc directory; `shown` is the number the caller knows it by."""
    try:
        st = posix.fstat(fd)
        magic = kernel.fstatfs_type(fd)
    except OSError:
        raise Refusal(f"{shown} is not an open file descriptor", usage=True) from None
    if st.st_mode & _S_IFMT != _S_IFDIR or magic != kernel.PROC_SUPER_MAGIC:
        raise Refusal(f"{shown} is not a directory on procfs",
                      "fd:N must be a directory fd opened on /proc/<pid> of the target",
                      usage=True)
    try:
        posix.stat("uid_map", dir_fd=fd, follow_symlinks=False)
    except OSError:
        raise Refusal(f"{shown} is not a process's /proc directory",
                      "fd:N must be a directory fd opened on /proc/<pid> of the target",
                      usage=True) from None
    posix.set_inheritable(fd, False)
    return fd


def owner_ids(dirfd: int) -> tuple[int, int]:
    """The target's effective uid and gid, as /proc/<pid> shows them."""
    st = posix.fstat(dirfd)
    return st.st_uid, st.st_gid


def check_target_state(dirfd: int, map_file: str) -> None:
    """Refuse, with the reason, a target the kernel would refuse later with a bare errno."""
    dir_uid = posix.fstat(dirfd).st_uid
    if posix.stat(map_file, dir_fd=dirfd, follow_symlinks=False).st_uid != dir_uid:
        raise Refusal("target is not dumpable: its /proc files belong to root",
                      "a process that changed credentials or set PR_SET_DUMPABLE 0 cannot have "
                      "its map written by its user: map the namespace from a dumpable process")
    try:
        user_ns = posix.open("ns/user", posix.O_RDONLY | posix.O_CLOEXEC, dir_fd=dirfd)
    except OSError as err:
        raise Refusal(f"cannot open the target's user namespace: {err.strerror}") from None
    try:
        _check_child_namespace(user_ns)
    finally:
        posix.close(user_ns)
    if _read(dirfd, map_file):
        raise Refusal(f"{map_file} already written: the kernel allows one write per namespace",
                      f"the target's {map_file} was set before; start a new user namespace")


def _check_child_namespace(user_ns: int) -> None:
    ours = posix.stat("/proc/self/ns/user")
    theirs = posix.fstat(user_ns)
    if (theirs.st_dev, theirs.st_ino) == (ours.st_dev, ours.st_ino):
        raise Refusal("target is not in a new user namespace",
                      "the target must first call unshare(CLONE_NEWUSER) or be created with "
                      "clone(CLONE_NEWUSER); its namespace is the one newuidmap runs in")
    try:
        parent = fcntl.ioctl(user_ns, NS_GET_PARENT)
    except OSError:
        parent = -1
    if parent < 0:
        raise Refusal("target's user namespace is not a child of yours",
                      "only the process in the parent namespace can write its map")
    try:
        pst = posix.fstat(parent)
    finally:
        posix.close(parent)
    if (pst.st_dev, pst.st_ino) != (ours.st_dev, ours.st_ino):
        raise Refusal("target's user namespace is not a child of yours (it is nested deeper)",
                      "write the map from a process in its parent user namespace")


def _read(dirfd: int, name: str) -> bytes:
    fd = posix.open(name, posix.O_RDONLY | _FILE_FLAGS, dir_fd=dirfd)
    try:
        return posix.read(fd, 4096)
    finally:
        posix.close(fd)


def deny_setgroups(dirfd: int) -> None:
    """Make sure the target's setgroups reads `deny` before gid_map is written (CVE-2018-7169).
    Called as the caller: the namespace owner may write it without privilege."""
    try:
        fd = posix.open("setgroups", posix.O_RDWR | _FILE_FLAGS, dir_fd=dirfd)
    except OSError as err:
        raise Refusal(f"couldn't open process setgroups: {err.strerror}",
                      "nsgate fails closed where the reference only warns") from None
    try:
        if posix.read(fd, 16).startswith(b"deny\n"):
            return
        posix.lseek(fd, 0, 0)
        try:
            written = posix.write(fd, b"deny\n")
        except OSError as err:
            raise Refusal(f"failed to setgroups deny\n policy: {err.strerror}") from None
        if written != 5:
            raise Refusal("failed to setgroups deny\n policy: short write")
    finally:
        posix.close(fd)


def write_map(dirfd: int, map_file: str, text: bytes) -> None:
    """Open the map file (now, with the credentials the kernel must see) and write it whole in
    one write(). Any failure is reported with the reference's wording."""
    try:
        fd = posix.open(map_file, posix.O_WRONLY | _FILE_FLAGS, dir_fd=dirfd)
    except OSError as err:
        raise Refusal(f"open of {map_file} failed: {err.strerror}") from None
    try:
        try:
            written = posix.write(fd, text)
        except OSError as err:
            raise Refusal(f"write to {map_file} failed: {err.strerror}") from None
        if written != len(text):
            raise Refusal(f"write to {map_file} failed: short write ({written} of {len(text)})")
    finally:
        try:
            posix.close(fd)
        except OSError as err:
            raise Refusal(f"closing {map_file} failed: {err.strerror}") from None


def name_self(name: bytes) -> None:
    """This process's name in ps and /proc/self/comm (a service's children tell apart)."""
    fd = posix.open("/proc/self/comm", posix.O_WRONLY | posix.O_CLOEXEC)
    try:
        posix.write(fd, name)
    finally:
        posix.close(fd)
