"""Issue 12 end to end: per-user networks that work, as users meet them.

One world for the module (tests/network_support.py): a fake internet behind the test host, the
host's resolver pointing at it, /etc/nsgate/networks.conf, nsgated running (its network keeper
loads the `inet nsgate` table and supervises dnsmasq), and two users with two containers each,
attached to `nsgate-private` by the installed lxc-user-nic with nothing but their lxc-usernet
grant, configured by DHCP (busybox udhcpc, asking at once, as a real client does). Then, with
real traffic: the address plan, containers asking together, NAT to the uplink, DNS through the
gateway, users kept apart (ICMP, TCP, UDP, ARP; IPv6 too), no host service but DHCP and DNS (no
echo reply either), no spoofed source (IPv4, IPv6), a restarted container's old lease, IPv6 by
SLAAC, rootlesskit (also as a user with no bridge yet) and lxc-start with no per-user setup, and
the cleanup with the last port (service) or `nsgate nics gc`.

The host's own reverse-path filter is off (rp_filter 0, the kernel's default): what drops a
spoofed source is nsgate's table alone.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import network_support as ns
from tests.network_support import (
    ECHO_PORT,
    HOST_ADDR,
    HOST_ADDR6,
    INTERNET,
    INTERNET6,
    INTERNET_NAME,
    SHORT,
    Container,
    side_by_side,
    token,
)
from tests.service_support import children, shared_nsgated, shared_nsgated_paused
from tests.support import (
    ALICE,
    BOB,
    CAROL,
    NSGATE,
    PREFIX,
    SANDBOX,
    User,
    as_user,
    wait_for,
    write_etc,
)
from tests.test_lxc_real import Lxc, nsgate_lxc_user_nic  # noqa: F401 - the fixture
from tests.test_rootlesskit import reference_tools_disabled, rootlesskit
from tests.usernic_support import clean_db

CONF_DIR = Path("/etc/nsgate")
PLAN = ("# issue 12's example\n"
        "ipv4-pool 10.210.0.0/16 24\n"
        "ipv6-pool fd42:6e73::/48 64\n"
        "uplink nat\n")
POOL = ipaddress.IPv4Network("10.210.0.0/16")
POOL6 = ipaddress.IPv6Network("fd42:6e73::/48")
USERNET = ("nsgt-alice veth nsgate-private 8\n"
           "nsgt-bob veth nsgate-private 8\n"
           "nsgt-carol veth nsgate-private 4\n")
SUBNETS = Path("/run/lxc/nsgate-subnets")
LEASES = Path("/run/nsgate/dhcp/leases")
HOST_PORT = 8080  # a host service containers must not reach
SYSCTLS = ("net.ipv4.conf.all.rp_filter", "net.ipv4.conf.default.rp_filter",
           "net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding")


def subnet_of(index: int) -> ipaddress.IPv4Network:
    return list(POOL.subnets(new_prefix=24))[index]


def subnet6_of(index: int) -> ipaddress.IPv6Network:
    return ipaddress.IPv6Network((int(POOL6.network_address) + (index << 64), 64))


def gateway(index: int) -> str:
    return str(subnet_of(index).network_address + 1)


def bridge(user: User) -> str:
    return f"nsgu{user.uid}"


def record() -> dict[int, int]:
    if not SUBNETS.exists():
        return {}
    return {int(uid): int(index) for uid, index in
            (line.split() for line in SUBNETS.read_text().splitlines() if line.strip())}


def lease_lines() -> list[str]:
    return LEASES.read_text().splitlines() if LEASES.exists() else []


def keeper_running(pid: int) -> bool:
    for child in children(pid):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            if Path(f"/proc/{child}/comm").read_text().strip() == "nsgated-net":
                return True
    return False


def dnsmasqs() -> list[int]:
    """The service's dnsmasq processes (the uplink's has another command line)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                if b"/run/nsgate/dhcp/" in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
    return found


