"""rtnetlink (NETLINK_ROUTE) link operations for lxc-user-nic: look links up, create a veth pair
or a bridge, set link and bridge-port attributes, list, add and remove a link's addresses, delete
a link, and prove CAP_NET_ADMIN over a netns. The bytes are built and parsed by
policy/netlink_codec.py (pure, fuzzed, compared with pyroute2); they travel over
system/netlink.py (a socket connected to the kernel).

A self-contained codec over the builtin `_socket` and `_struct` modules, on purpose: pyroute2, the
project's netlink library, is too slow to import on a helper's start-up path. Measured with
`/usr/bin/python3 -I -S` (pyroute2 0.9.7): `import pyroute2` 95-180 ms; its netlink base classes
alone (`pyroute2.netlink`, with `pyroute2/__init__.py` bypassed by a pre-seeded empty package)
14-30 ms, 35 ms with `nlsocket` (they pull in logging, socket, threading, asyncio, ssl). The whole
helper run has ~40 ms; codec, transport and this module import in about 1 ms and a lookup takes
~0.1 ms. They speak only the handful of messages and attributes used here.

Namespaces: `Rtnl()` acts on the netns the calling thread is in at construction time, whatever
`setns` happens afterwards (see netlink.py); the one exception is `create_veth`, whose peer is
born in the netns named by an fd (IFLA_NET_NS_FD).

Privilege: the kernel allows a modifying request only if both the opener of the socket (the
credentials the socket file was created with) and the sender of the request hold CAP_NET_ADMIN
over the socket's netns. Both are the credentials in force when `Rtnl()` and a method are called.
"""

import _socket
import errno
import posix

from nsgate.policy import netlink_codec as codec
from nsgate.policy.netlink_codec import AF_INET, AF_INET6, IFF_UP, Link
from nsgate.system.netlink import NetlinkError, NetlinkSocket

TYPE_CHECKING = False  # typing costs import time on every helper run
if TYPE_CHECKING:
    from types import TracebackType

__all__ = ["AF_INET", "AF_INET6", "IFF_UP", "Link", "NetlinkError", "Rtnl", "netns_of_self"]

_BUFFER_SIZE = 65536


def _mac(address: bytes | None) -> bytes:
    return b"" if address is None else codec.attr(codec.IFLA_ADDRESS, address)


def _shown(family: int, address: bytes) -> str:
    if family == codec.AF_INET and len(address) == 4:
        return ".".join(str(byte) for byte in address)
    return address.hex(":", 2) if len(address) == 16 else address.hex()


def netns_of_self() -> int:
    """An O_RDONLY|O_CLOEXEC fd on the network namespace of the calling thread."""
    return posix.open("/proc/thread-self/ns/net", posix.O_RDONLY | posix.O_CLOEXEC)


