"""C11/A5/B3: symlinks and swaps on every path the helper opens that a user could influence.

- newuidmap/newgidmap take the target as `fd:N`: alice hands over her own directory whose map
  files are symlinks to a root file, /proc itself, an O_PATH fd of the /proc/self symlink,
  another user's /proc/<pid>, procfs directories that are not a process (ns/, fd/), a magic
  link that leads off procfs, a thread's directory, and the directory of a target that has
  exited. Nothing but the request's own map is ever written, and no root file changes.
- lxc-user-nic delete takes a netns path: a symlink (or a chain) to a FIFO, a device, a mount
  ns, a netns alice cannot reach, her own netns. Nothing blocks, nothing is opened for I/O.
- The system files (/etc/subuid, /etc/subgid, /etc/login.defs, /etc/nsswitch.conf,
  /etc/lxc/lxc-usernet, /run/lxc and the db and lock in it) are root's alone, so alice cannot
  swap them; the probes show the helper refuses every untrusted state rather than following
  it: a symlink (to a file alice writes, to a root file, to /dev/zero), a FIFO, a directory, a
  file alice owns, a group-writable directory.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.attacks.conftest import (
    ATTACKS,
    BRIDGE,
    DB,
    LOCK,
    PYTHON,
    MapRequest,
    NicRequest,
    Request,
    Result,
    attack,
    chown_tree,
    count_probe,
    host_veths,
    net_names,
    verify,
    with_private_run,
)
from tests.support import ALICE, BOB, Target, only_transport
from tests.usernic_support import Proc

pytestmark = [pytest.mark.attack("C11 symlinks and swaps"),
              pytest.mark.usefixtures("transport")]

VICTIM_TEXT = "root's file, untouched\n"

# Inherit `fd` opened (as alice) with `flags` on `path` as fd 5, then exec argv.
WITH_FD = r"""
import os, sys
path, flags, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
fd = os.open(path, flags)
if fd != 5:
    os.dup2(fd, 5)
    os.close(fd)
os.set_inheritable(5, True)
if os.environ.get("NSGT_WAIT"):
    print("open", flush=True)
    sys.stdin.readline()
