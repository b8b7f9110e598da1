"""`nsgate explain`: a user's subordinate ranges (and whether a runtime can use them), nic grants
per type and bridge, direct and through groups, with current use counted as lxc-user-nic
counts it (live nics only); who may ask about whom."""

from __future__ import annotations

import subprocess

import pytest

from tests.admin_support import clean_nic_state, ip, links, nsgate, nsgate_json, write_nics
from tests.support import ALICE, BOB, write_etc
from tests.usernic_support import Proc, create, liblxc_parse


@pytest.fixture(autouse=True)
def clean_world():
    clean_nic_state()
    before = links()
    yield
    Proc.stop_all()
    for name in links() - before:
        subprocess.run(["ip", "link", "del", name], capture_output=True)
    clean_nic_state()


def test_ranges_and_their_usability():
    write_etc("subuid", "nsgt-alice:200000:65536\nnsgt-bob:300000:65536\n23001:400000:1000\n"
              "nsgt-alias:500000:70000\nnsgt-alice:0x10:5\n")
    status, report = nsgate_json("explain", "nsgt-alice")
    assert status == 0
    assert (report["user"], report["uid"]) == ("nsgt-alice", 23001)
    ranges = report["subuid"]["ranges"]
    assert [(r["start"], r["count"], r["line"], r["via"], r["usable"]) for r in ranges] == [
        (200000, 65536, 1, "name", True),
        (400000, 1000, 3, "uid", False),
        (500000, 70000, 4, "alias nsgt-alias", True)]
    assert ranges[0]["note"] == "full container"
    assert ranges[1]["note"] == ("only 1000 ids: rootless runtimes need 65536 for a full "
                                 "container")
    assert report["subuid"]["ignored"] == [
        {"line": 5, "reason": "start and count must be canonical decimal numbers below "
                              "4294967296"}]
    assert [(r["start"], r["count"]) for r in report["subgid"]["ranges"]] == [(200000, 65536)]
    assert report["nics"] == []


def test_human_output_is_an_aligned_table():
    write_etc("subuid", "nsgt-alice:200000:65536\n23001:400000:1000\n")
    result = nsgate("explain", "nsgt-alice")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "nsgt-alice (uid 23001)"
    header = lines.index("subordinate uids (/etc/subuid):") + 1
    table = lines[header:header + 3]
    assert table[0].split() == ["RANGE", "COUNT", "LINE", "VIA", "USABLE"]
    assert table[1].split()[:4] == ["200000-265535", "65536", "1", "name"]
    assert table[2].split()[:4] == ["400000-400999", "1000", "2", "uid"]
    assert "rootless runtimes need 65536" in table[2]
    columns = [row.index(word) for row, word in zip(table, ("COUNT", "65536", "1000"),
                                                    strict=True)]
    assert len(set(columns)) == 1  # aligned
    assert "nics (/etc/lxc/lxc-usernet):" in lines
    assert "  none: no lxc-usernet line names this user or one of its groups" in lines


def test_a_user_without_ranges():
    result = nsgate("explain", "nsgt-carol")
    assert result.returncode == 0
    assert "none: user namespaces of this user can map only its own uid" in result.stdout


def test_nic_grants_direct_and_through_a_group_with_live_use():
    ip("link", "add", "nsgtbr0", "type", "bridge")
    ip("link", "set", "nsgtbr0", "up")
    write_etc("lxc/lxc-usernet", "nsgt-alice veth nsgtbr0 2\n@nsgt-aux veth nsgtbr0 1\n"
              "nsgt-bob veth nsgtbr0 5\n@nsgt-aux veth none 1\n")
    ctr = Proc.container(ALICE)
    made = create(ALICE, ctr.pid, bridge="nsgtbr0")
    assert made.returncode == 0, made.stderr
    host = liblxc_parse(made.stdout)[2]
    with open("/run/lxc/nics", "a") as db:  # a stale line, which must not count
        db.write("nsgt-alice veth nsgtbr0 veth23001_dead\n")
    status, report = nsgate_json("explain", "nsgt-alice")
    assert status == 0
    bridge, none = report["nics"]
    assert (bridge["type"], bridge["bridge"], bridge["quota"], bridge["used"], bridge["room"],
            bridge["interfaces"]) == ("veth", "nsgtbr0", 3, 1, True, [host])
    assert [(g["token"], g["count"], g["line"], g["via"]) for g in bridge["grants"]] == [
        ("nsgt-alice", 2, 1, "user"), ("@nsgt-aux", 1, 2, "group")]
    assert (none["bridge"], none["quota"], none["used"], none["interfaces"]) == (
        "none", 1, 0, [])
    human = nsgate("explain", "nsgt-alice").stdout
    row = next(line for line in human.splitlines() if "nsgtbr0" in line)
    assert row.split()[:4] == ["veth", "nsgtbr0", "3", "1"] and host in row
    assert "nsgt-alice 2 (line 1), @nsgt-aux 1 (line 2)" in row


def test_quota_used_up():
    ip("link", "add", "nsgtv0", "type", "veth", "peer", "name", "nsgtv0p")
    ip("link", "add", "nsgtbr0", "type", "bridge")
    write_etc("lxc/lxc-usernet", "nsgt-bob veth nsgtbr0 1\n")
    write_nics(["nsgt-bob veth nsgtbr0 nsgtv0"])
    _, report = nsgate_json("explain", "nsgt-bob")
    assert [(n["quota"], n["used"], n["room"], n["interfaces"]) for n in report["nics"]] == [
        (1, 1, False, ["nsgtv0"])]


def test_a_user_may_explain_themselves():
    write_etc("lxc/lxc-usernet", "nsgt-alice veth none 1\n")
    write_nics(["nsgt-alice veth none veth23001_dead"])  # root's only: use unknown to alice
    for argv in ([], ["nsgt-alice"], ["23001"]):
        status, report = nsgate_json("explain", *argv, user=ALICE)
        assert status == 0
        assert report["user"] == "nsgt-alice"
        assert [(r["start"], r["count"]) for r in report["subuid"]["ranges"]] == [
            (200000, 65536)]
        assert [(n["quota"], n["used"]) for n in report["nics"]] == [(1, None)]
        assert any("readable by root only" in note for note in report["notes"])
    result = nsgate("explain", user=BOB)
    assert result.returncode == 0 and result.stdout.startswith("nsgt-bob (uid 23002)\n")


@pytest.mark.parametrize("who", ["nsgt-bob", "23002", "root"])
def test_a_user_may_not_explain_someone_else(who):
    result = nsgate("explain", who, user=ALICE)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith("nsgate: only root may explain another user than "
                                    "yourself")
    assert "without a user to see your own" in result.stderr


def test_unknown_user_and_usage():
    result = nsgate("explain", "nsgt-nosuchuser")
    assert result.returncode == 1
    assert result.stderr.startswith("nsgate: no user 'nsgt-nosuchuser'")
    assert nsgate("explain", "a", "b").returncode == 2
    assert nsgate("explain", "--gid").returncode == 2
