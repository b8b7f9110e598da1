#!/usr/bin/env python3
"""The rtnetlink codec (nsgate.policy.netlink_codec): split_messages, iter_attrs, parse_attrs,
parse_link, parse_address, parse_outcome and Answer, on answers from a namespace the caller
controls, and link_deletions and link_changes, on the link notifications the service's janitor
and network keeper read.

Input: `seq(4) port(4)` then datagrams, each `length(2, little-endian) bytes` (the last one cut
where the input ends). Properties: no exception but CodecError; a datagram is split exactly as
the netlink format says (lengths, zero padding), and refused exactly when it breaks it; a link
is read as the oracle reads its attributes (the first of a type, exact sizes, strings ended by
one NUL) and reads back the same once encoded again; an NLMSG_ERROR too short for errno and
header is never an acknowledgement; an answer holds exactly the data messages of its sequence
number up to the end and ends with that end's errno; a notification gives exactly its RTM_DELLINK
links (link_deletions) or RTM_NEWLINK links (link_changes), read as the oracle reads them, and
is refused whole for any other type of message or a malformed message of the type read.
"""

from __future__ import annotations

import struct

from fuzz import common

with common.instrumented(__name__):
    from nsgate.policy import netlink_codec as codec

HEADER = struct.Struct("<II")


def datagrams(data: bytes) -> tuple[int, int, list[bytes]]:
    seq, port = HEADER.unpack(data[:8].ljust(8, b"\0"))
    rest, found = data[8:], []
    while rest:
        length = int.from_bytes(rest[:2], "little")
        found.append(rest[2:2 + length])
        rest = rest[2 + length:]
    return seq, port, found


# --- oracles, from <linux/netlink.h> and the codec's documented rules ---------------------------

def _pad(length: int) -> int:
    return -length % 4


def oracle_messages(data: bytes) -> list[tuple[int, int, int, int, bytes]] | None:
    """(type, flags, seq, port, payload) of each message; None if the datagram is malformed."""
    out, offset = [], 0
    while offset < len(data):
        if len(data) - offset < 16:
            return None
        length, kind, flags, seq, port = struct.unpack("=IHHII", data[offset:offset + 16])
        if not 16 <= length <= len(data) - offset:
            return None
        padding = data[offset + length:offset + length + _pad(length)]
        if padding.strip(b"\0"):
            return None
        out.append((kind, flags, seq, port, data[offset + 16:offset + length]))
        offset += length + len(padding)
    return out


def oracle_attrs(data: bytes) -> list[tuple[int, bytes]] | None:
    out, offset = [], 0
    while offset < len(data):
        if len(data) - offset < 4:
            return None
        length, kind = struct.unpack("=HH", data[offset:offset + 4])
        if not 4 <= length <= len(data) - offset:
            return None
        out.append((kind, data[offset + 4:offset + length]))
        offset = min(offset + length + _pad(length), len(data))
    return out


def _first(attrs: list[tuple[int, bytes]]) -> dict[int, bytes]:
    table: dict[int, bytes] = {}
    for kind, value in attrs:
        table.setdefault(kind & 0x3FFF, value)
    return table


class Refused(Exception):
    pass


def _nest(value: bytes) -> dict[int, bytes]:
    attrs = oracle_attrs(value)
    if attrs is None:
        raise Refused
    return _first(attrs)


def _string(value: bytes) -> bytes:
    if len(value) < 1 or value[-1] != 0 or 0 in value[:-1]:
        raise Refused
    return value[:-1]


def _number(value: bytes, size: int) -> int:
    if len(value) != size:
        raise Refused
    return int.from_bytes(value, "little")  # (fuzzed on little-endian machines)


BRPORT_U8 = {1, 4, 5, 6, 7, 8, 9, 10, 11, 12, 19, 20, 25, 27, 28, 29, 30, 32, 33, 35, 36, 39,
             40, 43}


def oracle_link(payload: bytes) -> dict | None:
    if len(payload) < 16:
        return None
    family, _, _, index, flags, _ = struct.unpack("=BBHiII", payload[:16])
    if index < 1:  # the kernel numbers links from 1
        return None
    try:
        attrs = _nest(payload[16:])
        if 3 not in attrs:
            return None
        link = {"index": index, "family": family, "flags": flags,
                "name": _string(attrs[3]), "mtu": _number(attrs[4], 4) if 4 in attrs else 0,
                "master": _number(attrs[10], 4) if 10 in attrs else 0,
                "link": _number(attrs[5], 4) if 5 in attrs else index,
                "address": attrs.get(1, b""), "kind": None, "slave_kind": None,
                "vlan_filtering": False, "port": None}
        if 18 in attrs:
            info = _nest(attrs[18])
            if 1 in info:
                link["kind"] = _string(info[1])
            if link["kind"] == b"bridge" and 2 in info:
                data = _nest(info[2])
                link["vlan_filtering"] = 7 in data and _number(data[7], 1) != 0
            if 4 in info:
                link["slave_kind"] = _string(info[4])
            if link["slave_kind"] == b"bridge" and 5 in info:
                link["port"] = {k: _number(v, 1) for k, v in _nest(info[5]).items()
                                if k in BRPORT_U8}
        if family == 7 and 12 in attrs:
            link["port"] = {k: _number(v, 1) for k, v in _nest(attrs[12]).items()
                            if k in BRPORT_U8}
    except Refused:
        return None
    return link


