"""A lxc-usernet line that grants one user's private bridge (`nsgu<uid>`) to another user or to a
group (issue 9 §5): lxc-user-nic refuses it, naming the reason, and `nsgate check` reports it as
an error with its own code, file:line and a fix. The owner's own use of its bridge is unchanged.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.admin_support import USERNET, clean_nic_state, links, nsgate, nsgate_json
from tests.support import ALICE, BOB, write_etc
from tests.usernic_support import Proc, add_bridge, create, db_entries, ip_links, master_of

pytestmark = pytest.mark.usefixtures("transport")

ALICE_BRIDGE = f"nsgu{ALICE.uid}"


@pytest.fixture(autouse=True)
def world() -> Iterator[None]:
    clean_nic_state()
    before = links()
    add_bridge(ALICE_BRIDGE)
    yield
    Proc.stop_all()
    for name in links() - before:
        subprocess.run(["ip", "link", "del", name], capture_output=True)
    Path("/etc/lxc/lxc-usernet").unlink(missing_ok=True)
    clean_nic_state()


def test_lxc_user_nic_refuses_another_users_private_bridge():
    write_etc("lxc/lxc-usernet", f"nsgt-bob veth {ALICE_BRIDGE} 2\n")
    bob_ctr = Proc.container(BOB)
    before = set(ip_links())
    result = create(BOB, bob_ctr.pid, bridge=ALICE_BRIDGE, name="b0")
    assert result.returncode == 1
    assert result.stderr.startswith(
        f"lxc-user-nic: bridge {ALICE_BRIDGE} is the private bridge of uid {ALICE.uid}: it is "
        "not granted to nsgt-bob\n".encode()), result.stderr
    assert b"nsgate-private" in result.stderr and b"nsgate check" in result.stderr
    assert set(ip_links()) == before
    assert set(bob_ctr.links()) == {"lo"}
    assert db_entries() == []


def test_a_group_grant_of_a_private_bridge_serves_only_its_owner():
    """`@group veth nsgu<alice> N`: bob, a member, is refused; alice may still use her own."""
    groups = Path("/etc/group").read_text()
    write_etc("group", groups + f"nsgt-both:x:23020:{ALICE.name},{BOB.name}\n")
    try:
        write_etc("lxc/lxc-usernet", f"@nsgt-both veth {ALICE_BRIDGE} 2\n")
        bob_ctr, alice_ctr = Proc.container(BOB), Proc.container(ALICE)
        refused = create(BOB, bob_ctr.pid, bridge=ALICE_BRIDGE, name="b0")
        mine = create(ALICE, alice_ctr.pid, bridge=ALICE_BRIDGE, name="a0")
    finally:
        write_etc("group", groups)
    assert refused.returncode == 1 and b"private bridge of uid" in refused.stderr
    assert mine.returncode == 0, mine.stderr
    host = mine.stdout.decode().strip().split(":")[2]
    assert master_of(ip_links()[host]) == ALICE_BRIDGE


def _findings() -> list[tuple[str, int | None, str, str]]:
    status, report = nsgate_json("check")
    found = [(f["file"], f["line"], f["severity"], f["code"]) for f in report["findings"]]
    assert status == (1 if any(f[2] == "error" for f in found) else 0)
    return found


def test_check_reports_a_private_bridge_granted_to_someone_else():
    write_etc("lxc/lxc-usernet", f"nsgt-alice veth {ALICE_BRIDGE} 2\n"
                                 f"nsgt-bob veth {ALICE_BRIDGE} 2\n"
                                 f"@nsgt-aux veth {ALICE_BRIDGE} 1\n")
    assert _findings() == [(str(USERNET), 2, "error", "private-bridge"),
                           (str(USERNET), 3, "error", "private-bridge")]
    _, report = nsgate_json("check")
    message = report["findings"][0]["message"]
    assert f"private bridge of uid {ALICE.uid}" in message
    assert "nsgt-bob veth nsgate-private 2" in message  # the fix
    human = nsgate("check")
    assert human.returncode == 1
    assert f"{USERNET}:2: error: " in human.stdout and "[private-bridge]" in human.stdout


def test_check_accepts_the_owner_granted_its_own_private_bridge():
    write_etc("lxc/lxc-usernet", f"nsgt-alice veth {ALICE_BRIDGE} 2\n")
    assert _findings() == []
