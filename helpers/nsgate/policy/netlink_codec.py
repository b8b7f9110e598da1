"""The rtnetlink wire format, bytes in and values out, no system calls: requests are built here,
replies are parsed here (system/netlink.py moves the bytes, system/rtnl.py composes requests).

Replies come from the kernel but describe a network namespace the caller controls (names,
addresses, kinds), so parsing is strict: anything that is not what the kernel writes (a length
that overruns, an attribute of the wrong size, an NLMSG_ERROR without room for its errno and the
echoed header, a reply to another port) raises CodecError instead of yielding a value. Of
repeated attributes the first counts, as the kernel's `nla_find` and pyroute2's `get_attr` read
them. All integers are in host byte order ("=": native order, standard sizes, no padding).
"""

import _struct

# <linux/netlink.h>
NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLMSG_OVERRUN = 4
NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_ACK = 0x4
NLM_F_DUMP_INTR = 0x10
NLM_F_DUMP = 0x300
NLM_F_CAPPED = 0x100  # in NLMSG_ERROR: only the header of our request follows the errno
NLM_F_ACK_TLVS = 0x200  # in NLMSG_ERROR / NLMSG_DONE: extack attributes follow
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLMSGERR_ATTR_MSG = 1
NLA_F_NESTED = 0x8000
NLA_TYPE_MASK = 0x3FFF

# <linux/rtnetlink.h>, <linux/if_link.h>, <linux/veth.h>, <linux/if.h>, <linux/neighbour.h>
RTM_NEWLINK = 16
RTM_DELLINK = 17
RTM_GETLINK = 18
RTM_SETLINK = 19
RTM_NEWADDR = 20
RTM_DELADDR = 21
RTM_GETADDR = 22
IFLA_ADDRESS = 1
IFLA_IFNAME = 3
IFLA_MTU = 4
IFLA_LINK = 5
IFLA_MASTER = 10
IFLA_PROTINFO = 12
IFLA_LINKINFO = 18
IFLA_GROUP = 27
IFLA_NET_NS_FD = 28
IFLA_EXT_MASK = 29
RTEXT_FILTER_SKIP_STATS = 1 << 3  # replies without the (large) statistics blocks
IFLA_INFO_KIND = 1
IFLA_INFO_DATA = 2
IFLA_INFO_SLAVE_KIND = 4
IFLA_INFO_SLAVE_DATA = 5
VETH_INFO_PEER = 1
IFLA_BR_VLAN_FILTERING = 7
IFLA_BRPORT_LEARNING = 8
IFLA_BRPORT_NEIGH_SUPPRESS = 32
IFLA_BRPORT_ISOLATED = 33
AF_UNSPEC = 0
AF_INET = 2
AF_BRIDGE = 7
AF_INET6 = 10
# <linux/if_addr.h>
IFA_ADDRESS = 1
IFA_LOCAL = 2
IFA_BROADCAST = 4
IFA_FLAGS = 8
IFA_F_NODAD = 0x02
ADDRESS_SIZES = {AF_INET: 4, AF_INET6: 16}
IFF_UP = 0x1
RTNLGRP_LINK = 1  # the multicast group of link notifications (RTM_NEWLINK, RTM_DELLINK)

NLMSGHDR = _struct.Struct("=IHHII")  # length, type, flags, sequence, port id
IFINFOMSG = _struct.Struct("=BxHiII")  # family, (pad), device type, index, flags, change mask
IFADDRMSG = _struct.Struct("=BBBBI")  # family, prefix length, flags, scope, index
RTATTR = _struct.Struct("=HH")  # length, type
_U32 = _struct.Struct("=I")
_I32 = _struct.Struct("=i")
# The bridge-port attributes that are one-byte values (<linux/if_link.h> IFLA_BRPORT_*): STATE,
# MODE, GUARD, PROTECT, FAST_LEAVE, LEARNING, UNICAST_FLOOD, PROXYARP, LEARNING_SYNC,
# PROXYARP_WIFI, TOPOLOGY_CHANGE_ACK, CONFIG_PENDING, MULTICAST_ROUTER, MCAST_FLOOD,
# MCAST_TO_UCAST, VLAN_TUNNEL, BCAST_FLOOD, NEIGH_SUPPRESS, ISOLATED, MRP_RING_OPEN, MRP_IN_OPEN,
# LOCKED, MAB, NEIGH_VLAN_SUPPRESS.
BRPORT_U8 = frozenset((1, 4, 5, 6, 7, 8, 9, 10, 11, 12, 19, 20, 25, 27, 28, 29, 30, 32, 33, 35,
                       36, 39, 40, 43))


