"""The firewall of the per-user networks (table `inet nsgate`, loaded by the installed `nsgate
network apply` from a networks.conf), proven with real traffic on a hand-made network
(tests/firewall_support.py): two users' bridges, a container on each, a fake uplink.
- nat: containers reach the uplink as the host's address (IPv4 and IPv6); the uplink cannot
  open a connection to a container;
- no packet passes between two users' bridges (ICMP, TCP, UDP, IPv4 and IPv6), nor to the
  other user's gateway;
- a spoofed source (another user's address, a foreign one) is dropped, and it is the table
  that drops it (the same datagram passes once the table is gone);
- from a container the host answers only DHCP (a discover from 0.0.0.0) and DNS, and only on
  the gateway of the container's own bridge; a TCP service of the host is unreachable;
- routed: no masquerade, and the uplink reaches the containers; none: nothing leaves."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.firewall_support import (
    CONF,
    UPLINK6_HOST,
    UPLINK6_PEER,
    UPLINK_HOST,
    UPLINK_PEER,
    WORK,
    Netns,
    apply,
    connect,
    listen,
    no_dad,
    peers,
    remove_table,
    run,
    stop_listeners,
    table,
    wait_carrier,
)
from tests.support import wait_for

A_BRIDGE, B_BRIDGE = "nsgu23001", "nsgu23002"  # alice's and bob's (tests.support uids)
A_GW, B_GW = "10.210.1.1", "10.210.2.1"
A_GW6, B_GW6 = "fd42:6e73:0:1::1", "fd42:6e73:0:2::1"
A_IP, B_IP = "10.210.1.10", "10.210.2.10"
A_IP6, B_IP6 = "fd42:6e73:0:1::10", "fd42:6e73:0:2::10"
FORWARDING = ("/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv6/conf/all/forwarding")
DROPPED = "TimeoutError"  # a drop: no answer, no refusal


class Lab:
    def __init__(self) -> None:
        self.netns: list[Netns] = []
        self.links: list[str] = []

    def container(self, name: str, bridge: str, addresses: list[str] = (),
                  gateways: list[str] = ()) -> Netns:
        ns = Netns(name)
        self.netns.append(ns)
        ns.attach(f"nsgt{name}", master=bridge, addresses=list(addresses),
                  gateways=list(gateways))
        return ns


def _bridge(name: str, *addresses: str) -> None:
    run("ip", "link", "add", name, "type", "bridge")
    for address in addresses:
        run("ip", "addr", "add", address, "dev", name, *(["nodad"] if ":" in address else []))
    run("ip", "link", "set", name, "up")


@pytest.fixture
def lab(request) -> Iterator[Lab]:
    """The two users' bridges with their gateways, a container on each, the uplink, and
    networks.conf with `uplink` = the test's parameter (default nat), applied."""
    uplink = getattr(request, "param", "nat")
    with no_dad():  # the host's link-local addresses usable at once (IPv6 neighbours)
        yield from _lab(uplink)


def _lab(uplink: str) -> Iterator[Lab]:
    WORK.mkdir(parents=True, exist_ok=True)
    saved = [Path(path).read_text() for path in FORWARDING]
    lab = Lab()
    try:
        CONF.parent.mkdir(mode=0o755, exist_ok=True)
        CONF.write_text(f"ipv4-pool 10.210.0.0/16 24\nipv6-pool fd42:6e73::/48 64\n"
                        f"uplink {uplink}\n")
        os.chmod(CONF, 0o644)
        _bridge(A_BRIDGE, f"{A_GW}/24", f"{A_GW6}/64")
        lab.links.append(A_BRIDGE)
        _bridge(B_BRIDGE, f"{B_GW}/24", f"{B_GW6}/64")
        lab.links.append(B_BRIDGE)
        lab.uplink = Netns("uplink")
        lab.netns.append(lab.uplink)
        lab.uplink.attach("nsgtup", master=None, addresses=[f"{UPLINK_PEER}/24",
                                                            f"{UPLINK6_PEER}/64"], gateways=[])
        run("ip", "addr", "add", f"{UPLINK_HOST}/24", "dev", "nsgtup")
        run("ip", "addr", "add", f"{UPLINK6_HOST}/64", "dev", "nsgtup", "nodad")
        run("ip", "route", "add", "default", "via", UPLINK_PEER)
        run("ip", "-6", "route", "add", "default", "via", UPLINK6_PEER)
        lab.a = lab.container("c1", A_BRIDGE, [f"{A_IP}/24", f"{A_IP6}/64"], [A_GW, A_GW6])
        lab.b = lab.container("c2", B_BRIDGE, [f"{B_IP}/24", f"{B_IP6}/64"], [B_GW, B_GW6])
        for link in (A_BRIDGE, B_BRIDGE, "nsgtup"):
            wait_carrier(link)
        result = apply()
        assert result.returncode == 0, result.stderr
        assert table() is not None
        yield lab
    finally:
        stop_listeners()
        for ns in lab.netns:
            ns.stop()
        for link in lab.links:
            run("ip", "link", "delete", link, check=False)
        remove_table()
        for path, value in zip(FORWARDING, saved, strict=True):
            Path(path).write_text(value)
        shutil.rmtree(CONF.parent, ignore_errors=True)


