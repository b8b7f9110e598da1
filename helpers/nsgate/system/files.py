"""Opening the system files nsgate trusts: no symlinks, regular files, root-owned, not writable
by group or others (security-cases C11, the rule `integrity.root_only`). Content is handed to the
policy modules as bytes. Also the other file steps every writer shares: reading a file whole,
writing the new file of an atomic update, and waiting a bounded time for a lock."""

import _signal
import posix

from nsgate.errors import Refusal
from nsgate.system.integrity import S_IFDIR, S_IFMT, S_IFREG, root_only

TYPE_CHECKING = False  # typing costs import time on every helper run
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

CHUNK = 1 << 20
_OPEN_FLAGS = (posix.O_RDONLY | posix.O_NOCTTY | posix.O_NONBLOCK | posix.O_NOFOLLOW
               | posix.O_CLOEXEC)
_CREATE = (posix.O_WRONLY | posix.O_CREAT | posix.O_EXCL | posix.O_NOFOLLOW | posix.O_NOCTTY
           | posix.O_CLOEXEC)


def open_trusted(path: str) -> int | None:
    """An fd on `path`, or None if it does not exist; a Refusal if it cannot be trusted."""
    try:
        fd = posix.open(path, _OPEN_FLAGS)
    except FileNotFoundError:
        return None
    except OSError as err:
        details = []
        if err.errno == 40:  # ELOOP
            details.append(f"{path} is a symbolic link: like shadow, nsgate does not follow it; "
                           "replace it with a regular file")
        raise Refusal(f"cannot open {path}: {err.strerror}", *details) from None
    try:
        _check_trusted(fd, path)
    except BaseException:
        posix.close(fd)
        raise
    return fd


def _check_trusted(fd: int, path: str) -> None:
    st = posix.fstat(fd)
    if st.st_mode & S_IFMT != S_IFREG:
        raise Refusal(f"cannot open {path}: not a regular file")
    if not root_only(st):
        raise Refusal(f"refusing to trust {path}: owner uid {st.st_uid}, mode "
                      f"{st.st_mode & 0o7777:04o}",
                      f"{path} decides who may use which ids: it must be owned by root and not "
                      f"writable by group or others (chown root: {path}; chmod go-w {path})")
    directory = path.rsplit("/", 1)[0] or "/"
    dst = posix.stat(directory)
    if not root_only(dst, S_IFDIR):
        raise Refusal(f"refusing to trust {path}: its directory {directory} is owned by uid "
                      f"{dst.st_uid} with mode {dst.st_mode & 0o7777:04o}")


def chunks(fd: int) -> "Iterator[bytearray]":
    """The file's content from the start, in chunks of at most CHUNK bytes. A full chunk is
    one buffer reused for the next: consume each before asking for the next."""
    posix.lseek(fd, 0, 0)
    size_hint = posix.fstat(fd).st_size + 1  # a small file gets a small buffer
    buf = bytearray(min(CHUNK, max(size_hint, 4096)))
    while True:
        size = posix.readv(fd, [buf])
        if size == 0:
            return
        yield buf if size == len(buf) else buf[:size]


def read_all(fd: int, limit: int | None = None) -> bytes:
    """The content of the file `fd` is open on; with a `limit`, read no further than the
    first chunk that passes it."""
    parts = []
    size = 0
    for part in chunks(fd):
        parts.append(bytes(part))  # a full chunk's buffer is reused for the next
        size += len(part)
        if limit is not None and size > limit:
            break
    return b"".join(parts)


def read_small(path: str, limit: int = 1 << 20) -> bytes | None:
    """The whole of a small trusted file (login.defs, nsswitch.conf), or None if absent."""
    fd = open_trusted(path)
    if fd is None:
        return None
    try:
        data = read_all(fd, limit)
    finally:
        posix.close(fd)
    if len(data) > limit:
        raise Refusal(f"{path} is larger than {limit} bytes: refusing to read it")
    return data


def close_quietly(fd: int) -> None:
    """Close `fd` once the work it served is done: Linux frees the descriptor (and drops its
    locks) even when close(2) reports an error, so there is nothing left to undo or report."""
    try:
        posix.close(fd)
    except OSError:
        pass


def remove_if_present(path: str) -> None:
    try:
        posix.unlink(path)
    except FileNotFoundError:
        pass


def remove_quietly(path: str) -> None:
    """Remove a temporary file a failed step leaves; if that fails too, the next writer
    removes it before it writes its own."""
    try:
        posix.unlink(path)
    except OSError:
        pass


def write_all(fd: int, content: bytes) -> None:
    """Write all of `content` (a full disk or a file size limit raises, never truncates)."""
    view = memoryview(content)
    while view:
        written = posix.write(fd, view)
        if written <= 0:
            raise OSError(28, "short write")
        view = view[written:]


def write_new(path: str, content: bytes, uid: int = 0, gid: int = 0,
              mode: int | None = None) -> None:
    """A new file `path` holding `content`, owned by `uid`:`gid`, with `mode` (else the 0600
    it is created with), fsync'ed: the half of an atomic update before its rename. A file of
    that name left by a writer killed mid-update is removed first; the new one is removed
    again if anything fails."""
    remove_if_present(path)
    fd = posix.open(path, _CREATE, 0o600)
    try:
        posix.fchown(fd, uid, gid)
        if mode is not None:
            posix.fchmod(fd, mode)
        write_all(fd, content)
        posix.fsync(fd)
    except BaseException:
        posix.close(fd)
        remove_quietly(path)
        raise
    posix.close(fd)


class _TimeUp(Exception):
    pass


def _time_up(signum: int, frame: object) -> None:
    raise _TimeUp


def wait_for_lock(take: "Callable[[], object]", seconds: float) -> bool:
    """Run `take`, a blocking lock call (fcntl.flock, fcntl.lockf), for at most `seconds`:
    the waiter sleeps in the kernel until the lock is free, and a timer cuts the wait off.
    False when the time ran out: the caller then closes the fd, which also drops the lock
    should it have been granted just then."""
    previous = _signal.signal(_signal.SIGALRM, _time_up)
    _signal.setitimer(_signal.ITIMER_REAL, seconds)
    try:
        take()
    except _TimeUp:
        return False
    finally:
        _signal.setitimer(_signal.ITIMER_REAL, 0)
        _signal.signal(_signal.SIGALRM, previous)
    return True
