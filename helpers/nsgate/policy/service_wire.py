"""The packets between the helpers and nsgated, version 1 (nsgate-protocol(7)): pure encoding and
strict decoding, bytes in, values or a WireError out. The C launcher builds the same request
packet; this module is the reference for both sides and for the fuzzer."""

import struct

MAGIC = b"nsgate"
VERSION = 1
MAX_PACKET = 65536
MAX_ARGS = 4096
HELPERS = ("newuidmap", "newgidmap", "getsubids", "lxc-user-nic")
NOT_TRIED = -1
_HEADER = struct.Struct("=6sHIIi")  # magic, version, helper | status, argc | out, target | err
_ANSWER = struct.Struct("=6sHiII")
_VERSIONED = struct.Struct("=6sH")  # what every version of the protocol starts with


class WireError(Exception):
    """A packet that breaks the protocol; the message says which rule."""


class Request:
    __slots__ = ("args", "helper", "target")

    def __init__(self, helper: str, args: list[bytes], target: int) -> None:
        self.helper = helper
        self.args = args
        self.target = target  # 0: a descriptor is attached; > 0: the client's errno; -1: none


def _digits(text: bytes, limit: int = 10) -> bool:
    return (0 < len(text) <= limit and text.isdigit() and text.isascii()
            and text[0:1] != b"0")


def target_argument(helper: str, args: list[bytes]) -> int | None:
    """The index of the argument a descriptor stands for, by the client's rule (TARGET in the
    protocol page): None when the client does not open one."""
    if helper in ("newuidmap", "newgidmap") and args:
        first = args[0]
        if _digits(first) or (first.startswith(b"fd:") and _digits(first[3:])
                              and int(first[3:]) > 2):
            return 0
        return None
    if helper == "lxc-user-nic" and len(args) >= 4:
        if args[0] == b"create" and _digits(args[3]):
            return 3
        if args[0] == b"delete":
            return 3
    return None


def decode_request(packet: bytes, fds: int) -> Request:
    """The request in `packet`, which arrived with `fds` descriptors."""
    if len(packet) > MAX_PACKET:
        raise WireError("the request is longer than 65536 bytes")
    if len(packet) < _VERSIONED.size:
        raise WireError("the request is shorter than its header")
    magic, version = _VERSIONED.unpack_from(packet)
    if magic != MAGIC:
        raise WireError("the request does not start with the protocol's magic")
    if version != VERSION:  # judged before the rest: another version may have another header
        raise WireError(f"the request is of protocol version {version}; nsgated speaks "
                        f"version {VERSION}: the helpers and the service are of different "
                        "installs")
    if len(packet) < _HEADER.size:
        raise WireError("the request is shorter than its header")
    _, _, helper_id, argc, target = _HEADER.unpack_from(packet)
    if helper_id >= len(HELPERS):
        raise WireError(f"unknown helper number {helper_id}")
    if argc > MAX_ARGS:
        raise WireError("the request has more than 4096 arguments")
    body = packet[_HEADER.size:]
    if argc == 0:
        if body:
            raise WireError("the request has bytes after its last argument")
        args: list[bytes] = []
    else:
        if not body.endswith(b"\0"):
            raise WireError("the request's last argument is not terminated")
        args = body[:-1].split(b"\0")
        if len(args) != argc:
            raise WireError("the request's argument count does not match its arguments")
    helper = HELPERS[helper_id]
    if target < NOT_TRIED or target > 4095:
        raise WireError("the request's target field is out of range")
    expected = target_argument(helper, args) is not None
    if fds > 1:
        raise WireError("the request carries more than one descriptor")
    if (target == 0) != (fds == 1):
        raise WireError("the request's target field does not match the descriptors it carries")
    if expected == (target == NOT_TRIED):
        raise WireError("the request's target field does not match its arguments")
    return Request(helper, args, target)


def encode_request(helper: str, args: list[bytes], target: int) -> bytes:
    body = b"".join(arg + b"\0" for arg in args)
    return _HEADER.pack(MAGIC, VERSION, HELPERS.index(helper), len(args), target) + body


def encode_answer(status: int, out: bytes, err: bytes) -> bytes:
    """The answer; texts cut so the packet fits (a helper's texts are far shorter)."""
    room = MAX_PACKET - _ANSWER.size
    out = out[:room]
    err = err[:room - len(out)]
    return _ANSWER.pack(MAGIC, VERSION, status, len(out), len(err)) + out + err


def decode_answer(packet: bytes) -> tuple[int, bytes, bytes]:
    if len(packet) < _ANSWER.size or len(packet) > MAX_PACKET:
        raise WireError("the answer's length is out of bounds")
    magic, version, status, out_len, err_len = _ANSWER.unpack_from(packet)
    if magic != MAGIC or version != VERSION or status not in (0, 1):
        raise WireError("the answer's header is not valid")
    if _ANSWER.size + out_len + err_len != len(packet):
        raise WireError("the answer's lengths do not fill it exactly")
    out = packet[_ANSWER.size:_ANSWER.size + out_len]
    return status, out, packet[_ANSWER.size + out_len:]
