"""A hand-made network around the per-user bridges, in the test session's private netns (the
"host"): bridges nsgu<uid> holding their gateway addresses, containers (`unshare --net`
processes, root's: the firewall does not care who owns them) with a veth into a bridge and
static addresses, and a fake uplink netns behind a veth that carries the host's default route.
Traffic is real: TCP and UDP from a small client, to listeners that log every peer to a file."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from tests.admin_support import nsgate
from tests.support import SANDBOX, wait_for

WORK = SANDBOX / "firewall"
UPLINK_HOST, UPLINK_PEER = "192.0.2.1", "192.0.2.2"
UPLINK6_HOST, UPLINK6_PEER = "2001:db8:1::1", "2001:db8:1::2"
CONF = Path("/etc/nsgate/networks.conf")
BRIDGE_RECORD = Path("/run/lxc/nsgate-bridges")
SUBNET_RECORD = Path("/run/lxc/nsgate-subnets")

LISTENER = r"""
import os, select, socket, sys
port, log = int(sys.argv[1]), sys.argv[2]
def note(kind, peer):
    with open(log, "a") as f:
        f.write(f"{kind} {peer[0].removeprefix('::ffff:')}\n")
sockets = []
for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
    s = socket.socket(socket.AF_INET6, kind)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", port))
    if kind == socket.SOCK_STREAM:
        s.listen(16)
    sockets.append(s)
print("ready", flush=True)
while True:
    for s in select.select(sockets, [], [])[0]:
        if s.type == socket.SOCK_STREAM:
            conn, peer = s.accept()
            note("tcp", peer)
            conn.sendall(b"hi\n")
            conn.close()
        else:
            data, peer = s.recvfrom(2048)
            note("udp", peer)
            s.sendto(b"hi\n", peer)
"""

CLIENT = r"""
import socket, sys
proto, host, port, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
source = sys.argv[5] if len(sys.argv) > 5 else None
family = socket.AF_INET6 if ":" in host else socket.AF_INET
s = socket.socket(family, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
s.settimeout(timeout)
if source:
    # IP_TRANSPARENT, IPV6_TRANSPARENT: send from any source, even one not ours
    s.setsockopt(*((socket.IPPROTO_IPV6, 75) if family == socket.AF_INET6
                   else (socket.IPPROTO_IP, 19)), 1)
    s.bind((source, 0))
try:
    if proto == "tcp":
        s.connect((host, port))
        print(s.recv(16).decode().strip())
    else:
        s.sendto(b"x", (host, port))
        print(s.recv(16).decode().strip())
except OSError as err:
    print(type(err).__name__)
    sys.exit(f"{err}")
"""


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if check:
        assert result.returncode == 0, (argv, result.stderr)
    return result


class Netns:
    """An `unshare --net` process: a network namespace of its own, with lo up."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.proc = subprocess.Popen(["unshare", "--net", "--", "sh", "-c",
                                      "echo ready; exec sleep 600"],
                                     stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        assert self.proc.stdout is not None and self.proc.stdout.readline() == b"ready\n"
        self.pid = self.proc.pid
        self.listeners: list[subprocess.Popen[bytes]] = []
        self.must("sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0",
                  "net.ipv6.conf.default.accept_dad=0")
        self.must("ip", "link", "set", "lo", "up")

    def argv(self, *argv: str) -> list[str]:
        return ["nsenter", f"--net=/proc/{self.pid}/ns/net", *argv]

    def run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.argv(*argv), capture_output=True, text=True, timeout=60)

    def must(self, *argv: str) -> str:
        result = self.run(*argv)
        assert result.returncode == 0, (self.name, argv, result.stderr)
        return result.stdout

    def attach(self, host_end: str, *, master: str | None, addresses: list[str],
               gateways: list[str]) -> None:
        """A veth: `host_end` here (in `master` if given), eth0 there with these addresses and
        default routes."""
        run("ip", "link", "add", host_end, "type", "veth", "peer", "name", "eth0", "netns",
            str(self.pid))
        if master:
            run("ip", "link", "set", host_end, "master", master)
        run("ip", "link", "set", host_end, "up")
        for address in addresses:
            self.must("ip", "addr", "add", address, "dev", "eth0", *(["nodad"] if ":" in address
                                                                      else []))
        self.must("ip", "link", "set", "eth0", "up")
        for gateway in gateways:
            self.must("ip", "-6" if ":" in gateway else "-4", "route", "add", "default", "via",
                      gateway)

    def listen(self, port: int) -> Path:
        return listen(port, self.argv, f"{self.name}-{port}")

    def connect(self, proto: str, host: str, port: int, *, source: str | None = None,
                timeout: float = 1.0) -> str:
        return connect(proto, host, port, source=source, timeout=timeout, wrap=self.argv)

    def pings(self, address: str) -> bool:
        return self.run("ping", "-c", "1", "-W", "1", address).returncode == 0

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def connect(proto: str, host: str, port: int, *, source: str | None = None,
            timeout: float = 1.0, wrap=lambda *argv: list(argv)) -> str:
    """The listener's answer ("hi"), or the error that ended the try (TimeoutError...). A
    second is ages between namespaces of one host: an answer comes in a millisecond."""
    result = subprocess.run(wrap(sys.executable, "-c", CLIENT, proto, host, str(port),
                                 str(timeout), *([source] if source else [])),
                            capture_output=True, text=True, timeout=60)
    print(result.stderr, file=sys.stderr)
    return result.stdout.strip() or result.stderr.strip()


