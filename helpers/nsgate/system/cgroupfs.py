"""Root's steps in the cgroup file systems, each through directory fds proven to be the hierarchy
it means to act on.

A hierarchy's mount point is opened once (O_DIRECTORY | O_NOFOLLOW) and must be a cgroup or
cgroup2 file system whose device is the one /proc/self/mountinfo names; every directory below is
opened from its parent's fd, by one name at a time, again O_NOFOLLOW, and must sit on that same
device; files are opened O_NOFOLLOW from their directory's fd. So nothing a user owns (the
delegated directory and anything the user made in it) can send a write of root's elsewhere: a
name cannot be a symbolic link that is followed, nor a mount of something else.
"""

import posix

from nsgate.policy.cgroup_tree import Hierarchy
from nsgate.system import files, kernel

CGROUP_SUPER_MAGIC = 0x27E0EB
CGROUP2_SUPER_MAGIC = 0x63677270
_DIR_FLAGS = posix.O_RDONLY | posix.O_DIRECTORY | posix.O_NOFOLLOW | posix.O_CLOEXEC
MAX_WALK = 4096  # directories in a user's tree nsgate looks at before it gives up (keeps it)


class NotCgroupfs(OSError):
    """What was opened is not the hierarchy's cgroup file system."""


def _device(st: posix.stat_result) -> str:
    return f"{posix.major(st.st_dev)}:{posix.minor(st.st_dev)}"


def open_root(hierarchy: Hierarchy) -> int:
    """An fd on the hierarchy's root, proven to be it."""
    fd = posix.open(hierarchy.point, _DIR_FLAGS)
    try:
        magic = CGROUP2_SUPER_MAGIC if hierarchy.v2 else CGROUP_SUPER_MAGIC
        if kernel.fstatfs_type(fd) != magic or _device(posix.fstat(fd)) != hierarchy.device:
            raise NotCgroupfs(0, f"{hierarchy.point} is not the cgroup hierarchy mounted there")
    except BaseException:
        posix.close(fd)
        raise
    return fd


def open_dir(parent: int, name: str) -> int:
    """An fd on the directory `name` in `parent`, on parent's file system (FileNotFoundError if
    it does not exist)."""
    fd = posix.open(name, _DIR_FLAGS, dir_fd=parent)
    try:
        if posix.fstat(fd).st_dev != posix.fstat(parent).st_dev:
            raise NotCgroupfs(0, f"{name} is not on the parent's cgroup file system")
    except BaseException:
        posix.close(fd)
        raise
    return fd


def open_path(root: int, names: list[str]) -> int:
    """An fd on the cgroup reached from `root` by `names`, one at a time."""
    fd = posix.dup(root)
    try:
        for name in names:
            child = open_dir(fd, name)
            posix.close(fd)
            fd = child
    except BaseException:
        posix.close(fd)
        raise
    return fd


def make_dir(parent: int, name: str) -> tuple[int, bool]:
    """(fd on `name` in `parent`, whether this call made it)."""
    made = True
    try:
        posix.mkdir(name, 0o755, dir_fd=parent)
    except FileExistsError:
        made = False
    try:
        return open_dir(parent, name), made
    except BaseException:
        if made:
            remove_dir(parent, name)
        raise


def remove_dir(parent: int, name: str) -> bool:
    """rmdir, quietly: whether it is gone."""
    try:
        posix.rmdir(name, dir_fd=parent)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True


def read(directory: int, name: str) -> str:
    fd = posix.open(name, posix.O_RDONLY | posix.O_NOFOLLOW | posix.O_CLOEXEC, dir_fd=directory)
    try:
        return files.read_all(fd).decode("utf-8", "surrogateescape")
    finally:
        posix.close(fd)


def write(directory: int, name: str, value: str) -> None:
    """One write of `value` to the interface file `name` (the kernel takes it whole or not)."""
    fd = posix.open(name, posix.O_WRONLY | posix.O_NOFOLLOW | posix.O_CLOEXEC, dir_fd=directory)
    try:
        posix.write(fd, value.encode())
    finally:
        posix.close(fd)


def exists(directory: int, name: str) -> bool:
    try:
        posix.stat(name, dir_fd=directory, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def chown(directory: int, name: str | None, uid: int, gid: int) -> None:
    """chown the directory itself (name None) or its file `name`, never through a link."""
    if name is None:
        posix.chown(directory, uid, gid)
    else:
        posix.chown(name, uid, gid, dir_fd=directory, follow_symlinks=False)


def processes(directory: int) -> list[int]:
    return [int(pid) for pid in read(directory, "cgroup.procs").split()]


class TooBig(Exception):
    """A tree with more than MAX_WALK cgroups."""


def subtree(directory: int) -> list[tuple[int, str, int]]:
    """Every cgroup below `directory`, parents before children, as (parent fd, name, fd): the
    caller closes the fds (close_all). TooBig past MAX_WALK."""
    found: list[tuple[int, str, int]] = []
    pending = [directory]
    try:
        while pending:
            parent = pending.pop()
            with posix.scandir(parent) as entries:
                names = [e.name for e in entries if e.is_dir(follow_symlinks=False)]
            for name in names:
                if len(found) >= MAX_WALK:
                    raise TooBig(MAX_WALK)
                try:
                    child = open_dir(parent, name)
                except FileNotFoundError:
                    continue  # removed meanwhile
                found.append((parent, name, child))
                pending.append(child)
    except BaseException:
        close_all(found)
        raise
    return found


def close_all(tree: list[tuple[int, str, int]]) -> None:
    for _, _, fd in tree:
        posix.close(fd)
