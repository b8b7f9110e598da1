"""The service's network keeper (system/network_keeper.py) and its dnsmasq (system/dhcp_server.py),
for real: the installed nsgated in the session's private netns and /run, a networks.conf in the
/etc overlay, private bridges nsgu<uid> made here as the helper makes them (the bridge with its
gateway address, its lines in /run/lxc/nsgate-bridges and /run/lxc/nsgate-subnets), and
containers: `unshare --net` processes with a veth (a fixed MAC) into the bridge, asking for an
address with busybox's udhcpc, whose script prints what it got.

Nothing waits on the wall clock: the keeper is its process (comm nsgated-net), dnsmasq is the
process running the keeper's command line, and what changed is what /proc, the lease file and
syslog (the test's own /dev/log) show.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from tests.service_support import (
    KEEPER,
    Activator,
    Nsgated,
    children,
    nsgated_running,
    traced,
)
from tests.support import (
    ALICE,
    BOB,
    PATIENCE,
    PREFIX,
    private_dev_log,
    proc_state,
    wait_for,
    write_etc,
)
from tests.usernic_support import DB_DIR, WORK, Proc, clean_db, create, ip, ip_links

CONF = Path("/etc/nsgate/networks.conf")
RUN_DIR = Path("/run/nsgate/dhcp")
LEASES = RUN_DIR / "leases"
DNSMASQ_ARGV = ["/usr/sbin/dnsmasq", "--keep-in-foreground",
                f"--conf-file={RUN_DIR}/dnsmasq.conf"]
BRIDGES = DB_DIR / "nsgate-bridges"
SUBNETS = DB_DIR / "nsgate-subnets"
PLAN = "ipv4-pool 10.210.0.0/16 24\n"
UDHCPC = ["busybox", "udhcpc", "-i", "eth0", "-f", "-q", "-n", "-t", "60", "-T", "1", "-s",
          str(WORK / "udhcpc.sh")]  # 60 tries, a second apart: only a hang takes that long
UDHCPC_SCRIPT = """#!/bin/sh
[ "$1" = bound ] && echo "BOUND ip=$ip mask=$mask router=$router dns=$dns"
exit 0
"""


# --- what the kernel shows ----------------------------------------------------------------------


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except (FileNotFoundError, ProcessLookupError):
        return ""


def keeper_of(service: Nsgated) -> int | None:
    found = [pid for pid in children(service.pid) if comm(pid) == KEEPER]
    return found[0] if found else None


def dnsmasqs() -> list[int]:
    """The processes of this sandbox (its network namespace: the pid namespace is the host's,
    where other sandboxes run their own nsgated) running the keeper's dnsmasq command line."""
    wanted = b"".join(arg.encode() + b"\0" for arg in DNSMASQ_ARGV)
    here = os.readlink("/proc/self/ns/net")
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if ((entry / "cmdline").read_bytes() == wanted
                        and os.readlink(entry / "ns" / "net") == here):
                    found.append(int(entry.name))
            except (FileNotFoundError, ProcessLookupError, PermissionError):
                continue
    return sorted(found)


def one_dnsmasq(other_than: int = 0) -> int:
    """The pid of the one dnsmasq, once it runs (and is not `other_than`)."""
    found: list[int] = []

    def running() -> bool:
        found[:] = dnsmasqs()
        return len(found) == 1 and found[0] != other_than and proc_state(found[0]) == "S"

    wait_for(running, "dnsmasq to run")
    return found[0]


def served() -> list[str]:
    """The links dnsmasq's configuration lets it answer on."""
    conf = RUN_DIR / "dnsmasq.conf"
    return re.findall(r"^interface=(\S+)$", conf.read_text(), re.M) if conf.exists() else []


def dns_sockets() -> list[str]:
    """The local addresses of the sockets dnsmasq listens on for DNS (UDP and TCP)."""
    (pid,) = dnsmasqs()
    out = subprocess.run(["ss", "-H", "-lnutp", "sport", "=", ":53"], capture_output=True,
                         text=True, check=True).stdout
    found = [line.split()[4] for line in out.splitlines() if f"pid={pid}," in line]
    assert found, out
    return found


