"""lxc-user-nic's port hardening, proven with traffic between real containers: containers of
different users on a shared bridge cannot reach each other, a user's private bridge connects
its own containers, no container can send with its neighbour's source MAC, and host ends
(and private bridges) accept no router advertisements."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.support import ALICE, BOB, User, as_user, helper, run_as, write_etc

pytestmark = pytest.mark.usefixtures("transport")

USERNET = ("nsgt-alice veth br0 4\nnsgt-bob veth br0 4\n"
           "nsgt-alice veth nsgate-private 4\nnsgt-bob veth nsgate-private 4\n")


class Container:
    """A user's own `unshare --user --map-root-user --net` process: an unprivileged container."""

    def __init__(self, user: User) -> None:
        self.user = user
        self.proc = subprocess.Popen(
            as_user(user, ["unshare", "--user", "--map-root-user", "--net", "--", "sh", "-c",
                           "echo ready; exec sleep 600"]),
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        assert self.proc.stdout is not None and self.proc.stdout.readline() == b"ready\n"
        self.pid = self.proc.pid

    def run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["nsenter", f"--net=/proc/{self.pid}/ns/net", *argv],
                              capture_output=True, text=True, timeout=20)

    def attach(self, bridge: str, address: str) -> str:
        result = run_as(self.user, [helper("lxc-user-nic"), "create", "x", "x", str(self.pid),
                                    "veth", bridge, "eth0"])
        assert result.returncode == 0, result.stderr
        assert result.stderr == b""
        for argv in (["ip", "addr", "add", address, "dev", "eth0"],
                     ["ip", "link", "set", "eth0", "up"], ["ip", "link", "set", "lo", "up"]):
            assert self.run(*argv).returncode == 0
        return result.stdout.decode().split(":")[2]

    def pings(self, address: str) -> bool:
        return self.run("ping", "-c", "2", "-W", "1", "-i", "0.2", address).returncode == 0

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def network():
    write_etc("lxc/lxc-usernet", USERNET)
    for name in ("nics", "nics.lock", "nsgate-bridges"):
        Path("/run/lxc", name).unlink(missing_ok=True)
    subprocess.run(["ip", "link", "add", "br0", "type", "bridge"], check=True)
    subprocess.run(["ip", "addr", "add", "10.77.0.1/24", "dev", "br0"], check=True)
    subprocess.run(["ip", "link", "set", "br0", "up"], check=True)
    started: list[Container] = []

    def container(user: User) -> Container:
        started.append(Container(user))
        return started[-1]

    yield container
    for item in started:
        item.stop()
    for link in json.loads(subprocess.run(["ip", "-j", "link"], capture_output=True,
                                          text=True).stdout):
        if link["ifname"].startswith(("br0", "nsgu", "veth")):
            subprocess.run(["ip", "link", "del", link["ifname"]], stderr=subprocess.DEVNULL)


def bridge_port(name: str) -> dict:
    (entry,) = json.loads(subprocess.run(["ip", "-d", "-j", "link", "show", name],
                                         capture_output=True, text=True).stdout)
    return entry["linkinfo"]["info_slave_data"]


def test_users_on_a_shared_bridge_cannot_reach_each_other(network):
    alice, bob = network(ALICE), network(BOB)
    alice_host = alice.attach("br0", "10.77.0.2/24")
    bob.attach("br0", "10.77.0.3/24")
    assert alice.pings("10.77.0.1") and bob.pings("10.77.0.1")  # the bridge (host) answers
    assert not alice.pings("10.77.0.3")
    assert not bob.pings("10.77.0.2")
    assert bridge_port(alice_host)["isolated"] is True


def test_a_private_bridge_connects_its_users_containers_only(network):
    first, second, bob = network(ALICE), network(ALICE), network(BOB)
    host = first.attach("nsgate-private", "10.78.0.2/24")
    second.attach("nsgate-private", "10.78.0.3/24")
    bob.attach("nsgate-private", "10.78.0.4/24")
    assert first.pings("10.78.0.3") and second.pings("10.78.0.2")
    assert not first.pings("10.78.0.4")  # bob's container is on bob's own bridge
    link = json.loads(subprocess.run(["ip", "-d", "-j", "link", "show", host],
                                     capture_output=True, text=True).stdout)[0]
    assert link["master"] == f"nsgu{ALICE.uid}"
    assert Path("/run/lxc/nsgate-bridges").read_text().splitlines() == [
        f"{ALICE.uid} nsgu{ALICE.uid}", f"{BOB.uid} nsgu{BOB.uid}"]
    assert bridge_port(host)["isolated"] is False


def test_a_container_cannot_send_with_its_neighbours_source_mac(network):
    """On a private bridge too (its containers talk freely): a container may change its MAC,
    but not to one its neighbour has (more in test_usernic_port_security.py)."""
    first, second = network(ALICE), network(ALICE)
    first.attach("nsgate-private", "10.79.0.2/24")
    second.attach("nsgate-private", "10.79.0.3/24")
    assert first.pings("10.79.0.3")
    own = json.loads(first.run("ip", "-j", "link", "show", "eth0").stdout)[0]["address"]
    neighbours = json.loads(second.run("ip", "-j", "link", "show", "eth0").stdout)[0]["address"]

    def with_source_mac(mac: str) -> bool:
        assert first.run("ip", "link", "set", "eth0", "address", mac).returncode == 0
        first.run("ip", "neigh", "flush", "all")
        second.run("ip", "neigh", "flush", "all")
        return first.pings("10.79.0.3")

    assert not with_source_mac(neighbours)
    assert with_source_mac("02:00:00:00:00:99")  # a MAC nobody has: allowed
    assert with_source_mac(own)


def test_existing_bridge_of_that_name_is_not_adopted(network):
    subprocess.run(["ip", "link", "add", f"nsgu{ALICE.uid}", "type", "bridge"], check=True)
    container = network(ALICE)
    result = run_as(ALICE, [helper("lxc-user-nic"), "create", "x", "x", str(container.pid),
                            "veth", "nsgate-private", "eth0"])
    assert result.returncode == 1
    assert b"is not a private bridge nsgate made" in result.stderr
    assert container.run("ip", "-j", "link").stdout.count("eth0") == 0


def test_no_router_advertisements_on_host_ends_and_private_bridges(network):
    container = network(ALICE)
    host = container.attach("nsgate-private", "10.80.0.2/24")
    for name in (host, f"nsgu{ALICE.uid}"):
        path = Path(f"/proc/sys/net/ipv6/conf/{name}/accept_ra")
        assert path.read_text().strip() == "0", name