class World:
    def __init__(self, uplink: ns.Uplink) -> None:
        self.uplink = uplink
        self.containers: dict[tuple[str, str], Container] = {}
        self.extra: list[Container] = []

    def get(self, user: User, name: str) -> Container:
        return self.containers[(user.name, name)]

    def container(self, user: User, name: str) -> Container:
        """A container of the test's own (stopped with the world)."""
        self.extra.append(Container(user, name))
        return self.extra[-1]


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    saved_resolv = Path("/etc/resolv.conf").read_bytes()
    saved_sysctls = {name: ns.sysctl(name) for name in SYSCTLS}
    shutil.rmtree(CONF_DIR, ignore_errors=True)
    shutil.rmtree("/run/nsgate/dhcp", ignore_errors=True)
    clean_db()
    uplink = ns.Uplink()
    world = World(uplink)
    try:
        write_etc("resolv.conf", f"nameserver {INTERNET}\n")
        CONF_DIR.mkdir(mode=0o755)
        write_etc("nsgate/networks.conf", PLAN)
        write_etc("lxc/lxc-usernet", USERNET)
        for name in SYSCTLS[:2]:
            ns.sysctl(name, "0")
        with shared_nsgated() as service:
            wait_for(lambda: keeper_running(service.pid), "nsgated's network keeper")
            for user in (ALICE, BOB):  # alice first: she gets the pool's first subnet
                for name in ("c1", "c2"):
                    container = Container(user, name)
                    world.containers[(user.name, name)] = container
                    container.attach()
                    # asked at once, as a real client does, while the service may still be
                    # adding the new bridge to dnsmasq (udhcpc asks again each second); one
                    # container at a time: all at once is a test of its own
                    container.dhcp()
                    container.serve_echo()
            yield world
            for container in [*world.containers.values(), *world.extra]:
                container.stop()
    finally:
        for container in [*world.containers.values(), *world.extra]:
            container.stop()
        ns.remove_links(("nsgu", "veth"))
        subprocess.run(["nft", "delete", "table", "inet", "nsgate"], capture_output=True)
        for name, value in saved_sysctls.items():
            ns.sysctl(name, value)
        shutil.rmtree(CONF_DIR, ignore_errors=True)
        Path("/etc/lxc/lxc-usernet").unlink(missing_ok=True)
        write_etc("resolv.conf", saved_resolv)
        clean_db()
        shutil.rmtree("/run/nsgate/dhcp", ignore_errors=True)
        uplink.stop()
    wait_for(lambda: not dnsmasqs(), "dnsmasq to stop with the service")


def slaac_address(container: Container) -> str:
    wait_for(lambda: bool(ns.ipv6_ready(container.pid)), f"a SLAAC address in {container}")
    return ns.ipv6_ready(container.pid)[0].split("/")[0]


def all_containers(world: World) -> list[Container]:
    return [world.get(user, name) for user in (ALICE, BOB) for name in ("c1", "c2")]


# --- addresses -----------------------------------------------------------------------------------


def test_each_container_gets_an_address_of_its_users_subnet_by_dhcp(world):
    assert record() == {ALICE.uid: 0, BOB.uid: 1}
    seen = set()
    for index, user in enumerate((ALICE, BOB)):
        subnet, gw = subnet_of(index), gateway(index)
        link = ns.links()[bridge(user)]
        assert ns.addresses(link) == [f"{gw}/24"]
        assert ns.addresses(link, "inet6") == [f"{subnet6_of(index).network_address + 1}/64"]
        for name in ("c1", "c2"):
            lease = world.get(user, name).lease
            assert lease is not None
            assert lease.interface.network == subnet, lease
            assert str(lease.ip) not in (gw, str(subnet.broadcast_address)), lease
            assert lease.routers == [gw] and lease.dns == [gw] and lease.server == gw, lease
            seen.add(lease.ip)
    assert len(seen) == 4


def test_containers_get_an_ipv6_address_of_their_users_64_by_slaac(world):
    for index, user in enumerate((ALICE, BOB)):
        for name in ("c1", "c2"):
            container = world.get(user, name)
            wait_for(lambda c=container: bool(ns.ipv6_ready(c.pid)),
                     f"a SLAAC address and a default route in {user.name}'s {name}")
            (address,) = ns.ipv6_ready(container.pid)
            assert ipaddress.IPv6Interface(address).network == subnet6_of(index), address
            (route,) = json.loads(container.run("ip", "-6", "-j", "route", "show",
                                                "default").stdout)
            assert route["gateway"].startswith("fe80:"), route


def test_containers_starting_together_all_get_their_addresses(world):
    """Two of alice's containers and one of bob's come up at the same moment, each asking for
    its address at once: every one gets one of its user's subnet."""
    together = [world.container(ALICE, "together1"), world.container(ALICE, "together2"),
                world.container(BOB, "together1")]
    for container in together:
        container.attach()
    ns.dhcp_all(together)
    for container, index in zip(together, (0, 0, 1), strict=True):
        assert container.lease is not None
        assert container.lease.interface.network == subnet_of(index), container.lease


