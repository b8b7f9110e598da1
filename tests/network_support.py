"""The world of the per-user network tests (issue 12): a fake internet behind the test host, and
containers of the test users that get their network the way real ones do.

- `Uplink`: a network namespace of root's playing the internet, reached from the test's own
  netns (the "host") through the veth `nsgtwan0`: the host is 192.0.2.1 (and 2001:db8:1::1),
  its default routes go to the uplink's end (.2 / ::2); the uplink holds the internet's server
  address 198.51.100.7 (2001:db8:7::7) on its loopback and has no route back to any pool: only
  NAT lets a container's packet be answered. There it runs a TCP and UDP echo service (port 7,
  the answer names the peer's address as the server saw it, every packet logged) and a DNS
  server (dnsmasq, no upstream) answering `internet.test`.
- `Container`: a test user's own `unshare --user --map-root-user --net` process, attached by the
  installed lxc-user-nic (`create LXCPATH NAME PID veth BRIDGE eth0`), configured by busybox
  udhcpc; everything in it runs as the container's root (`nsenter --user --net`), with busybox's
  ping/arping/nslookup and small python probes (`PROBE`) and echo servers (`ECHO`).

Absence of traffic is proven by short probes that run side by side, each next to a positive
control on the same path; presence waits for its answer with a generous deadline.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from tests.support import PATIENCE, SANDBOX, User, as_user, helper, wait_for

WORK = SANDBOX / "networks"
UPLINK_LINK = "nsgtwan0"  # the host's end of the veth to the uplink
HOST_ADDR, UPLINK_ADDR = "192.0.2.1", "192.0.2.2"
HOST_ADDR6, UPLINK_ADDR6 = "2001:db8:1::1", "2001:db8:1::2"
INTERNET, INTERNET6 = "198.51.100.7", "2001:db8:7::7"
INTERNET_NAME = "internet.test"
ECHO_PORT = 7
SHORT = 2.0  # seconds a negative probe waits for an answer that must not come
PYTHON = "/usr/bin/python3"

# An echo service, TCP and UDP, on the given addresses (by default every address, IPv4 and
# IPv6): it answers "<peer address> <payload>" and logs "<proto> <peer address> <payload>" for
# every packet. A UDP answer leaves from the address asked (a socket bound to it).
ECHO = r"""
import select, socket, sys
port, log = int(sys.argv[1]), open(sys.argv[2], "a", buffering=1)
def make(kind, address):
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    s = socket.socket(family, kind)
    if address == "::":
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((address, port))
    if kind == socket.SOCK_STREAM:
        s.listen(64)
    return s
places = sys.argv[3:] or ["::"]
tcps = [make(socket.SOCK_STREAM, a) for a in places]
udps = [make(socket.SOCK_DGRAM, a) for a in places]
def peer_of(address):
    return address[0].removeprefix("::ffff:")
print("ready", flush=True)
while True:
    ready, _, _ = select.select(tcps + udps, [], [])
    for s in ready:
        if s in udps:
            data, peer = s.recvfrom(4096)
            log.write(f"udp {peer_of(peer)} {data.decode(errors='replace').strip()}\n")
            s.sendto(f"{peer_of(peer)} ".encode() + data, peer)
            continue
        conn, peer = s.accept()
        conn.settimeout(5)
        try:
            data = conn.recv(4096)
            log.write(f"tcp {peer_of(peer)} {data.decode(errors='replace').strip()}\n")
            conn.sendall(f"{peer_of(peer)} ".encode() + data)
        except OSError:
            pass
        finally:
            conn.close()
"""

# One exchange with an echo service: `PROTO HOST PORT PAYLOAD TIMEOUT [SOURCE]`; prints the
# answer, or the error and exits 1.
PROBE = r"""
import socket, sys
proto, host, port, payload, timeout = sys.argv[1:6]
family = socket.AF_INET6 if ":" in host else socket.AF_INET
s = socket.socket(family, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
s.settimeout(float(timeout))
try:
    if len(sys.argv) > 6:
        s.bind((sys.argv[6], 0))
    s.connect((host, int(port)))
    s.sendall(payload.encode() + b"\n")
    print(s.recv(4096).decode().strip())
except OSError as err:
    print(type(err).__name__, err)
    sys.exit(1)
"""

# busybox udhcpc's script: configure the interface from the lease and print what it got.
DHCP_SCRIPT = """#!/bin/sh
case "$1" in
deconfig) ip link set "$interface" up ;;
bound|renew)
    ip addr add "$ip/$mask" dev "$interface"
    [ -n "$router" ] && ip route add default via "${router%% *}" dev "$interface"
    echo "lease ip=$ip mask=$mask router=$router dns=$dns serverid=$serverid" ;;
