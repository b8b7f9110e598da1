"""Port security on Linux bridges (issue 9 §1), proven with traffic between real containers and
read back from the kernel (`bridge fdb`, nftables sets): a container may change its MAC and keep
working; it cannot take a MAC another container, the uplink or the host has; it cannot fill the
FDB with many MACs; a restarted container gets its MAC back at once; the table is installed when
missing, kept when current, and its absence fails closed."""

from __future__ import annotations

import json
import re
import subprocess
import textwrap
from pathlib import Path

import pytest

from tests.support import ALICE, BOB, fault_points, helper, only_transport, run_as, write_etc
from tests.test_usernic_isolation import Container, network  # noqa: F401 - the fixture
from tests.usernic_support import WORK, wait_until

pytestmark = pytest.mark.usefixtures("transport")

GROUP = 0x6E73
VERSION = "nsgate port security 1"


def sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=20).stdout


def link(name: str) -> dict:
    (entry,) = json.loads(sh("ip", "-d", "-j", "link", "show", name))
    return entry


def mac_of(container: Container) -> str:
    return json.loads(container.run("ip", "-j", "link", "show", "eth0").stdout)[0]["address"]


def learned(port: str) -> list[str]:
    """The MACs the bridge learned (or was told) behind `port`; not the port's own."""
    entries = json.loads(sh("bridge", "-j", "fdb", "show", "br", "br0", "brport", port))
    return [e["mac"] for e in entries if "permanent" not in e.get("state", "")]


def fdb_port(mac: str) -> str | None:
    for entry in json.loads(sh("bridge", "-j", "fdb", "show", "br", "br0")):
        if entry["mac"] == mac and "permanent" not in entry.get("state", ""):
            return entry.get("ifname")
    return None


def elements(set_name: str) -> list:
    out = json.loads(sh("nft", "-j", "list", "set", "bridge", "nsgate", set_name))
    (entry,) = [item["set"] for item in out["nftables"] if "set" in item]
    return [e["elem"]["val"] if isinstance(e, dict) and "elem" in e else e
            for e in entry.get("elem", [])]


def claims_of(port: str) -> list[str]:
    """The MACs `port` holds in the table's port_mac set."""
    index = link(port)["ifindex"]
    return [mac for key, mac in (e["concat"] for e in elements("port_mac"))
            if key in (port, index)]


def change_mac(container: Container, mac: str) -> None:
    assert container.run("ip", "link", "set", "eth0", "address", mac).returncode == 0
    container.run("ip", "neigh", "flush", "all")
    subprocess.run(["ip", "neigh", "flush", "dev", "br0"], check=False)


def table_comment() -> str | None:
    result = subprocess.run(["nft", "list", "table", "bridge", "nsgate"], capture_output=True,
                            text=True)  # (nft 1.0.6's JSON has no comments)
    found = re.search(r'^\tcomment "([^"]*)"$', result.stdout, re.MULTILINE)
    return found.group(1) if result.returncode == 0 and found else None


@pytest.fixture(autouse=True)
def no_table():
    """Each test starts without nsgate's table: the first create installs it."""
    subprocess.run(["nft", "delete", "table", "bridge", "nsgate"], capture_output=True)
    yield


def test_a_container_that_changes_its_mac_keeps_working(network):  # noqa: F811
    container = network(ALICE)
    host = container.attach("br0", "10.77.0.2/24")
    assert container.pings("10.77.0.1")
    change_mac(container, "00:16:3e:12:34:56")  # as liblxc applies lxc.net.0.hwaddr
    assert container.pings("10.77.0.1")
    assert "00:16:3e:12:34:56" in learned(host)
    assert "00:16:3e:12:34:56" in claims_of(host)
    port = link(host)
    assert port["group"] in (GROUP, str(GROUP), hex(GROUP))
    slave = port["linkinfo"]["info_slave_data"]
    assert slave["learning"] is True and slave["locked"] is False
    assert table_comment() == VERSION


def test_a_container_cannot_take_another_containers_mac(network):  # noqa: F811
    alice, bob = network(ALICE), network(BOB)
    alice_host = alice.attach("br0", "10.77.0.2/24")
    bob_host = bob.attach("br0", "10.77.0.3/24")
    assert alice.pings("10.77.0.1") and bob.pings("10.77.0.1")
    own, bobs = mac_of(alice), mac_of(bob)
    assert fdb_port(bobs) == bob_host
    change_mac(alice, bobs)
    assert not alice.pings("10.77.0.1")
    assert fdb_port(bobs) == bob_host  # the neighbour's FDB entry never moved
    assert bobs not in claims_of(alice_host)
    assert bob.pings("10.77.0.1")  # and the neighbour keeps working
    change_mac(alice, own)
    assert alice.pings("10.77.0.1")  # its own MAC again: traffic flows, the MAC was the cause