# --- the way out ---------------------------------------------------------------------------------


def test_every_container_reaches_the_internet_through_nat(world):
    """The uplink has no route to the pool: it sees, and answers, the host's address."""
    probes = {}
    for container in all_containers(world):
        for proto in ("tcp", "udp"):
            payload = token(f"{proto}-{container.user.name}-{container.name}")
            probes[payload] = container.probe_argv(proto, INTERNET, ECHO_PORT, payload, 20)
        probes[f"ping-{container.user.name}-{container.name}"] = container.ping_argv(INTERNET)
    results = side_by_side(probes)
    for payload, result in results.items():
        assert result.returncode == 0, (payload, result.stdout, result.stderr)
        if not payload.startswith("ping-"):
            assert result.stdout.strip() == f"{HOST_ADDR} {payload}", result.stdout
            assert world.uplink.echo.peers_of(payload) == [HOST_ADDR]


def test_ipv6_reaches_the_internet_through_nat(world):
    container = world.get(BOB, "c2")
    slaac_address(container)
    payload = token("tcp6")
    result = container.probe("tcp", INTERNET6, ECHO_PORT, payload, timeout=20)
    assert result.stdout.strip() == f"{HOST_ADDR6} {payload}", result
    assert world.uplink.echo.peers_of(payload) == [HOST_ADDR6]


def test_names_resolve_through_the_gateway(world):
    for container in all_containers(world):
        assert container.lease is not None
        (dns,) = container.lease.dns
        result = container.run("busybox", "nslookup", "-type=a", INTERNET_NAME, dns)
        assert result.returncode == 0, result
        assert f"Address: {INTERNET}" in result.stdout and f"Server:\t\t{dns}" in result.stdout


# --- users kept apart ----------------------------------------------------------------------------


def reach(source: Container, target: Container, timeout: float) -> dict[str, list[str]]:
    """The four ways `source` may reach `target` (ICMP, ARP, TCP and UDP echo)."""
    assert target.lease is not None
    address = str(target.lease.ip)
    return {
        "icmp": source.ping_argv(address, wait=timeout),
        "arp": source.arping_argv(address, wait=timeout),
        "tcp": source.probe_argv("tcp", address, ECHO_PORT, token("tcp"), timeout),
        "udp": source.probe_argv("udp", address, ECHO_PORT, token("udp"), timeout),
    }


def test_a_users_containers_reach_each_other_and_no_other_users(world):
    a1, a2 = world.get(ALICE, "c1"), world.get(ALICE, "c2")
    b1, b2 = world.get(BOB, "c1"), world.get(BOB, "c2")
    commands = {}
    for label, (source, target) in {"a1>a2": (a1, a2), "b2>b1": (b2, b1)}.items():
        commands.update({f"{label} {kind}": argv
                         for kind, argv in reach(source, target, 20).items()})
    for label, (source, target) in {"a1>b1": (a1, b1), "a2>b2": (a2, b2),
                                    "b1>a1": (b1, a1), "b2>a2": (b2, a2)}.items():
        commands.update({f"{label} {kind}": argv
                         for kind, argv in reach(source, target, SHORT).items()})
    results = side_by_side(commands)
    for key in ("a1>a2", "b2>b1"):
        for kind in ("icmp", "arp", "tcp", "udp"):
            result = results[f"{key} {kind}"]
            assert result.returncode == 0, (key, kind, result)
    assert results["a1>a2 tcp"].stdout.startswith(f"{a1.lease.ip} ")  # no NAT inside
    for key in ("a1>b1", "a2>b2", "b1>a1", "b2>a2"):
        for kind in ("icmp", "arp", "tcp", "udp"):
            result = results[f"{key} {kind}"]
            assert result.returncode != 0, (key, kind, result.stdout)
    for victim, attacker in ((b1, a1), (b2, a2), (a1, b1), (a2, b2)):
        assert victim.echo is not None
        assert not [e for e in victim.echo.entries() if e[1] == str(attacker.lease.ip)]


