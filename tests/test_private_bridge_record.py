"""The private bridges' record /run/lxc/nsgate-bridges decides which `nsgu<uid>` bridge nsgate
may adopt: it is trusted exactly as the nic database beside it (integrity.root_only, C11): a
regular file of root's, not a link, writable by no one else. Anything else in its place is
refused with the database's own message; nothing is created and nothing blocks: a FIFO there
would otherwise hold the helper in open(2) with the database lock held, stalling every user's
create, delete and `nsgate nics gc`."""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.service_support import acting_pids
from tests.support import ALICE, transport, write_etc
from tests.usernic_support import (
    DB_DIR,
    WORK,
    Proc,
    clean_db,
    create,
    create_popen,
    db_entries,
    host_veth_pattern,
    ip,
    ip_links,
    master_of,
    wait_until,
)

pytestmark = pytest.mark.usefixtures("transport")


RECORD = DB_DIR / "nsgate-bridges"
BRIDGE = f"nsgu{ALICE.uid}"
CONTENT = f"{ALICE.uid} {BRIDGE}\n"  # what the record would say if it were followed
STATES = ["FIFO", "directory", "symlink to a root file", "symlink to /dev/zero",
          "alice's file", "group-writable file"]
BLOCKED_IN = {"fifo_open", "wait_for_partner", "pipe_read", "pipe_write"}


@pytest.fixture(autouse=True)
def private_world() -> Iterator[None]:
    clean_db()
    write_etc("lxc/lxc-usernet", "nsgt-alice veth nsgate-private 2\n")
    yield
    Proc.stop_all()
    clean_db()
    if BRIDGE in ip_links():
        ip("link", "del", BRIDGE)


def _plant(state: str) -> None:
    if state == "FIFO":
        os.mkfifo(RECORD, 0o644)
    elif state == "directory":
        RECORD.mkdir(mode=0o755)
    elif state == "symlink to a root file":
        WORK.mkdir(mode=0o755, exist_ok=True)
        real = WORK / "real-nsgate-bridges"
        real.write_text(CONTENT)
        os.chmod(real, 0o644)
        RECORD.symlink_to(real)
    elif state == "symlink to /dev/zero":
        RECORD.symlink_to("/dev/zero")
    else:
        RECORD.write_text(CONTENT)
        if state == "alice's file":
            os.chown(RECORD, ALICE.uid, ALICE.gid)
            os.chmod(RECORD, 0o644)
        else:
            os.chmod(RECORD, 0o664)


def _alice_veths() -> list[str]:
    return [name for name in ip_links() if host_veth_pattern(ALICE).fullmatch(name)]


def _wchan(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/wchan").read_text()
    except OSError:
        return ""


def _run_unless_blocked(ctr: Proc) -> tuple[int, bytes, bytes]:
    """The create's status and output; fails the test, with the helper killed, as soon as the
    kernel shows the helper (or the service's worker serving it) asleep opening or reading a
    pipe."""
    proc = create_popen(ALICE, ctr.pid, bridge="nsgate-private")
    deadline = time.monotonic() + 60  # a guard against a hang elsewhere, not a threshold
    while proc.poll() is None:
        where = next((w for w in map(_wchan, acting_pids(proc.pid)) if w in BLOCKED_IN),
                     _wchan(proc.pid))
        if where in BLOCKED_IN or time.monotonic() > deadline:
            proc.kill()
            proc.communicate()
            pytest.fail(f"lxc-user-nic blocked ({where or 'no wchan'}) on the record, "
                        "holding the database lock")
        time.sleep(0.01)
    out, err = proc.communicate()
    return proc.returncode, out, err


def _state_of_record() -> tuple[int, bytes | None]:
    st = os.lstat(RECORD)
    content = RECORD.read_bytes() if stat.S_ISREG(st.st_mode) else None
    return st.st_mode, content


@pytest.mark.parametrize("bridge_made", [False, True], ids=["first use", "bridge made"])
@pytest.mark.parametrize("state", STATES)
def test_an_untrusted_record_is_refused_and_nothing_is_made(state, bridge_made):
    wait_until(lambda: not _alice_veths(), what="earlier containers' pairs to go")
    if bridge_made:  # alice's bridge exists, made and recorded by an earlier create
        first = Proc.container(ALICE)
        result = create(ALICE, first.pid, bridge="nsgate-private")
        assert result.returncode == 0, result.stderr
        if transport() == "setuid":  # (the service's janitor would take a bridge left portless)
            first.stop()  # its pair goes with its netns (cleanup_net); the bridge stays
            wait_until(lambda: not _alice_veths(), what="the stopped container's pair to go")
        assert BRIDGE in ip_links()
        RECORD.unlink()
    _plant(state)
    before = _state_of_record()
    db_before = db_entries()
    veths_before = _alice_veths()
    ctr = Proc.container(ALICE)
    status, out, err = _run_unless_blocked(ctr)
    assert status == 1 and out == b"", (status, out, err)
    assert err.startswith(f"lxc-user-nic: refusing to use {RECORD}: ".encode()), err
    assert b"internal error" not in err
    links = ip_links()
    assert _alice_veths() == veths_before, links
    assert (BRIDGE in links) == bridge_made  # never made on a record it cannot trust
    assert set(ctr.links()) == {"lo"}
    assert db_entries() == db_before
    assert _state_of_record() == before


def test_a_trusted_record_still_adopts_the_bridge_it_names():
    """The control: the record as nsgate writes it lets the next create use the bridge."""
    first = Proc.container(ALICE)
    assert create(ALICE, first.pid, bridge="nsgate-private").returncode == 0
    st = os.lstat(RECORD)
    assert stat.S_ISREG(st.st_mode) and st.st_uid == 0 and not st.st_mode & 0o022
    assert RECORD.read_text() == CONTENT
    second = Proc.container(ALICE)
    result = create(ALICE, second.pid, bridge="nsgate-private")
    assert result.returncode == 0, result.stderr
    host = result.stdout.decode().split(":")[2]
    assert master_of(ip_links()[host]) == BRIDGE
    assert RECORD.read_text() == CONTENT
