"""Open vSwitch, through `ovs-vsctl` found on the fixed root-owned PATH, run with a fixed
environment, no inherited fds but /dev/null, and its output discarded (lxc-user-nic.md §8).

A confined helper cannot exec (issue 4: the seccomp filter forbids it, and no_new_privs would
be inherited). So before it confines itself it forks a `Runner`: an unconfined child that runs
ovs-vsctl for it, but only the commands the helper named at fork time, and nothing once the
helper is done with it.
"""

import posix

from nsgate.system import files, programs

TYPE_CHECKING = False  # typing costs import time on every helper run
if TYPE_CHECKING:
    from collections.abc import Callable

_MAX_REQUEST = 4096


def _vsctl() -> str | None:
    return programs.find("ovs-vsctl")


def run(*args: str) -> bool:
    """Whether `ovs-vsctl <args>` ran and exited 0 (False when it is not installed)."""
    path = _vsctl()
    if path is None:
        return False
    null = posix.open("/dev/null", posix.O_RDWR | posix.O_CLOEXEC)
    try:
        pid = posix.posix_spawn(path, [path, "--timeout=5", *args], programs.ENVIRONMENT,
                                file_actions=[(posix.POSIX_SPAWN_DUP2, null, 0),
                                              (posix.POSIX_SPAWN_DUP2, null, 1),
                                              (posix.POSIX_SPAWN_DUP2, null, 2)])
    finally:
        posix.close(null)
    _, status = posix.waitpid(pid, 0)
    return posix.WIFEXITED(status) and posix.WEXITSTATUS(status) == 0


def bridges() -> set[str]:
    """The bridges Open vSwitch has (`ovs-vsctl list-br`); none when it is not installed or
    does not answer. For the admin command: the helper asks `br-exists` through its runner."""
    path = _vsctl()
    if path is None:
        return set()
    out_r, out_w = posix.pipe2(posix.O_CLOEXEC)
    null = posix.open("/dev/null", posix.O_RDWR | posix.O_CLOEXEC)
    try:
        pid = posix.posix_spawn(path, [path, "--timeout=5", "list-br"], programs.ENVIRONMENT,
                                file_actions=[(posix.POSIX_SPAWN_DUP2, null, 0),
                                              (posix.POSIX_SPAWN_DUP2, out_w, 1),
                                              (posix.POSIX_SPAWN_DUP2, null, 2)])
    finally:
        posix.close(null)
        posix.close(out_w)
    chunks = []
    try:
        while chunk := posix.read(out_r, 65536):
            chunks.append(chunk)
    finally:
        posix.close(out_r)
        _, status = posix.waitpid(pid, 0)
    if not (posix.WIFEXITED(status) and posix.WEXITSTATUS(status) == 0):
        return set()
    return set(b"".join(chunks).decode("utf-8", "surrogateescape").split())


_DONE, _FAILED, _REFUSED = b"1", b"0", b"!"
_END = b"\0"  # two empty arguments: no command, the helper is done


class Runner:
    """`run` as a child forked now, which accepts only the commands `allowed` accepts.

    The request is the argument list, NUL-separated, sent in one write of at most 4 KiB over a
    pipe; the answer one byte. The child ends when the helper says it is done or the pipe
    closes, so it cannot outlive the helper."""

    def __init__(self, allowed: "Callable[[tuple[str, ...]], bool]") -> None:
        self._pid, self._requests, self._answers = programs.fork_server(
            lambda requests, answers: _serve(requests, answers, allowed))

    def run(self, *args: str) -> bool:
        """Whether the runner ran `ovs-vsctl <args>` and it exited 0; False also when the
        runner refused the command or is gone."""
        request = "\0".join(args).encode("utf-8", "surrogateescape")
        if len(request) > _MAX_REQUEST or self._requests < 0:
            return False
        try:
            posix.write(self._requests, request)
            answer = posix.read(self._answers, 1)
        except OSError:
            self.close()  # a request or answer lost: no later answer could be known as its own
            return False
        return answer == _DONE

    def close(self) -> None:
        """Done with the runner: it is told so, its pipes are closed (either ends it) and it is
        reaped. Never fails the run: the work it served is done."""
        if self._requests >= 0:
            try:
                posix.write(self._requests, _END)
            except OSError:
                pass  # the pipe's end, below, says the same
            files.close_quietly(self._requests)
            files.close_quietly(self._answers)
            self._requests = self._answers = -1
            try:
                posix.waitpid(self._pid, 0)
            except OSError:
                pass  # not reaped now: init reaps it when the helper exits

    def __enter__(self) -> "Runner":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def _serve(requests: int, answers: int, allowed: "Callable[[tuple[str, ...]], bool]") -> None:
    while True:
        request = posix.read(requests, _MAX_REQUEST + 1)
        if not request or request == _END:
            return
        args = tuple(request.decode("utf-8", "surrogateescape").split("\0"))
        if len(request) > _MAX_REQUEST or not allowed(args):
            posix.write(answers, _REFUSED)
        else:
            posix.write(answers, _DONE if run(*args) else _FAILED)
