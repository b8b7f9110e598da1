"""Running another program from a helper (ovs-vsctl, nft): found only in the system's own
directories and only if root alone can change it, run with a fixed environment, from a child
that holds none of the helper's files."""

import posix

from nsgate.system.integrity import root_only

TYPE_CHECKING = False  # typing costs import time on every helper run
if TYPE_CHECKING:
    from collections.abc import Callable

SEARCH_PATH = ("/usr/sbin", "/usr/bin", "/sbin", "/bin")
ENVIRONMENT = {"PATH": ":".join(SEARCH_PATH)}


def find(name: str) -> str | None:
    """The first `name` in SEARCH_PATH that is a regular file only root can change."""
    for directory in SEARCH_PATH:
        path = f"{directory}/{name}"
        try:
            st = posix.stat(path)
        except OSError:
            continue
        if root_only(st):
            return path
    return None


def keep_only_fds(*keep: int) -> None:
    """The (child) process keeps no fd above stderr but `keep`: none of the helper's sockets,
    namespaces or files."""
    low = 3
    for fd in sorted(keep):
        posix.closerange(low, fd)
        low = fd + 1
    posix.closerange(low, 1 << 20)


def fork_server(serve: "Callable[[int, int], None]") -> tuple[int, int, int]:
    """Fork a child, before the helper confines itself, that runs `serve(requests, answers)`
    holding nothing of the helper's but those two pipe ends, then exits. Returns its pid, the
    end to write requests to and the end to read answers from; the child ends when `serve`
    returns (it should return when the requests pipe closes), so it cannot outlive the helper."""
    requests_out, requests_in = posix.pipe2(posix.O_CLOEXEC)
    answers_out, answers_in = posix.pipe2(posix.O_CLOEXEC)
    pid = posix.fork()
    if pid == 0:
        status = 1
        try:
            keep_only_fds(requests_out, answers_in)
            serve(requests_out, answers_in)
            status = 0
        finally:
            posix._exit(status)
    posix.close(requests_out)
    posix.close(answers_in)
    return pid, requests_in, answers_out