_listeners: list[subprocess.Popen[bytes]] = []


def listen(port: int, wrap=lambda *argv: list(argv), name: str = "") -> Path:
    """A TCP and UDP listener on `port` (any address, both families) that logs `tcp|udp PEER`
    per connection or datagram to the file returned; it runs until stop_listeners()."""
    log = WORK / f"{name or 'host'}-{port}.log"
    log.unlink(missing_ok=True)
    log.touch()
    proc = subprocess.Popen(wrap(sys.executable, "-c", LISTENER, str(port), str(log)),
                            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    _listeners.append(proc)
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    return log


def peers(log: Path) -> list[str]:
    return log.read_text().splitlines()


def stop_listeners() -> None:
    while _listeners:
        proc = _listeners.pop()
        proc.kill()
        proc.wait()


def table() -> str | None:
    """`nft -j list table inet nsgate`, byte for byte; None if there is no such table."""
    result = run("nft", "-j", "list", "table", "inet", "nsgate", check=False)
    return result.stdout if result.returncode == 0 else None


def addresses(link: str) -> list[str]:
    """The link's addresses but the IPv6 link-local one."""
    out = json.loads(run("ip", "-j", "addr", "show", "dev", link).stdout)
    return sorted(f"{a['local']}/{a['prefixlen']}" for a in out[0]["addr_info"]
                  if not a["local"].startswith("fe80:"))


def links_state() -> str:
    """Every link with its addresses and routes: what a refused apply must leave as it was
    (with no_dad() in force, so that no address changes by itself)."""
    return run("ip", "-o", "link").stdout + run("ip", "-o", "addr").stdout \
        + run("ip", "route", "show", "table", "all").stdout \
        + run("ip", "-6", "route", "show", "table", "all").stdout


DAD = ("/proc/sys/net/ipv6/conf/all/accept_dad", "/proc/sys/net/ipv6/conf/default/accept_dad")


@contextlib.contextmanager
def no_dad() -> Iterator[None]:
    """Links made meanwhile get their IPv6 addresses at once, not tentative for a second."""
    saved = [Path(path).read_text() for path in DAD]
    try:
        for path in DAD:
            Path(path).write_text("0\n")
        yield
    finally:
        for path, value in zip(DAD, saved, strict=True):
            Path(path).write_text(value)


def apply() -> subprocess.CompletedProcess[str]:
    return nsgate("network", "apply")


def remove_table() -> None:
    run("nft", "delete", "table", "inet", "nsgate", check=False)


def wait_carrier(link: str) -> None:
    wait_for(lambda: "LOWER_UP" in run("ip", "link", "show", link).stdout, f"{link} up")