def lease_lines() -> list[str]:
    return LEASES.read_text().splitlines() if LEASES.exists() else []


def has_table() -> bool:
    return subprocess.run(["nft", "list", "table", "inet", "nsgate"], capture_output=True,
                          check=False).returncode == 0


# --- the world ----------------------------------------------------------------------------------


def write_conf(text: str) -> None:
    CONF.parent.mkdir(mode=0o755, exist_ok=True)
    write_etc("nsgate/networks.conf", text)


def bridge(user_uid: int, index: int, pool: str = "10.210.0.0/16") -> tuple[str, IPv4Network]:
    """The private bridge of `user_uid` with subnet `index`, as the helper makes it, with a port
    of its own (a veth whose peer stays here): the service's nic janitor removes a recorded
    private bridge with no port."""
    name = f"nsgu{user_uid}"
    subnet = list(IPv4Network(pool).subnets(new_prefix=24))[index]
    ip("link", "add", name, "type", "bridge")
    ip("addr", "add", f"{subnet.network_address + 1}/24", "dev", name)
    ip("link", "set", name, "up")
    ip("link", "add", f"nsgtp{index}", "type", "veth", "peer", "name", f"nsgtp{index}p")
    ip("link", "set", f"nsgtp{index}", "master", name, "up")
    for path, line in ((BRIDGES, f"{user_uid} {name}"), (SUBNETS, f"{user_uid} {index}")):
        kept = [old for old in (path.read_text().splitlines() if path.exists() else [])
                if not old.startswith(f"{user_uid} ")]
        path.write_text("".join(f"{old}\n" for old in [*kept, line]))
        os.chmod(path, 0o644)
    return name, subnet


class Container:
    """An `unshare --net` process with eth0 (MAC `mac`), the host end `host` on `bridge`."""

    def __init__(self, bridge_name: str, host: str, mac: str) -> None:
        self.proc = Proc.in_root_netns(None)
        self.host, self.mac = host, mac
        ip("link", "add", host, "type", "veth", "peer", "name", "eth0", "address", mac,
           "netns", str(self.proc.pid))
        ip("link", "set", host, "master", bridge_name, "up")
        self.run("ip", "link", "set", "eth0", "up")

    def run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["nsenter", f"--net=/proc/{self.proc.pid}/ns/net", *argv],
                              capture_output=True, text=True, timeout=PATIENCE, check=False)

    def ask(self) -> dict[str, str]:
        """A lease by DHCP: what udhcpc's script was given."""
        result = self.run(*UDHCPC)
        assert result.returncode == 0, result
        return _bound(result.stdout)

    def stop(self) -> None:
        self.proc.stop()
        wait_for(lambda: self.host not in ip_links(), f"{self.host} to go with its netns")


@pytest.fixture(autouse=True)
def world() -> Iterator[None]:
    """No networks.conf, records, leases, table; afterwards the same, every link made here
    deleted, and no dnsmasq left."""
    baseline = set(ip_links())
    WORK.mkdir(mode=0o755, exist_ok=True)
    script = WORK / "udhcpc.sh"
    script.write_text(UDHCPC_SCRIPT)
    script.chmod(0o755)

    def clean() -> None:
        shutil.rmtree(CONF.parent, ignore_errors=True)
        clean_db()
        shutil.rmtree(RUN_DIR, ignore_errors=True)
        subprocess.run(["nft", "delete", "table", "inet", "nsgate"], capture_output=True,
                       check=False)

    clean()
    yield
    Proc.stop_all()
    for name in set(ip_links()) - baseline:
        subprocess.run(["ip", "link", "del", name], capture_output=True, check=False)
    leftover = dnsmasqs()
    for pid in leftover:
        os.kill(pid, signal.SIGKILL)
    clean()
    assert set(ip_links()) == baseline
    assert not leftover, "a dnsmasq outlived its service"