esac
exit 0
"""


def work_dir() -> Path:
    WORK.mkdir(mode=0o755, parents=True, exist_ok=True)
    WORK.chmod(0o755)
    return WORK


def dhcp_script() -> Path:
    path = work_dir() / "udhcpc.script"
    path.write_text(DHCP_SCRIPT)
    path.chmod(0o755)
    return path


def run(argv: Sequence[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def check(argv: Sequence[str], timeout: float = 30) -> str:
    result = run(argv, timeout)
    assert result.returncode == 0, f"{' '.join(argv)}: {result.stderr}{result.stdout}"
    return result.stdout


def links(netns_pid: int | None = None) -> dict[str, dict]:
    """name -> `ip -d -j addr` record (the link and its addresses)."""
    argv = ["ip", "-d", "-j", "addr", "show"]
    if netns_pid is not None:
        argv = ["nsenter", f"--net=/proc/{netns_pid}/ns/net", *argv]
    return {link["ifname"]: link for link in json.loads(check(argv))}


def addresses(link: dict, family: str = "inet") -> list[str]:
    """`address/prefix` of a link record, of one family, global scope only."""
    return [f"{a['local']}/{a['prefixlen']}" for a in link.get("addr_info", [])
            if a["family"] == family and a.get("scope") == "global"]


def ipv6_ready(netns_pid: int) -> list[str]:
    """The global IPv6 addresses of eth0 in the netns of `netns_pid` once one is usable (past
    duplicate address detection) and a default route is there (from a router advertisement);
    [] before."""
    link = links(netns_pid)["eth0"]
    ready = [f"{a['local']}/{a['prefixlen']}" for a in link.get("addr_info", [])
             if a["family"] == "inet6" and a.get("scope") == "global"
             and not a.get("tentative")]
    routes = json.loads(check(["nsenter", f"--net=/proc/{netns_pid}/ns/net", "ip", "-6", "-j",
                               "route", "show", "default"]))
    return ready if ready and routes else []


def sysctl(name: str, value: str | None = None) -> str:
    path = Path("/proc/sys") / name.replace(".", "/")
    if value is not None:
        path.write_text(value)
    return path.read_text().strip()


class Spawned:
    """A long-running process that prints "ready" once it serves."""

    count = 0

    def __init__(self, argv: Sequence[str]) -> None:
        Spawned.count += 1
        self.errors = work_dir() / f"spawned-{os.getpid()}-{Spawned.count}.err"
        with self.errors.open("wb") as errors:
            self.proc = subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=errors,
                                         stdin=subprocess.DEVNULL)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line != b"ready\n":
            self.stop()
            raise AssertionError(f"{list(argv)} did not start: {line!r} {self.stderr()}")

    def stderr(self) -> str:
        return self.errors.read_text(errors="replace") if self.errors.exists() else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        if self.proc.stdout is not None and not self.proc.stdout.closed:
            self.proc.communicate(timeout=PATIENCE)
        self.proc.wait()
        self.errors.unlink(missing_ok=True)


class EchoLog:
    """What an echo service logged: (proto, peer address, payload) per packet."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def entries(self) -> list[tuple[str, str, str]]:
        if not self.path.exists():
            return []
        found = []
        for line in self.path.read_text().splitlines():
            proto, peer, payload = [*line.split(" ", 2), ""][:3]
            found.append((proto, peer, payload))
        return found

    def peers_of(self, payload: str) -> list[str]:
        return [peer for _, peer, seen in self.entries() if seen == payload]


def token(what: str) -> str:
    """A payload no other probe sends."""
    return f"{what}-{time.monotonic_ns()}"


# --- the internet ------------------------------------------------------------------------------