def test_a_users_containers_reach_each_other_and_no_other_users_over_ipv6(world):
    a1, a2 = world.get(ALICE, "c1"), world.get(ALICE, "c2")
    b1, b2 = world.get(BOB, "c1"), world.get(BOB, "c2")
    commands = {}
    pairs = {"a1>a2": (a1, a2, 20), "b1>b2": (b1, b2, 20),
             "a1>b1": (a1, b1, SHORT), "b2>a2": (b2, a2, SHORT)}
    for label, (source, target, wait) in pairs.items():
        address = slaac_address(target)
        commands[f"{label} icmp"] = source.inside("busybox", "ping", "-c", "1", "-W",
                                                  str(int(wait)), address)
        for proto in ("tcp", "udp"):
            commands[f"{label} {proto}"] = source.probe_argv(proto, address, ECHO_PORT,
                                                             token(proto), wait)
    results = side_by_side(commands)
    for key, result in results.items():
        reached = result.returncode == 0
        assert reached == (key[:5] in ("a1>a2", "b1>b2")), (key, result.stdout)


def test_the_host_serves_containers_dhcp_and_dns_only(world):
    """A TCP and UDP service of the host's, on every address: the uplink reaches it, a
    container on no address of the host (its gateway, another user's, the uplink side); DNS
    answers on its own gateway only."""
    alice = world.get(ALICE, "c1")
    with ns.listener_on_the_host(HOST_PORT) as host_log:
        control = world.uplink.probe("tcp", HOST_ADDR, HOST_PORT, "from-uplink")
        assert control.stdout.strip() == f"{ns.UPLINK_ADDR} from-uplink", control
        commands = {}
        for address in (gateway(0), HOST_ADDR, gateway(1)):
            for proto in ("tcp", "udp"):
                commands[f"{proto} {address}"] = alice.probe_argv(proto, address, HOST_PORT,
                                                                  token(proto), SHORT)
        commands["dns of bob's gateway"] = alice.inside(
            "busybox", "timeout", str(int(SHORT) + 1), "busybox", "nslookup", INTERNET_NAME,
            gateway(1))
        commands["dns"] = alice.inside("busybox", "nslookup", INTERNET_NAME, gateway(0))
        results = side_by_side(commands)
        assert INTERNET in results.pop("dns").stdout
        failed = {key: result.stdout for key, result in results.items()
                  if result.returncode == 0 or INTERNET in result.stdout}
        assert not failed
        assert [peer for _, peer, _ in host_log.entries()] == [ns.UPLINK_ADDR]


def test_the_host_does_not_answer_containers_pings(world):
    """Reaching the host is for DHCP and DNS only (issue 12, 3.): no echo reply either, from
    its gateway, another user's, or the uplink side, while the internet answers."""
    alice = world.get(ALICE, "c1")
    commands = {address: alice.ping_argv(address, wait=SHORT)
                for address in (gateway(0), HOST_ADDR, gateway(1))}
    commands["internet"] = alice.ping_argv(INTERNET)
    results = side_by_side(commands)
    assert results.pop("internet").returncode == 0
    answered = [address for address, result in results.items() if result.returncode == 0]
    assert not answered


def test_a_spoofed_source_address_is_dropped(world):
    """alice's container gives itself an address of bob's subnet and one of the internet's and
    sends from them: nothing reaches the uplink; from its own address, right after, it does."""
    alice = world.get(ALICE, "c2")
    spoofed = {"bobs": str(subnet_of(1).network_address + 200), "outside": "203.0.113.9"}
    for address in spoofed.values():
        ns.check(alice.inside("ip", "addr", "add", f"{address}/32", "dev", "eth0"))
    try:
        payloads = {name: token(f"spoof-{name}") for name in spoofed}
        results = side_by_side({
            name: alice.probe_argv("udp", INTERNET, ECHO_PORT, payloads[name], SHORT,
                                   source=address) for name, address in spoofed.items()})
        assert all(result.returncode != 0 for result in results.values()), results
        honest = token("honest")
        assert alice.probe("udp", INTERNET, ECHO_PORT, honest).returncode == 0
        logged = [payload for _, _, payload in world.uplink.echo.entries()]
        assert honest in logged
        assert not set(payloads.values()) & set(logged)
    finally:
        for address in spoofed.values():
            alice.run("ip", "addr", "del", f"{address}/32", "dev", "eth0")