@contextlib.contextmanager
def service() -> Iterator[Nsgated]:
    with nsgated_running("--workers", "1") as running:
        wait_for(lambda: keeper_of(running) is not None, "the network keeper")
        yield running
    wait_for(lambda: not dnsmasqs(), "dnsmasq to stop with the service")


def in_subnet(lease: dict[str, str], subnet: IPv4Network) -> None:
    gateway = str(subnet.network_address + 1)
    assert IPv4Address(lease["ip"]) in subnet and lease["ip"] != gateway, lease
    assert IPv4Address(lease["ip"]) != subnet.broadcast_address, lease
    assert (lease["mask"], lease["router"], lease["dns"]) == ("24", gateway, gateway), lease


# --- tests --------------------------------------------------------------------------------------


def test_no_networks_conf_means_no_dnsmasq_and_nothing_touched() -> None:
    bridge(ALICE.uid, 0)
    with service() as running:
        keeper = keeper_of(running)
        assert keeper is not None
        running.settle()  # the keeper has looked at the files at least once
        assert dnsmasqs() == []
        assert not RUN_DIR.exists()
        assert not has_table()
        assert keeper_of(running) == keeper  # it runs all the same, watching for the file


def test_a_container_gets_an_address_of_its_subnet_and_keeps_it_by_its_mac() -> None:
    write_conf(PLAN)
    name, subnet = bridge(ALICE.uid, 5)
    with service():
        one_dnsmasq()
        assert served() == ["nsgu*"]
        container = Container(name, "nsgtdh0", "02:00:00:00:00:05")
        first = container.ask()
        in_subnet(first, subnet)
        assert any(f" 02:00:00:00:00:05 {first['ip']} " in line for line in lease_lines())
        container.stop()
        again = Container(name, "nsgtdh1", "02:00:00:00:00:05")  # restarted: the same MAC
        assert again.ask()["ip"] == first["ip"]
        other = Container(name, "nsgtdh2", "02:00:00:00:00:06")
        assert other.ask()["ip"] != first["ip"]
        # its DNS listens on the gateway (and the bridge's link-local address) only
        for local in dns_sockets():
            assert local == f"{subnet.network_address + 1}:53" or (
                local.startswith("[fe80::") and local.endswith(f"]%{name}:53")), local
        assert (RUN_DIR.stat().st_mode & 0o777, RUN_DIR.stat().st_uid) == (0o700, 0)


def test_a_bridge_that_comes_is_served_at_once_and_a_gone_ones_leases_go() -> None:
    """A new bridge is served by the running dnsmasq, with no restart (a client that asks once,
    as rootlesskit's, must get its answer); a bridge that goes restarts it, its leases pruned
    in between; with no bridge left it keeps running for the next."""
    write_conf(PLAN)
    alice, alice_subnet = bridge(ALICE.uid, 0)
    with service():
        first = one_dnsmasq()
        bob, bob_subnet = bridge(BOB.uid, 1)  # a bridge that comes after dnsmasq started
        bob_lease = Container(bob, "nsgtdh1", "02:00:00:00:00:02").ask()
        assert dnsmasqs() == [first]
        alice_lease = Container(alice, "nsgtdh0", "02:00:00:00:00:01").ask()
        in_subnet(alice_lease, alice_subnet)
        in_subnet(bob_lease, bob_subnet)
        assert len(lease_lines()) == 2
        ip("link", "del", bob)
        second = one_dnsmasq(other_than=first)
        lines = lease_lines()
        assert any(alice_lease["ip"] in line for line in lines)
        assert not any(bob_lease["ip"] in line for line in lines), lines
        ip("link", "del", alice)  # the last one: its lease goes, dnsmasq stays for the next
        one_dnsmasq(other_than=second)
        wait_for(lambda: not any(alice_lease["ip"] in line for line in lease_lines()),
                 "the last bridge's lease to go")
        ip("link", "del", "nsgtp0")  # the old bridge's port, left behind
        again, _ = bridge(ALICE.uid, 0)
        in_subnet(Container(again, "nsgtdh2", "02:00:00:00:00:03").ask(), alice_subnet)


