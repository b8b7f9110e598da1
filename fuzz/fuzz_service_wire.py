#!/usr/bin/env python3
"""nsgated's framing (nsgate.policy.service_wire): decode_request and decode_answer, on packets
from any process that can connect, or from a service the client did not choose.

Input: one control byte (its low 2 bits: how many descriptors came with the packet, 0 to 3),
then the packet.
Properties: no exception but WireError, whose message is one non-empty line, and names the
version the packet claims when that is not the service's; a request is accepted exactly when
the rules of nsgate-protocol(7) (REQUEST, TARGET) accept it, with the same helper, arguments
and target, and encodes back to the same bytes; likewise an answer (ANSWER).
"""

from __future__ import annotations

import re
import struct
import sys

from fuzz import common

with common.instrumented(__name__):
    from nsgate.policy import service_wire as wire

HELPERS = ("newuidmap", "newgidmap", "getsubids", "lxc-user-nic")
_PID = re.compile(rb"[1-9][0-9]{0,9}")  # TARGET: 1 to 10 decimal digits, no leading zero


# --- oracles, from nsgate-protocol(7) -------------------------------------------------------------


def _opens_a_descriptor(helper: str, args: list[bytes]) -> bool:
    """TARGET: whether the client opens the argument the descriptor stands for."""
    if helper in ("newuidmap", "newgidmap"):
        if not args:
            return False
        first = args[0]
        if first.startswith(b"fd:"):
            return bool(_PID.fullmatch(first[3:])) and int(first[3:]) > 2
        return bool(_PID.fullmatch(first))
    if helper == "lxc-user-nic" and len(args) >= 4:
        return (args[0] == b"create" and bool(_PID.fullmatch(args[3]))) or args[0] == b"delete"
    return False


def oracle_request(packet: bytes, fds: int) -> tuple[str, list[bytes], int] | None:
    if not 20 <= len(packet) <= 65536 or packet[:6] != b"nsgate":
        return None
    version, helper, argc = (int.from_bytes(packet[at:at + size], sys.byteorder)
                             for at, size in ((6, 2), (8, 4), (12, 4)))
    target = int.from_bytes(packet[16:20], sys.byteorder, signed=True)
    body = packet[20:]
    if version != 1 or helper > 3 or argc > 4096:
        return None
    if argc == 0:
        if body:
            return None
        args = []
    else:
        if body[-1:] != b"\0":
            return None
        args = body[:-1].split(b"\0")
        if len(args) != argc:
            return None
    if not -1 <= target <= 4095 or fds > 1 or (target == 0) != (fds == 1):
        return None
    if _opens_a_descriptor(HELPERS[helper], args) != (target != -1):
        return None
    return HELPERS[helper], args, target


def oracle_answer(packet: bytes) -> tuple[int, bytes, bytes] | None:
    if not 20 <= len(packet) <= 65536 or packet[:8] != b"nsgate" + struct.pack("=H", 1):
        return None
    status, out, err = struct.unpack("=iII", packet[8:20])
    if status not in (0, 1) or 20 + out + err != len(packet):
        return None
    return status, packet[20:20 + out], packet[20 + out:]


def _one_line(error: wire.WireError) -> str:
    text = str(error)
    assert text and "\n" not in text, repr(text)
    return text


def check(data: bytes) -> None:
    fds, packet = (data[0] & 3 if data else 0), data[1:]
    expected = oracle_request(packet, fds)
    try:
        request = wire.decode_request(packet, fds)
    except wire.WireError as error:
        text = _one_line(error)
        assert expected is None, ("refused a valid request", packet, fds, text)
        if len(packet) >= 8 and packet[:6] == b"nsgate":
            version = int.from_bytes(packet[6:8], sys.byteorder)
            if version != 1 and len(packet) <= 65536:
                assert f"version {version}" in text, (packet, text)
    else:
        got = (request.helper, request.args, request.target)
        assert got == expected, ("accepted", packet, fds, got, expected)
        assert wire.encode_request(*got) == packet
        assert wire.target_argument(request.helper, request.args) is not None or (
            request.target == -1)

    expected_answer = oracle_answer(packet)
    try:
        answer = wire.decode_answer(packet)
    except wire.WireError as error:
        _one_line(error)
        assert expected_answer is None, ("refused a valid answer", packet)
    else:
        assert answer == expected_answer, ("accepted", packet, answer, expected_answer)
        assert wire.encode_answer(*answer) == packet


if __name__ == "__main__":
    common.fuzz_main(check)
