"""Shared helpers for the tests: test accounts, target processes, running the helpers."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

PREFIX = Path(os.environ.get("NSGATE_PREFIX", "/usr/local"))
NSGATE = PREFIX / "libexec" / "nsgate"
SHADOW = Path("/usr/bin")  # Debian's uidmap package: the reference
SANDBOX = Path("/run/nsgate-test")


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int


ALICE = User("nsgt-alice", 23001, 23001)
BOB = User("nsgt-bob", 23002, 23002)
CAROL = User("nsgt-carol", 23003, 23003)  # no subordinate ids by default
ALICE_ALIAS = User("nsgt-alias", 23001, 23001)  # a second name for alice's uid
AUX_GID = 23010  # a group alice is a member of
NOBODY_UID = 23099  # no passwd entry at all

TEST_USERS = [(u.name, u.uid, u.gid) for u in (ALICE, BOB, CAROL, ALICE_ALIAS)]
TEST_GROUPS = [("nsgt-alice", 23001, []), ("nsgt-bob", 23002, []), ("nsgt-carol", 23003, []),
               ("nsgt-aux", AUX_GID, ["nsgt-alice"])]


# --- the transport: how a helper run reaches its privilege ------------------------------------
# "setuid": no service runs, the launcher's setuid bit serves in-process. "service": nsgated runs,
# and every command that runs one of nsgate's helpers runs under no_new_privs, where the kernel
# ignores the setuid bit: only the service can have served it (getsubids, which needs no
# privilege, is served because the service is up: its launcher asks it first). The `transport`
# fixture of tests/conftest.py (module-wide, parametrised) sets it; a module opts in with
# `pytestmark = pytest.mark.usefixtures("transport")`.
TRANSPORTS = ("setuid", "service")
_transport = ["setuid"]


def transport() -> str:
    return _transport[0]


def set_transport(name: str) -> None:
    assert name in TRANSPORTS, name
    _transport[0] = name


def only_transport(name: str) -> pytest.MarkDecorator:
    """A test that concerns one transport only (say why next to it)."""
    return pytest.mark.parametrize("transport", [name], indirect=True)


def runs_nsgate(argv: Sequence[str | bytes]) -> bool:
    """argv runs one of nsgate's helpers (named in it, possibly in a shell script): never the
    reference tools, which cannot gain privilege under no_new_privs."""
    home = str(NSGATE).encode()
    return any(home in (arg if isinstance(arg, bytes) else arg.encode("utf-8", "surrogateescape"))
               for arg in argv)


def transport_privs(argv: Sequence[str | bytes] | None = None) -> tuple[str, ...]:
    """setpriv's options the transport adds to a command (all of argv's if None)."""
    if transport() == "service" and (argv is None or runs_nsgate(argv)):
        return ("--no-new-privs",)
    return ()


def as_user(user: User, argv: Sequence[str | bytes], *, gid: int | None = None,
            extra: tuple[str, ...] = ()) -> list[str | bytes]:
    """argv run as `user` with its groups, as a login would give them (under no_new_privs when
    it runs an nsgate helper through the service transport)."""
    privs = () if "--no-new-privs" in extra else transport_privs(argv)
    return ["setpriv", f"--reuid={user.uid}", f"--regid={user.gid if gid is None else gid}",
            "--init-groups", *privs, *extra, "--", *argv]


def run_as(user: User, argv: list[str], *, gid: int | None = None,
           extra: tuple[str, ...] = (), env: dict[str, str] | None = None,
           timeout: float = 30, **kwargs) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(as_user(user, argv, gid=gid, extra=extra), capture_output=True,
                          timeout=timeout, env=env, **kwargs)


def helper(name: str, impl: str = "nsgate") -> str:
    return str((NSGATE if impl == "nsgate" else SHADOW) / name)


def read_map(pid: int, name: str) -> list[tuple[int, int, int]]:
    text = Path(f"/proc/{pid}/{name}").read_text()
    return [tuple(int(x) for x in line.split()) for line in text.splitlines()]  # type: ignore[misc]


def setgroups(pid: int) -> str:
    return Path(f"/proc/{pid}/setgroups").read_text().strip()


_live: set[int] = set()


class Target:
    """A process of a test user that has just entered a new user namespace (and netns)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.pid = proc.pid

    @classmethod
    def start(cls, user: User, *, net: bool = False, gid: int | None = None) -> Target:
        unshare = ["unshare", "--user"] + (["--net"] if net else [])
        proc = subprocess.Popen(
            as_user(user, [*unshare, "--", "sh", "-c", "echo ready; exec sleep 600"], gid=gid),
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line == b"ready\n", f"target did not start: {line!r}"
        _live.add(proc.pid)
        return cls(proc)

    def uid_map(self) -> list[tuple[int, int, int]]:
        return read_map(self.pid, "uid_map")

    def gid_map(self) -> list[tuple[int, int, int]]:
        return read_map(self.pid, "gid_map")

    def setgroups(self) -> str:
        return setgroups(self.pid)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()
        _live.discard(self.pid)

    @staticmethod
    def live_pids() -> list[int]:
        return list(_live)


def write_etc(name: str, text: str | bytes, mode: int = 0o644) -> None:
    """Replace a file in the test overlay of /etc (never the host's)."""
    path = Path("/etc") / name
    path.unlink(missing_ok=True)
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    os.chmod(path, mode)


# --- what the kernel reports about a process: wait on that, never on the wall clock -----------
# A loaded 2-CPU CI makes any "within N seconds" flaky; these wait for a state the kernel shows
# (/proc/PID/stat, /proc/PID/wchan, /proc/locks), with a generous deadline that only stops a
# hung test.

PATIENCE = 120.0  # seconds: only a hang takes this long


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = PATIENCE) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.005)


