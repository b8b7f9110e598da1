"""Every decision of every helper goes to syslog, after privilege is dropped (README, issue 9 §9).

For newuidmap, newgidmap, getsubids and lxc-user-nic, a granted and a refused request each:
- the record reaches the test's own /dev/log (an overlay over /dev in the test's mount
  namespace, as in test_audit.py): facility authpriv, the helper's name as ident, the decision,
  the caller's uid, and the caller's text escaped;
- it was sent with no privilege left, seen by the kernel at the moment of sending: the test's
  /dev/log socket is full (its queue of datagrams is at the limit), so the helper's send blocks
  in unix_wait_for_peer; while it is blocked there, /proc/PID/status shows its uids and gids
  all the caller's and its capability sets empty; the SCM_CREDENTIALS of the record (SO_PASSCRED)
  name the helper's pid and the caller's uid;
- and the socket was connected only after the last credential change (strace: the connect to
  /dev/log follows the final setresuid to the caller and the capset that empties every set).
Through the service transport the helper is the worker of nsgated that serves alice: the same
record, sent by it with the same credentials, after the same drop.
"""

from __future__ import annotations

import re
import socket
import struct
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.service_support import acting_pids, service_traced
from tests.support import (
    ALICE,
    Target,
    as_user,
    helper,
    private_dev_log,
    proc_state,
    transport,
    wait_for,
    wchan,
    write_etc,
)
from tests.usernic_support import Proc, add_bridge, clean_db, ip_links

pytestmark = pytest.mark.usefixtures("transport")

LOG_AUTHPRIV = 10 << 3
LOG_WARNING, LOG_NOTICE = 4, 5
EVIL = "\x1b[31m\nevil"  # caller text: an escape sequence and a newline
EVIL_LOGGED = b"\\x1b[31m\\nevil"


@dataclass(frozen=True)
class Case:
    prog: str
    argv: list[str]
    status: int
    decision: bytes  # what the record must say after "allowed: "/"refused: " and the caller


def _cases(target: Target, ctr: Proc | None) -> dict[str, Case]:
    pid = str(target.pid)
    cases = {
        "newuidmap granted": Case("newuidmap", [pid, "0", "200000", "10"], 0,
                                  b"caller uid 23001 gid 23001, newuidmap " + pid.encode()),
        "newuidmap refused": Case("newuidmap", [EVIL, "0", "200000", "10"], 1,
                                  b"caller uid 23001 gid 23001, newuidmap " + EVIL_LOGGED),
        "newgidmap granted": Case("newgidmap", [pid, "0", "200000", "10"], 0,
                                  b"caller uid 23001 gid 23001, newgidmap " + pid.encode()),
        "newgidmap refused": Case("newgidmap", [pid, "0", "400000", "10"], 1,
                                  b"caller uid 23001 gid 23001, newgidmap " + pid.encode()),
        "getsubids granted": Case("getsubids", ["nsgt-alice"], 0,
                                  b"caller uid 23001, getsubids nsgt-alice: ranges listed: 1"),
        "getsubids refused": Case("getsubids", ["-g", EVIL], 1,
                                  b"caller uid 23001, getsubids -g " + EVIL_LOGGED
                                  + b": Error fetching ranges"),
    }
    if ctr is not None:
        cpid = str(ctr.pid)
        cases["lxc-user-nic granted"] = Case(
            "lxc-user-nic", ["create", "/var/lib/lxc", "c1", cpid, "veth", "nsgtlogbr"], 0,
            b"caller uid 23001, lxc-user-nic create /var/lib/lxc c1 " + cpid.encode())
        cases["lxc-user-nic refused"] = Case(
            "lxc-user-nic", ["create", "/var/lib/lxc", "c1", cpid, "veth", "nsgtlogbr", EVIL], 1,
            b"caller uid 23001, lxc-user-nic create /var/lib/lxc c1 " + cpid.encode()
            + b" veth nsgtlogbr " + EVIL_LOGGED)
    return cases


CASES = [f"{prog} {outcome}" for prog in ("newuidmap", "newgidmap", "getsubids", "lxc-user-nic")
         for outcome in ("granted", "refused")]


@pytest.fixture
def dev_log() -> Iterator[socket.socket]:
    """The test's own /dev/log, receiving with SO_PASSCRED."""
    with private_dev_log() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        yield sock


@pytest.fixture
def nic_world() -> Iterator[Proc]:
    """A bridge alice is granted a nic on, and a container of hers."""
    clean_db()
    write_etc("lxc/lxc-usernet", "nsgt-alice veth nsgtlogbr 5\n")
    add_bridge("nsgtlogbr")
    ctr = Proc.container(ALICE)
    try:
        yield ctr
    finally:
        Proc.stop_all()
        for name in ip_links():
            if name == "nsgtlogbr" or re.fullmatch(r"veth23001_\w{4}", name):
                subprocess.run(["ip", "link", "del", name], capture_output=True, check=False)
        Path("/etc/lxc/lxc-usernet").unlink(missing_ok=True)
        clean_db()


def _fill(sock: socket.socket) -> int:
    """Queue datagrams on `sock` until the kernel refuses more: the next sender blocks."""
    filler = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    filler.setblocking(False)
    count = 0
    try:
        while True:
            filler.sendto(b"filler", "/dev/log")
            count += 1
    except BlockingIOError:
        return count
    finally:
        filler.close()


