"""Running another program from a helper (ovs-vsctl, nft): found only in the system's own
directories and only if root alone can change it, run with a fixed environment, from a child
that holds none of the helper's files."""

import posix

from nsgate.system.integrity import root_only

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