def oracle_outcome(kind: int, flags: int, payload: bytes) -> tuple[int, bytes | None] | None:
    """(errno, extack) of an NLMSG_ERROR or NLMSG_DONE; None if malformed."""
    if kind == 2:
        if len(payload) < 20:
            return None
        echoed = 16 if flags & 0x100 else _number(payload[4:8], 4)
        if echoed < 16 or 4 + echoed > len(payload):
            return None
        rest = payload[4 + echoed + _pad(echoed):]
    else:
        if len(payload) < 4:
            return None
        rest = payload[4:]
    code = -struct.unpack("=i", payload[:4])[0]
    if code < 0:
        return None
    extack = None
    try:
        if flags & 0x200:
            tlvs = _nest(rest)
            if 1 in tlvs:
                extack = _string(tlvs[1])
        elif rest:
            return None
    except Refused:
        return None
    return code, extack


# --- the check ----------------------------------------------------------------------------------

def _raw(text: str | None) -> bytes | None:
    return None if text is None else text.encode("utf-8", "surrogateescape")


def _view(link: codec.Link) -> dict:
    return {"index": link.index, "family": link.family, "flags": link.flags,
            "name": _raw(link.name), "mtu": link.mtu, "master": link.master, "link": link.link,
            "address": link.address, "kind": _raw(link.kind), "slave_kind": _raw(link.slave_kind),
            "vlan_filtering": link.vlan_filtering, "port": link.port}


def _encode(link: codec.Link) -> bytes:
    """The link as a kernel would describe it, with the codec's encoders."""
    attrs = [codec.string(codec.IFLA_IFNAME, link.name), codec.u32(codec.IFLA_MTU, link.mtu),
             codec.u32(codec.IFLA_MASTER, link.master), codec.u32(codec.IFLA_LINK, link.link),
             codec.attr(codec.IFLA_ADDRESS, link.address)]
    info = []
    if link.kind is not None:
        info.append(codec.string(codec.IFLA_INFO_KIND, link.kind))
        if link.kind == "bridge":
            info.append(codec.nested(codec.IFLA_INFO_DATA,
                                     codec.u8(codec.IFLA_BR_VLAN_FILTERING, link.vlan_filtering)))
    port = b"".join(codec.u8(k, v) for k, v in sorted((link.port or {}).items()))
    if link.slave_kind is not None:
        info.append(codec.string(codec.IFLA_INFO_SLAVE_KIND, link.slave_kind))
        if link.slave_kind == "bridge" and link.port is not None:
            info.append(codec.nested(codec.IFLA_INFO_SLAVE_DATA, port))
    if info:
        attrs.append(codec.nested(codec.IFLA_LINKINFO, *info))
    if link.family == codec.AF_BRIDGE and link.port is not None:
        attrs.append(codec.nested(codec.IFLA_PROTINFO, port))
    return codec.ifinfomsg(link.index, family=link.family, flags=link.flags) + b"".join(attrs)


def oracle_address(payload: bytes) -> dict | None:
    """An RTM_NEWADDR payload: ifaddrmsg, then IFA_LOCAL (else IFA_ADDRESS) of the family's
    size, IFA_FLAGS (4 bytes) over ifa_flags."""
    if len(payload) < 8:
        return None
    family, prefixlen, flags, scope, index = struct.unpack("=BBBBI", payload[:8])
    size = {2: 4, 10: 16}.get(family)
    if size is None or index < 1 or prefixlen > size * 8:
        return None
    try:
        attrs = _nest(payload[8:])
        address = attrs.get(2, attrs.get(1))
        if address is None or len(address) != size:
            return None
        if 8 in attrs:
            flags = _number(attrs[8], 4)
    except Refused:
        return None
    return {"family": family, "prefixlen": prefixlen, "flags": flags, "scope": scope,
            "index": index, "address": address}


def _address_view(found: codec.Address) -> dict:
    return {"family": found.family, "prefixlen": found.prefixlen, "flags": found.flags,
            "scope": found.scope, "index": found.index, "address": found.address}