class CodecError(ValueError):
    """Bytes that are not a well-formed rtnetlink message: refused, never half-read."""


class Message:
    """One netlink message: header fields and the payload after the header."""

    __slots__ = ("flags", "kind", "payload", "port", "seq")

    def __init__(self, kind: int, flags: int, seq: int, port: int, payload: bytes) -> None:
        self.kind = kind
        self.flags = flags
        self.seq = seq
        self.port = port
        self.payload = payload


class Link:
    """One network device as RTM_NEWLINK (the answer to RTM_GETLINK) describes it."""

    __slots__ = ("address", "family", "flags", "index", "kind", "link", "master", "mtu", "name",
                 "port", "slave_kind", "vlan_filtering")

    def __init__(self, index: int, name: str, kind: str | None, mtu: int, master: int,
                 address: bytes, flags: int, *, vlan_filtering: bool = False, link: int = -1,
                 family: int = AF_UNSPEC, slave_kind: str | None = None,
                 port: "dict[int, int] | None" = None) -> None:
        self.index = index
        self.name = name
        self.kind = kind  # IFLA_INFO_KIND: "bridge", "veth", "dummy"...; None: loopback, physical
        self.mtu = mtu
        self.master = master  # ifindex of the bridge (or bond...) it is attached to, 0 if none
        self.address = address
        self.flags = flags  # ifi_flags: IFF_UP...
        self.vlan_filtering = vlan_filtering  # a bridge's IFLA_BR_VLAN_FILTERING
        # IFLA_LINK, the kernel's iflink: a veth's peer's ifindex (in the peer's netns); the
        # kernel leaves the attribute out when it equals the link's own index
        self.link = index if link < 0 else link
        self.family = family  # AF_BRIDGE in a bridge's own dump of its ports
        self.slave_kind = slave_kind  # IFLA_INFO_SLAVE_KIND: "bridge" for a bridge port
        self.port = port  # bridge-port flags (IFLA_PROTINFO or IFLA_INFO_SLAVE_DATA), if any

    @property
    def up(self) -> bool:
        """IFF_UP: administratively up."""
        return bool(self.flags & IFF_UP)

    def __repr__(self) -> str:
        return (f"Link(index={self.index}, name={self.name!r}, kind={self.kind!r}, "
                f"mtu={self.mtu}, master={self.master}, address={self.address.hex(':')!r}, "
                f"up={self.up})")


class Address:
    """One address of a link as RTM_NEWADDR (the answer to RTM_GETADDR) describes it."""

    __slots__ = ("address", "family", "flags", "index", "prefixlen", "scope")

    def __init__(self, family: int, address: bytes, prefixlen: int, index: int, *,
                 flags: int = 0, scope: int = 0) -> None:
        self.family = family  # AF_INET or AF_INET6
        self.address = address  # the link's own address (IFA_LOCAL, else IFA_ADDRESS)
        self.prefixlen = prefixlen
        self.index = index  # the ifindex of its link
        self.flags = flags  # IFA_FLAGS if given (32 bits), else ifa_flags
        self.scope = scope

    def __repr__(self) -> str:
        return (f"Address(family={self.family}, address={self.address.hex()!r}, "
                f"prefixlen={self.prefixlen}, index={self.index})")


# Encoding: an attribute is (length, type) + payload, padded to 4 bytes.

def align(length: int) -> int:
    return (length + 3) & ~3


def attr(kind: int, payload: bytes) -> bytes:
    length = RTATTR.size + len(payload)
    if length > 0xFFFF:
        raise CodecError(f"attribute {kind} too long ({length} bytes)")
    return RTATTR.pack(length, kind) + payload + bytes(align(length) - length)


def nested(kind: int, *attrs: bytes) -> bytes:
    return attr(kind | NLA_F_NESTED, b"".join(attrs))


def string(kind: int, text: str) -> bytes:
    return attr(kind, text.encode("utf-8", "surrogateescape") + b"\0")


def u32(kind: int, value: int) -> bytes:
    return attr(kind, _U32.pack(value))


def u8(kind: int, value: int) -> bytes:
    return attr(kind, bytes((value,)))


def ifinfomsg(index: int = 0, *, family: int = AF_UNSPEC, flags: int = 0,
              change: int = 0) -> bytes:
    return IFINFOMSG.pack(family, 0, index, flags, change)


