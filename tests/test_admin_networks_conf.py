"""/etc/nsgate/networks.conf through the installed `nsgate`: `nsgate check` lints it (a line that
does not parse with its file:line, a pool too small for derived allocation, an unsafe file or
directory), and `nsgate explain USER` shows, for a user granted nsgate-private, the subnet and
gateways of the user's bridge (from the plan, or the record in /run/lxc/nsgate-subnets)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.admin_support import USERNET, nsgate, nsgate_json
from tests.support import ALICE, BOB, write_etc

CONF = Path("/etc/nsgate/networks.conf")
SHOWN = str(CONF)
RECORD = Path("/run/lxc/nsgate-subnets")
GOOD = "ipv4-pool 10.210.0.0/16 24\nipv6-pool fd42:6e73::/48 64\n"


@pytest.fixture(autouse=True)
def clean_slate():
    """No /etc/nsgate, lxc-usernet or subnet record before and after each test (in the
    sandbox's /etc overlay and private /run)."""
    def clean() -> None:
        shutil.rmtree(CONF.parent, ignore_errors=True)
        USERNET.unlink(missing_ok=True)
        RECORD.unlink(missing_ok=True)

    clean()
    CONF.parent.mkdir(mode=0o755)
    os.chmod(CONF.parent, 0o755)
    yield
    clean()


def write_conf(text: str | bytes, mode: int = 0o644) -> None:
    write_etc("nsgate/networks.conf", text, mode)


def findings() -> tuple[int, list[tuple[str, int | None, str, str]]]:
    status, report = nsgate_json("check")
    return status, [(f["file"], f["line"], f["severity"], f["code"])
                    for f in report["findings"]]


def only_finding(line: int | None, code: str, file: str = SHOWN) -> str:
    """The system has exactly this error; the human line says file:line. Its message."""
    status, report = nsgate_json("check")
    found = [(f["file"], f["line"], f["severity"], f["code"]) for f in report["findings"]]
    assert found == [(file, line, "error", code)], report["findings"]
    assert status == 1
    human = nsgate("check")
    where = file if line is None else f"{file}:{line}"
    assert f"{where}: error: " in human.stdout and f"[{code}]" in human.stdout, human
    assert human.returncode == 1
    return report["findings"][0]["message"]


# --- nsgate check ----------------------------------------------------------------------------

def test_a_good_plan_and_no_plan_have_no_findings():
    write_conf("# the plan\n" + GOOD + "uplink routed\nallocation recorded\n")
    assert findings() == (0, [])
    CONF.unlink()
    assert findings() == (0, [])


def test_the_shipped_example_has_no_findings():
    write_conf(Path(__file__).resolve().parents[1].joinpath("etc", "networks.conf.example")
               .read_bytes())
    assert findings() == (0, [])


@pytest.mark.parametrize(("text", "line", "words"), [
    ("ipv4-pool 10.0.0.0/16 24\nipv4-pool 10.1.0.0/16 24\n", 2, "ipv4-pool given twice"),
    ("# x\n\n" + GOOD + "dns 1.1.1.1\n", 5, "unknown setting 'dns'"),
    ("ipv4-pool 10.0.0.256/16 24\n", 1, "not an IPv4 network"),
    ("ipv4-pool 10.0.1.0/16 24\n", 1, "has host bits set"),
    ("ipv4-pool 10.0.0.0/24 24\n", 1, "not longer than the pool's /24"),
    ("ipv4-pool 10.0.0.0/8 31\n", 1, "must be 16 to 30, not 31"),
    ("ipv4-pool 10.0.0.0/8 24\nipv6-pool fd00::/48 56\n", 2, "must be 64 (SLAAC), not 56"),
    ("ipv4-pool 10.0.0.0/8 24\nuplink bridge\n", 2, "uplink is 'bridge'"),
])
def test_a_line_that_does_not_parse(text, line, words):
    write_conf(text)
    message = only_finding(line, "networks-syntax")
    assert words in message and "lxc-user-nic refuses to make any private bridge" in message


def test_a_file_without_an_ipv4_pool():
    write_conf("uplink nat\n")
    assert "no ipv4-pool line" in only_finding(None, "networks-syntax")


def test_derived_allocation_needs_a_pool_for_every_uid():
    write_conf(GOOD + "allocation derived\n")
    message = only_finding(3, "networks-derived-too-small")
    assert "needs 59001 subnets (UID_MIN 1000 to UID_MAX 60000), the pools hold 256" in message
    write_etc("login.defs", "UID_MIN 23000\nUID_MAX 23255\n")
    assert findings() == (0, [])
    write_etc("login.defs", "UID_MIN 23000\nUID_MAX 23256\n")
    assert "needs 257 subnets" in only_finding(3, "networks-derived-too-small")


def test_a_login_defs_number_the_plan_needs():
    write_conf(GOOD)
    write_etc("login.defs", "UID_MIN 0x100\n")
    assert "UID_MIN in /etc/login.defs is '0x100'" in only_finding(
        None, "networks-syntax", "/etc/login.defs")


def test_a_group_writable_plan_is_unsafe():
    write_conf(GOOD, mode=0o664)
    message = only_finding(None, "networks-unsafe-file")
    assert "writable by group" in message and f"chmod go-w {SHOWN}" in message
    assert "decides the addresses and the firewall" in message


def test_a_plan_owned_by_a_user_is_unsafe():
    write_conf(GOOD)
    os.chown(CONF, ALICE.uid, 0)
    assert "owned by uid 23001" in only_finding(None, "networks-unsafe-file")


def test_a_symlinked_plan_is_unsafe():
    target = CONF.parent / "real.conf"
    target.write_text(GOOD)
    CONF.symlink_to(target)
    assert "symbolic link" in only_finding(None, "networks-unsafe-file")


def test_a_writable_directory_of_the_plan_is_unsafe():
    write_conf(GOOD)
    os.chmod(CONF.parent, 0o777)
    assert "its directory /etc/nsgate" in only_finding(None, "networks-unsafe-file")


def test_a_directory_in_place_of_the_plan_is_unsafe():
    CONF.mkdir(mode=0o755)
    assert "is not a regular file" in only_finding(None, "networks-unsafe-file")
    write_etc("lxc/lxc-usernet", "nsgt-alice veth nsgate-private 1\n")
    network = network_of("nsgt-alice")
    assert network["state"] == "refused" and "not a regular file" in network["error"]


# --- nsgate explain ----------------------------------------------------------------------------

def network_of(who: str, **kwargs) -> dict:
    status, report = nsgate_json("explain", who, **kwargs)
    assert status == 0
    return report["network"]


def section(who: str, **kwargs) -> list[str]:
    """The lines of the human explain's private network section."""
    result = nsgate("explain", who, **kwargs)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    start = lines.index(f"private network ({SHOWN}):")
    end = next((i for i in range(start + 1, len(lines)) if not lines[i].startswith("  ")),
               len(lines))
    return lines[start + 1:end]


def test_no_grant_no_network_section():
    write_conf(GOOD)
    write_etc("lxc/lxc-usernet", "nsgt-alice veth none 1\n")
    status, report = nsgate_json("explain", "nsgt-alice")
    assert status == 0 and "network" not in report
    assert "private network" not in nsgate("explain", "nsgt-alice").stdout


def test_no_plan_no_address():
    CONF.parent.rmdir()
    write_etc("lxc/lxc-usernet", "nsgt-alice veth nsgate-private 1\n")
    assert network_of("nsgt-alice") == {"file": SHOWN, "bridge": "nsgu23001", "error": None,
                                         "state": "absent"}
    assert section("nsgt-alice")[0].startswith("  no networks.conf: no address")


def test_recorded_before_the_first_container_and_after():
    write_conf(GOOD)
    write_etc("lxc/lxc-usernet", "@nsgt-aux veth nsgate-private 1\n")  # through a group
    network = network_of("nsgt-alice")
    assert (network["state"], network["allocation"]) == ("none yet", "recorded")
    assert section("nsgt-alice")[0].startswith("  none yet: nsgu23001 gets the lowest free")
    RECORD.write_text("# junk\n23002 0\n23001 7\n")
    os.chmod(RECORD, 0o644)
    network = network_of("nsgt-alice")
    assert {key: network[key] for key in ("state", "index", "ipv4", "ipv4_gateway", "dhcp",
                                          "ipv6", "ipv6_gateway", "uplink")} == {
        "state": "assigned", "index": 7, "ipv4": "10.210.7.0/24",
        "ipv4_gateway": "10.210.7.1", "dhcp": ["10.210.7.2", "10.210.7.254"],
        "ipv6": "fd42:6e73:0:7::/64", "ipv6_gateway": "fd42:6e73:0:7::1", "uplink": "nat"}
    assert section("nsgt-alice") == [
        "  nsgu23001: subnet 7 (allocation recorded, uplink nat)",
        "  IPv4 10.210.7.0/24, gateway 10.210.7.1, DHCP 10.210.7.2-10.210.7.254",
        "  IPv6 fd42:6e73:0:7::/64, gateway fd42:6e73:0:7::1 (SLAAC)"]
    # the user explains themselves the same way
    assert section("nsgt-alice", user=ALICE)[0] == (
        "  nsgu23001: subnet 7 (allocation recorded, uplink nat)")


def test_derived_inside_and_outside_the_uid_range():
    write_conf("ipv4-pool 10.99.0.0/16 26\nuplink none\nallocation derived\n")
    write_etc("login.defs", "UID_MIN 23000\nUID_MAX 23001\n")
    write_etc("lxc/lxc-usernet",
              "nsgt-alice veth nsgate-private 1\nnsgt-bob veth nsgate-private 1\n")
    assert section("nsgt-alice") == [
        "  nsgu23001: subnet 1 (allocation derived, uplink none)",
        "  IPv4 10.99.0.64/26, gateway 10.99.0.65, DHCP 10.99.0.66-10.99.0.126"]
    network = network_of("nsgt-bob")
    assert (network["state"], network["uid_range"]) == ("outside", [23000, 23001])
    assert "outside UID_MIN..UID_MAX (23000..23001)" in section("nsgt-bob", user=BOB)[0]


def test_a_malformed_plan_is_shown_as_refused():
    write_conf("ipv4-pool 10.210.0.0/16 24\nipv4-pool 10.211.0.0/16 24\n")
    write_etc("lxc/lxc-usernet", "nsgt-alice veth nsgate-private 1\n")
    network = network_of("nsgt-alice")
    assert network["state"] == "refused"
    assert network["error"] == f"{SHOWN}:2: ipv4-pool given twice (first on line 1)"
    assert section("nsgt-alice")[0].startswith("  none: the file is refused")