os.execv(argv[0], argv)
"""
O_PATH = 0o10000000


@pytest.fixture
def victim() -> Iterator[Path]:
    """A root-owned file no run may change."""
    path = ATTACKS / "victim"
    ATTACKS.mkdir(mode=0o755, exist_ok=True)
    path.write_text(VICTIM_TEXT)
    os.chmod(path, 0o644)
    yield path
    assert path.read_text() == VICTIM_TEXT, "a root file was written through a symlink"


@pytest.fixture
def etc_states() -> Iterator[Callable[[str], Path]]:
    """`replaced(name)` takes /etc/<name> out of the way and returns the path to put an
    untrusted state at; every such path is cleared again afterwards, before the session's
    own fixtures (which write through what they find) rewrite the file."""
    saved: dict[Path, bytes | None] = {}

    def replaced(name: str) -> Path:
        path = Path("/etc") / name
        saved[path] = path.read_bytes() if path.is_file() and not path.is_symlink() else None
        _remove(path)
        return path

    yield replaced
    for path, content in saved.items():
        _remove(path)
        if content is not None:
            path.write_bytes(content)
            os.chmod(path, 0o644)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _run_with_fd(request: Request, path: str, flags: int, *, wait: Callable[[], None] | None
                 = None) -> Result:
    argv = [PYTHON, "-I", "-c", WITH_FD, path, str(flags), request.argv[0], "fd:5",
            *request.args[1:]]
    if wait is None:
        return attack(argv)
    proc = subprocess.Popen(["setpriv", f"--reuid={ALICE.uid}", f"--regid={ALICE.gid}",
                             "--init-groups", "--", "/usr/bin/env", "NSGT_WAIT=1", *argv],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"open\n"
    wait()
    out, err = proc.communicate(b"go\n", timeout=20)
    count_probe()
    return Result(proc.returncode, out, err)


# --- newuidmap / newgidmap: fd:N ------------------------------------------------------------------

FD_CASES = ["own dir of symlinks", "/proc", "O_PATH /proc/self symlink", "other user's /proc/pid",
            "/proc/pid/ns", "/proc/pid/fd", "/proc/pid/cwd magic link", "/proc/pid/task/tid",
            "exited target"]


@pytest.mark.helpers("newuidmap", "newgidmap")
@pytest.mark.parametrize("case", FD_CASES)
def test_fd_argument(helper, scenario, case, evil_dir, victim):
    request = scenario.request()
    assert isinstance(request, MapRequest)
    pid, flags = request.pid, os.O_RDONLY | os.O_DIRECTORY
    expected = "untouched"
    wait = None
    others: list[Target] = []
    if case == "own dir of symlinks":
        fake = evil_dir / "proc"
        fake.mkdir()
        for name in ("uid_map", "gid_map", "setgroups", "projid_map"):
            (fake / name).symlink_to(victim)
        (fake / "ns").mkdir()
        (fake / "ns" / "user").symlink_to(f"/proc/{pid}/ns/user")
        chown_tree(evil_dir)
        path = str(fake)
    elif case == "/proc":
        path = "/proc"
    elif case == "O_PATH /proc/self symlink":
        path, flags = "/proc/self", O_PATH | os.O_NOFOLLOW
    elif case == "other user's /proc/pid":
        others.append(Target.start(BOB))
        path = f"/proc/{others[0].pid}"
    elif case == "/proc/pid/ns":
        path = f"/proc/{pid}/ns"
    elif case == "/proc/pid/fd":
        path = f"/proc/{pid}/fd"
    elif case == "/proc/pid/cwd magic link":
        path = f"/proc/{pid}/cwd"
    elif case == "/proc/pid/task/tid":  # the same process by another name: either answer
        path, expected = f"/proc/{pid}/task/{pid}", "any"
    else:
        path = f"/proc/{pid}"

        def wait() -> None:  # the target exits (and is reaped) after alice opened its dir
            request.target.proc.send_signal(signal.SIGKILL)
            request.target.proc.wait()
    try:
        result = _run_with_fd(request, path, flags, wait=wait)
        if case == "exited target":
            assert result.rc == 1, result
            assert result.err and result.err.startswith(helper.encode() + b": "), result.err
            assert b"Traceback" not in result.err and b"internal error" not in result.err
            return
        state = verify(request, result)
        if expected != "any":
            assert state == expected, result
        for other in others:
            assert other.uid_map() == other.gid_map() == [], "another user's map was written"
            assert other.setgroups() == "allow"
    finally:
        for other in others:
            other.stop()


# --- the system files ----------------------------------------------------------------------------

SUBID_GRANT = "nsgt-alice:100000:65536\nnsgt-alice:200000:65536\n"
STATES = ["symlink to alice's file", "symlink to a root file", "symlink to /dev/zero", "FIFO",
          "directory", "alice's file", "group-writable file"]


def _untrusted(path: Path, state: str, evil_dir: Path, content: str) -> None:
    """Put `state` at `path`; `content` is what the file would grant if it were followed."""
    if state == "symlink to alice's file":
        mine = evil_dir / path.name
        mine.write_text(content)
        chown_tree(evil_dir)
        path.symlink_to(mine)
    elif state == "symlink to a root file":
        real = ATTACKS / f"real-{path.name}"
        real.write_text(content)
        os.chmod(real, 0o644)
        path.symlink_to(real)
    elif state == "symlink to /dev/zero":
        path.symlink_to("/dev/zero")
    elif state == "FIFO":
        os.mkfifo(path, 0o644)
    elif state == "directory":
        path.mkdir(mode=0o755)
    else:
        path.write_text(content)
        if state == "alice's file":
            os.chown(path, ALICE.uid, ALICE.gid)
            os.chmod(path, 0o644)
        else:
            os.chmod(path, 0o664)


def _never_blocked(result: Result) -> None:
    """The kernel never showed the run waiting on a FIFO, and it did not spin on an endless
    file (/dev/zero): its CPU time, unlike the wall clock, does not grow with the load."""
    assert result.blocked is None, f"blocked on a FIFO ({result.blocked})"
    assert result.cpu < 5, f"{result.cpu:.1f} s of CPU: reading without end?"


def _refused_quickly(request: Request, result: Result) -> None:
    _never_blocked(result)
    assert verify(request, result) == "untouched", result


@pytest.mark.helpers("newuidmap", "newgidmap", "getsubids")
@pytest.mark.parametrize("state", STATES)
def test_subid_file(helper, scenario, state, evil_dir, etc_states):
    """/etc/subuid (or subgid) in an untrusted state that would grant alice 100000-165535:
    the request for that range (for getsubids: the listing) is refused, not granted."""
    name = "subgid" if helper == "newgidmap" else "subuid"
    _untrusted(etc_states(name), state, evil_dir, SUBID_GRANT)
    request = scenario.refused() if helper != "getsubids" else scenario.request()
    result = attack(request.argv, watch=True)
    _refused_quickly(request, result)
    assert b"100000" not in (result.out or b"")


@pytest.mark.helpers("newuidmap", "newgidmap", "getsubids")
@pytest.mark.parametrize(("name", "state"), [
    ("login.defs", "symlink to alice's file"), ("login.defs", "FIFO"),
    ("login.defs", "alice's file"), ("nsswitch.conf", "symlink to alice's file"),
    ("nsswitch.conf", "alice's file")])
def test_other_system_files(helper, scenario, name, state, evil_dir, etc_states, marker_dir):
    """login.defs (SUB_UID_COUNT, GRANT_AUX_GROUP_SUBIDS) and nsswitch.conf (which subid
    module to load as root) in a state alice could have written: refused. (getsubids does not
    read login.defs: its listing stays exact.) A FIFO nsswitch.conf would hang glibc's own
    lookups before nsgate could look at it: not probed."""
    content = {"login.defs": "GRANT_AUX_GROUP_SUBIDS yes\nSUB_UID_COUNT 0\n",
               "nsswitch.conf": "passwd: files\ngroup: files\nsubid: nsgtevil\n"}[name]
    _untrusted(etc_states(name), state, evil_dir, content)
    request = scenario.request()
    result = attack(request.argv, watch=True)
    _never_blocked(result)
    state_ = verify(request, result)
    if helper != "getsubids" or name == "nsswitch.conf":
        assert state_ == "untouched", result


# --- lxc-user-nic: the delete path ---------------------------------------------------------------

DELETE_TARGETS = ["FIFO", "/dev/zero", "mount ns", "root's netns", "own netns",
                  "chain of symlinks to a FIFO"]


@pytest.mark.helpers("lxc-user-nic")
@pytest.mark.parametrize("target", DELETE_TARGETS)
def test_delete_path_symlinks(helper, scenario, target, evil_dir):
    request = scenario.request()
    assert isinstance(request, NicRequest)
    db_before = DB.read_bytes() if DB.exists() else None
    link = evil_dir / "netns"
    others: list[Proc] = []
    if target in ("FIFO", "chain of symlinks to a FIFO"):
        os.mkfifo(evil_dir / "fifo", 0o666)
        pointed = str(evil_dir / "fifo")
    elif target == "/dev/zero":
        pointed = "/dev/zero"
    elif target == "mount ns":
        pointed = f"/proc/{request.pid}/ns/mnt"
    elif target == "root's netns":
        others.append(Proc.in_root_netns(None))
        pointed = others[0].netns
    else:
        pointed = request.ctr.netns
    if target.startswith("chain"):
        (evil_dir / "a").symlink_to(pointed)
        (evil_dir / "b").symlink_to(evil_dir / "a")
        link.symlink_to(evil_dir / "b")
    else:
        link.symlink_to(pointed)
    chown_tree(evil_dir)
    argv = [request.argv[0], "delete", "x", "x", str(link), "veth", BRIDGE, "veth23001_xxxx"]
    try:
        result = attack(argv, watch=True)
    finally:
        for other in others:
            other.stop()
            Proc.started.remove(other)
    _never_blocked(result)
    assert result.rc == 1 and result.out == b"", result
    # her own netns is one: then the bridge decides (a Linux bridge's ports are not deleted)
    message = (b"Deletion of non ovs type network devices not implemented"
               if target == "own netns" else b"Failed while opening netns file for")
    assert result.err.startswith(b"lxc-user-nic: " + message), result.err
    assert verify(request, result) == "untouched"
    assert (DB.read_bytes() if DB.exists() else None) == db_before


# --- lxc-user-nic: lxc-usernet, the db and /run/lxc -----------------------------------------------


@pytest.mark.helpers("lxc-user-nic")
@pytest.mark.parametrize("state", STATES)
def test_usernet_file(helper, scenario, state, evil_dir, etc_states):
    """/etc/lxc/lxc-usernet in an untrusted state that would grant alice a nic on a bridge
    the real file does not grant: refused, nothing created."""
    _untrusted(etc_states("lxc/lxc-usernet"), state, evil_dir, f"nsgt-alice veth {BRIDGE} 5\n")
    request = scenario.request()
    result = attack(request.argv, watch=True)
    _refused_quickly(request, result)


@pytest.mark.helpers("lxc-user-nic")
@pytest.mark.parametrize(("which", "state"), [
    ("nics", "FIFO"), ("nics.lock", "FIFO"), ("nics", "symlink to alice's file"),
    ("nics.lock", "symlink to alice's file"), ("nics", "symlink to /dev/zero"),
    ("nics", "group-writable file"), ("nics.lock", "directory")])
def test_db_files(helper, scenario, which, state, evil_dir):
    path = {"nics": DB, "nics.lock": LOCK}[which]
    request = scenario.request()  # (before: it reads the db)
    _untrusted(path, state, evil_dir, "nsgt-bob veth nsgtatk0 vethbob\n")
    mine = evil_dir / path.name
    before = mine.read_bytes() if mine.exists() else None
    result = attack(request.argv, watch=True)
    _never_blocked(result)
    assert result.rc == 1 and result.err.startswith(f"lxc-user-nic: refusing to use {path}"
                                                    .encode()), result
    # (the outcome reads the db: take the untrusted state away first)
    if path.is_dir() and not path.is_symlink():
        path.rmdir()
    else:
        path.unlink()
    assert request.outcome() == "untouched"
    assert (mine.read_bytes() if mine.exists() else None) == before


RUN_LXC_STATES = {
    "symlink to a root dir": "mkdir -m 0755 /run/elsewhere; ln -s /run/elsewhere /run/lxc",
    "symlink to alice's dir": (f"mkdir -m 0755 /run/elsewhere; chown {ALICE.uid}:{ALICE.gid} "
                               "/run/elsewhere; ln -s /run/elsewhere /run/lxc"),
    "alice's dir": f"mkdir -m 0755 /run/lxc; chown {ALICE.uid}:{ALICE.gid} /run/lxc",
    "world-writable dir": "mkdir -m 0777 /run/lxc",
    "regular file": "touch /run/lxc",
    "/run itself alice's": f"chown {ALICE.uid}:{ALICE.gid} /run",
}


# A /run of the caller's mount namespace: the service's worker acts in the service's own.
@only_transport("setuid")
@pytest.mark.helpers("lxc-user-nic")
@pytest.mark.parametrize("state", list(RUN_LXC_STATES))
def test_run_lxc_states(helper, scenario, state):
    """A private /run (the session's /run/lxc is a mount point) with /run/lxc in a state
    alice could have prepared: refused before anything is created, nothing written there."""
    request = scenario.request()
    result, listing = with_private_run(RUN_LXC_STATES[state], request.argv)
    assert result.rc == 1 and result.err.startswith(b"lxc-user-nic: refusing to use /run"), result
    assert verify(request, result) == "untouched"
    for path in ("/run/elsewhere", "/run/lxc"):
        assert not any(p.startswith(path + "/") for p in listing), listing
    assert not host_veths() and net_names(request.pid) == {"lo"}


def test_the_fifo_watch_sees_a_blocked_open(evil_dir):
    """The check above is not vacuous: a reader opening a FIFO nobody writes is seen blocked
    (and killed) by the watch."""
    fifo = evil_dir / "fifo"
    os.mkfifo(fifo, 0o644)
    chown_tree(evil_dir)
    result = attack(["cat", str(fifo)], watch=True, probe=False)
    assert result.blocked == "wait_for_partner" and result.rc == -9, result