def ifaddrmsg(family: int, prefixlen: int, index: int, *, flags: int = 0,
              scope: int = 0) -> bytes:
    return IFADDRMSG.pack(family, prefixlen, flags, scope, index)


def address_change(family: int, address: bytes, prefixlen: int, index: int, *,
                   flags: int = 0) -> bytes:
    """The body of an RTM_NEWADDR or RTM_DELADDR for `address`/`prefixlen` on link `index`: the
    address as IFA_LOCAL and IFA_ADDRESS (no peer), IPv4 with its subnet's broadcast address (as
    `ip address add ... brd +`), and IFA_FLAGS when `flags` are given."""
    if ADDRESS_SIZES.get(family) != len(address):
        raise CodecError(f"address of {len(address)} bytes for family {family}")
    bits = len(address) * 8
    if not 0 <= prefixlen <= bits:
        raise CodecError(f"prefix length {prefixlen} for a {bits}-bit address")
    body = (ifaddrmsg(family, prefixlen, index, flags=flags & 0xFF)
            + attr(IFA_LOCAL, address) + attr(IFA_ADDRESS, address))
    if family == AF_INET and prefixlen < 31:
        host_bits = (1 << (bits - prefixlen)) - 1
        broadcast = int.from_bytes(address, "big") | host_bits
        body += attr(IFA_BROADCAST, broadcast.to_bytes(4, "big"))
    if flags:
        body += u32(IFA_FLAGS, flags)
    return body


def message(kind: int, flags: int, seq: int, body: bytes, port: int = 0) -> bytes:
    """One whole message: header (with NLM_F_REQUEST for a request) and body."""
    return NLMSGHDR.pack(NLMSGHDR.size + len(body), kind, flags, seq, port) + body


def request(kind: int, flags: int, seq: int, body: bytes) -> bytes:
    return message(kind, flags | NLM_F_REQUEST, seq, body)


# Decoding.

def split_messages(data: bytes) -> list[Message]:
    """The messages of one datagram, in order. Every byte must belong to a message or to the
    (zero) padding that aligns the next one."""
    found = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < NLMSGHDR.size:
            raise CodecError(f"{len(data) - offset} stray bytes after the last message")
        length, kind, flags, seq, port = NLMSGHDR.unpack_from(data, offset)
        if length < NLMSGHDR.size or length > len(data) - offset:
            raise CodecError(f"message length {length} at offset {offset} of {len(data)}")
        found.append(Message(kind, flags, seq, port,
                             bytes(data[offset + NLMSGHDR.size:offset + length])))
        end = min(offset + align(length), len(data))
        if any(data[offset + length:end]):
            raise CodecError(f"non-zero padding after the message at offset {offset}")
        offset = end
    return found


def iter_attrs(data: bytes, offset: int = 0) -> list[tuple[int, bytes]]:
    """The attributes in data[offset:] in order: (type with its flag bits, payload). The last
    attribute's padding may be cut off; nothing else may be left over."""
    found = []
    while offset < len(data):
        if len(data) - offset < RTATTR.size:
            raise CodecError(f"{len(data) - offset} stray bytes after the last attribute")
        length, kind = RTATTR.unpack_from(data, offset)
        if length < RTATTR.size or length > len(data) - offset:
            raise CodecError(f"attribute length {length} at offset {offset} of {len(data)}")
        found.append((kind, bytes(data[offset + RTATTR.size:offset + length])))
        offset = min(offset + align(length), len(data))
    return found


def parse_attrs(data: bytes, offset: int = 0) -> dict[int, bytes]:
    """The attributes in data[offset:] by type (flag bits masked off); the first of a type
    counts."""
    attrs: dict[int, bytes] = {}
    for kind, payload in iter_attrs(data, offset):
        attrs.setdefault(kind & NLA_TYPE_MASK, payload)
    return attrs


def text(payload: bytes) -> str:
    """A string attribute: the text and one NUL, its last byte (nla_put_string writes no other)."""
    if not payload.endswith(b"\0") or b"\0" in payload[:-1]:
        raise CodecError(f"string attribute not ended by its one NUL: {payload[:32]!r}")
    return payload[:-1].decode("utf-8", "surrogateescape")


