"""Link deletions (and, if asked, links made or changed) as the kernel announces them: a
NETLINK_ROUTE socket subscribed to the RTNLGRP_LINK multicast group, for the service's nic
janitor (system/nic_janitor.py: deletions) and network keeper (system/network_keeper.py: its
private bridges coming and going). The bytes are parsed by policy/netlink_codec.py
(`link_deletions`, `link_changes`).

- Only the kernel and holders of CAP_NET_ADMIN over the namespace's user namespace can send
  to a NETLINK_ROUTE port or group; the socket is also connected to the kernel (port id 0), as
  system/netlink.py's, so no process can unicast to it, and a datagram from anyone but the
  kernel is not believed (it counts as an overrun). What it reports is a hint all the same: the
  janitor looks up every link it acts on again.
- A socket filter (classic BPF) lets only RTM_DELLINK through: the many RTM_NEWLINK of every
  create never wake the janitor nor fill its queue. A subscriber of changes too has no filter.
- When the queue overflows, the kernel drops notifications and the next read fails with
  ENOBUFS: `drain` then reports an overrun, and the janitor reconciles everything instead of
  trusting what it read.

A netlink socket belongs to the network namespace its creating thread was in (netlink.py).
"""

import errno
import struct
from array import array
from socket import AF_NETLINK, NETLINK_ROUTE, SOCK_CLOEXEC, SOCK_NONBLOCK, SOCK_RAW, SOL_SOCKET
from socket import socket as Socket
from types import TracebackType

from nsgate.policy import netlink_codec as codec
from nsgate.system.netlink import DatagramReader

_SOL_NETLINK = 270
_NETLINK_ADD_MEMBERSHIP = 1
_SO_ATTACH_FILTER = 26
_KERNEL = (0, 0)
_MAX_DATAGRAMS = 4096  # per drain: a flood of notifications cannot keep the janitor reading

# <linux/filter.h>: BPF_LD|BPF_H|BPF_ABS, BPF_JMP|BPF_JEQ|BPF_K, BPF_RET|BPF_K.
_LOAD_HALF, _JUMP_IF_EQUAL, _RETURN = 0x28, 0x15, 0x06
# A half-word load reads network byte order; nlmsg_type is in host order.
_DELLINK_AS_LOADED = int.from_bytes(struct.pack("=H", codec.RTM_DELLINK), "big")
_ONLY_DELLINK = (
    (_LOAD_HALF, 0, 0, 4),  # the nlmsg_type of the datagram's (only) message
    (_JUMP_IF_EQUAL, 0, 1, _DELLINK_AS_LOADED),
    (_RETURN, 0, 0, 0xFFFFFFFF),  # keep all of it
    (_RETURN, 0, 0, 0),  # drop it
)


class Deletions:
    """What one drain read: links gone from the namespace (name by ifindex), the bridges that
    lost a port (ifindex), links made or changed (name by ifindex; only for a subscriber of
    changes), and whether notifications were lost (then trust none of this)."""

    __slots__ = ("bridges", "changed", "links", "overrun")

    def __init__(self) -> None:
        self.links: dict[int, str] = {}
        self.bridges: set[int] = set()
        self.changed: dict[int, str] = {}
        self.overrun = False


class LinkEvents:
    """The subscription, in the netns of the calling thread: deletions, and with `changes` the
    links made or changed too. `fileno()` for a selector; `drain()` reads everything pending
    without blocking."""

    def __init__(self, *, changes: bool = False) -> None:
        sock = Socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC | SOCK_NONBLOCK, NETLINK_ROUTE)
        self._changes = changes
        try:
            if not changes:
                _attach_filter(sock, _ONLY_DELLINK)
            sock.bind(_KERNEL)
            sock.setsockopt(_SOL_NETLINK, _NETLINK_ADD_MEMBERSHIP, codec.RTNLGRP_LINK)
            sock.connect(_KERNEL)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._reader = DatagramReader()

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> "LinkEvents":
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def drain(self) -> Deletions:
        """The deletions announced since the last drain. A malformed notification, or one from
        anyone but the kernel, counts as an overrun: what it hid is unknown."""
        found = Deletions()
        for _ in range(_MAX_DATAGRAMS):
            try:
                data, sender = self._reader.receive(self._sock)
            except BlockingIOError:
                break
            except OSError as err:
                if err.errno != errno.ENOBUFS:
                    raise
                found.overrun = True
                continue
            if sender[0] != 0:
                found.overrun = True
                continue
            try:
                deleted = codec.link_deletions(data)
                changed = codec.link_changes(data) if self._changes else []
            except codec.CodecError:
                found.overrun = True
                continue
            for link in changed:
                if link.family != codec.AF_BRIDGE:
                    found.changed[link.index] = link.name
            for link in deleted:
                if link.family == codec.AF_BRIDGE:
                    found.bridges.add(link.master)
                else:
                    found.links[link.index] = link.name
        return found


def _attach_filter(sock: Socket, program: "tuple[tuple[int, int, int, int], ...]") -> None:
    """SO_ATTACH_FILTER: struct sock_fprog holds a pointer to the instructions, so they live
    in an array, whose buffer_info() is its address, during the call (the kernel copies them)."""
    code = array("B", b"".join(struct.pack("=HBBI", *insn) for insn in program))
    address, _ = code.buffer_info()
    sock.setsockopt(SOL_SOCKET, _SO_ATTACH_FILTER, struct.pack("@HP", len(program), address))