def test_a_spoofed_ipv6_source_address_is_dropped(world):
    alice = world.get(ALICE, "c1")
    own = slaac_address(alice)
    bobs = str(subnet6_of(1).network_address + 0x99)
    ns.check(alice.inside("ip", "addr", "add", f"{bobs}/128", "dev", "eth0", "nodad"))
    try:
        spoofed = token("spoof6")
        result = alice.probe("udp", INTERNET6, ECHO_PORT, spoofed, SHORT, source=bobs)
        assert result.returncode != 0, result.stdout
        honest = token("honest6")
        assert alice.probe("udp", INTERNET6, ECHO_PORT, honest, source=own).returncode == 0
        logged = [payload for _, _, payload in world.uplink.echo.entries()]
        assert honest in logged and spoofed not in logged
    finally:
        alice.run("ip", "addr", "del", f"{bobs}/128", "dev", "eth0")


# --- restarts ------------------------------------------------------------------------------------


def test_a_restarted_container_gets_its_old_lease_back(world):
    first = world.container(ALICE, "restarted")
    host_end = first.attach()
    lease, mac = first.dhcp(), first.mac()
    first.stop()
    wait_for(lambda: host_end not in ns.links(), "the old host end to go")
    again = world.container(ALICE, "restarted")
    again.attach()
    assert again.mac() == mac
    assert again.dhcp().interface == lease.interface


# --- real clients --------------------------------------------------------------------------------


def test_rootlesskit_on_nsgate_private_comes_up_with_outbound_traffic(world, user_dir):
    payload = token("rootlesskit")
    inside = ("ip -4 -j addr show dev eth0; ip -4 -j route show default; "
              f"echo {payload} | busybox nc -w 10 {INTERNET} {ECHO_PORT}; "
              f"busybox nslookup {INTERNET_NAME} >/dev/null && echo resolved")
    result = rootlesskit(user_dir / "state", "--net=lxc-user-nic",
                         f"--lxc-user-nic-binary={NSGATE / 'lxc-user-nic'}",
                         "--lxc-user-nic-bridge=nsgate-private", "--copy-up=/etc",
                         "--disable-host-loopback", "sh", "-c", inside)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.decode().splitlines()
    assert len(lines) == 4, lines
    addr, route, echo, resolved = lines
    (link,) = json.loads(addr)
    (inet,) = link["addr_info"]
    assert ipaddress.IPv4Interface(f"{inet['local']}/{inet['prefixlen']}").network == \
        subnet_of(0)
    assert [r["gateway"] for r in json.loads(route)] == [gateway(0)]
    assert echo == f"{HOST_ADDR} {payload}"
    assert world.uplink.echo.peers_of(payload) == [HOST_ADDR]
    assert resolved == "resolved"