def _uint(payload: bytes, size: int, what: str) -> int:
    """An unsigned 8- or 32-bit attribute, which must have exactly its size."""
    if len(payload) != size:
        raise CodecError(f"{what}: {len(payload)} bytes, not {size}")
    return payload[0] if size == 1 else int(_U32.unpack(payload)[0])


def _port_flags(payload: bytes) -> dict[int, int]:
    """The one-byte bridge-port flags of an IFLA_PROTINFO / IFLA_INFO_SLAVE_DATA nest."""
    return {kind: _uint(value, 1, f"bridge port attribute {kind}")
            for kind, value in parse_attrs(payload).items() if kind in BRPORT_U8}


def parse_link(payload: bytes) -> Link:
    """The payload of an RTM_NEWLINK message."""
    if len(payload) < IFINFOMSG.size:
        raise CodecError(f"link message of {len(payload)} bytes, shorter than its ifinfomsg")
    family, _, index, flags, _ = IFINFOMSG.unpack_from(payload)
    if index <= 0:
        raise CodecError(f"link message with ifindex {index}")
    attrs = parse_attrs(payload, IFINFOMSG.size)
    if IFLA_IFNAME not in attrs:
        raise CodecError(f"link {index} without a name")
    name = text(attrs[IFLA_IFNAME])
    kind = slave_kind = None
    vlan_filtering = False
    port = None
    if IFLA_LINKINFO in attrs:
        info = parse_attrs(attrs[IFLA_LINKINFO])
        if IFLA_INFO_KIND in info:
            kind = text(info[IFLA_INFO_KIND])
        if kind == "bridge" and IFLA_INFO_DATA in info:
            data = parse_attrs(info[IFLA_INFO_DATA])
            if IFLA_BR_VLAN_FILTERING in data:
                vlan_filtering = _uint(data[IFLA_BR_VLAN_FILTERING], 1, "vlan_filtering") != 0
        if IFLA_INFO_SLAVE_KIND in info:
            slave_kind = text(info[IFLA_INFO_SLAVE_KIND])
        if slave_kind == "bridge" and IFLA_INFO_SLAVE_DATA in info:
            port = _port_flags(info[IFLA_INFO_SLAVE_DATA])
    if family == AF_BRIDGE and IFLA_PROTINFO in attrs:
        port = _port_flags(attrs[IFLA_PROTINFO])

    def number(kind: int, what: str) -> int:
        return _uint(attrs[kind], 4, what) if kind in attrs else 0

    return Link(index, name, kind, number(IFLA_MTU, "mtu"), number(IFLA_MASTER, "master"),
                attrs.get(IFLA_ADDRESS, b""), flags, vlan_filtering=vlan_filtering,
                link=number(IFLA_LINK, "link") if IFLA_LINK in attrs else index, family=family,
                slave_kind=slave_kind, port=port)


def parse_address(payload: bytes) -> Address:
    """The payload of an RTM_NEWADDR message."""
    if len(payload) < IFADDRMSG.size:
        raise CodecError(f"address message of {len(payload)} bytes, shorter than its ifaddrmsg")
    family, prefixlen, flags, scope, index = IFADDRMSG.unpack_from(payload)
    size = ADDRESS_SIZES.get(family)
    if size is None:
        raise CodecError(f"address message of family {family}")
    if index <= 0 or prefixlen > size * 8:
        raise CodecError(f"address message with ifindex {index}, prefix length {prefixlen}")
    attrs = parse_attrs(payload, IFADDRMSG.size)
    address = attrs.get(IFA_LOCAL, attrs.get(IFA_ADDRESS))
    if address is None or len(address) != size:
        raise CodecError(f"address message of link {index} without an address of {size} bytes")
    if IFA_FLAGS in attrs:
        flags = _uint(attrs[IFA_FLAGS], 4, "address flags")
    return Address(family, address, prefixlen, index, flags=flags, scope=scope)


class Outcome:
    """How a request ended: `code` 0 (ACK, or the end of a dump) or an errno, with the kernel's
    text (extack) if it sent one."""

    __slots__ = ("code", "extack")

    def __init__(self, code: int, extack: str | None) -> None:
        self.code = code
        self.extack = extack


