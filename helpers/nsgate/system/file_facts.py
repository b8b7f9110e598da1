"""Looking at files without trusting them, for `nsgate check`: lstat of a path and of its
directories up to /, of a whole tree, a file's capabilities, and reading a file that may be
unsafe (never through a symbolic link)."""

import posix

from nsgate.policy.install_lint import Stat

_READ = posix.O_RDONLY | posix.O_NOFOLLOW | posix.O_NONBLOCK | posix.O_NOCTTY | posix.O_CLOEXEC
_S_IFMT, _S_IFREG = 0o170000, 0o100000


def lstat(path: str) -> Stat:
    try:
        st = posix.lstat(path)
    except FileNotFoundError:
        return Stat(path, None, None)
    return Stat(path, st.st_uid, st.st_mode)


def ancestors(path: str) -> list[Stat]:
    """The directories holding `path`, from its own up to /."""
    found = []
    while path not in ("", "/"):
        path = path.rsplit("/", 1)[0] or "/"
        found.append(lstat(path))
    return found


def tree(top: str) -> list[Stat]:
    """`top` and everything under it (symbolic links not followed)."""
    found = [lstat(top)]
    if found[0].exists and found[0].mode is not None and found[0].mode & _S_IFMT == 0o040000:
        for entry in posix.scandir(top):
            if entry.is_dir(follow_symlinks=False):
                found += tree(entry.path)
            else:
                st = entry.stat(follow_symlinks=False)
                found.append(Stat(entry.path, st.st_uid, st.st_mode))
    return found


def resolved(path: str) -> Stat:
    """What `path` resolves to, as the kernel follows it: a Stat of the final file under its
    own name (None fields when the link dangles)."""
    try:
        fd = posix.open(path, posix.O_PATH | posix.O_CLOEXEC)
    except OSError:
        return Stat(path, None, None)
    try:
        st = posix.fstat(fd)
        return Stat(posix.readlink(f"/proc/self/fd/{fd}"), st.st_uid, st.st_mode)
    finally:
        posix.close(fd)


def names_in(directory: str) -> list[str]:
    try:
        return posix.listdir(directory)
    except OSError:
        return []


def head(path: str, limit: int = 64) -> bytes | None:
    """The first `limit` bytes of a regular file (never through a symbolic link), None if it is
    anything else or cannot be read."""
    try:
        fd = posix.open(path, _READ)
    except OSError:
        return None
    try:
        if posix.fstat(fd).st_mode & _S_IFMT != _S_IFREG:
            return None
        return posix.read(fd, limit)
    except OSError:
        return None
    finally:
        posix.close(fd)


def holds(path: str, needle: bytes, limit: int = 64 << 20) -> bool:
    """Whether the regular file `path` resolves to holds `needle` in its first `limit` bytes
    (False if it cannot be read)."""
    try:
        fd = posix.open(path, posix.O_RDONLY | posix.O_NONBLOCK | posix.O_NOCTTY | posix.O_CLOEXEC)
    except OSError:
        return False
    try:
        if posix.fstat(fd).st_mode & _S_IFMT != _S_IFREG:
            return False
        tail, size = b"", 0
        while size < limit:
            part = posix.read(fd, 1 << 20)
            if not part:
                return False
            if needle in tail + part:
                return True
            tail, size = part[-len(needle):], size + len(part)
        return False
    except OSError:
        return False
    finally:
        posix.close(fd)


def capability_xattr(path: str) -> bytes | None:
    try:
        return posix.getxattr(path, "security.capability", follow_symlinks=False)
    except OSError:
        return None  # none set (ENODATA), or no such file


def read(path: str, limit: int = 256 << 20) -> bytes | None:
    """A regular file's content, None if it does not exist or is a symbolic link (reported
    elsewhere). OSError (EACCES) goes to the caller."""
    try:
        fd = posix.open(path, _READ)
    except FileNotFoundError:
        return None
    except OSError as err:
        if err.errno == 40:  # ELOOP: a symbolic link
            return None
        raise
    try:
        if posix.fstat(fd).st_mode & _S_IFMT != _S_IFREG:
            return None
        parts = []
        size = 0
        while size <= limit:
            part = posix.read(fd, 1 << 20)
            if not part:
                break
            parts.append(part)
            size += len(part)
        return b"".join(parts)
    finally:
        posix.close(fd)
