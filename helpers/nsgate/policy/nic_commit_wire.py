"""The messages between an nsgated worker and the nic committer (system/nic_committer.py), one
SOCK_SEQPACKET packet each: a kind byte, then fields, each a 2-byte big-endian length and that
many bytes, filling the packet exactly. Bytes in, values out, every bound checked: no pickle, and
a decoder that accepts only what the encoder makes of values the helper itself can hold.

worker -> committer   INTENT   uid, flags, type, bridge, then (token, number) per grant
                      DONE / FAILED   the create of the reserved nic succeeded / failed
committer -> worker   RESERVED host name, private bridge name ("" if none), its ifindex;
                               the database lock rides along as the one SCM_RIGHTS descriptor
                      REFUSED  the refusal's first line, then its details (UTF-8)
                      FINISHED the batch is written out and its lock released (after FAILED)
"""

from nsgate.errors import Refusal
from nsgate.policy import nic_batch, usernet
from nsgate.policy.nicnames import valid_ifname

MAX_PACKET = 65536
MAX_GRANTS = 512  # 512 grants of 99-byte tokens fit a packet
MAX_TEXT = 4096
MAX_DETAILS = 16

INTENT = b"I"
DONE = b"D"
FAILED = b"F"
RESERVED = b"R"
REFUSED = b"X"
FINISHED = b"K"

_PRIVATE = 1
_GUARDED = 2
_NO_BRIDGE = b"none"
_BLANKS = b" \t\n"


class WireError(ValueError):
    """A packet that is not a message of this protocol."""


def _u32(value: int) -> bytes:
    return value.to_bytes(4, "big")


def _i32(value: int) -> bytes:
    return value.to_bytes(4, "big", signed=True)


def pack(kind: bytes, *fields: bytes) -> bytes:
    out = [kind]
    for field in fields:
        if len(field) > 0xFFFF:
            raise WireError("field too long")
        out += [len(field).to_bytes(2, "big"), field]
    packet = b"".join(out)
    if len(packet) > MAX_PACKET:
        raise WireError("message too long")
    return packet


def unpack(packet: bytes) -> tuple[bytes, list[bytes]]:
    """The kind and the fields of a packet; WireError if it is not exactly that."""
    if not 1 <= len(packet) <= MAX_PACKET:
        raise WireError("empty or oversized packet")
    fields = []
    pos = 1
    while pos < len(packet):
        if pos + 2 > len(packet):
            raise WireError("truncated field length")
        size = int.from_bytes(packet[pos:pos + 2], "big")
        pos += 2
        if pos + size > len(packet):
            raise WireError("truncated field")
        fields.append(packet[pos:pos + size])
        pos += size
    return packet[:1], fields


def _int(field: bytes, *, signed: bool = False) -> int:
    if len(field) != 4:
        raise WireError("an integer field is 4 bytes")
    return int.from_bytes(field, "big", signed=signed)


def _expect(packet: bytes, kind: bytes) -> list[bytes]:
    found, fields = unpack(packet)
    if found != kind:
        raise WireError(f"expected message {kind!r}, got {found!r}")
    return fields


def valid_token(token: bytes) -> bool:
    """An owner token as usernet.parse reads one and the nic database can hold."""
    return (0 < len(token) <= usernet.FIELD_MAX and not any(c in token for c in _BLANKS)
            and usernet.recordable(token))


def valid_type(nic_type: bytes) -> bool:
    """A type as the command line accepts it (policy/nic_request.py)."""
    return 0 < len(nic_type) <= 99 and all(0x20 < c < 0x7F for c in nic_type)


def encode_intent(intent: nic_batch.Intent) -> bytes:
    if len(intent.grants) > MAX_GRANTS:
        raise WireError("too many grants")
    flags = (_PRIVATE if intent.private else 0) | (_GUARDED if intent.guarded else 0)
    fields = [_u32(intent.uid), bytes((flags,)), intent.nic_type, intent.bridge]
    for grant in intent.grants:
        fields += [grant.token, _i32(grant.number)]
    return pack(INTENT, *fields)


def decode_intent(packet: bytes) -> nic_batch.Intent:
    fields = _expect(packet, INTENT)
    if len(fields) < 6 or len(fields) % 2:
        raise WireError("an intent has uid, flags, type, bridge and at least one grant")
    uid, flags, nic_type, bridge = _int(fields[0]), fields[1], fields[2], fields[3]
    if uid == 0xFFFFFFFF or len(flags) != 1 or flags[0] & ~(_PRIVATE | _GUARDED):
        raise WireError("bad uid or flags")
    if not valid_type(nic_type) or not (bridge == _NO_BRIDGE or valid_ifname(bridge)):
        raise WireError("bad type or bridge")
    pairs = fields[4:]
    if len(pairs) // 2 > MAX_GRANTS:
        raise WireError("too many grants")
    grants = []
    for position in range(0, len(pairs), 2):
        token = pairs[position]
        if not valid_token(token):
            raise WireError("bad owner token")
        grants.append(usernet.Grant(token, nic_type, bridge, _int(pairs[position + 1],
                                                                 signed=True), position // 2))
    return nic_batch.Intent(uid, nic_type, bridge, grants, private=bool(flags[0] & _PRIVATE),
                            guarded=bool(flags[0] & _GUARDED))


def encode_reserved(host: bytes, bridge: bytes, bridge_index: int) -> bytes:
    return pack(RESERVED, host, bridge, _u32(bridge_index))


def decode_reserved(packet: bytes) -> tuple[bytes, bytes, int]:
    """(host name, private bridge name or b"", its ifindex or 0)."""
    fields = _expect(packet, RESERVED)
    if len(fields) != 3:
        raise WireError("a reservation has three fields")
    host, bridge, index = fields[0], fields[1], _int(fields[2])
    if not valid_ifname(host):
        raise WireError("bad host name")
    if (bridge == b"") != (index == 0) or (bridge and not valid_ifname(bridge)):
        raise WireError("bad private bridge")
    return host, bridge, index


def encode_refusal(refusal: Refusal) -> bytes:
    texts = [refusal.first, *refusal.details[:MAX_DETAILS]]
    return pack(REFUSED, *(text.encode("utf-8", "surrogateescape")[:MAX_TEXT]
                           for text in texts))


def decode_refusal(packet: bytes) -> Refusal:
    fields = _expect(packet, REFUSED)
    if not 1 <= len(fields) <= 1 + MAX_DETAILS or any(len(f) > MAX_TEXT for f in fields):
        raise WireError("bad refusal")
    texts = [field.decode("utf-8", "surrogateescape") for field in fields]
    return Refusal(texts[0], *texts[1:])


def decode_report(packet: bytes) -> bool:
    """True for DONE, False for FAILED."""
    if packet not in (DONE, FAILED):
        raise WireError("expected DONE or FAILED")
    return packet == DONE
