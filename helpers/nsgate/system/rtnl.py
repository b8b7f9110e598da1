"""rtnetlink (NETLINK_ROUTE) for lxc-user-nic: look links up, create a veth pair or a bridge,
set link and bridge-port attributes, delete a link, and prove CAP_NET_ADMIN over a netns.

A self-contained codec over the builtin `_socket` and `_struct` modules, on purpose: pyroute2, the
project's netlink library, is too slow to import on a helper's start-up path. Measured with
`/usr/bin/python3 -I -S` (pyroute2 0.9.7): `import pyroute2` 95-180 ms; its netlink base classes
alone (`pyroute2.netlink`, with `pyroute2/__init__.py` bypassed by a pre-seeded empty package)
14-30 ms, 35 ms with `nlsocket` (they pull in logging, socket, threading, asyncio, ssl). The whole
helper run has ~40 ms; this module imports in about 1 ms (0.3 ms of it the `nsgate` packages) and
a lookup takes ~0.1 ms. It speaks only the handful of messages and attributes below.

Namespaces: a netlink socket belongs to the network namespace its creating thread was in when it
was created, for its whole life. `Rtnl()` therefore acts on the netns the calling thread is in at
construction time, whatever `setns` happens afterwards; the one exception is `create_veth`, whose
peer is born in the netns named by an fd (IFLA_NET_NS_FD).

Privilege: the kernel allows a modifying request only if both the opener of the socket (the
credentials the socket file was created with) and the sender of the request hold CAP_NET_ADMIN
over the socket's netns. Both are the credentials in force when `Rtnl()` and a method are called.
"""

import _socket
import _struct
import errno
import posix

TYPE_CHECKING = False  # typing costs import time on every helper run
if TYPE_CHECKING:
    from types import TracebackType

# <linux/netlink.h>
_SOL_NETLINK = 270
_NETLINK_CAP_ACK = 10  # errors do not echo our whole request back
_NETLINK_EXT_ACK = 11  # errors carry the kernel's text (extack)
_NLMSG_ERROR = 2
_NLMSG_DONE = 3
_NLMSG_OVERRUN = 4
_NLM_F_REQUEST = 0x1
_NLM_F_MULTI = 0x2
_NLM_F_ACK = 0x4
_NLM_F_DUMP_INTR = 0x10
_NLM_F_DUMP = 0x300
_NLM_F_CAPPED = 0x100  # in NLMSG_ERROR: only the header of our request follows the errno
_NLM_F_ACK_TLVS = 0x200  # in NLMSG_ERROR / NLMSG_DONE: extack attributes follow
_NLM_F_EXCL = 0x200
_NLM_F_CREATE = 0x400
_NLMSGERR_ATTR_MSG = 1
_NLA_F_NESTED = 0x8000
_NLA_TYPE_MASK = 0x3FFF

# <linux/rtnetlink.h>, <linux/if_link.h>, <linux/veth.h>, <linux/if.h>
_RTM_NEWLINK = 16
_RTM_DELLINK = 17
_RTM_GETLINK = 18
_RTM_SETLINK = 19
_IFLA_ADDRESS = 1
_IFLA_IFNAME = 3
_IFLA_MTU = 4
_IFLA_MASTER = 10
_IFLA_PROTINFO = 12
_IFLA_LINKINFO = 18
_IFLA_NET_NS_FD = 28
_IFLA_EXT_MASK = 29
_IFLA_GROUP = 27
_RTEXT_FILTER_SKIP_STATS = 1 << 3  # replies without the (large) statistics blocks
_IFLA_INFO_KIND = 1
_IFLA_INFO_DATA = 2
_VETH_INFO_PEER = 1
_IFLA_BR_VLAN_FILTERING = 7
_IFLA_BRPORT_LEARNING = 8
_IFLA_BRPORT_NEIGH_SUPPRESS = 32
_IFLA_BRPORT_ISOLATED = 33
_IFLA_BRPORT_LOCKED = 39  # Linux 5.18: only sources with an FDB entry on this port get in
_RTM_NEWNEIGH = 28
_NDA_LLADDR = 2
_NUD_NOARP = 0x40  # a static FDB entry
_NTF_MASTER = 0x04  # the entry goes to the bridge the port belongs to
_AF_UNSPEC = 0
_AF_BRIDGE = 7
IFF_UP = 0x1