def test_a_container_of_the_real_helper_gets_its_address_and_again_after_a_restart() -> None:
    """The installed lxc-user-nic makes the private bridge (its gateway address, its subnet
    recorded) and the container's stable MAC; the keeper serves the bridge as it comes. The
    container killed, its bridge goes with its last port (the janitor) and its lease goes; the
    container started again (same lxcpath, name, nic) has the same MAC and gets the same
    address."""
    write_conf(PLAN)
    write_etc("lxc/lxc-usernet", f"{ALICE.name} veth nsgate-private 4\n")
    name = f"nsgu{ALICE.uid}"
    try:
        with service():
            first = _helper_container()
            lease = first.ask()
            assert lease["router"] == _addresses(name)[0].split("/")[0]
            in_subnet(lease, IPv4Network(_addresses(name)[0], strict=False))
            first.stop()
            wait_for(lambda: name not in ip_links() and not any(
                lease["ip"] in line for line in lease_lines()),
                "the bridge and the lease to go with the last container")
            again = _helper_container()
            assert again.mac == first.mac
            assert again.ask()["ip"] == lease["ip"]
    finally:
        Path("/etc/lxc/lxc-usernet").unlink(missing_ok=True)


def _helper_container() -> Container:
    """A container of alice's with a nic on her private bridge, made by the helper."""
    container = Container.__new__(Container)
    container.proc = Proc.container(ALICE)
    result = create(ALICE, container.proc.pid, bridge="nsgate-private")
    assert result.returncode == 0, result.stderr
    container.host = result.stdout.decode().strip().split(":")[2]
    container.mac = ip_links(container.proc.pid)["eth0"]["address"]
    container.run("ip", "link", "set", "eth0", "up")
    one_dnsmasq()
    return container


def test_containers_asking_at_the_same_moment_all_get_an_address() -> None:
    """Two containers of one bridge and one of another start together (with dnsmasq's ping
    check, those of one bridge never got their DHCPACK)."""
    write_conf(PLAN)
    alice, alice_subnet = bridge(ALICE.uid, 0)
    bob, bob_subnet = bridge(BOB.uid, 1)
    with service():
        one_dnsmasq()
        together = [(Container(alice, "nsgtdh0", "02:00:00:00:01:00"), alice_subnet),
                    (Container(alice, "nsgtdh1", "02:00:00:00:01:01"), alice_subnet),
                    (Container(bob, "nsgtdh2", "02:00:00:00:01:02"), bob_subnet)]
        asking = [subprocess.Popen(["nsenter", f"--net=/proc/{container.proc.pid}/ns/net",
                                    *UDHCPC], stdout=subprocess.PIPE, text=True)
                  for container, _ in together]
        leases = [_bound(proc.communicate(timeout=PATIENCE)[0]) for proc in asking]
        for lease, (_, subnet) in zip(leases, together, strict=True):
            in_subnet(lease, subnet)
        assert len({lease["ip"] for lease in leases}) == 3


def _bound(out: str) -> dict[str, str]:
    bound = [line for line in out.splitlines() if line.startswith("BOUND ")]
    assert bound, out
    return dict(field.split("=", 1) for field in bound[-1].split()[1:])


