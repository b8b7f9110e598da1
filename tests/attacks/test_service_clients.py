"""S1: hostile direct clients of nsgated (nsgate-protocol(7)). Anyone may connect to the service's
socket and send any bytes, any descriptors, with any credentials a process can have: each
probe here is one such request, made on a valid-looking request of the helper's (the target,
container or listing the attack contract checks), and must be refused with a clear one-line
reason and leave the state untouched. At the end the same request, sent properly, is carried
out: the attacks broke nothing in the service.

tests/test_service_hostile.py covers the same ground in depth (floods, silent clients, workers
killed or hung); this class counts the attacks per helper in the suite's report."""

from __future__ import annotations

import struct
from collections.abc import Callable

import pytest
from nsgate.policy import service_wire

from tests.attacks.conftest import Request, Result, assert_clear_error, count_probe, verify
from tests.service_support import ask
from tests.support import ALICE, BOB

pytestmark = pytest.mark.attack("S1 hostile service clients")

HEADER = struct.Struct("=6sHIIi")


@pytest.fixture
def service(fresh_nsgated):
    return fresh_nsgated()


def _fields(packet: bytes) -> list:
    return list(HEADER.unpack_from(packet))


def _with(packet: bytes, index: int, value: object) -> bytes:
    fields = _fields(packet)
    fields[index] = value
    return HEADER.pack(*fields) + packet[HEADER.size:]


# Forgeries of the request's own packet (the client attaches the descriptors the launchers'
# rule opens, as for the real request).
FRAMES: dict[str, Callable[[bytes], bytes]] = {
    "wrong magic": lambda packet: b"NSGATE" + packet[6:],
    "version 2": lambda packet: _with(packet, 1, 2),
    "version 0, header cut": lambda packet: _with(packet, 1, 0)[:8],
    "unknown helper": lambda packet: _with(packet, 2, 7),
    "argc one more": lambda packet: _with(packet, 3, _fields(packet)[3] + 1),
    "argc one less": lambda packet: _with(packet, 3, _fields(packet)[3] - 1),
    "argc beyond 4096": lambda packet: _with(packet, 3, 1 << 31),
    "unterminated": lambda packet: packet[:-1],
    "header only": lambda packet: packet[:HEADER.size],
    "empty": lambda packet: b"",
    "target -2": lambda packet: _with(packet, 4, -2),
}


def _packet(request: Request) -> tuple[bytes, bool]:
    """The request's packet as the launchers build it, and whether it carries a descriptor."""
    args = [arg.encode() for arg in request.args]
    opened = service_wire.target_argument(request.prog, args) is not None
    return service_wire.encode_request(request.prog, args, 0 if opened else -1), opened


def _refused(request: Request, answer: dict) -> None:
    """One probe: refused with a clear reason (the service's or the helper's), nothing done."""
    count_probe()
    assert answer.get("status") == 1, answer
    err = answer["err"].encode()
    prog = "nsgated" if err.startswith(b"nsgated: ") else request.prog
    assert_clear_error(prog, err, request.known)
    assert answer["out"] == "", answer
    assert request.outcome() in (None, "untouched"), answer


def _served(request: Request) -> None:
    answer = ask(ALICE, request.prog, request.args)
    count_probe()
    result = Result(answer["status"], answer["out"].encode(), answer["err"].encode())
    assert verify(request, result) == "done", answer


def test_forged_frames(helper, scenario, service):
    request = scenario.request()
    packet, _ = _packet(request)
    for name, forge in FRAMES.items():
        answer = ask(ALICE, request.prog, request.args, raw=forge(packet).hex())
        assert answer["err"].startswith("nsgated: "), (name, answer)
        _refused(request, answer)
    _served(request)


def test_descriptors_of_the_wrong_count_or_kind(helper, scenario, service):
    """Two descriptors; one too many or too few for the target field; a regular file, a
    socket or a directory off procfs where the target's descriptor belongs."""
    request = scenario.request()
    _, opened = _packet(request)
    probes: list[dict] = [
        {"hand": ["file:/etc/passwd", "file:/etc/passwd"], "target": 0},
        {"hand": ["file:/etc/passwd"], "target": -1},
        {"hand": ["file:/etc/passwd"], "target": 2},
        {"open_target": False, "target": 0},
    ]
    if opened:  # the helper's own descriptor, of the wrong kind
        probes += [{"open_target": False, "hand": [kind], "target": 0}
                   for kind in ("file:/etc/passwd", "socket:", "dir:/", "path:/etc/passwd")]
    else:
        probes.append({"open_target": False, "hand": ["dir:/proc/self"], "target": 0})
    for spec in probes:
        _refused(request, ask(ALICE, request.prog, request.args, **spec))
    _served(request)


def test_callers_that_are_not_simply_a_user(helper, scenario, service):
    """A set-id process (alice's real uid, bob's effective one) and alice's own user namespace
    (her uid as root there) ask for alice's request."""
    request = scenario.request()
    _refused(request, ask(None, request.prog, request.args,
                          connect_as=[[ALICE.uid, BOB.uid]]))
    _refused(request, ask(ALICE, request.prog, request.args,
                          wrap=["unshare", "--user", "--map-root-user", "--"]))
    _served(request)