def test_rootlesskit_of_a_user_with_no_bridge_yet_comes_up_at_once(world):
    """A new user, as the issue tried: the grant is all; the first nic makes the bridge, its
    gateway and DHCP service while rootlesskit's own DHCP client is already asking."""
    assert bridge(CAROL) not in ns.links()
    write_etc("subuid", Path("/etc/subuid").read_text() + f"{CAROL.name}:500000:65536\n")
    write_etc("subgid", Path("/etc/subgid").read_text() + f"{CAROL.name}:500000:65536\n")
    state = SANDBOX / "users" / "carol-rootlesskit"
    shutil.rmtree(state, ignore_errors=True)
    state.mkdir(parents=True)
    os.chown(state, CAROL.uid, CAROL.gid)
    payload = token("carol-rootlesskit")
    argv = ["rootlesskit", f"--state-dir={state / 'state'}", "--subid-source=dynamic",
            "--net=lxc-user-nic", f"--lxc-user-nic-binary={NSGATE / 'lxc-user-nic'}",
            "--lxc-user-nic-bridge=nsgate-private", "--copy-up=/etc", "--disable-host-loopback",
            "sh", "-c", f"echo {payload} | busybox nc -w 10 {INTERNET} {ECHO_PORT}"]
    env = {"PATH": f"{NSGATE}:/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C", "HOME": "/"}
    with reference_tools_disabled():
        result = subprocess.run(as_user(CAROL, argv), capture_output=True, env=env,
                                timeout=120, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().strip() == f"{HOST_ADDR} {payload}"
    assert world.uplink.echo.peers_of(payload) == [HOST_ADDR]


LXC_APPLETS = ("udhcpc", "nc", "nslookup")
LXC_DHCP_SCRIPT = """#!/bin/sh
case "$1" in
deconfig) ip link set "$interface" up ;;
bound) ip addr add "$ip/$mask" dev "$interface"; ip route add default via "$router"
    echo "bound $ip/$mask" ;;
esac
exit 0
"""


def test_lxc_start_on_nsgate_private_comes_up_with_outbound_traffic(world,
                                                                    nsgate_lxc_user_nic):  # noqa: F811
    container = Lxc("networks", None)
    try:
        rootfs = container.lxcpath / "c1" / "rootfs"
        config = container.lxcpath / "c1" / "config"
        text = config.read_text().replace("lxc.net.0.link = br0", "lxc.net.0.link = nsgate-private")
        config.write_text("".join(line + "\n" for line in text.splitlines()
                                  if not line.startswith("lxc.net.0.ipv4.address")))
        for applet in LXC_APPLETS:
            (rootfs / "bin" / applet).symlink_to("busybox")
        (rootfs / "bin" / "dhcp-script").write_text(LXC_DHCP_SCRIPT)
        (rootfs / "bin" / "dhcp-script").chmod(0o755)
        subprocess.run(["chown", "-hR", "200000:200000", str(rootfs / "bin")], check=True)
        result = container.start()
        assert result.returncode == 0, container.log.read_text()[-3000:]
        got = container.attach("/bin/udhcpc", "-i", "eth0", "-f", "-q", "-n", "-t", "60",
                               "-T", "1", "-s", "/bin/dhcp-script")
        bound = [line for line in got.stdout.splitlines() if line.startswith("bound ")]
        assert got.returncode == 0 and bound, got
        assert ipaddress.IPv4Interface(bound[0].split()[1]).network == subnet_of(0)
        payload = token("lxc")
        echo = container.attach("/bin/sh", "-c",
                                f"echo {payload} | nc -w 10 {INTERNET} {ECHO_PORT}")
        assert echo.stdout.strip() == f"{HOST_ADDR} {payload}", echo
        assert world.uplink.echo.peers_of(payload) == [HOST_ADDR]
    finally:
        container.stop()


# --- cleanup -------------------------------------------------------------------------------------


def carol_index() -> int:
    index = record().get(CAROL.uid)
    assert index is not None, record()
    return index


def test_the_last_port_takes_the_bridge_its_addresses_and_leases(world):
    """With the service: the last container goes, and so do its user's bridge, gateway
    addresses and leases; the subnet stays recorded, so the container, restarted, gets the
    same subnet and, by its stable MAC, the same address."""
    carol = world.container(CAROL, "c1")
    carol.attach()
    lease = carol.dhcp()
    index = carol_index()
    assert lease.interface.network == subnet_of(index)
    assert any(f" {lease.ip} " in line for line in lease_lines())
    carol.stop()
    wait_for(lambda: bridge(CAROL) not in ns.links(), "carol's bridge to go with its last port")
    wait_for(lambda: not any(f" {lease.ip} " in line for line in lease_lines()),
             "carol's lease to go with her bridge")
    for link in ns.links().values():
        for address in ns.addresses(link):
            assert ipaddress.IPv4Interface(address).network != subnet_of(index), link["ifname"]
    assert record()[CAROL.uid] == index  # sticky
    again = world.container(CAROL, "c1")
    again.attach()
    assert again.dhcp().interface == lease.interface


def test_nics_gc_takes_the_bridge_and_its_leases_when_no_service_runs(world):
    carol = world.container(CAROL, "gc")
    carol.attach()
    lease = carol.dhcp()
    with shared_nsgated_paused():
        wait_for(lambda: not dnsmasqs(), "dnsmasq to stop with the service")
        ends = []
        for other in world.extra:  # this one, and any other container of carol's
            if other.user == CAROL:
                other.stop()
                ends.append(other.host_end)
        wait_for(lambda: not set(ends) & set(ns.links()), "carol's host ends to go")
        assert bridge(CAROL) in ns.links()  # nobody took it: no service
        gc = subprocess.run([str(PREFIX / "bin" / "nsgate"), "nics", "gc"],
                            capture_output=True, text=True)
        assert gc.returncode == 0, gc.stderr
        assert bridge(CAROL) not in ns.links()
        assert not any(f" {lease.ip} " in line for line in lease_lines()), lease_lines()
        assert str(lease.ip) in gc.stdout, gc.stdout