def _check_message(msg: codec.Message) -> None:
    if msg.kind == codec.RTM_NEWADDR:
        expected_address = oracle_address(msg.payload)
        try:
            found = codec.parse_address(msg.payload)
        except codec.CodecError:
            assert expected_address is None, ("refused a well-formed address", msg.payload)
            return
        assert _address_view(found) == expected_address, ("address", _address_view(found))
        again = codec.parse_address(codec.address_change(
            found.family, found.address, found.prefixlen, found.index, flags=found.flags))
        assert (again.family, again.address, again.prefixlen, again.index) == (
            found.family, found.address, found.prefixlen, found.index), ("round trip", again)
    elif msg.kind in (codec.RTM_NEWLINK, codec.RTM_DELLINK):
        expected = oracle_link(msg.payload)
        try:
            link = codec.parse_link(msg.payload)
        except codec.CodecError:
            assert expected is None, ("refused a well-formed link", msg.payload)
            return
        assert _view(link) == expected, ("link", _view(link), expected)
        if len(link.address) <= 0xFFFF - 8 and all(v < 256 for v in (link.port or {}).values()):
            again = codec.parse_link(_encode(link))
            assert _view(again) == _view(link), ("round trip", _view(again), _view(link))
    elif msg.kind in (codec.NLMSG_ERROR, codec.NLMSG_DONE):
        expected_outcome = oracle_outcome(msg.kind, msg.flags, msg.payload)
        try:
            outcome = codec.parse_outcome(msg)
        except codec.CodecError:
            assert expected_outcome is None, ("refused an acknowledgement", msg.payload)
            return
        assert (outcome.code, _raw(outcome.extack)) == expected_outcome
        assert msg.kind != codec.NLMSG_ERROR or len(msg.payload) >= 20


def _oracle_feed(expected: list | None, seq: int, port: int,
                 payloads: list[bytes]) -> tuple | None:
    """What reading one more datagram makes of an unfinished answer: (payloads, end), end being
    None (more to come), -1 (overrun) or (errno, extack); None if it must be refused."""
    if expected is None:
        return None
    payloads = list(payloads)
    end = None
    for kind, flags, msg_seq, msg_port, payload in expected:
        if msg_port != port:
            return None
        if msg_seq != seq:
            continue
        if end is not None:
            return None  # a message after the end
        if kind in (codec.NLMSG_ERROR, codec.NLMSG_DONE):
            end = oracle_outcome(kind, flags, payload)
            if end is None:
                return None
        elif kind == codec.NLMSG_OVERRUN:
            end = -1
        elif kind != codec.NLMSG_NOOP:
            payloads.append(payload)
    return payloads, end


def oracle_notified(messages: list | None, wanted: int, skipped: int) -> list[dict] | None:
    """The links of a link notification's messages of type `wanted` (RTM_DELLINK: the
    deletions; RTM_NEWLINK: the changes), those of type `skipped` unread; None if it must be
    refused."""
    if messages is None:
        return None
    links = []
    for kind, _, _, _, payload in messages:
        if kind == wanted:
            link = oracle_link(payload)
            if link is None:
                return None
            links.append(link)
        elif kind != skipped:
            return None
    return links


def _check_notification(gram: bytes, expected: list | None) -> None:
    for read, wanted, skipped in ((codec.link_deletions, codec.RTM_DELLINK, codec.RTM_NEWLINK),
                                  (codec.link_changes, codec.RTM_NEWLINK, codec.RTM_DELLINK)):
        links_wanted = oracle_notified(expected, wanted, skipped)
        try:
            links = read(gram)
        except codec.CodecError:
            assert links_wanted is None, ("refused a well-formed notification", gram)
            continue
        assert links_wanted is not None, ("accepted a notification it must refuse", gram)
        assert [_view(link) for link in links] == links_wanted


def check(data: bytes) -> None:
    seq, port, grams = datagrams(data)
    answer = codec.Answer(seq, port)
    payloads: list[bytes] = []
    for gram in grams:
        expected = oracle_messages(gram)
        _check_notification(gram, expected)
        try:
            messages = codec.split_messages(gram)
        except codec.CodecError:
            assert expected is None, ("refused a well-formed datagram", gram)
        else:
            assert [(m.kind, m.flags, m.seq, m.port, m.payload) for m in messages] == expected
            for msg in messages:
                _check_message(msg)
        step = _oracle_feed(expected, seq, port, payloads)
        try:
            complete = answer.feed(gram)
        except codec.CodecError:
            assert step is None, ("refused a datagram of the answer", gram)
            return  # the transport gives up on the request
        assert step is not None, ("accepted a datagram it must refuse", gram)
        payloads, end = step
        assert answer.payloads == payloads
        assert complete == answer.done == (end is not None)
        assert answer.overrun == (end == -1)
        if end is not None and end != -1:
            assert answer.outcome is not None
            assert (answer.outcome.code, _raw(answer.outcome.extack)) == end
        if complete:
            return  # the transport reads no further


if __name__ == "__main__":
    common.fuzz_main(check)