def test_an_ipv6_pool_gives_containers_a_slaac_address_of_their_64() -> None:
    write_conf(PLAN + "ipv6-pool fd42:6e73::/48 64\n")
    name, subnet = bridge(ALICE.uid, 4)
    with service():
        one_dnsmasq()
        container = Container(name, "nsgtdh0", "02:00:00:00:00:08")
        in_subnet(container.ask(), subnet)

        def global_addresses() -> list[str]:
            out = container.run("ip", "-o", "-6", "addr", "show", "dev", "eth0", "scope",
                                "global").stdout
            return [line.split()[3] for line in out.splitlines()]

        # SLAAC from the bridge's router advertisement: the prefix and the MAC's EUI-64
        wait_for(lambda: global_addresses() == ["fd42:6e73:0:4:0:ff:fe00:8/64"],
                 "the container's SLAAC address")
        routes = container.run("ip", "-6", "route", "show", "default").stdout
        assert routes.startswith("default via fe80::"), routes


def test_a_link_that_is_no_users_bridge_is_not_served() -> None:
    """A bridge of the host's, not named as users' bridges are: dnsmasq answers nothing there
    (udhcpc gives up after 3 tries) and binds no DNS socket to it. (An address of the pool on
    it would make the plan refused: network_apply.check_host.)"""
    write_conf(PLAN)
    bridge(ALICE.uid, 0)
    foreign = "nsgthost0"
    ip("link", "add", foreign, "type", "bridge")
    try:
        ip("addr", "add", "10.99.1.1/24", "dev", foreign)
        ip("link", "set", foreign, "up")
        with service():
            one_dnsmasq()
            container = Container(foreign, "nsgtdh0", "02:00:00:00:00:09")
            result = container.run("busybox", "udhcpc", "-i", "eth0", "-f", "-q", "-n", "-t",
                                   "3", "-T", "1", "-s", str(WORK / "udhcpc.sh"))
            assert result.returncode != 0 and "BOUND" not in result.stdout, result
            assert not any(local.startswith("10.99.1.1:") for local in dns_sockets())
    finally:
        subprocess.run(["ip", "link", "del", foreign], capture_output=True)


def test_a_killed_dnsmasq_is_started_again() -> None:
    write_conf(PLAN)
    name, subnet = bridge(ALICE.uid, 2)
    with service():
        first = one_dnsmasq()
        os.kill(first, signal.SIGKILL)
        one_dnsmasq(other_than=first)
        in_subnet(Container(name, "nsgtdh0", "02:00:00:00:00:07").ask(), subnet)


def test_a_keeper_killed_leaves_no_dnsmasq_behind() -> None:
    """Killed, its dnsmasq (which dropped its privileges, and with them any parent-death
    signal) is stopped by the keeper the service starts again."""
    write_conf(PLAN)
    bridge(ALICE.uid, 0)
    with service() as running:
        first = one_dnsmasq()
        keeper = keeper_of(running)
        assert keeper is not None
        os.kill(keeper, signal.SIGKILL)
        wait_for(lambda: keeper_of(running) not in (None, keeper), "a new keeper")
        one_dnsmasq(other_than=first)
        assert proc_state(first) in ("Z", "gone")  # (reaped by whoever adopted it)