def proc_state(pid: int) -> str:
    """The state letter of /proc/PID/stat (R, S, D, T, t, Z, ...), or "gone"."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return "gone"


def wchan(pid: int) -> str:
    """The kernel function a sleeping process waits in ("0" when running), or "gone"."""
    try:
        return Path(f"/proc/{pid}/wchan").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return "gone"


def _locks_on(path: Path) -> list[tuple[bool, int]]:
    """(blocked, pid) of every entry of /proc/locks on the inode at `path` (none if no file).
    /proc/locks names the inode as MAJOR:MINOR:INODE of the file system that holds the lock;
    on overlayfs (the tests' /etc) that device is not the one stat() reports, so where no
    entry matches both, the inode number alone decides."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return []
    exact = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    entries = []
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        blocked = fields[1] == "->"
        if blocked:
            fields = fields[:1] + fields[2:]
        entries.append((fields[5], blocked, int(fields[4])))
    found = [(blocked, pid) for key, blocked, pid in entries if key == exact]
    if found:
        return found
    return [(blocked, pid) for key, blocked, pid in entries
            if key.rsplit(":", 1)[1] == str(st.st_ino)]


def lock_waiters(path: Path) -> set[int]:
    """The pids /proc/locks shows blocked (`->`) waiting for a lock on the file at `path`."""
    return {pid for blocked, pid in _locks_on(path) if blocked}


def lock_holders(path: Path) -> set[int]:
    """The pids /proc/locks shows holding a lock on the file at `path`."""
    return {pid for blocked, pid in _locks_on(path) if not blocked}


@contextlib.contextmanager
def private_dev_log() -> Iterator[socket.socket]:
    """The test's own /dev/log (a datagram socket bound there, 0666 as syslog daemons make it),
    on a copy-on-write overlay of /dev in the session's mount namespace."""
    upper, work = SANDBOX / "dev-upper", SANDBOX / "dev-work"
    subprocess.run(["rm", "-rf", str(upper), str(work)], check=True)
    upper.mkdir()
    work.mkdir()
    subprocess.run(["mount", "-t", "overlay", "nsgate-dev", "-o",
                    f"lowerdir=/dev,upperdir={upper},workdir={work}", "/dev"], check=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind("/dev/log")
        os.chmod("/dev/log", 0o666)
        yield sock
    finally:
        sock.close()
        subprocess.run(["umount", "/dev"], check=True)


# Calls whose effect outlives the process: before one, a kill leaves the world as it was after
# the last one (a descriptor closed, a lock released by the death itself are the same either way).
LASTING_CALLS = frozenset((
    "write", "writev", "pwrite64", "sendto", "sendmsg", "sendmmsg", "rename", "renameat",
    "renameat2", "unlink", "unlinkat", "mkdir", "mkdirat", "rmdir", "fchmod", "fchmodat",
    "chmod", "fchown", "fchownat", "ftruncate", "fsync", "fdatasync", "linkat", "symlinkat",
    "clone", "clone3", "fork", "vfork", "kill", "tgkill", "pidfd_send_signal", "execve"))


def fault_points(trace: str, fault: str, start: str | None = None) -> list[tuple[str, int]]:
    """(system call, its nth occurrence) of every call an `strace -o` log shows from the helper's
    first fork on (its nft runner's: where its action starts), to inject `fault` at each in turn;
    with `error=EIO` the interpreter's memory calls are left out (a failing brk or mmap is a
    MemoryError, not a step of the action); with `signal=KILL` only the first call after each
    call of LASTING_CALLS (a kill anywhere between two of those leaves the same world); with
    `start`, from the first such call after the fork on (e.g. the lock's `flock`)."""
    calls = [line.split("(", 1)[0] for line in trace.splitlines()
             if "(" in line and line[0].isalpha()]
    forked = next(i for i, name in enumerate(calls) if name in ("clone", "clone3", "fork"))
    begin = forked if start is None else calls.index(start, forked)
    seen: dict[str, int] = {}
    points = []
    memory = ("brk", "mmap", "munmap", "mremap", "madvise", "mprotect")
    for position, name in enumerate(calls):
        seen[name] = seen.get(name, 0) + 1
        if position < begin:
            continue
        after_lasting = position == begin or calls[position - 1] in LASTING_CALLS
        if fault == "signal=KILL" and not after_lasting:
            continue
        if not (fault == "error=EIO" and name in memory):
            points.append((name, seen[name]))
    return points
