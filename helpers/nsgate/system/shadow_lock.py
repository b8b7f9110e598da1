"""The lock shadow's writers (useradd, usermod, vipw …) take before they rewrite /etc/subuid or
/etc/subgid, taken the same way so that none of them can lose an update of ours or we one of
theirs (shadow lib/commonio.c `commonio_lock`, glibc `lckpwdf`):

1. lckpwdf: a write lock (fcntl F_SETLKW, whole file) on /etc/.pwd.lock (glibc waits 15 s).
   useradd and usermod hold it for their whole run.
2. The link lock: our pid (decimal, then a NUL) in `FILE.<pid>`, made durable, then
   link(2)ed to `FILE.lock`; the lock is ours only if the link succeeded and `FILE.<pid>` then
   has exactly two links. A `FILE.lock` whose pid no longer runs is stale: removed, and the
   link tried again. One without a readable pid is left alone and named.

Both are waited for LOCK_WAIT_SECONDS in all (glibc's 15 s), or the shorter bound a caller gives
(the session hook must not hold up a login). Release is the reverse: `FILE.lock` removed, then
the fcntl lock dropped with its fd.
A writer killed between making `FILE.<pid>` and removing it leaves that file behind:
`nsgate check` reports it (policy/lock_lint.py).
"""

import fcntl
import posix
import time

from nsgate.errors import Refusal
from nsgate.system import files

PWD_LOCK = "/etc/.pwd.lock"
LOCK_WAIT_SECONDS = 15.0
_POLL_SECONDS = 0.02
_CREATE = posix.O_WRONLY | posix.O_CREAT | posix.O_EXCL | posix.O_NOFOLLOW | posix.O_CLOEXEC


def _shown_seconds(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds >= 1 else f"{seconds:.2g} s"


def _lckpwdf(wait_seconds: float) -> int:
    try:
        fd = posix.open(PWD_LOCK, posix.O_WRONLY | posix.O_CREAT | posix.O_NOFOLLOW
                        | posix.O_CLOEXEC, 0o600)
    except OSError as err:
        raise Refusal(f"cannot open {PWD_LOCK}: {err.strerror}",
                      "it is the lock of every tool that edits the account files; it must be a "
                      "regular file of root's, on a writable /etc", "nothing was changed") from None
    if not files.wait_for_lock(lambda: fcntl.lockf(fd, fcntl.LOCK_EX), wait_seconds):
        posix.close(fd)
        raise Refusal(f"{PWD_LOCK} is busy: another tool (useradd, usermod, vipw ...) has held "
                      f"it for over {_shown_seconds(wait_seconds)}", "try again when it is "
                      "done; nothing was changed")
    return fd


def _lock_holder(lock: str) -> int | None:
    """The pid in an existing lock file; None if it has vanished meanwhile."""
    try:
        fd = posix.open(lock, posix.O_RDONLY | posix.O_NOFOLLOW | posix.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        text = posix.read(fd, 32)
    finally:
        posix.close(fd)
    digits = text.split(b"\0", 1)[0].strip()
    if not digits.isdigit() or int(digits) <= 0 or len(digits) > 10:
        raise Refusal(f"the lock file {lock} holds no valid pid ({text[:20]!r})",
                      f"if no tool is editing the file now, remove {lock}; nothing was changed")
    return int(digits)


def process_runs(pid: int) -> bool:
    """Whether process `pid` exists (a process we may not signal exists too): a lock file
    naming a pid that does not run is stale."""
    try:
        posix.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


class ShadowLock:
    """Both locks of `path`, held from acquire() until release()."""

    def __init__(self, path: str, wait_seconds: float = LOCK_WAIT_SECONDS) -> None:
        if not wait_seconds > 0:
            raise ValueError("a lock wait must be positive")  # 0 would disarm the timer
        self.path = path
        self.wait_seconds = wait_seconds
        self.lock = path + ".lock"
        self._pwd_fd = -1
        self._linked = False

    def acquire(self) -> None:
        deadline = time.monotonic() + self.wait_seconds
        self._pwd_fd = _lckpwdf(self.wait_seconds)
        try:
            self._link_lock(deadline)
        except BaseException:
            self.release()
            raise

    def release(self) -> list[str]:
        """Drop both locks; never raises (what it could not do is returned as notes), as it
        runs after the file may have been changed."""
        notes = []
        if self._linked:
            self._linked = False
            try:
                files.remove_if_present(self.lock)
            except OSError as err:
                notes.append(f"cannot remove the lock {self.lock} ({err.strerror}): it names "
                             "this process, so the next writer takes it over as stale")
        if self._pwd_fd >= 0:
            files.close_quietly(self._pwd_fd)  # drops the fcntl lock
            self._pwd_fd = -1
        return notes

    def _link_lock(self, deadline: float) -> None:
        holder = None
        while True:
            holder = self._try_once()
            if holder is None:
                return
            if time.monotonic() > deadline:
                raise Refusal(f"{self.lock} is held by process {holder}, which is still "
                              f"running after {_shown_seconds(self.wait_seconds)}",
                              "wait for it to finish and try again; nothing was changed")
            time.sleep(_POLL_SECONDS)

    def _try_once(self) -> int | None:
        """None once the lock is ours, else the pid holding it."""
        mine = f"{self.path}.{posix.getpid()}"
        files.remove_if_present(mine)  # left by a killed writer whose pid we now have
        try:
            fd = posix.open(mine, _CREATE, 0o600)
        except OSError as err:
            raise Refusal(f"cannot create {mine}: {err.strerror}", "nothing was changed") from None
        try:
            posix.write(fd, f"{posix.getpid()}\0".encode())
            posix.fdatasync(fd)
        finally:
            posix.close(fd)
        try:
            if self._link(mine):
                return None
            holder = _lock_holder(self.lock)
            if holder is None:
                return 0  # released meanwhile: try again
            if process_runs(holder):
                return holder
            files.remove_if_present(self.lock)  # stale: its writer is gone
            return None if self._link(mine) else 0
        finally:
            files.remove_if_present(mine)

    def _link(self, mine: str) -> bool:
        try:
            posix.link(mine, self.lock)
        except FileExistsError:
            return False
        # As shadow: the lock is ours only if our file is the lock (two links, ours and it).
        # Anything else is not ours to remove: whoever made it so owns it.
        if posix.stat(mine).st_nlink != 2:
            raise Refusal(f"cannot lock {self.path}: {self.lock} did not become our file",
                          "nothing was changed")
        self._linked = True  # before anything else can fail: release() then removes it
        return True