class Syslog:
    """The records of nsgated sent to the test's /dev/log, read as they come by a thread: a
    datagram socket holds only net.unix.max_dgram_qlen of them unread, and then syslog(3)
    blocks the sender (dnsmasq's lines come through the keeper)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.records = sock, []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        with contextlib.suppress(OSError):
            while record := self.sock.recv(65536):
                if re.search(rb"nsgated\[\d+\]: ", record):
                    self.records.append(record)

    def wait(self, pattern: bytes) -> bytes:
        """The first record matching `pattern`, once it came."""
        wait_for(lambda: any(re.search(pattern, record) for record in self.records),
                 f"a record matching {pattern!r}")
        return next(record for record in self.records if re.search(pattern, record))


@contextlib.contextmanager
def syslog() -> Iterator[Syslog]:
    """The test's /dev/log, read by a thread. Containers started inside are stopped before it
    goes (their /dev/null is on its overlay of /dev, which could not be unmounted)."""
    with private_dev_log() as sock:
        reader = Syslog(sock)
        try:
            yield reader
        finally:
            Proc.stop_all()
            sock.shutdown(socket.SHUT_RDWR)
            reader.thread.join()


def test_networks_conf_changed_is_applied_and_a_malformed_one_keeps_the_last_good() -> None:
    write_conf(PLAN)
    name, subnet = bridge(ALICE.uid, 3)
    with syslog() as log, service():
        first = one_dnsmasq()
        assert has_table()
        write_conf("ipv4-pool 10.210.0.0/16 24\nipv4-pool 10.211.0.0/16 24\n")
        record = log.wait(rb"failed: .*networks\.conf")
        assert b"failed: /etc/nsgate/networks.conf:2: ipv4-pool given twice" in record, record
        assert b"the networks stay as they were" in record, record
        assert dnsmasqs() == [first]
        in_subnet(Container(name, "nsgtdh0", "02:00:00:00:00:03").ask(), subnet)
        # a good one again, another pool: the bridge's address and the ranges follow
        write_conf("ipv4-pool 10.211.0.0/16 24\n")
        one_dnsmasq(other_than=first)
        moved = IPv4Network("10.211.3.0/24")
        wait_for(lambda: "10.211.3.1/24" in _addresses(name), "the bridge's new gateway")
        in_subnet(Container(name, "nsgtdh1", "02:00:00:00:00:04").ask(), moved)


def _addresses(name: str) -> list[str]:
    out = subprocess.run(["ip", "-o", "-4", "addr", "show", "dev", name], capture_output=True,
                         text=True, check=True).stdout
    return [line.split()[3] for line in out.splitlines()]


def test_the_service_stopping_stops_dnsmasq_and_gc_prunes_leases_without_it() -> None:
    write_conf(PLAN)
    alice, _ = bridge(ALICE.uid, 0)
    bob, _ = bridge(BOB.uid, 1)
    with service():
        one_dnsmasq()
        alice_lease = Container(alice, "nsgtdh0", "02:00:00:00:00:01").ask()
        bob_lease = Container(bob, "nsgtdh1", "02:00:00:00:00:02").ask()
        assert "the service runs, and prunes them itself" in gc()  # gc leaves them alone
    assert not dnsmasqs()
    assert any(bob_lease["ip"] in line for line in lease_lines())  # leases outlive a stop
    ip("link", "del", bob)  # while no service runs
    write_conf("ipv4-pool 10.210.0.0/16\n")
    before = lease_lines()
    assert "DHCP leases left as they are: /etc/nsgate/networks.conf:1: " in gc()
    assert lease_lines() == before
    write_conf(PLAN)
    out = gc()
    assert "removed DHCP lease" in out and bob_lease["ip"] in out, out
    lines = lease_lines()
    assert len(lines) == 1 and alice_lease["ip"] in lines[0], lines


def gc() -> str:
    result = subprocess.run([str(PREFIX / "bin" / "nsgate"), "nics", "gc"], capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0, result
    return result.stdout


def test_an_activated_service_does_not_exit_idle_while_networks_conf_exists() -> None:
    """--idle-exit would take the DHCP server away from containers that renew their leases:
    the service looks for networks.conf once idle long enough (strace sees the stat) and stays;
    the file removed, it exits, and its dnsmasq with it."""
    write_conf(PLAN)
    bridge(ALICE.uid, 0)
    activator = Activator("--workers", "1", "--idle-exit", "1")
    try:
        pid = activator.ready_service()
        one_dnsmasq()
        log = WORK / "idle.strace"
        with traced(pid, "-e", "trace=stat,newfstatat,statx", log=log):
            wait_for(lambda: log.exists() and log.read_text().count(str(CONF)) >= 2,
                     "the service to consider exiting, twice")
        assert activator.service() == pid and dnsmasqs()
        CONF.unlink()
        wait_for(lambda: activator.exited(pid) is not None, "the idle service to exit")
        assert activator.exited(pid) == 0
        wait_for(lambda: not dnsmasqs(), "dnsmasq to stop with it")
    finally:
        activator.stop()