# All netlink integers are in host byte order ("=": native order, standard sizes, no padding).
_NLMSGHDR = _struct.Struct("=IHHII")  # length, type, flags, sequence, port id
_IFINFOMSG = _struct.Struct("=BxHiII")  # family, (pad), device type, index, flags, change mask
_NDMSG = _struct.Struct("=BxxxiHBB")  # family, (pad), index, state, flags, type
_RTATTR = _struct.Struct("=HH")  # length, type
_U32 = _struct.Struct("=I")
_I32 = _struct.Struct("=i")

_BUFFER_SIZE = 65536


class NetlinkError(OSError):
    """The kernel refused a netlink request: errno, and what was asked plus the kernel's text."""


class Link:
    """One network device as RTM_GETLINK reports it."""

    __slots__ = ("address", "index", "kind", "master", "mtu", "name", "up", "vlan_filtering")

    def __init__(self, index: int, name: str, kind: str | None, mtu: int, master: int,
                 address: bytes, up: bool, vlan_filtering: bool = False) -> None:
        self.index = index
        self.name = name
        self.kind = kind  # IFLA_INFO_KIND: "bridge", "veth", "dummy"...; None: loopback, physical
        self.mtu = mtu
        self.master = master  # ifindex of the bridge (or bond...) it is attached to, 0 if none
        self.address = address
        self.up = up  # IFF_UP: administratively up
        self.vlan_filtering = vlan_filtering  # a bridge's IFLA_BR_VLAN_FILTERING

    def __repr__(self) -> str:
        return (f"Link(index={self.index}, name={self.name!r}, kind={self.kind!r}, "
                f"mtu={self.mtu}, master={self.master}, address={self.address.hex(':')!r}, "
                f"up={self.up})")


def netns_of_self() -> int:
    """An O_RDONLY|O_CLOEXEC fd on the network namespace of the calling thread."""
    return posix.open("/proc/thread-self/ns/net", posix.O_RDONLY | posix.O_CLOEXEC)


# Encoding: an attribute is (length, type) + payload, padded to 4 bytes.

def _align(length: int) -> int:
    return (length + 3) & ~3


def _attr(kind: int, payload: bytes) -> bytes:
    length = _RTATTR.size + len(payload)
    return _RTATTR.pack(length, kind) + payload + bytes(_align(length) - length)


def _nested(kind: int, *attrs: bytes) -> bytes:
    return _attr(kind | _NLA_F_NESTED, b"".join(attrs))


def _string(kind: int, text: str) -> bytes:
    return _attr(kind, text.encode("utf-8", "surrogateescape") + b"\0")


def _u32(kind: int, value: int) -> bytes:
    return _attr(kind, _U32.pack(value))


def _u8(kind: int, value: int) -> bytes:
    return _attr(kind, bytes((value,)))


def _ifinfomsg(index: int = 0, *, family: int = _AF_UNSPEC, flags: int = 0,
               change: int = 0) -> bytes:
    return _IFINFOMSG.pack(family, 0, index, flags, change)


# Decoding.

def _parse_attrs(data: bytes, offset: int = 0) -> dict[int, bytes]:
    """The attributes in data[offset:], by type (flag bits masked off); the last one wins."""
    attrs = {}
    while offset + _RTATTR.size <= len(data):
        length, kind = _RTATTR.unpack_from(data, offset)
        if length < _RTATTR.size or offset + length > len(data):
            break
        attrs[kind & _NLA_TYPE_MASK] = data[offset + _RTATTR.size:offset + length]
        offset += _align(length)
    return attrs


