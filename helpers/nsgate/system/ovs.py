"""Open vSwitch, through `ovs-vsctl` found on the fixed root-owned PATH, run with a fixed
environment, no inherited fds but /dev/null, and its output discarded (lxc-user-nic.md §8)."""

import posix

SEARCH_PATH = ("/usr/sbin", "/usr/bin", "/sbin", "/bin")
ENVIRONMENT = {"PATH": ":".join(SEARCH_PATH)}


def _vsctl() -> str | None:
    for directory in SEARCH_PATH:
        path = directory + "/ovs-vsctl"
        try:
            st = posix.stat(path)
        except OSError:
            continue
        if st.st_uid == 0 and not st.st_mode & 0o022:
            return path
    return None


def run(*args: str) -> bool:
    """Whether `ovs-vsctl <args>` ran and exited 0 (False when it is not installed)."""
    path = _vsctl()
    if path is None:
        return False
    null = posix.open("/dev/null", posix.O_RDWR | posix.O_CLOEXEC)
    try:
        pid = posix.posix_spawn(path, [path, "--timeout=5", *args], ENVIRONMENT, file_actions=[
            (posix.POSIX_SPAWN_DUP2, null, 0), (posix.POSIX_SPAWN_DUP2, null, 1),
            (posix.POSIX_SPAWN_DUP2, null, 2)])
    finally:
        posix.close(null)
    _, status = posix.waitpid(pid, 0)
    return posix.WIFEXITED(status) and posix.WEXITSTATUS(status) == 0


def bridge_exists(name: str) -> bool:
    return run("br-exists", name)
