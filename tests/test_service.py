"""nsgated end to end with a direct client of its protocol (tests/service_support.py): the
installed service, real targets, the kernel's state; the same answers as the setuid helpers."""

from __future__ import annotations

from pathlib import Path

from tests.service_support import ask
from tests.support import ALICE, BOB, helper, run_as


def test_newuidmap_through_the_service_writes_the_map(nsgated, target):
    answer = ask(ALICE, "newuidmap", [str(target.pid), "0", "23001", "1", "1", "200000", "1000"])
    assert answer == {"status": 0, "out": "", "err": ""}
    assert target.uid_map() == [(0, 23001, 1), (1, 200000, 1000)]


def test_newgidmap_through_the_service_denies_setgroups_for_a_self_map(nsgated, target):
    answer = ask(ALICE, "newgidmap", [str(target.pid), "0", "23001", "1"])
    assert answer == {"status": 0, "out": "", "err": ""}
    assert target.gid_map() == [(0, 23001, 1)]
    assert target.setgroups() == "deny"


def test_refusals_are_the_setuid_helpers_own(nsgated, targets):
    bobs = targets(BOB)
    for args in ([str(bobs.pid), "0", "300000", "1"],   # another user's process
                 ["notapid", "0", "1", "1"],             # usage
                 [str(targets(ALICE).pid), "0", "300000", "1"]):  # bob's range
        served = ask(ALICE, "newuidmap", args)
        local = run_as(ALICE, [helper("newuidmap"), *args])
        assert served["status"] == local.returncode == 1
        assert served["err"] == local.stderr.decode(), args


def test_getsubids_through_the_service(nsgated):
    answer = ask(ALICE, "getsubids", ["nsgt-alice"])
    assert answer == {"status": 0, "out": "0: nsgt-alice 200000 65536\n", "err": ""}


def test_the_service_never_opens_a_pid_for_the_caller(nsgated, targets):
    """A request whose pid the client did not open itself is refused: the service does not
    resolve the caller's pid in its own namespaces."""
    victim = targets(ALICE)
    answer = ask(ALICE, "newuidmap", [f"+{victim.pid}", "0", "23001", "1"])
    assert answer["status"] == 1
    assert victim.uid_map() == []
    assert Path(f"/proc/{victim.pid}").exists()


def test_lxc_user_nic_create_through_the_service(nsgated):
    from tests.support import write_etc
    from tests.usernic_support import Proc, add_bridge, clean_db, db_entries, ip, ip_links

    clean_db()
    add_bridge("nsgtsvc0")
    write_etc("lxc/lxc-usernet", "nsgt-alice veth nsgtsvc0 2\n")
    container = Proc.container(ALICE)
    try:
        answer = ask(ALICE, "lxc-user-nic", ["create", "/var/lib/lxc", "c1", str(container.pid),
                                             "veth", "nsgtsvc0", "eth0"])
        assert answer["status"] == 0, answer
        peer, _peer_index, host, _host_index = answer["out"].strip().split(":")
        assert peer == "eth0" and peer in container.links()
        assert ip_links()[host]["master"] == "nsgtsvc0"
        assert [(e[0], e[2], e[3]) for e in db_entries()] == [("nsgt-alice", "nsgtsvc0", host)]
    finally:
        Proc.stop_all()
        ip("link", "del", "nsgtsvc0")
        clean_db()
        Path("/etc/lxc/lxc-usernet").unlink()