def _status(pid: int) -> dict[str, list[str]]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.split()
    return fields


def _sending(client: int) -> set[int]:
    """Who acts for the helper started as `client` (itself, or the service's worker serving it)
    and is blocked sending to the full /dev/log."""
    return {pid for pid in acting_pids(client) if wchan(pid) == "unix_wait_for_peer"}


def _receive(sock: socket.socket) -> tuple[bytes, tuple[int, int, int]]:
    """One datagram and its SCM_CREDENTIALS (pid, uid, gid)."""
    sock.settimeout(30)
    data, ancillary, _, _ = sock.recvmsg(65536, socket.CMSG_SPACE(12))
    creds = [struct.unpack("3i", item[2][:12]) for item in ancillary
             if item[:2] == (socket.SOL_SOCKET, socket.SCM_CREDENTIALS)]
    assert len(creds) == 1, ancillary
    return data, creds[0]


@pytest.mark.parametrize("name", CASES)
def test_the_decision_is_logged_with_no_privilege_left(dev_log, request, name):
    target = request.getfixturevalue("target")
    ctr = request.getfixturevalue("nic_world") if name.startswith("lxc-user-nic") else None
    case = _cases(target, ctr)[name]
    queued = _fill(dev_log)
    proc = subprocess.Popen(as_user(ALICE, [helper(case.prog), *case.argv]),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        wait_for(lambda: _sending(proc.pid) or proc_state(proc.pid) in ("Z", "gone"),
                 f"{case.prog} to send its record to /dev/log")
        assert _sending(proc.pid), \
            f"{case.prog} ended without sending a record: {proc.communicate()}"
        (helper_pid,) = _sending(proc.pid)
        # blocked in the very send of the record: its credentials now are those it sends with
        status = _status(helper_pid)
        assert status["Uid"] == [str(ALICE.uid)] * 4, status["Uid"]
        assert status["Gid"] == [str(ALICE.gid)] * 4, status["Gid"]
        for caps in ("CapEff", "CapPrm", "CapInh", "CapAmb"):
            assert int(status[caps][0], 16) == 0, (caps, status[caps])
        for _ in range(queued):
            assert _receive(dev_log)[0] == b"filler"
        record, (sender, uid, gid) = _receive(dev_log)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == case.status, (out, err)
    assert (sender, uid, gid) == (helper_pid, ALICE.uid, ALICE.gid)
    priority = LOG_AUTHPRIV | (LOG_NOTICE if case.status == 0 else LOG_WARNING)
    assert record.startswith(b"<%d>" % priority), record
    assert re.search(rb"\d %s\[%d\]: " % (case.prog.encode(), helper_pid), record), record
    word = b"allowed: " if case.status == 0 else b"refused: "
    assert word + case.decision in record, record
    assert b"\x1b" not in record and b"\n" not in record, record
    dev_log.settimeout(0.5)
    with pytest.raises(TimeoutError):
        dev_log.recv(65536)  # one record per run


TRACED = "trace=setresuid,setresgid,setuid,setgid,setreuid,setregid,capset,connect"


def _trace(argv: list[str]) -> list[str]:
    """The credential changes and connects of a run, as strace sees them: of the helper run
    as alice, or of the service's worker that serves her."""
    if transport() == "service":
        with service_traced("-qq", "-e", TRACED) as served:
            result = subprocess.run(as_user(ALICE, argv), capture_output=True, text=True,
                                    timeout=120, stdin=subprocess.DEVNULL)
        trace = "\n".join(line for _, line in served)
    else:
        result = subprocess.run(["strace", "-f", "-qq", "-u", ALICE.name, "-e", TRACED, *argv],
                                capture_output=True, text=True, timeout=120,
                                stdin=subprocess.DEVNULL)
        trace = result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return [" ".join(line.split()) for line in trace.splitlines()
            if re.match(r"(\[pid +\d+\] )?(set\w+|capset|connect)\(", line)]


@pytest.mark.parametrize("name", CASES)
def test_dev_log_is_connected_after_the_last_credential_change(dev_log, request, name):
    """A privileged connect would resolve /dev/log (a path the caller's mount namespace may
    decide) with root's rights: it comes after the drop, and nothing changes credentials
    after it."""
    target = request.getfixturevalue("target")
    ctr = request.getfixturevalue("nic_world") if name.startswith("lxc-user-nic") else None
    case = _cases(target, ctr)[name]
    lines = _trace([helper(case.prog), *case.argv])
    connects = [i for i, line in enumerate(lines) if 'sun_path="/dev/log"' in line]
    assert len(connects) == 1, lines
    changes = [i for i, line in enumerate(lines) if not line.startswith("connect(")]
    assert max(changes) < connects[0], lines
    last = [lines[i] for i in changes]
    drop = "{effective=0, permitted=0, inheritable=0}) = 0"
    if case.prog == "getsubids" and transport() == "setuid":
        # installed without privilege: it never changes its ids (a worker of the service becomes
        # the caller, as the other helpers do)
        assert all(line.startswith("capset(") and drop in line for line in last), last
    else:
        assert f"setresuid({ALICE.uid}, {ALICE.uid}, {ALICE.uid}) = 0" in last[-2], last[-3:]
        assert last[-1].startswith("capset(") and drop in last[-1], last[-3:]
    dev_log.settimeout(5)
    assert b"caller uid 23001" in dev_log.recv(65536)