def test_a_container_cannot_take_the_uplinks_or_the_hosts_mac(network):  # noqa: F811
    outside = subprocess.Popen(["unshare", "--net", "sh", "-c", "echo ready; exec sleep 600"],
                               stdout=subprocess.PIPE)
    try:
        container = network(ALICE)
        host = container.attach("br0", "10.77.0.2/24")  # installs the table
        assert outside.stdout is not None and outside.stdout.readline() == b"ready\n"
        sh("ip", "link", "add", "vethup0", "type", "veth", "peer", "name", "up0",
           "netns", str(outside.pid))
        sh("ip", "link", "set", "vethup0", "master", "br0", "up")
        inside = ["nsenter", f"--net=/proc/{outside.pid}/ns/net"]
        for argv in (["ip", "addr", "add", "10.77.0.9/24", "dev", "up0"],
                     ["ip", "link", "set", "up0", "up"]):
            sh(*inside, *argv)
        uplink_ping = [*inside, "ping", "-c", "2", "-W", "1", "-i", "0.2", "10.77.0.1"]
        assert subprocess.run(uplink_ping, capture_output=True).returncode == 0
        uplink_mac = json.loads(sh(*inside, "ip", "-j", "link", "show", "up0"))[0]["address"]
        assert uplink_mac in elements("host_mac")
        assert container.pings("10.77.0.1")
        change_mac(container, uplink_mac)
        assert not container.pings("10.77.0.1")
        assert fdb_port(uplink_mac) == "vethup0"
        assert subprocess.run(uplink_ping, capture_output=True).returncode == 0
        assert uplink_mac not in claims_of(host)

        bridge_mac = link("br0")["address"]
        change_mac(container, bridge_mac)
        container.pings("10.77.0.1")
        assert bridge_mac in elements("host_mac")  # the host sent from it (its replies)
        assert bridge_mac not in claims_of(host)
    finally:
        outside.kill()
        outside.wait()


FLOOD = textwrap.dedent("""\
    import socket
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind(("eth0", 0))
    for n in range(300):
        source = bytes((0x02, 0x5a, 0, 0, n >> 8, n & 0xff))
        s.send(b"\\xff" * 6 + source + b"\\x88\\xb5" + bytes(46))
    print("sent")
""")


def test_a_container_cannot_flood_the_fdb_with_macs(network):  # noqa: F811
    container = network(ALICE)
    host = container.attach("br0", "10.77.0.2/24")
    assert container.pings("10.77.0.1")
    as_root_inside = ["nsenter", "-t", str(container.pid), "-U", "-n", "--"]
    result = subprocess.run([*as_root_inside, "python3", "-c", FLOOD], capture_output=True,
                            text=True, timeout=30)
    assert result.stdout == "sent\n", result.stderr
    flooded = [mac for mac in learned(host) if mac.startswith("02:5a:")]
    # The budget: a burst of 8 new MACs (the container's own is one), then 1 an hour.
    assert 1 <= len(flooded) <= 8, flooded
    assert len(claims_of(host)) <= 9
    assert container.pings("10.77.0.1")  # its own MAC still works


def test_a_restarted_container_gets_its_mac_back_at_once(network):  # noqa: F811
    first = network(ALICE)
    host = first.attach("br0", "10.77.0.2/24")
    change_mac(first, "00:16:3e:aa:bb:cc")
    assert first.pings("10.77.0.1")
    first.stop()
    wait_until(lambda: host not in sh("ip", "-o", "link"), what=f"{host} to vanish")
    again = network(ALICE)
    again.attach("br0", "10.77.0.2/24")
    assert not any(mac == "00:16:3e:aa:bb:cc" for _, mac in
                   (e["concat"] for e in elements("port_mac")))  # the gone port's claim
    change_mac(again, "00:16:3e:aa:bb:cc")
    assert again.pings("10.77.0.1")


