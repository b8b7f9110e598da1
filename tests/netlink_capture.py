"""Real rtnetlink answers, captured as the kernel sends them, for the codec's tests and fuzz seeds.

Run as root in a fresh network namespace (`unshare --net python3 -m tests.netlink_capture`): it
builds bridges, veth pairs (one with its peer in another namespace), bridge ports with flags set,
IPv4 and IPv6 addresses on a bridge, then asks the kernel as the helpers do (a socket with
NETLINK_CAP_ACK and NETLINK_EXT_ACK) and prints, as JSON, every request's sequence number, the
socket's port id and the datagrams of the answer (hex). Last, "link-notifications": what a
socket subscribed to RTNLGRP_LINK from the start received, through a port leaving its bridge and
the deletion of a bridge port, a bridge, and a veth whose peer's namespace went. Written with the
standard library only, not with the codec.
"""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys

SOL_NETLINK, NETLINK_CAP_ACK, NETLINK_EXT_ACK = 270, 10, 11
RTM_NEWLINK, RTM_GETLINK, RTM_SETLINK = 16, 18, 19
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
AF_INET, AF_INET6 = 2, 10
F_REQUEST, F_ACK, F_DUMP, F_CREATE, F_EXCL = 0x1, 0x4, 0x300, 0x400, 0x200
AF_BRIDGE = 7
RTMGRP_LINK = 1  # the bind() mask of the group RTNLGRP_LINK


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True)


def attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + bytes(-length % 4)


def ifinfo(index: int = 0, family: int = 0) -> bytes:
    return struct.pack("=BxHiII", family, 0, index, 0, 0)


def setup() -> subprocess.Popen[bytes]:
    ip("link", "add", "br0", "type", "bridge")  # (this kernel has no VLAN filtering)
    ip("link", "add", "br1", "type", "bridge")
    ip("link", "set", "br1", "mtu", "1400")
    ip("link", "add", "va", "type", "veth", "peer", "name", "vb")
    ip("link", "set", "va", "master", "br1")
    subprocess.run(["bridge", "link", "set", "dev", "va", "learning", "off", "isolated", "on",
                    "locked", "on", "neigh_suppress", "on"], check=True)
    ip("link", "add", "vc", "type", "veth", "peer", "name", "vd")
    ip("link", "set", "vc", "master", "br0")
    ip("link", "set", "br1", "up")
    ip("link", "set", "va", "up")
    ip("link", "set", "lo", "up")
    ip("address", "add", "10.210.0.1/24", "brd", "+", "dev", "br1")
    ip("address", "add", "10.210.9.1/16", "dev", "br1")
    ip("address", "add", "fd42:6e73::1/64", "dev", "br1", "nodad")
    other = subprocess.Popen(["unshare", "--net", "sh", "-c", "echo ready; exec sleep 600"],
                             stdout=subprocess.PIPE)
    assert other.stdout is not None and other.stdout.readline() == b"ready\n"
    ip("link", "add", "vh0", "mtu", "1450", "type", "veth", "peer", "name", "eth0", "netns",
       str(other.pid))
    return other


class Socket:
    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        self.sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
        self.sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
        self.sock.bind((0, 0))
        self.port = self.sock.getsockname()[0]
        self.seq = 100

    def ask(self, what: str, kind: int, flags: int, body: bytes) -> dict:
        self.seq += 1
        self.sock.send(struct.pack("=IHHII", 16 + len(body), kind, flags | F_REQUEST, self.seq,
                                   0) + body)
        datagrams = []
        while True:
            data = self.sock.recv(1 << 20)
            datagrams.append(data.hex())
            last_type = struct.unpack_from("=H", data, self._last(data) + 4)[0]
            if last_type in (2, 3):  # NLMSG_ERROR, NLMSG_DONE
                break
        return {"what": what, "seq": self.seq, "port": self.port, "datagrams": datagrams}

    @staticmethod
    def _last(data: bytes) -> int:
        offset = last = 0
        while offset < len(data):
            last = offset
            offset += (struct.unpack_from("=I", data, offset)[0] + 3) & ~3
        return last


def ifaddr(family: int, prefixlen: int, index: int) -> bytes:
    return struct.pack("=BBBBI", family, prefixlen, 0, 0, index)


def capture() -> list[dict]:
    nl = Socket()
    skip_stats = attr(29, struct.pack("=I", 1 << 3))
    return [
        nl.ask("dump", RTM_GETLINK, F_DUMP, ifinfo() + skip_stats),
        nl.ask("dump-with-stats", RTM_GETLINK, F_DUMP, ifinfo()),
        nl.ask("dump-bridge-ports", RTM_GETLINK, F_DUMP, ifinfo(family=AF_BRIDGE)),
        nl.ask("get-port", RTM_GETLINK, F_ACK, ifinfo() + attr(3, b"va\0") + skip_stats),
        nl.ask("get-veth-peer-elsewhere", RTM_GETLINK, F_ACK,
               ifinfo() + attr(3, b"vh0\0") + skip_stats),
        nl.ask("get-missing", RTM_GETLINK, F_ACK, ifinfo() + attr(3, b"nope0\0")),
        nl.ask("new-existing", RTM_NEWLINK, F_ACK | F_CREATE | F_EXCL,
               ifinfo() + attr(3, b"br0\0") + attr(18 | 0x8000, attr(1, b"bridge\0"))),
        nl.ask("set-mtu-too-small", RTM_SETLINK, F_ACK, ifinfo() + attr(3, b"br1\0")
               + attr(4, struct.pack("=I", 10))),
        nl.ask("set-ok", RTM_SETLINK, F_ACK, ifinfo() + attr(3, b"br1\0")
               + attr(4, struct.pack("=I", 1400))),
        nl.ask("addr-dump", RTM_GETADDR, F_DUMP, ifaddr(0, 0, 0)),
        nl.ask("addr-new-existing", RTM_NEWADDR, F_ACK | F_CREATE | F_EXCL,
               ifaddr(AF_INET, 24, socket.if_nametoindex("br1"))
               + attr(2, socket.inet_pton(AF_INET, "10.210.0.1"))),
        nl.ask("addr-del-missing", RTM_DELADDR, F_ACK,
               ifaddr(AF_INET6, 64, socket.if_nametoindex("br1"))
               + attr(1, socket.inet_pton(AF_INET6, "fd42:6e73::2"))),
    ]


def subscribe() -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK,
                         socket.NETLINK_ROUTE)
    sock.bind((0, RTMGRP_LINK))
    return sock


def deletions(listener: socket.socket, other: subprocess.Popen[bytes]) -> dict:
    ip("link", "set", "vc", "nomaster")
    ip("link", "del", "va")
    ip("link", "del", "br0")
    other.kill()
    other.wait()
    while "vh0" in subprocess.run(["ip", "-o", "link"], capture_output=True, text=True,
                                  check=True).stdout:
        pass  # the veth goes once the kernel has cleaned the peer's namespace up
    datagrams = []
    while True:
        try:
            datagrams.append(listener.recv(1 << 20).hex())
        except BlockingIOError:
            break
    return {"what": "link-notifications", "seq": 0, "port": 0, "datagrams": datagrams}


def main() -> None:
    listener = subscribe()
    other = setup()
    try:
        answers = capture()
        answers.append(deletions(listener, other))
        json.dump(answers, sys.stdout)
    finally:
        other.kill()
        other.wait()


if __name__ == "__main__":
    main()