def test_nat_containers_reach_the_uplink_as_the_host(lab: Lab) -> None:
    seen = lab.uplink.listen(7000)
    assert lab.a.connect("tcp", UPLINK_PEER, 7000) == "hi"
    assert lab.b.connect("udp", UPLINK_PEER, 7000) == "hi"
    assert lab.a.connect("tcp", UPLINK6_PEER, 7000) == "hi"
    assert lab.a.pings(UPLINK_PEER)
    assert peers(seen) == [f"tcp {UPLINK_HOST}", f"udp {UPLINK_HOST}", f"tcp {UPLINK6_HOST}"]
    # The uplink, even with a route to the pool, cannot open a connection to a container.
    inside = lab.a.listen(7001)
    lab.uplink.must("ip", "route", "add", "10.210.0.0/16", "via", UPLINK_HOST)
    assert lab.uplink.connect("tcp", A_IP, 7001) == DROPPED
    assert lab.uplink.connect("udp", A_IP, 7001) == DROPPED
    assert peers(inside) == []


def test_no_packet_passes_between_two_users_bridges(lab: Lab) -> None:
    b_service = lab.b.listen(7002)
    for proto in ("tcp", "udp"):
        assert lab.a.connect(proto, B_IP, 7002) == DROPPED
        assert lab.a.connect(proto, B_IP6, 7002) == DROPPED
        assert lab.b.connect(proto, A_IP, 7002) == DROPPED
    assert not lab.a.pings(B_IP)
    assert not lab.a.pings(B_IP6)
    assert not lab.a.pings(B_GW)  # nor the other user's gateway
    assert peers(b_service) == []
    # The service itself is up: the host reaches it, and each container its own gateway.
    assert connect("tcp", B_IP, 7002) == "hi"
    assert peers(b_service) == [f"tcp {B_GW}"]
    assert lab.a.pings(A_GW) and lab.b.pings(B_GW) and lab.a.pings(A_GW6)
    # Forwarding is on: without the table, alice's container reaches bob's.
    remove_table()
    assert lab.a.connect("tcp", B_IP, 7002) == "hi"
    assert peers(b_service) == [f"tcp {B_GW}", f"tcp {A_IP}"]


def test_a_spoofed_source_is_dropped_by_the_table(lab: Lab) -> None:
    seen = lab.uplink.listen(7003)
    lab.uplink.must("ip", "route", "add", "10.210.0.0/16", "via", UPLINK_HOST)
    for source in (B_IP, "198.51.100.7", UPLINK_HOST):
        assert lab.a.connect("udp", UPLINK_PEER, 7003, source=source) == DROPPED
    assert lab.a.connect("udp", UPLINK6_PEER, 7003, source=B_IP6) == DROPPED
    assert lab.a.connect("udp", UPLINK_PEER, 7003) == "hi"
    assert peers(seen) == [f"udp {UPLINK_HOST}"]
    # Without the table the same spoofed datagram goes out (the answer goes to bob's bridge):
    # the table is what dropped it.
    remove_table()
    lab.a.connect("udp", UPLINK_PEER, 7003, source=B_IP, timeout=0.1)
    wait_for(lambda: len(peers(seen)) == 2, "the spoofed datagram at the uplink")
    assert peers(seen) == [f"udp {UPLINK_HOST}", f"udp {B_IP}"]


def test_the_host_answers_containers_only_dhcp_and_dns_on_their_gateway(lab: Lab) -> None:
    dns = listen(53)
    other = listen(2222)
    dhcp = listen(67)
    assert lab.a.connect("tcp", A_GW, 53) == "hi"
    assert lab.a.connect("udp", A_GW, 53) == "hi"
    assert lab.a.connect("udp", A_GW6, 53) == "hi"
    assert peers(dns) == [f"tcp {A_IP}", f"udp {A_IP}", f"udp {A_IP6}"]
    for host, port in ((A_GW, 2222), (A_GW6, 2222), (UPLINK_HOST, 53), (UPLINK_HOST, 2222),
                       (B_GW, 53)):
        assert lab.a.connect("tcp", host, port) == DROPPED, (host, port)
    assert lab.a.connect("udp", A_GW, 2222) == DROPPED
    assert peers(other) == []
    assert len(peers(dns)) == 3
    # A DHCP client with no address yet: its discover (from 0.0.0.0) reaches the host.
    fresh = lab.container("c3", A_BRIDGE)
    fresh.run("busybox", "udhcpc", "-i", "eth0", "-n", "-q", "-t", "1", "-T", "1", "-s",
              "/bin/true")
    assert "udp 0.0.0.0" in peers(dhcp)
    # Without the table the host's other service answers: the table is what kept it out.
    remove_table()
    assert lab.a.connect("tcp", A_GW, 2222) == "hi"


