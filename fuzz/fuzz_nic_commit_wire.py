#!/usr/bin/env python3
"""The messages between nsgated's workers and its nic committer: nic_commit_wire's decoders.

Input: one packet, as a channel delivers it.
Properties: no exception but WireError; each decoder accepts exactly the packets the documented
format (the module's docstring) allows, read here by an oracle of its own: a kind byte, then
fields of a 2-byte big-endian length and that many bytes; an intent of uid (4 bytes, not
0xffffffff), flags (1 byte, bits 0 and 1 only), a type of 1 to 99 bytes 0x21-0x7e, a bridge
`none` or an interface name, then 1 to 512 (owner token, 4-byte number) pairs, a token being 1 to
99 bytes without blank, newline, \\r, \\v, \\f and not starting with `#`; a reservation of a host
interface name, a private bridge name or nothing, and a 4-byte index that is 0 exactly when there
is no bridge; a refusal of 1 to 17 texts of at most 4096 bytes; DONE and FAILED of their kind
byte alone. What decodes encodes back to the very same packet.
"""

from __future__ import annotations

from fuzz import common, oracles

with common.instrumented(__name__):
    from nsgate.errors import Refusal
    from nsgate.policy import nic_commit_wire as wire


def _fields(packet: bytes) -> tuple[bytes, list[bytes]] | None:
    if not 1 <= len(packet) <= 65536:
        return None
    fields, rest = [], packet[1:]
    while rest:
        if len(rest) < 2 or len(rest) - 2 < int.from_bytes(rest[:2], "big"):
            return None
        size = int.from_bytes(rest[:2], "big")
        fields.append(rest[2:2 + size])
        rest = rest[2 + size:]
    return packet[:1], fields


def _token(token: bytes) -> bool:
    return (1 <= len(token) <= 99 and not token.startswith(b"#")
            and not any(c in b" \t\n\r\x0b\x0c" for c in token))


def _intent(fields: list[bytes]) -> tuple | None:
    if len(fields) < 6 or len(fields) % 2 or (len(fields) - 4) // 2 > 512:
        return None
    uid, flags, nic_type, bridge = fields[:4]
    if len(uid) != 4 or uid == b"\xff" * 4 or len(flags) != 1 or flags[0] > 3:
        return None
    if not 1 <= len(nic_type) <= 99 or not all(0x21 <= c <= 0x7E for c in nic_type):
        return None
    if bridge != b"none" and not oracles.ifname(bridge):
        return None
    pairs = fields[4:]
    if not all(_token(t) and len(n) == 4 for t, n in zip(pairs[::2], pairs[1::2], strict=True)):
        return None
    grants = [(t, int.from_bytes(n, "big", signed=True))
              for t, n in zip(pairs[::2], pairs[1::2], strict=True)]
    return (int.from_bytes(uid, "big"), nic_type, bridge, bool(flags[0] & 1),
            bool(flags[0] & 2), grants)


def _reserved(fields: list[bytes]) -> tuple | None:
    if len(fields) != 3 or len(fields[2]) != 4 or not oracles.ifname(fields[0]):
        return None
    index = int.from_bytes(fields[2], "big")
    if fields[1] and not oracles.ifname(fields[1]):
        return None
    if (fields[1] == b"") != (index == 0):
        return None
    return fields[0], fields[1], index


def _refused(fields: list[bytes]) -> tuple | None:
    if not 1 <= len(fields) <= 17 or any(len(f) > 4096 for f in fields):
        return None
    return tuple(f.decode("utf-8", "surrogateescape") for f in fields)


def _attempt(decode, packet: bytes):
    try:
        return decode(packet)
    except wire.WireError:
        return None


def check(data: bytes) -> None:
    split = _fields(data)
    kind, fields = split if split is not None else (b"", [])

    intent = _attempt(wire.decode_intent, data)
    expected = _intent(fields) if kind == b"I" else None
    got = None if intent is None else (
        intent.uid, intent.nic_type, intent.bridge, intent.private, intent.guarded,
        [(g.token, g.number) for g in intent.grants])
    assert got == expected, ("intent", data, got, expected)
    if intent is not None:
        assert all((g.nic_type, g.bridge) == (intent.nic_type, intent.bridge)
                   for g in intent.grants)
        assert wire.encode_intent(intent) == data

    reserved = _attempt(wire.decode_reserved, data)
    expected = _reserved(fields) if kind == b"R" else None
    assert reserved == expected, ("reserved", data, reserved, expected)
    if reserved is not None:
        assert wire.encode_reserved(*reserved) == data

    refusal = _attempt(wire.decode_refusal, data)
    expected = _refused(fields) if kind == b"X" else None
    got = None if refusal is None else (refusal.first, *refusal.details)
    assert got == expected, ("refused", data, got, expected)
    if refusal is not None:
        assert isinstance(refusal, Refusal)
        assert wire.encode_refusal(refusal) == data

    report = _attempt(wire.decode_report, data)
    assert report == {b"D": True, b"F": False}.get(data), ("report", data, report)


if __name__ == "__main__":
    common.fuzz_main(check)
