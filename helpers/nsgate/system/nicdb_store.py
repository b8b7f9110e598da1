"""The nic database on disk: /run/lxc/nics, its directory and its lock (lxc-user-nic.md §6, §10
items 1, 8, 12).

- The directory and the files are root's: created 0755/0600 without following symlinks, and
  refused when anyone else could have put or changed them.
- The lock is a separate, stable file (`nics.lock`), so the database itself can be replaced by
  rename; waiting for it is bounded, and the helper holds it only while it cannot be signalled
  by its caller (all its ids root) and only around its own short steps.
- Every update is a whole new file: written, checked for length, fsync'ed and renamed over the
  old one, so a reader or a crash sees the old or the new database, never a mix, and a small
  RLIMIT_FSIZE can only make the update fail, never cut the database short.
"""

import fcntl
import posix

from nsgate.errors import Refusal
from nsgate.system import files
from nsgate.system.integrity import S_IFDIR, S_IFREG, root_only

DB_DIR = "/run/lxc"
DB_PATH = DB_DIR + "/nics"
LOCK_PATH = DB_DIR + "/nics.lock"
LOCK_WAIT_SECONDS = 10.0
_OPEN = posix.O_CLOEXEC | posix.O_NOFOLLOW | posix.O_NOCTTY


def _check_owned_by_root(path: str, st: posix.stat_result, kind: int) -> None:
    if not root_only(st, kind):
        raise Refusal(f"refusing to use {path}: owner uid {st.st_uid}, mode "
                      f"{st.st_mode & 0o7777:04o}",
                      f"{path} must be root's, not writable by group or others, and not a link")


def _untrusted(path: str, err: OSError) -> Refusal:
    return Refusal(f"refusing to use {path}: {err.strerror}",
                   f"{path} must be a regular file of root's, not a symbolic link")


def ensure_dir() -> None:
    _check_owned_by_root("/run", posix.lstat("/run"), S_IFDIR)
    try:
        posix.mkdir(DB_DIR, 0o755)
    except FileExistsError:
        pass
    _check_owned_by_root(DB_DIR, posix.lstat(DB_DIR), S_IFDIR)


class Locked:
    """The database lock, held from construction until `release()`; waited for at most
    `seconds`, then refused."""

    def __init__(self, seconds: float = LOCK_WAIT_SECONDS) -> None:
        ensure_dir()
        try:
            self.fd = posix.open(LOCK_PATH, posix.O_RDWR | posix.O_CREAT | _OPEN, 0o600)
        except OSError as err:
            raise _untrusted(LOCK_PATH, err) from None
        _check_owned_by_root(LOCK_PATH, posix.fstat(self.fd), S_IFREG)
        if not files.wait_for_lock(lambda: fcntl.flock(self.fd, fcntl.LOCK_EX), seconds):
            posix.close(self.fd)  # also releases the lock, should it have just been granted
            raise Refusal(f"{DB_PATH} is busy: another lxc-user-nic has held its lock for over "
                          f"{seconds:g} s; try again")

    def release(self) -> None:
        files.close_quietly(self.fd)  # closing the last fd releases the flock


def read(path: str = DB_PATH) -> bytes:
    """The content of the database, or of another file of its directory (the private bridges'
    record): empty if it does not exist yet. Call with the lock held."""
    try:
        fd = posix.open(path, posix.O_RDONLY | posix.O_NONBLOCK | _OPEN)
    except FileNotFoundError:
        return b""
    except OSError as err:
        raise _untrusted(path, err) from None
    try:
        _check_owned_by_root(path, posix.fstat(fd), S_IFREG)
        return files.read_all(fd)
    finally:
        posix.close(fd)


def replace(content: bytes, path: str = DB_PATH, mode: int | None = None) -> None:
    """Atomically replace the database (or another file of its directory, the private bridges'
    record) with `content`, mode 0600 unless `mode` (a chmod the helper's confinement does not
    allow). Call with the lock held."""
    temp = f"{DB_DIR}/.{path.rpartition('/')[2]}.{posix.getpid()}"
    try:
        files.write_new(temp, content, mode=mode)
        posix.rename(temp, path)
    except OSError as err:
        files.remove_quietly(temp)
        raise Refusal(f"cannot write {path}: {err.strerror}",
                      "nothing was changed: the file keeps its previous content") from None
