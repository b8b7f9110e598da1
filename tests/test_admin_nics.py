"""`nsgate nics list` and `nsgate nics gc`: the nic database with liveness (interfaces that exist
in this network namespace), and pruning of the stale lines only (and of the private bridges with
no port left), under lxc-user-nic's lock."""

from __future__ import annotations

import fcntl
import os
import stat
import subprocess

import pytest

from tests.admin_support import (
    NICS,
    NSGATE_BIN,
    clean_nic_state,
    ip,
    links,
    nsgate,
    nsgate_json,
    write_nics,
)
from tests.support import ALICE, lock_waiters, wait_for
from tests.usernic_support import LOCK

LIVE = ["nsgt-alice veth nsgtbr0 nsgtv0", "nsgt-bob veth none nsgtv1"]
STALE = ["nsgt-alice veth nsgtbr0 veth23001_dead", "@nsgt-aux veth nsgtbr0 veth23002_gone"]
JUNK = "# a line nsgate cannot read"


@pytest.fixture(autouse=True)
def world():
    clean_nic_state()
    before = links()
    ip("link", "add", "nsgtbr0", "type", "bridge")
    ip("link", "add", "nsgtv0", "type", "veth", "peer", "name", "nsgtv0p")
    ip("link", "add", "nsgtv1", "type", "veth", "peer", "name", "nsgtv1p")
    yield
    for name in links() - before:
        subprocess.run(["ip", "link", "del", name], capture_output=True)
    clean_nic_state()


def test_list_json_shape_and_liveness():
    write_nics([LIVE[0], STALE[0], JUNK, LIVE[1], STALE[1]])
    status, report = nsgate_json("nics", "list")
    assert status == 0
    assert report == {
        "file": "/run/lxc/nics",
        "nics": [
            {"line": 1, "owner": "nsgt-alice", "type": "veth", "bridge": "nsgtbr0",
             "interface": "nsgtv0", "live": True},
            {"line": 2, "owner": "nsgt-alice", "type": "veth", "bridge": "nsgtbr0",
             "interface": "veth23001_dead", "live": False},
            {"line": 4, "owner": "nsgt-bob", "type": "veth", "bridge": "none",
             "interface": "nsgtv1", "live": True},
            {"line": 5, "owner": "@nsgt-aux", "type": "veth", "bridge": "nsgtbr0",
             "interface": "veth23002_gone", "live": False}],
        "unparsed": [{"line": 3, "text": JUNK}]}


def test_list_human_table():
    write_nics([LIVE[0], STALE[0]])
    result = nsgate("nics", "list")
    assert result.returncode == 0 and result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["LINE", "OWNER", "TYPE", "BRIDGE", "INTERFACE", "STATE"]
    assert lines[1].split() == ["1", "nsgt-alice", "veth", "nsgtbr0", "nsgtv0", "live"]
    assert lines[2].split() == ["2", "nsgt-alice", "veth", "nsgtbr0", "veth23001_dead", "stale"]
    assert lines[0].index("STATE") == lines[1].index("live") == lines[2].index("stale")
    assert lines[3] == "1 stale line: 'nsgate nics gc' (as root) removes it"


def test_list_of_an_empty_or_missing_database():
    assert nsgate("nics", "list").stdout == "/run/lxc/nics: no nics recorded\n"
    assert nsgate_json("nics", "list") == (0, {"file": "/run/lxc/nics", "nics": [],
                                               "unparsed": []})


def test_list_needs_to_read_the_database():
    write_nics(LIVE)
    result = nsgate("nics", "list", user=ALICE)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith("nsgate: cannot read /run/lxc/nics: permission denied")
    assert "as root" in result.stderr


def test_gc_removes_only_stale_lines():
    write_nics([LIVE[0], STALE[0], JUNK, LIVE[1], STALE[1]])
    result = nsgate("nics", "gc")
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == ("removed 2 stale lines from /run/lxc/nics:\n"
                             f"  {STALE[0]}\n  {STALE[1]}\n")
    assert NICS.read_text() == f"{LIVE[0]}\n{JUNK}\n{LIVE[1]}\n"
    st = NICS.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o600)
    assert [n["live"] for n in nsgate_json("nics", "list")[1]["nics"]] == [True, True]


def test_gc_with_nothing_stale_leaves_the_file_alone():
    write_nics(LIVE)
    inode = NICS.stat().st_ino
    assert nsgate("nics", "gc").stdout == "/run/lxc/nics: no stale lines\n"
    assert NICS.stat().st_ino == inode and NICS.read_text() == "".join(x + "\n" for x in LIVE)


def test_gc_removes_the_recorded_private_bridges_with_no_port_left():
    """nsgu<uid> bridges nsgate recorded in /run/lxc/nsgate-bridges: one without ports goes
    with its line, one with a port stays, a line whose bridge is gone is forgotten; a bridge
    of that name nsgate did not record, and a line it cannot read, are left alone."""
    for name in ("nsgu23001", "nsgu23002", "nsgu23003"):
        ip("link", "add", name, "type", "bridge")
    ip("link", "set", "nsgtv0", "master", "nsgu23002")
    record = NICS.parent / "nsgate-bridges"
    record.write_text("23001 nsgu23001\n23002 nsgu23002\n23004 nsgu23004\njunk\n")
    os.chmod(record, 0o644)
    write_nics(LIVE)
    result = nsgate("nics", "gc")
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == ("/run/lxc/nics: no stale lines\n"
                             "removed private bridge nsgu23001: no port left\n")
    assert {"nsgu23002", "nsgu23003"} <= links() and "nsgu23001" not in links()
    assert record.read_text() == "23002 nsgu23002\njunk\n"
    st = record.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o644)


def test_gc_needs_root():
    write_nics([*LIVE, *STALE])
    result = nsgate("nics", "gc", user=ALICE)
    assert result.returncode == 1 and result.stderr.startswith(
        "nsgate: nsgate nics gc must run as root")
    assert NICS.read_text() == "".join(x + "\n" for x in [*LIVE, *STALE])


def test_gc_waits_for_the_lock_lxc_user_nic_holds():
    write_nics([LIVE[0], STALE[0]])
    fd = os.open("/run/lxc/nics.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    proc = subprocess.Popen([str(NSGATE_BIN), "nics", "gc"], stdout=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: proc.pid in lock_waiters(LOCK) or proc.poll() is not None,
                 "gc to block on the lock")
        assert proc.poll() is None  # still waiting, blocked on the lock
        assert NICS.read_text() == f"{LIVE[0]}\n{STALE[0]}\n"
    finally:
        os.close(fd)  # releases the lock
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0 and "removed 1 stale line" in out
    assert NICS.read_text() == f"{LIVE[0]}\n"


def test_usage():
    assert nsgate("nics").returncode == 2
    assert nsgate("nics", "gc", "--json").returncode == 2
    assert nsgate("nics", "list", "extra").returncode == 2
