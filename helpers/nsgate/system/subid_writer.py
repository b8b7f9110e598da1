"""Rewriting /etc/subuid or /etc/subgid for `nsgate subid`, as root, the way shadow's writers do
(lib/commonio.c `commonio_close`), under their lock (system/shadow_lock.py):

- the file is opened without following a symbolic link and must be a regular file of root's
  not writable by group or others (the helpers' own rule), else nothing is written;
- the old content is kept as `FILE-` (written aside, fsync'ed, renamed; its owner, mode and
  times those of the file), as shadow keeps its backup;
- the new content goes to `FILE+` with the file's owner and mode, is fsync'ed and renamed over
  the file, then the directory is fsync'ed: a reader, or a crash, sees the old file or the new
  one, never a mix;
- interrupting signals are held off while the lock is held, so the lock is always removed.

`ensure` is the session hook's: a range for a user who has none, as login.defs asks
(policy/subid_edit.py), with the lock waits bounded by the caller.
"""

import _signal
import posix

from nsgate.errors import Refusal
from nsgate.policy import subid_edit
from nsgate.policy.accounts import Accounts
from nsgate.policy.subid_edit import Edit
from nsgate.system import files
from nsgate.system.accounts import user as user_entry
from nsgate.system.shadow_lock import LOCK_WAIT_SECONDS, ShadowLock

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

PATHS = {"uid": "/etc/subuid", "gid": "/etc/subgid"}
_HELD_OFF = {_signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP, _signal.SIGQUIT,
             _signal.SIGTSTP}
NEW_FILE_MODE = 0o644


class _Current:
    def __init__(self, data: bytes, st: posix.stat_result | None) -> None:
        self.data = data
        self.st = st


def _read_current(path: str) -> _Current:
    fd = files.open_trusted(path)  # refuses symlinks, non-root owners, g/o-writable files
    if fd is None:
        return _Current(b"", None)
    try:
        st = posix.fstat(fd)
        return _Current(files.read_all(fd), st)
    finally:
        posix.close(fd)


def _sync_directory(path: str) -> None:
    fd = posix.open(path.rsplit("/", 1)[0] or "/", posix.O_RDONLY | posix.O_DIRECTORY
                    | posix.O_CLOEXEC)
    try:
        posix.fsync(fd)
    finally:
        posix.close(fd)


def _commit(path: str, current: _Current, content: bytes) -> None:
    """Everything up to and including the rename that makes `content` the file's; if this
    raises, the file keeps its previous content."""
    st = current.st
    if st is not None:
        backup = path + "-"
        files.write_new(backup + "+", current.data, st.st_uid, st.st_gid, st.st_mode & 0o644)
        posix.rename(backup + "+", backup)
        posix.utime(backup, ns=(st.st_atime_ns, st.st_mtime_ns))
        uid, gid, mode = st.st_uid, st.st_gid, st.st_mode & 0o7777
    else:
        uid, gid, mode = 0, 0, NEW_FILE_MODE
    files.write_new(path + "+", content, uid, gid, mode)
    try:
        posix.rename(path + "+", path)
    except OSError:
        files.remove_quietly(path + "+")
        raise


def edit(path: str, change: "Callable[[bytes], Edit]",
         lock_wait: float = LOCK_WAIT_SECONDS) -> tuple[str, list[str]]:
    """Apply `change` (pure: old content in, new content out, or a Refusal) to `path` under
    shadow's lock; what was done, and notes on what went wrong after it was done."""
    result, notes = _edit_locked(path, change, lock_wait)
    if result is None:
        raise Refusal(f"no change was made to {path}", "nothing was changed")
    return result.report, notes


def ensure(kind: str, name: bytes, uid: int, accounts: Accounts, login_defs: bytes,
           lock_wait: float = LOCK_WAIT_SECONDS) -> str | None:
    """A range in /etc/subuid (kind "uid") or /etc/subgid ("gid") for user `name` (uid `uid`)
    unless the file holds one already (a line of the name, the decimal uid, or another name of
    the uid): None then, and nothing written. Otherwise the range login.defs asks for is
    written under shadow's locks (waited for at most `lock_wait` seconds in all) and the line
    saying so returned; any failure is a Refusal with the file unchanged. The waits use
    SIGALRM: call it from the main thread."""
    path = PATHS[kind]
    try:
        if subid_edit.held_range(_read_current(path).data, name, uid, accounts) is not None:
            return None  # the usual login: settled without taking useradd's locks
        accounts = _knowing(accounts, name, uid)
        result, notes = _edit_locked(path, lambda data: subid_edit.ensure(
            data, path, kind, name, uid, login_defs, accounts), lock_wait)
    except OSError as err:  # _edit_locked turns every failure from the commit on into notes
        raise Refusal(f"cannot update {path}: {err.strerror}", "nothing was changed") from None
    if result is None:
        return None
    return "; note: ".join([result.report, *notes])


def _knowing(accounts: Accounts, name: bytes, uid: int) -> Accounts:
    """`accounts` and the user itself with its primary gid (a directory user is resolved by
    name but seldom enumerated), so that its own ids count as real ones."""
    if accounts.uid_of.get(name) == uid and uid in accounts.primary_gid_by_uid:
        return accounts
    if name.isdigit():
        return accounts  # a uid with no passwd entry: its own id counts already (owner_uid)
    entry = user_entry(name)
    return accounts.knowing(name, uid, entry[2] if entry and entry[1] == uid else None)


def _edit_locked(path: str, change: "Callable[[bytes], Edit | None]",
                 lock_wait: float) -> tuple[Edit | None, list[str]]:
    notes: list[str] = []
    previous = _signal.pthread_sigmask(_signal.SIG_BLOCK, _HELD_OFF)
    try:
        lock = ShadowLock(path, lock_wait)
        lock.acquire()
        try:
            if _HELD_OFF & _signal.sigpending():
                raise Refusal("interrupted while waiting for the lock", "nothing was changed")
            current = _read_current(path)
            result = change(current.data)
            if result is None:
                return None, notes
            try:
                _commit(path, current, result.content)
            except OSError as err:
                raise Refusal(f"cannot write {path}: {err.strerror}",
                              f"{path} keeps its previous content") from None
            # From here on the change is made: a failure is a note, never "nothing changed".
            try:
                _sync_directory(path)
            except OSError as err:
                notes.append(f"{path} is changed, but syncing its directory failed "
                             f"({err.strerror}): a crash now could still bring back the "
                             "previous content")
        finally:
            notes.extend(lock.release())
    finally:
        try:
            _signal.pthread_sigmask(_signal.SIG_SETMASK, previous)
        except OSError:
            pass  # cannot fail with a mask it returned; the command ends next anyway
    return result, notes