@pytest.mark.parametrize("lab", ["routed"], indirect=True)
def test_routed_no_masquerade_and_the_uplink_reaches_containers(lab: Lab) -> None:
    seen = lab.uplink.listen(7004)
    inside = lab.a.listen(7005)
    lab.uplink.must("ip", "route", "add", "10.210.0.0/16", "via", UPLINK_HOST)
    assert lab.a.connect("tcp", UPLINK_PEER, 7004) == "hi"
    assert peers(seen) == [f"tcp {A_IP}"]
    assert lab.uplink.connect("tcp", A_IP, 7005) == "hi"
    assert peers(inside) == [f"tcp {UPLINK_PEER}"]
    lab.uplink.must("ip", "-6", "route", "add", "fd42:6e73::/48", "via", UPLINK6_HOST)
    assert lab.a.connect("tcp", UPLINK6_PEER, 7004) == "hi"
    assert lab.uplink.connect("tcp", A_IP6, 7005) == "hi"
    assert peers(seen)[1:] == [f"tcp {A_IP6}"]
    assert peers(inside)[1:] == [f"tcp {UPLINK6_PEER}"]
    assert lab.a.connect("tcp", B_IP, 7005) == DROPPED  # users still apart


@pytest.mark.parametrize("lab", ["none"], indirect=True)
def test_none_nothing_leaves_the_bridges(lab: Lab) -> None:
    Path(FORWARDING[0]).write_text("1\n")  # even with forwarding on
    seen = lab.uplink.listen(7006)
    lab.uplink.must("ip", "route", "add", "10.210.0.0/16", "via", UPLINK_HOST)
    dns = listen(53)
    assert lab.a.connect("tcp", UPLINK_PEER, 7006) == DROPPED
    assert lab.uplink.connect("tcp", A_IP, 7006) == DROPPED
    assert lab.a.connect("udp", A_GW, 53) == "hi"
    assert peers(seen) == [] and peers(dns) == [f"udp {A_IP}"]


# --- the ruleset's text (pure), and the kernel accepting every variant -------------------------

def _plan(text: str):
    from nsgate.policy import networks_conf

    return networks_conf.parse(text.encode(), b"UID_MIN 1000\nUID_MAX 1100\n")


VARIANTS = [f"ipv4-pool 10.210.0.0/16 24\n{six}uplink {uplink}\n"
            for uplink in ("nat", "routed", "none")
            for six in ("", "ipv6-pool fd42:6e73::/48 64\n")]


def test_no_plan_only_removes_the_table() -> None:
    from nsgate.policy import network_ruleset

    assert network_ruleset.ruleset(None) == "add table inet nsgate\ndelete table inet nsgate\n"


def test_the_version_names_the_rules() -> None:
    from nsgate.policy import network_ruleset

    nat, nat6, routed, routed6, none, none6 = (network_ruleset.version(_plan(text))
                                               for text in VARIANTS)
    assert len({nat, nat6, routed, none}) == 4
    assert (routed, none) == (routed6, none6)  # an IPv6 pool adds a rule only to masquerade
    for text in VARIANTS:
        version = network_ruleset.version(_plan(text))
        assert version == network_ruleset.version(_plan("# same\n" + text))
        assert version.startswith("nsgate networks 1 ") and len(version) == 18 + 12
        assert f'\tcomment "{version}"\n' in network_ruleset.ruleset(_plan(text))
    # allocation changes no rule
    assert network_ruleset.version(_plan(VARIANTS[0] + "allocation derived\n")) == \
        network_ruleset.version(_plan(VARIANTS[0].replace("24", "24\nallocation recorded")))


def test_what_each_uplink_adds() -> None:
    from nsgate.policy import network_ruleset

    nat, nat6, routed, _, none, _ = (network_ruleset.ruleset(_plan(text)) for text in VARIANTS)
    assert 'oifname != "nsgu*" ip saddr 10.210.0.0/16 masquerade' in nat
    assert "fd42" not in nat and 'ip6 saddr fd42:6e73::/48 masquerade' in nat6
    assert "masquerade" not in routed + none
    assert 'oifname "nsgu*" ct state new accept' in routed
    assert "ct state new" not in nat + none
    assert '\t\tiifname "nsgu*" drop\n' in none and '\t\tiifname "nsgu*" accept\n' in nat


@pytest.mark.parametrize("text", VARIANTS)
def test_the_kernel_accepts_every_variant(text: str) -> None:
    from nsgate.policy import network_ruleset

    checked = subprocess.run(["nft", "-c", "-f", "-"], input=network_ruleset.ruleset(_plan(text)),
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stderr