def parse_outcome(msg: Message) -> Outcome:
    """The errno and extack text of an NLMSG_ERROR (errno 0: the ACK) or NLMSG_DONE."""
    payload = msg.payload
    if msg.kind == NLMSG_ERROR:
        if len(payload) < 4 + NLMSGHDR.size:
            raise CodecError(f"NLMSG_ERROR of {len(payload)} bytes cannot hold an errno and "
                             "the request's header")
        echoed = NLMSGHDR.size
        if not msg.flags & NLM_F_CAPPED:
            echoed = _U32.unpack_from(payload, 4)[0]
            if echoed < NLMSGHDR.size or 4 + echoed > len(payload):
                raise CodecError(f"NLMSG_ERROR echoes a request of {echoed} bytes in "
                                 f"{len(payload) - 4}")
        tlv_offset = 4 + align(echoed)
    elif msg.kind == NLMSG_DONE:
        if len(payload) < 4:
            raise CodecError(f"NLMSG_DONE of {len(payload)} bytes cannot hold its errno")
        tlv_offset = 4
    else:
        raise CodecError(f"message type {msg.kind} is not NLMSG_ERROR or NLMSG_DONE")
    code = -_I32.unpack_from(payload)[0]
    if code < 0:
        raise CodecError(f"positive error number {-code} in an acknowledgement")
    rest = payload[tlv_offset:]
    extack = None
    if msg.flags & NLM_F_ACK_TLVS:
        tlvs = parse_attrs(rest)
        if NLMSGERR_ATTR_MSG in tlvs:
            extack = text(tlvs[NLMSGERR_ATTR_MSG])
    elif rest:
        raise CodecError(f"{len(rest)} bytes after the acknowledgement without NLM_F_ACK_TLVS")
    return Outcome(code, extack)


class Answer:
    """The answer to one request, read datagram after datagram (`feed`) until `done`.

    A dump ends with NLMSG_DONE; anything else with NLMSG_ERROR, errno 0 being the ACK.
    Messages of other sequence numbers (answers to an abandoned request) are skipped; a message
    addressed to another port is refused, as is anything after the end.
    """

    __slots__ = ("done", "interrupted", "outcome", "overrun", "payloads", "port", "seq")

    def __init__(self, seq: int, port: int) -> None:
        self.seq = seq
        self.port = port
        self.payloads: list[bytes] = []  # the data messages, in order
        self.done = False
        self.interrupted = False  # NLM_F_DUMP_INTR: the dump is not one consistent picture
        self.overrun = False  # NLMSG_OVERRUN
        self.outcome: Outcome | None = None

    def feed(self, data: bytes) -> bool:
        """Take one datagram; whether the answer is now complete."""
        for msg in split_messages(data):
            if msg.port != self.port:
                raise CodecError(f"a message to port {msg.port}, not ours ({self.port})")
            if msg.seq != self.seq:
                continue
            if self.done:
                raise CodecError("a message after the end of the answer")
            self.interrupted = self.interrupted or bool(msg.flags & NLM_F_DUMP_INTR)
            if msg.kind in (NLMSG_ERROR, NLMSG_DONE):
                self.outcome = parse_outcome(msg)
                self.done = True
            elif msg.kind == NLMSG_OVERRUN:
                self.overrun = self.done = True
            elif msg.kind != NLMSG_NOOP:
                self.payloads.append(msg.payload)
        return self.done


def link_deletions(data: bytes) -> list[Link]:
    """The RTM_DELLINK messages of one RTNLGRP_LINK datagram, as links: of family AF_UNSPEC a
    link that left the namespace (deleted or moved away), of family AF_BRIDGE a port that left
    the bridge `master`. RTM_NEWLINK messages (every other change) are skipped unread; a
    message of any other type, or a malformed RTM_DELLINK, refuses the whole datagram. The
    header's sequence and port numbers are those of the request that caused the change, if
    any, so they are not checked."""
    deleted = []
    for msg in split_messages(data):
        if msg.kind == RTM_DELLINK:
            deleted.append(parse_link(msg.payload))
        elif msg.kind != RTM_NEWLINK:
            raise CodecError(f"message type {msg.kind} in a link notification")
    return deleted


def link_changes(data: bytes) -> list[Link]:
    """The RTM_NEWLINK messages of one RTNLGRP_LINK datagram, as links: a link made or changed
    (the service's network keeper watches its private bridges come). RTM_DELLINK messages are
    skipped unread (link_deletions reads them); a message of any other type, or a malformed
    RTM_NEWLINK, refuses the whole datagram."""
    changed = []
    for msg in split_messages(data):
        if msg.kind == RTM_NEWLINK:
            changed.append(parse_link(msg.payload))
        elif msg.kind != RTM_DELLINK:
            raise CodecError(f"message type {msg.kind} in a link notification")
    return changed