def _text(payload: bytes) -> str:
    return payload.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _parse_link(payload: bytes) -> Link:
    _, _, index, flags, _ = _IFINFOMSG.unpack_from(payload)
    attrs = _parse_attrs(payload, _IFINFOMSG.size)
    kind = None
    vlan_filtering = False
    if _IFLA_LINKINFO in attrs:
        info = _parse_attrs(attrs[_IFLA_LINKINFO])
        if _IFLA_INFO_KIND in info:
            kind = _text(info[_IFLA_INFO_KIND])
        if kind == "bridge" and _IFLA_INFO_DATA in info:
            data = _parse_attrs(info[_IFLA_INFO_DATA])
            vlan_filtering = data.get(_IFLA_BR_VLAN_FILTERING, b"\0")[:1] != b"\0"
    return Link(index, _text(attrs.get(_IFLA_IFNAME, b"")), kind,
                _U32.unpack(attrs[_IFLA_MTU])[0] if _IFLA_MTU in attrs else 0,
                _U32.unpack(attrs[_IFLA_MASTER])[0] if _IFLA_MASTER in attrs else 0,
                attrs.get(_IFLA_ADDRESS, b""), bool(flags & IFF_UP), vlan_filtering)


def _error(code: int, what: str, tlvs: dict[int, bytes]) -> NetlinkError:
    message = f"{what}: {posix.strerror(code)}"
    if _NLMSGERR_ATTR_MSG in tlvs:
        message += f" ({_text(tlvs[_NLMSGERR_ATTR_MSG])})"
    return NetlinkError(code, message)