class Uplink:
    """The fake internet: a root-owned netns with an echo service and a DNS server, the host's
    default routes pointing at it."""

    def __init__(self) -> None:
        self.spawned: list[Spawned] = []
        self.holder = Spawned(["unshare", "--net", "--", "sh", "-c", "echo ready; exec sleep 3600"])
        self.pid = self.holder.proc.pid
        try:
            self._wire()
            log = work_dir() / "uplink-echo.log"
            log.unlink(missing_ok=True)
            self.echo = EchoLog(log)
            self.spawned.append(Spawned(self.inside(PYTHON, "-I", "-c", ECHO, str(ECHO_PORT),
                                                    str(log), INTERNET, INTERNET6)))
            self.spawned.append(Spawned(self.inside(
                "sh", "-c", 'echo ready; exec "$@"', "sh",
                "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv",
                "--no-hosts", "--bind-interfaces", "--interface=lo",
                f"--listen-address={INTERNET}", f"--address=/{INTERNET_NAME}/{INTERNET}",
                f"--address=/{INTERNET_NAME}/{INTERNET6}", "--pid-file=", "--user=root",
                "--log-facility=-")))
            wait_for(self.resolves, "the uplink's DNS server to answer")
        except BaseException:
            self.stop()
            raise

    def inside(self, *argv: str) -> list[str]:
        return ["nsenter", f"--net=/proc/{self.pid}/ns/net", "--", *argv]

    def _wire(self) -> None:
        check(["ip", "link", "add", UPLINK_LINK, "type", "veth", "peer", "name", "wan0",
               "netns", f"/proc/{self.pid}/ns/net"])
        for argv in (["ip", "addr", "add", f"{HOST_ADDR}/24", "dev", UPLINK_LINK],
                     ["ip", "addr", "add", f"{HOST_ADDR6}/64", "dev", UPLINK_LINK, "nodad"],
                     ["ip", "link", "set", UPLINK_LINK, "up"],
                     ["ip", "route", "add", "default", "via", UPLINK_ADDR],
                     ["ip", "-6", "route", "add", "default", "via", UPLINK_ADDR6]):
            check(argv)
        for argv in (["ip", "link", "set", "lo", "up"],
                     ["ip", "addr", "add", f"{INTERNET}/32", "dev", "lo"],
                     ["ip", "addr", "add", f"{INTERNET6}/128", "dev", "lo"],
                     ["ip", "addr", "add", f"{UPLINK_ADDR}/24", "dev", "wan0"],
                     ["ip", "addr", "add", f"{UPLINK_ADDR6}/64", "dev", "wan0", "nodad"],
                     ["ip", "link", "set", "wan0", "up"]):
            check(self.inside(*argv))

    def resolves(self) -> bool:
        result = run(self.inside("busybox", "nslookup", INTERNET_NAME, INTERNET))
        return INTERNET in result.stdout

    def probe(self, proto: str, host: str, port: int, payload: str,
              timeout: float = 10) -> subprocess.CompletedProcess[str]:
        return run(self.inside(PYTHON, "-I", "-c", PROBE, proto, host, str(port), payload,
                               str(timeout)), timeout + 30)

    def stop(self) -> None:
        for item in reversed(self.spawned):
            item.stop()
        self.holder.stop()  # its netns goes, and with it the veth pair
        wait_for(lambda: UPLINK_LINK not in links(), "the uplink's veth to go")


# --- containers --------------------------------------------------------------------------------


class Lease:
    """What udhcpc printed for a lease."""

    def __init__(self, line: str) -> None:
        fields = dict(item.split("=", 1) for item in line.split()[1:])
        self.ip = ipaddress.IPv4Address(fields["ip"])
        self.interface = ipaddress.IPv4Interface(f"{fields['ip']}/{fields['mask']}")
        self.routers = fields["router"].split()
        self.dns = fields["dns"].split()
        self.server = fields["serverid"]

    def __repr__(self) -> str:
        return f"Lease({self.interface}, router={self.routers}, dns={self.dns})"


