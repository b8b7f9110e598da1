"""The networks this host's links already use: every IPv4 and IPv6 address (RTM_GETADDR dump)
and every unicast route but the default ones (RTM_GETROUTE dump, all tables; a /1 counts as a
default route: VPN clients split theirs in two), with the link each is on. network_apply
refuses a pool that overlaps one of them outside the users' bridges."""

import _socket
import _struct

from nsgate.policy import netlink_codec as codec
from nsgate.system.netlink import NetlinkSocket

_NETLINK_ROUTE = 0
_RTM_GETADDR = 22
_RTM_GETROUTE = 26
_IFA_ADDRESS, _IFA_LOCAL = 1, 2
_RTA_DST, _RTA_OIF = 1, 4
_RTN_UNICAST = 1
_IFADDRMSG = _struct.Struct("=BBBBI")  # family, prefix length, flags, scope, link index
_U32 = _struct.Struct("=I")
_RTMSG = _struct.Struct("=BBBBBBBBI")  # family, dst len, src len, tos, table, protocol, scope,
#                                        type, flags


def used(family: int) -> list[tuple[int, str, bytes, int]]:
    """(link index, "address" or "route", address bytes, prefix length) for `family`
    (AF_INET, AF_INET6); a route through no single link (multipath) has index 0."""
    found: list[tuple[int, str, bytes, int]] = []
    with NetlinkSocket(_NETLINK_ROUTE) as sock:
        for payload in sock.request(_RTM_GETADDR, codec.NLM_F_DUMP,
                                    _IFADDRMSG.pack(family, 0, 0, 0, 0), "RTM_GETADDR"):
            fam, prefixlen, _, _, index = _IFADDRMSG.unpack_from(payload)
            attrs = codec.parse_attrs(payload, _IFADDRMSG.size)
            address = attrs.get(_IFA_LOCAL) or attrs.get(_IFA_ADDRESS)
            if fam == family and address:
                found.append((index, "address", address, prefixlen))
        for payload in sock.request(_RTM_GETROUTE, codec.NLM_F_DUMP,
                                    _RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0), "RTM_GETROUTE"):
            fam, dst_len, _, _, _, _, _, kind, _ = _RTMSG.unpack_from(payload)
            if fam != family or kind != _RTN_UNICAST or dst_len <= 1:
                continue
            attrs = codec.parse_attrs(payload, _RTMSG.size)
            oif = attrs.get(_RTA_OIF, b"")
            index = _U32.unpack(oif)[0] if len(oif) == 4 else 0
            found.append((index, "route", attrs.get(_RTA_DST, b""), dst_len))
    return found


AF_INET = _socket.AF_INET
AF_INET6 = _socket.AF_INET6