class Rtnl:
    """One NETLINK_ROUTE socket, in the netns of the calling thread at construction (see above).

    Each request waits for its complete answer: the kernel's acknowledgement (every non-dump
    request asks for one) or the end of a multipart dump. A refusal raises NetlinkError.
    """

    def __init__(self, *, buffer_size: int = _BUFFER_SIZE) -> None:
        self._socket = NetlinkSocket(_socket.NETLINK_ROUTE, buffer_size=buffer_size)

    def fileno(self) -> int:
        return self._socket.fileno()

    def close(self) -> None:
        self._socket.close()

    def __enter__(self) -> "Rtnl":
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: "TracebackType | None") -> None:
        self.close()

    def _change(self, msg_type: int, flags: int, body: bytes, what: str) -> None:
        self._socket.request(msg_type, flags | codec.NLM_F_ACK, body, what)

    # Queries.

    def _get(self, body: bytes, what: str) -> Link | None:
        try:
            answers = self._socket.request(codec.RTM_GETLINK, codec.NLM_F_ACK, body, what)
        except NetlinkError as err:
            if err.errno == errno.ENODEV:
                return None
            raise
        return self._parse(answers[0], what) if answers else None

    @staticmethod
    def _parse(payload: bytes, what: str) -> Link:
        try:
            return codec.parse_link(payload)
        except codec.CodecError as err:
            raise NetlinkError(errno.EBADMSG, f"{what}: malformed link: {err}") from None

    def link(self, name: str) -> Link | None:
        """The link called `name`; None if there is none."""
        return self._get(codec.ifinfomsg() + codec.string(codec.IFLA_IFNAME, name)
                         + codec.u32(codec.IFLA_EXT_MASK, codec.RTEXT_FILTER_SKIP_STATS),
                         f"RTM_GETLINK {name}")

    def link_by_index(self, index: int) -> Link | None:
        """The link with ifindex `index`; None if there is none."""
        return self._get(codec.ifinfomsg(index)
                         + codec.u32(codec.IFLA_EXT_MASK, codec.RTEXT_FILTER_SKIP_STATS),
                         f"RTM_GETLINK index {index}")

    def links(self, *, master: int = 0) -> list[Link]:
        """Every link, from one consistent dump (retried if links came or went meanwhile); with
        `master`, the ports of that bridge only (the kernel filters the dump, and links of
        another master are dropped here too, should a kernel not)."""
        body = codec.ifinfomsg() + codec.u32(codec.IFLA_EXT_MASK, codec.RTEXT_FILTER_SKIP_STATS)
        if master:
            body += codec.u32(codec.IFLA_MASTER, master)
        attempts = 3
        while True:
            try:
                answers = self._socket.request(codec.RTM_GETLINK, codec.NLM_F_DUMP, body,
                                               "RTM_GETLINK dump")
            except NetlinkError as err:
                attempts -= 1
                if err.errno != errno.EINTR or not attempts:
                    raise
                continue
            links = [self._parse(payload, "RTM_GETLINK dump") for payload in answers]
            return [link for link in links if link.master == master] if master else links

    def addresses(self, index: int) -> list[tuple[int, bytes, int]]:
        """The addresses of link `index` as (family, address, prefix length), IPv4 and IPv6,
        from one consistent dump (retried if addresses came or went meanwhile). The kernel
        filters the dump by ifindex only on a strict-checking socket, so it is filtered here."""
        return [(found.family, found.address, found.prefixlen)
                for found in self._dump_addresses() if found.index == index]

    def _dump_addresses(self) -> "list[codec.Address]":
        body = codec.ifaddrmsg(codec.AF_UNSPEC, 0, 0)
        for attempt in range(3):
            try:
                answers = self._socket.request(codec.RTM_GETADDR, codec.NLM_F_DUMP, body,
                                               "RTM_GETADDR dump")
            except NetlinkError as err:
                if err.errno != errno.EINTR or attempt == 2:
                    raise
                continue
            try:
                return [codec.parse_address(payload) for payload in answers]
            except codec.CodecError as err:
                raise NetlinkError(errno.EBADMSG,
                                   f"RTM_GETADDR dump: malformed address: {err}") from None
        raise AssertionError("unreachable")

    def add_address(self, index: int, family: int, address: bytes, prefixlen: int) -> None:
        """Give link `index` the address `address`/`prefixlen` (EEXIST if it has it). An IPv6
        address is usable at once (no duplicate address detection: nsgate's own gateway must
        not be given up to a container that claims it)."""
        flags = codec.IFA_F_NODAD if family == codec.AF_INET6 else 0
        self._change(codec.RTM_NEWADDR, codec.NLM_F_CREATE | codec.NLM_F_EXCL,
                     self._address_body(family, address, prefixlen, index, flags),
                     f"RTM_NEWADDR {_shown(family, address)}/{prefixlen} index {index}")

    def delete_address(self, index: int, family: int, address: bytes, prefixlen: int) -> None:
        """Take `address`/`prefixlen` from link `index` (EADDRNOTAVAIL if it does not have it)."""
        self._change(codec.RTM_DELADDR, 0,
                     self._address_body(family, address, prefixlen, index, 0),
                     f"RTM_DELADDR {_shown(family, address)}/{prefixlen} index {index}")

    @staticmethod
    def _address_body(family: int, address: bytes, prefixlen: int, index: int,
                      flags: int) -> bytes:
        try:
            return codec.address_change(family, address, prefixlen, index, flags=flags)
        except codec.CodecError as err:
            raise NetlinkError(errno.EINVAL, f"address for index {index}: {err}") from None

    def link_names(self) -> set[str]:
        """The names of all links (one dump): liveness of many names at once."""
        return {link.name for link in self.links()}

    # Changes.

    def create_veth(self, host: str, peer: str, peer_netns_fd: int, mtu: int, *,
                    host_address: bytes | None = None,
                    peer_address: bytes | None = None) -> None:
        """Create the pair `host` (here) and `peer` (born inside `peer_netns_fd`, never here).

        Both ends get `mtu`, and the MAC address given for them (else a random one of the
        kernel's). `peer` may be a kernel template such as "eth%d" (the host end's `link` then
        tells the peer's ifindex). Fails with EEXIST if `host` exists here or `peer` there.
        """
        peer_info = (codec.ifinfomsg() + codec.string(codec.IFLA_IFNAME, peer)
                     + codec.u32(codec.IFLA_MTU, mtu)
                     + codec.u32(codec.IFLA_NET_NS_FD, peer_netns_fd)
                     + _mac(peer_address))
        body = (codec.ifinfomsg() + codec.string(codec.IFLA_IFNAME, host)
                + codec.u32(codec.IFLA_MTU, mtu) + _mac(host_address)
                + codec.nested(codec.IFLA_LINKINFO, codec.string(codec.IFLA_INFO_KIND, "veth"),
                               codec.nested(codec.IFLA_INFO_DATA,
                                            codec.nested(codec.VETH_INFO_PEER, peer_info))))
        self._change(codec.RTM_NEWLINK, codec.NLM_F_CREATE | codec.NLM_F_EXCL, body,
                     f"RTM_NEWLINK veth {host} peer {peer}")

    def create_bridge(self, name: str, address: bytes | None = None) -> int:
        """Create the Linux bridge `name` (EEXIST if the name is taken); its ifindex. With
        `address`, the bridge keeps that MAC whatever ports it gets (else it takes the lowest
        of its ports')."""
        body = (codec.ifinfomsg() + codec.string(codec.IFLA_IFNAME, name) + _mac(address)
                + codec.nested(codec.IFLA_LINKINFO, codec.string(codec.IFLA_INFO_KIND, "bridge")))
        self._change(codec.RTM_NEWLINK, codec.NLM_F_CREATE | codec.NLM_F_EXCL, body,
                     f"RTM_NEWLINK bridge {name}")
        link = self.link(name)
        if link is None:  # deleted in between by someone else with CAP_NET_ADMIN here
            raise NetlinkError(errno.ENODEV, f"bridge {name} vanished after its creation")
        return link.index

    def set_link(self, index: int, *, master: int | None = None, up: bool | None = None,
                 address: bytes | None = None, mtu: int | None = None,
                 group: int | None = None) -> None:
        """Change what is given of link `index`; `master=0` detaches it from its master."""
        attrs = b"" if group is None else codec.u32(codec.IFLA_GROUP, group)
        if address is not None:
            attrs += codec.attr(codec.IFLA_ADDRESS, address)
        if mtu is not None:
            attrs += codec.u32(codec.IFLA_MTU, mtu)
        if master is not None:
            attrs += codec.u32(codec.IFLA_MASTER, master)
        flags = IFF_UP if up else 0
        change = 0 if up is None else IFF_UP
        self._change(codec.RTM_SETLINK, 0,
                     codec.ifinfomsg(index, flags=flags, change=change) + attrs,
                     f"RTM_SETLINK index {index}")

    def set_bridge_port(self, index: int, *, isolated: bool | None = None,
                        learning: bool | None = None,
                        neigh_suppress: bool | None = None) -> None:
        """Set bridge-port flags of link `index`, which must be attached to a Linux bridge."""
        wanted = ((codec.IFLA_BRPORT_ISOLATED, isolated),
                  (codec.IFLA_BRPORT_LEARNING, learning),
                  (codec.IFLA_BRPORT_NEIGH_SUPPRESS, neigh_suppress))
        port = b"".join(codec.u8(kind, value) for kind, value in wanted if value is not None)
        body = (codec.ifinfomsg(index, family=codec.AF_BRIDGE)
                + codec.nested(codec.IFLA_PROTINFO, port))
        self._change(codec.RTM_SETLINK, 0, body, f"RTM_SETLINK bridge port index {index}")

    def delete_link(self, index: int) -> None:
        """Delete link `index` (a veth takes its peer with it)."""
        self._change(codec.RTM_DELLINK, 0, codec.ifinfomsg(index), f"RTM_DELLINK index {index}")

    def probe_net_admin(self) -> bool:
        """Whether this socket's opener and the caller both hold CAP_NET_ADMIN over its netns.

        Asks the kernel to delete "lo", which can never be deleted: a request that gets past the
        capability check fails with EOPNOTSUPP (EINVAL on some kernels): privileged; EPERM or
        EACCES: not. Open the Rtnl with the credentials to test, and call this with them too.
        """
        try:
            self._change(codec.RTM_DELLINK, 0,
                         codec.ifinfomsg() + codec.string(codec.IFLA_IFNAME, "lo"),
                         "RTM_DELLINK lo (privilege probe)")
        except NetlinkError as err:
            if err.errno in (errno.EOPNOTSUPP, errno.EINVAL):
                return True
            if err.errno in (errno.EPERM, errno.EACCES):
                return False
            raise
        raise NetlinkError(errno.EPROTO, "the kernel deleted lo: privilege probe invalid")