class Container:
    """A test user's unprivileged container: its own user and network namespaces."""

    def __init__(self, user: User, name: str, lxcpath: str = "/var/lib/lxc") -> None:
        self.user, self.name, self.lxcpath = user, name, lxcpath
        self.spawned: list[Spawned] = []
        self.holder = Spawned(as_user(user, [
            "unshare", "--user", "--map-root-user", "--net", "--",
            "sh", "-c", "echo ready; exec sleep 3600"]))
        self.pid = self.holder.proc.pid
        self.host_end: str | None = None
        self.lease: Lease | None = None
        self.echo: EchoLog | None = None

    def __repr__(self) -> str:
        return f"Container({self.user.name}, {self.name}, {self.lease})"

    def inside(self, *argv: str) -> list[str]:
        """argv run as the container's root (the user's root in its own user namespace)."""
        return ["nsenter", f"--target={self.pid}", "--user", "--net", "--", *argv]

    def run(self, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return run(self.inside(*argv), timeout)

    def attach(self, bridge: str = "nsgate-private") -> str:
        """Its eth0, made by the installed lxc-user-nic as the user; the host end's name."""
        result = subprocess.run(
            as_user(self.user, [helper("lxc-user-nic"), "create", self.lxcpath, self.name,
                                str(self.pid), "veth", bridge, "eth0"]),
            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        assert result.returncode == 0, f"lxc-user-nic create: {result.stderr}"
        container_end, _, host_end, _ = result.stdout.strip().split(":")
        assert container_end == "eth0", result.stdout
        self.host_end = host_end
        check(self.inside("ip", "link", "set", "lo", "up"))
        return host_end

    def dhcp_argv(self) -> list[str]:
        return self.inside("busybox", "udhcpc", "-i", "eth0", "-f", "-q", "-n", "-t", "60",
                           "-T", "1", "-s", str(dhcp_script()))

    def take_lease(self, result: subprocess.CompletedProcess[str]) -> Lease:
        lines = [line for line in result.stdout.splitlines() if line.startswith("lease ")]
        assert result.returncode == 0 and lines, (
            f"no DHCP lease for {self.user.name}'s {self.name}: {result.stdout}{result.stderr}")
        self.lease = Lease(lines[-1])
        return self.lease

    def dhcp(self) -> Lease:
        return self.take_lease(run(self.dhcp_argv(), timeout=PATIENCE))

    def mac(self) -> str:
        return links(self.pid)["eth0"]["address"]

    def serve_echo(self) -> EchoLog:
        log = work_dir() / f"echo-{self.user.name}-{self.name}-{self.pid}.log"
        log.touch()
        os.chown(log, self.user.uid, self.user.gid)
        self.spawned.append(Spawned(self.inside(PYTHON, "-I", "-c", ECHO, str(ECHO_PORT),
                                                str(log))))
        self.echo = EchoLog(log)
        return self.echo

    def probe_argv(self, proto: str, host: str, port: int, payload: str, timeout: float,
                   source: str | None = None) -> list[str]:
        extra = [] if source is None else [source]
        return self.inside(PYTHON, "-I", "-c", PROBE, proto, host, str(port), payload,
                           str(timeout), *extra)

    def probe(self, proto: str, host: str, port: int, payload: str, timeout: float = 10,
              source: str | None = None) -> subprocess.CompletedProcess[str]:
        return run(self.probe_argv(proto, host, port, payload, timeout, source), timeout + 30)

    def ping_argv(self, address: str, count: int = 1, wait: float = 10) -> list[str]:
        return self.inside("busybox", "ping", "-c", str(count), "-W", str(int(wait)), address)

    def arping_argv(self, address: str, wait: float = 10) -> list[str]:
        return self.inside("busybox", "arping", "-I", "eth0", "-c", "1", "-w", str(int(wait)),
                           address)

    def stop(self) -> None:
        for item in reversed(self.spawned):
            item.stop()
        self.spawned.clear()
        self.holder.stop()


def side_by_side(commands: dict[str, list[str]], timeout: float = PATIENCE
                 ) -> dict[str, subprocess.CompletedProcess[str]]:
    """Run commands at once (negative probes wait their timeout in parallel, not in turn)."""
    procs = {key: subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   stdin=subprocess.DEVNULL, text=True)
             for key, argv in commands.items()}
    results = {}
    for key, proc in procs.items():
        out, err = proc.communicate(timeout=timeout)
        results[key] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    return results


def dhcp_all(containers: Sequence[Container]) -> None:
    """DHCP in every container at once."""
    results = side_by_side({str(n): c.dhcp_argv() for n, c in enumerate(containers)})
    for n, container in enumerate(containers):
        container.take_lease(results[str(n)])


@contextlib.contextmanager
def listener_on_the_host(port: int):
    """A TCP and UDP echo service of the host's (the test's netns), on every address."""
    log = work_dir() / f"host-echo-{port}.log"
    log.unlink(missing_ok=True)
    service = Spawned([PYTHON, "-I", "-c", ECHO, str(port), str(log)])
    try:
        yield EchoLog(log)
    finally:
        service.stop()


def remove_links(prefixes: tuple[str, ...]) -> None:
    for name in links():
        if name.startswith(prefixes):
            subprocess.run(["ip", "link", "del", name], capture_output=True)