class Rtnl:
    """One NETLINK_ROUTE socket, in the netns of the calling thread at construction (see above).

    Each request waits for its complete answer: the kernel's acknowledgement (every non-dump
    request asks for one) or the end of a multipart dump. A refusal raises NetlinkError.
    """

    def __init__(self, *, buffer_size: int = _BUFFER_SIZE) -> None:
        sock = _socket.socket(_socket.AF_NETLINK, _socket.SOCK_RAW | _socket.SOCK_CLOEXEC,
                              _socket.NETLINK_ROUTE)
        try:
            sock.setsockopt(_SOL_NETLINK, _NETLINK_CAP_ACK, 1)
            sock.setsockopt(_SOL_NETLINK, _NETLINK_EXT_ACK, 1)
            sock.bind((0, 0))  # the kernel picks our port id; no multicast groups
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._buffer = bytearray(buffer_size)  # grown when a datagram is larger (_receive)
        self._seq = 0

    def close(self) -> None:
        try:
            self._sock.close()
        except OSError:
            pass  # the socket is gone all the same (see files.close_quietly)

    def __enter__(self) -> "Rtnl":
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: "TracebackType | None") -> None:
        self.close()

    # Transport.

    def _receive(self) -> bytes:
        """One whole datagram. Its true size is peeked first, so it is never truncated."""
        while True:
            size = self._sock.recv_into(self._buffer, 0, _socket.MSG_PEEK | _socket.MSG_TRUNC)
            if size <= len(self._buffer):
                break
            self._buffer = bytearray(size)
        size = self._sock.recv_into(self._buffer)
        return bytes(self._buffer[:size])

    def _request(self, msg_type: int, flags: int, body: bytes, what: str) -> list[bytes]:
        """Send one request; the payloads of the data messages answering it, in order.

        A dump ends with NLMSG_DONE; anything else ends with NLMSG_ERROR, errno 0 being the ACK.
        Messages of other sequence numbers (answers to an abandoned request) are skipped.
        """
        self._seq = seq = (self._seq + 1) & 0xFFFFFFFF
        message = _NLMSGHDR.pack(_NLMSGHDR.size + len(body), msg_type,
                                 flags | _NLM_F_REQUEST, seq, 0) + body
        if self._sock.send(message) != len(message):
            raise NetlinkError(errno.EMSGSIZE, f"{what}: short send")
        answers: list[bytes] = []
        interrupted = False
        while True:
            data = self._receive()
            offset = 0
            while offset + _NLMSGHDR.size <= len(data):
                length, kind, reply_flags, reply_seq, _ = _NLMSGHDR.unpack_from(data, offset)
                if length < _NLMSGHDR.size or offset + length > len(data):
                    raise NetlinkError(errno.EBADMSG, f"{what}: malformed netlink message")
                payload = data[offset + _NLMSGHDR.size:offset + length]
                offset += _align(length)
                if reply_seq != seq:
                    continue
                interrupted = interrupted or bool(reply_flags & _NLM_F_DUMP_INTR)
                if kind in (_NLMSG_ERROR, _NLMSG_DONE):
                    code = -_I32.unpack_from(payload)[0] if len(payload) >= 4 else 0
                    if code:
                        raise _error(code, what, self._error_tlvs(kind, reply_flags, payload))
                    if interrupted:  # the set of links changed while the dump was running
                        raise NetlinkError(errno.EINTR, f"{what}: dump interrupted")
                    return answers
                if kind == _NLMSG_OVERRUN:
                    raise NetlinkError(errno.ENOBUFS, f"{what}: netlink overrun")
                answers.append(payload)

    @staticmethod
    def _error_tlvs(kind: int, flags: int, payload: bytes) -> dict[int, bytes]:
        """The extack attributes after the errno (and, in NLMSG_ERROR, our request's header)."""
        if not flags & _NLM_F_ACK_TLVS:
            return {}
        offset = 4
        if kind == _NLMSG_ERROR:
            echoed = _NLMSGHDR.size
            if not flags & _NLM_F_CAPPED and len(payload) >= 8:
                echoed = _U32.unpack_from(payload, 4)[0]
            offset += _align(echoed)
        return _parse_attrs(payload, offset)

    def _change(self, msg_type: int, flags: int, body: bytes, what: str) -> None:
        self._request(msg_type, flags | _NLM_F_ACK, body, what)

    # Queries.

    def _get(self, body: bytes, what: str) -> Link | None:
        try:
            answers = self._request(_RTM_GETLINK, _NLM_F_ACK, body, what)
        except NetlinkError as err:
            if err.errno == errno.ENODEV:
                return None
            raise
        return _parse_link(answers[0]) if answers else None

    def link(self, name: str) -> Link | None:
        """The link called `name`; None if there is none."""
        return self._get(_ifinfomsg() + _string(_IFLA_IFNAME, name)
                         + _u32(_IFLA_EXT_MASK, _RTEXT_FILTER_SKIP_STATS), f"RTM_GETLINK {name}")

    def link_by_index(self, index: int) -> Link | None:
        """The link with ifindex `index`; None if there is none."""
        return self._get(_ifinfomsg(index) + _u32(_IFLA_EXT_MASK, _RTEXT_FILTER_SKIP_STATS),
                         f"RTM_GETLINK index {index}")

    def links(self) -> list[Link]:
        """Every link, from one consistent dump (retried if links came or went meanwhile)."""
        body = _ifinfomsg() + _u32(_IFLA_EXT_MASK, _RTEXT_FILTER_SKIP_STATS)
        attempts = 3
        while True:
            try:
                answers = self._request(_RTM_GETLINK, _NLM_F_DUMP, body, "RTM_GETLINK dump")
            except NetlinkError as err:
                attempts -= 1
                if err.errno != errno.EINTR or not attempts:
                    raise
                continue
            return [_parse_link(payload) for payload in answers]

    def link_names(self) -> set[str]:
        """The names of all links (one dump): liveness of many names at once."""
        return {link.name for link in self.links()}

    # Changes.

    def create_veth(self, host: str, peer: str, peer_netns_fd: int, mtu: int) -> None:
        """Create the pair `host` (here) and `peer` (born inside `peer_netns_fd`, never here).

        Both ends get `mtu`. `peer` may be a kernel template such as "eth%d". Fails with EEXIST
        if `host` exists here or `peer` there.
        """
        peer_info = (_ifinfomsg() + _string(_IFLA_IFNAME, peer) + _u32(_IFLA_MTU, mtu)
                     + _u32(_IFLA_NET_NS_FD, peer_netns_fd))
        body = (_ifinfomsg() + _string(_IFLA_IFNAME, host) + _u32(_IFLA_MTU, mtu)
                + _nested(_IFLA_LINKINFO, _string(_IFLA_INFO_KIND, "veth"),
                          _nested(_IFLA_INFO_DATA, _nested(_VETH_INFO_PEER, peer_info))))
        self._change(_RTM_NEWLINK, _NLM_F_CREATE | _NLM_F_EXCL, body,
                     f"RTM_NEWLINK veth {host} peer {peer}")

    def create_bridge(self, name: str) -> int:
        """Create the Linux bridge `name` (EEXIST if the name is taken); its ifindex."""
        body = (_ifinfomsg() + _string(_IFLA_IFNAME, name)
                + _nested(_IFLA_LINKINFO, _string(_IFLA_INFO_KIND, "bridge")))
        self._change(_RTM_NEWLINK, _NLM_F_CREATE | _NLM_F_EXCL, body, f"RTM_NEWLINK bridge {name}")
        link = self.link(name)
        if link is None:  # deleted in between by someone else with CAP_NET_ADMIN here
            raise NetlinkError(errno.ENODEV, f"bridge {name} vanished after its creation")
        return link.index

    def set_link(self, index: int, *, master: int | None = None, up: bool | None = None,
                 address: bytes | None = None, mtu: int | None = None,
                 group: int | None = None) -> None:
        """Change what is given of link `index`; `master=0` detaches it from its master."""
        attrs = b"" if group is None else _u32(_IFLA_GROUP, group)
        if address is not None:
            attrs += _attr(_IFLA_ADDRESS, address)
        if mtu is not None:
            attrs += _u32(_IFLA_MTU, mtu)
        if master is not None:
            attrs += _u32(_IFLA_MASTER, master)
        flags = IFF_UP if up else 0
        change = 0 if up is None else IFF_UP
        self._change(_RTM_SETLINK, 0, _ifinfomsg(index, flags=flags, change=change) + attrs,
                     f"RTM_SETLINK index {index}")

    def set_bridge_port(self, index: int, *, isolated: bool | None = None,
                        learning: bool | None = None, neigh_suppress: bool | None = None,
                        locked: bool | None = None) -> None:
        """Set bridge-port flags of link `index`, which must be attached to a Linux bridge."""
        wanted = ((_IFLA_BRPORT_LOCKED, locked), (_IFLA_BRPORT_ISOLATED, isolated),
                  (_IFLA_BRPORT_LEARNING, learning), (_IFLA_BRPORT_NEIGH_SUPPRESS, neigh_suppress))
        port = b"".join(_u8(kind, value) for kind, value in wanted if value is not None)
        body = _ifinfomsg(index, family=_AF_BRIDGE) + _nested(_IFLA_PROTINFO, port)
        self._change(_RTM_SETLINK, 0, body, f"RTM_SETLINK bridge port index {index}")

    def add_static_fdb(self, port_index: int, address: bytes) -> None:
        """A static FDB entry on the bridge: frames from `address` belong to port `port_index`
        (`bridge fdb add <address> dev <port> master static`)."""
        body = (_NDMSG.pack(_AF_BRIDGE, port_index, _NUD_NOARP, _NTF_MASTER, 0)
                + _attr(_NDA_LLADDR, address))
        self._change(_RTM_NEWNEIGH, _NLM_F_CREATE | _NLM_F_EXCL, body,
                     f"RTM_NEWNEIGH bridge fdb on index {port_index}")

    def delete_link(self, index: int) -> None:
        """Delete link `index` (a veth takes its peer with it)."""
        self._change(_RTM_DELLINK, 0, _ifinfomsg(index), f"RTM_DELLINK index {index}")

    def probe_net_admin(self) -> bool:
        """Whether this socket's opener and the caller both hold CAP_NET_ADMIN over its netns.

        Asks the kernel to delete "lo", which can never be deleted: a request that gets past the
        capability check fails with EOPNOTSUPP (EINVAL on some kernels): privileged; EPERM or
        EACCES: not. Open the Rtnl with the credentials to test, and call this with them too.
        """
        try:
            self._change(_RTM_DELLINK, 0, _ifinfomsg() + _string(_IFLA_IFNAME, "lo"),
                         "RTM_DELLINK lo (privilege probe)")
        except NetlinkError as err:
            if err.errno in (errno.EOPNOTSUPP, errno.EINVAL):
                return True
            if err.errno in (errno.EPERM, errno.EACCES):
                return False
            raise
        raise NetlinkError(errno.EPROTO, "the kernel deleted lo: privilege probe invalid")