def test_the_table_is_installed_once_and_keeps_its_claims(network):  # noqa: F811
    subprocess.run(["nft", "-f", "-"], check=True, text=True, input=(
        'table bridge nsgate {\n comment "an older nsgate"\n set stale { type ether_addr; }\n}\n'))
    first = network(ALICE)
    host = first.attach("br0", "10.77.0.2/24")
    assert table_comment() == VERSION  # the outdated table was replaced
    sets = sh("nft", "list", "table", "bridge", "nsgate")
    assert "stale" not in sets and "port_mac" in sets
    change_mac(first, "00:16:3e:00:00:01")
    assert first.pings("10.77.0.1")
    network(BOB).attach("br0", "10.77.0.3/24")  # another create: the table stays as it is
    assert "00:16:3e:00:00:01" in claims_of(host)


def test_without_nftables_a_bridge_nic_is_refused(network):  # noqa: F811
    WORK.mkdir(parents=True, exist_ok=True)
    impostor = WORK / "nft-not-roots"
    impostor.write_text("#!/bin/sh\nexit 0\n")
    impostor.chmod(0o755)
    subprocess.run(["chown", f"{ALICE.uid}", str(impostor)], check=True)
    sh("mount", "--bind", str(impostor), "/usr/sbin/nft")
    try:
        container = network(ALICE)
        result = run_as(ALICE, [helper("lxc-user-nic"), "create", "x", "x", str(container.pid),
                                "veth", "br0", "eth0"])
        assert result.returncode == 1
        assert b"nftables is needed to attach a nic to a Linux bridge" in result.stderr
        assert b"install nftables" in result.stderr
        assert "eth0" not in container.run("ip", "-o", "link").stdout
        assert not [name for name in sh("ip", "-o", "link").split() if name.startswith("veth")]
    finally:
        sh("umount", "/usr/sbin/nft")
    assert Path("/usr/sbin/nft").stat().st_uid == 0


def _table_is_whole_or_absent() -> bool:
    listing = subprocess.run(["nft", "list", "table", "bridge", "nsgate"], capture_output=True,
                             text=True)
    if listing.returncode != 0:
        return True
    return (table_comment() == VERSION and all(f"set {name} " in listing.stdout for name in (
        "host_mac", "port_mac", "mac_in_use", "new_mac_budget"))
        and "chain ports_in " in listing.stdout and "chain host_out " in listing.stdout)


# strace's fault injection into the setuid helper's own process; a worker of the service killed
# at every step is the faults suite's (test_service_faults.py).
@only_transport("setuid")
@pytest.mark.parametrize("fault", ["signal=KILL", "error=EIO"])
def test_a_create_that_fails_while_installing_the_table_leaves_it_whole_or_absent(
        network, fault):  # noqa: F811
    """Killed or failing at every system call from the fork of the installer on: the table is
    never half there, a failed create leaves no nic, and the next create installs it."""
    write_etc("lxc/lxc-usernet", "nsgt-alice veth br0 1000\n")
    container = network(ALICE)
    argv = [helper("lxc-user-nic"), "create", "x", "x", str(container.pid), "veth", "br0"]
    WORK.mkdir(parents=True, exist_ok=True)
    log = WORK / "install-trace"
    traced = subprocess.run(["strace", "-qq", "-o", str(log), "-u", ALICE.name, *argv],
                            capture_output=True, text=True, timeout=60)
    assert traced.returncode == 0, traced.stderr
    points = fault_points(log.read_text(), fault)
    done = 0
    for name, when in points:
        subprocess.run(["nft", "delete", "table", "bridge", "nsgate"], capture_output=True)
        before = set(sh("ip", "-o", "link").split())
        result = subprocess.run(["strace", "-qq", "-o", "/dev/null", "-u", ALICE.name, "-e",
                                 f"inject={name}:{fault}:when={when}", *argv],
                                capture_output=True, text=True, timeout=60)
        assert "Traceback" not in result.stderr
        assert _table_is_whole_or_absent(), (name, when)
        if result.returncode == 0:
            done += 1
        elif fault == "error=EIO":
            assert result.returncode == 1 and result.stderr.startswith("lxc-user-nic: "), \
                (name, when, result.stderr)
            if name not in ("capset", "setresuid", "setresgid"):  # see test_fault_injection
                new = {n for n in set(sh("ip", "-o", "link").split()) - before
                       if n.startswith("veth23001_")}
                assert not new, (name, when, new, result.stderr)
    assert done <= (2 if fault == "signal=KILL" else len(points) // 4), (done, len(points))
    subprocess.run(["nft", "delete", "table", "bridge", "nsgate"], capture_output=True)
    assert run_as(ALICE, argv).returncode == 0
    assert table_comment() == VERSION
