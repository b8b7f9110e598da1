"""Work a login must not wait for beyond a bound (the PAM session hook, nsgate(8) `session`).

The work runs in a child that holds nothing of the caller's: stdin, stdout and stderr on
/dev/null (a login program's pipe or terminal is never written to, and never keeps the child
blocked), no other descriptor but the one that tells the parent it is done, a session of its
own (no controlling terminal: a hang-up of the login's terminal does not reach it), umask 022
and / as its directory. The
parent waits for it at most `seconds`, then returns; a child still working goes on alone (every
wait in it is bounded: the lock waits of shadow_lock.py) and, its parent gone, init reaps it.
"""

import _signal
import posix
import select
import time

from nsgate.system.programs import keep_only_fds

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable


def run(work: "Callable[[], None]", seconds: float,
        cannot_start: "Callable[[str], None]") -> bool:
    """Run `work` in a detached child; True if it ended within `seconds`. `work` reports its
    own outcome (nothing it raises reaches the parent); `cannot_start` gets the reason when the
    child cannot be made or set apart, and then nothing was done."""
    try:
        done_read, done_write = posix.pipe2(posix.O_CLOEXEC)
        pid = posix.fork()
    except OSError as err:
        cannot_start(f"cannot start the worker: {err.strerror}")
        return False
    if pid == 0:
        try:
            posix.close(done_read)
            try:
                _set_apart(done_write)
            except OSError as err:
                cannot_start(f"cannot set the worker apart from the login: {err.strerror}")
            else:
                work()
        finally:
            posix._exit(0)
    posix.close(done_write)
    try:
        ended = _closed_within(done_read, seconds)
    finally:
        posix.close(done_read)
    if ended:
        posix.waitpid(pid, 0)  # its descriptors close as it exits: already gone, or about to
    return ended


def _set_apart(keep: int) -> None:
    posix.setsid()
    null = posix.open("/dev/null", posix.O_RDWR)
    for fd in (0, 1, 2):
        posix.dup2(null, fd)
    if null > 2:
        posix.close(null)
    keep_only_fds(keep)
    posix.umask(0o022)
    posix.chdir("/")
    _signal.signal(_signal.SIGHUP, _signal.SIG_IGN)


def _closed_within(fd: int, seconds: float) -> bool:
    """Whether the other end of the pipe `fd` reads closes (the child exits) within `seconds`."""
    deadline = time.monotonic() + seconds
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        if poller.poll(max(1, int(left * 1000))) and not posix.read(fd, 1):
            return True
