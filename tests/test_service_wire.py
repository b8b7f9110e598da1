"""nsgated's packets (nsgate.policy.service_wire, nsgate-protocol(7)): pure, no privilege. The
layout is written out here from the man page, byte by byte, not taken from the module."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nsgate.policy import service_wire as wire


def request(helper: int, args: list[bytes], target: int, *, magic: bytes = b"nsgate",
            version: int = 1, argc: int | None = None) -> bytes:
    return (magic + struct.pack("=HIIi", version, helper, len(args) if argc is None else argc,
                                target) + b"".join(arg + b"\0" for arg in args))


MAP = [b"1234", b"0", b"23001", b"1"]


@pytest.mark.parametrize(("helper", "args", "target", "fds"), [
    ("newuidmap", MAP, 0, 1),
    ("newgidmap", [b"fd:3", b"0", b"23001", b"1"], 0, 1),
    ("newuidmap", MAP, 3, 0),                       # the client's open failed with ESRCH
    ("newuidmap", [b"0123", b"0", b"1", b"1"], -1, 0),  # not a pid: the client does not try
    ("newuidmap", [b"fd:2", b"0", b"1", b"1"], -1, 0),  # fd:N is above 2
    ("newuidmap", [], -1, 0),
    ("getsubids", [b"-g", b"nsgt-alice"], -1, 0),
    ("getsubids", [b""], -1, 0),                    # an empty argument is an argument
    ("lxc-user-nic", [b"create", b"/var/lib/lxc", b"c1", b"42", b"veth", b"br0"], 0, 1),
    ("lxc-user-nic", [b"create", b"/var/lib/lxc", b"c1", b"+42", b"veth", b"br0"], -1, 0),
    ("lxc-user-nic", [b"delete", b"/var/lib/lxc", b"c1", b"", b"veth", b"br0", b"v"], 2, 0),
    ("lxc-user-nic", [b"list"], -1, 0),
])
def test_valid_requests_decode_and_encode_back(helper, args, target, fds):
    packet = request(wire.HELPERS.index(helper), args, target)
    decoded = wire.decode_request(packet, fds)
    assert (decoded.helper, decoded.args, decoded.target) == (helper, args, target)
    assert wire.encode_request(helper, args, target) == packet


@pytest.mark.parametrize(("packet", "fds", "reason"), [
    (b"", 0, "the request is shorter than its header"),
    (b"nsgate\x01", 0, "the request is shorter than its header"),
    (request(0, MAP, 0)[:19], 1, "the request is shorter than its header"),
    (request(0, MAP, 0, magic=b"NSGATE"), 1, "the request does not start with the protocol's "
     "magic"),
    (request(0, MAP, 0, version=0), 1, "the request is of protocol version 0; nsgated speaks "
     "version 1: the helpers and the service are of different installs"),
    (request(0, MAP, 0, version=2), 1, "the request is of protocol version 2"),
    (b"nsgate" + struct.pack("=H", 2), 0, "the request is of protocol version 2"),
    (b"nsgate" + struct.pack("=H", 3) + b"\0" * 4, 0, "the request is of protocol version 3"),
    (request(4, MAP, 0), 1, "unknown helper number 4"),
    (request(0, MAP, 0, argc=4097), 1, "the request has more than 4096 arguments"),
    (request(0, MAP, 0, argc=5), 1, "the request's argument count does not match its "
     "arguments"),
    (request(0, MAP, 0, argc=3), 1, "the request's argument count does not match"),
    (request(0, MAP, 0)[:-1], 1, "the request's last argument is not terminated"),
    (request(0, [], -1) + b"x", 0, "the request has bytes after its last argument"),
    (request(0, MAP, -2), 0, "the request's target field is out of range"),
    (request(0, MAP, 4096), 0, "the request's target field is out of range"),
    (request(0, MAP, 0), 2, "the request carries more than one descriptor"),
    (request(0, MAP, 0), 0, "the request's target field does not match the descriptors"),
    (request(0, MAP, -1), 1, "the request's target field does not match the descriptors"),
    (request(0, MAP, 13), 1, "the request's target field does not match the descriptors"),
    (request(0, MAP, -1), 0, "the request's target field does not match its arguments"),
    (request(2, [b"nsgt-alice"], 0), 1, "the request's target field does not match its "
     "arguments"),
    (request(0, [b"x" * 65600], -1), 0, "the request is longer than 65536 bytes"),
])
def test_broken_requests_are_refused_with_the_rule(packet, fds, reason):
    with pytest.raises(wire.WireError) as refused:
        wire.decode_request(packet, fds)
    assert str(refused.value).startswith(reason)
    assert "\n" not in str(refused.value)


def test_a_request_of_exactly_65536_bytes_is_read():
    args = [*MAP, b"x" * (65536 - 20 - sum(len(a) + 1 for a in MAP) - 1)]
    packet = request(0, args, 0)
    assert len(packet) == 65536
    assert wire.decode_request(packet, 1).args == args


@pytest.mark.parametrize(("helper", "args", "index"), [
    ("newuidmap", [b"1"], 0),
    ("newuidmap", [b"4294967295"], 0),      # 10 digits: the client tries (and fails)
    ("newuidmap", [b"12345678901"], None),  # 11 digits: it does not
    ("newuidmap", [b"fd:3"], 0),
    ("newuidmap", [b"fd:03"], None),
    ("newuidmap", [b"fd:"], None),
    ("newgidmap", [b"-1"], None),
    ("newgidmap", [b"\xd9\xa1"], None),     # a digit, but not ASCII
    ("getsubids", [b"123"], None),
    ("lxc-user-nic", [b"create", b"p", b"n", b"7"], 3),
    ("lxc-user-nic", [b"create", b"p", b"n"], None),
    ("lxc-user-nic", [b"delete", b"p", b"n", b"/proc/7/ns/net"], 3),
    ("lxc-user-nic", [b"Create", b"p", b"n", b"7"], None),
])
def test_which_argument_the_descriptor_stands_for(helper, args, index):
    assert wire.target_argument(helper, args) == index


def test_answers_decode_and_encode_back():
    packet = b"nsgate" + struct.pack("=HiII", 1, 0, 3, 5) + b"out" + b"err\n!"
    assert wire.decode_answer(packet) == (0, b"out", b"err\n!")
    assert wire.encode_answer(0, b"out", b"err\n!") == packet


def test_an_answer_too_long_is_cut_to_fit():
    packet = wire.encode_answer(1, b"o" * 40000, b"e" * 40000)
    assert len(packet) == 65536
    status, out, err = wire.decode_answer(packet)
    assert (status, out) == (1, b"o" * 40000) and err == b"e" * (65536 - 20 - 40000)


@pytest.mark.parametrize("packet", [
    b"",
    b"nsgate" + struct.pack("=HiII", 1, 0, 0, 0) + b"x",       # a byte beyond the lengths
    b"nsgate" + struct.pack("=HiII", 1, 0, 1, 0),              # one short
    b"nsgate" + struct.pack("=HiII", 2, 0, 0, 0),
    b"nsgatE" + struct.pack("=HiII", 1, 0, 0, 0),
    b"nsgate" + struct.pack("=HiII", 1, 2, 0, 0),              # status 0 or 1 only
    b"nsgate" + struct.pack("=HiII", 1, -1, 0, 0),
    b"nsgate" + struct.pack("=HiII", 1, 0, 0xFFFFFFFF, 0xFFFFFFFF),
    b"nsgate" + struct.pack("=HiII", 1, 0, 65517, 0) + b"x" * 65517,
])
def test_broken_answers_are_refused(packet):
    with pytest.raises(wire.WireError):
        wire.decode_answer(packet)


_ARGS = st.lists(st.binary(max_size=12).filter(lambda arg: b"\0" not in arg), max_size=8)


@given(helper=st.sampled_from(wire.HELPERS), args=_ARGS, errno=st.integers(1, 4095),
       attach=st.booleans())
def test_every_request_a_client_builds_reads_back(helper, args, errno, attach):
    """What the launchers' rule sends (a descriptor, or the errno of the open that failed, where
    the rule opens one; -1 otherwise) decodes to itself."""
    opened = wire.target_argument(helper, args) is not None
    target = (0 if attach else errno) if opened else -1
    fds = 1 if target == 0 else 0
    decoded = wire.decode_request(wire.encode_request(helper, args, target), fds)
    assert (decoded.helper, decoded.args, decoded.target) == (helper, args, target)
