"""nsgate.policy.netlink_codec from bytes: no kernel, no privilege. The bytes are written here
with `struct`, from <linux/netlink.h> and <linux/rtnetlink.h>, not with the codec's encoders.
(tests/test_netlink_pyroute2.py compares the codec with pyroute2; fuzz/fuzz_netlink.py fuzzes it.)
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from nsgate.policy import netlink_codec as codec
from nsgate.policy.netlink_codec import CodecError

ERROR, DONE, OVERRUN, NEWLINK = 2, 3, 4, 16
MULTI, CAPPED, ACK_TLVS, DUMP_INTR = 0x2, 0x100, 0x200, 0x10
PORT = 4242


def msg(kind: int, flags: int, seq: int, body: bytes, port: int = PORT) -> bytes:
    data = struct.pack("=IHHII", 16 + len(body), kind, flags, seq, port) + body
    return data + bytes(-len(data) % 4)


def nla(kind: int, payload: bytes) -> bytes:
    data = struct.pack("=HH", 4 + len(payload), kind) + payload
    return data + bytes(-len(data) % 4)


def u32(value: int) -> bytes:
    return struct.pack("=I", value)


def ifinfo(index: int, flags: int = 0, family: int = 0) -> bytes:
    return struct.pack("=BxHiII", family, 1, index, flags, 0)


def error(seq: int, code: int, *, text: bytes | None = None, echo: bytes | None = None) -> bytes:
    """An NLMSG_ERROR as the kernel writes it: capped (our header only) unless `echo`."""
    request = echo or struct.pack("=IHHII", 32, 18, 5, seq, 0)
    flags = (0 if echo else CAPPED) | (ACK_TLVS if text is not None else 0)
    body = struct.pack("=i", -code) + request + bytes(-len(request) % 4)
    if text is not None:
        body += nla(1, text + b"\0")
    return msg(ERROR, flags, seq, body)


LINK = ifinfo(7, flags=1) + nla(3, b"eth0\0") + nla(4, u32(1400)) + nla(10, u32(3))


# --- acknowledgements and errors --------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 3, 4, 16, 19])
def test_an_error_too_short_for_errno_and_header_is_refused_not_an_ack(size: int) -> None:
    """Issue 9 §1: the old reader took a missing errno for 0, the ACK."""
    data = msg(ERROR, 0, 1, bytes(size))
    (message,) = codec.split_messages(data)
    with pytest.raises(CodecError, match="cannot hold an errno"):
        codec.parse_outcome(message)
    answer = codec.Answer(1, PORT)
    with pytest.raises(CodecError):
        answer.feed(data)
    assert not answer.done and answer.outcome is None


def test_ack_error_and_the_kernels_text() -> None:
    answer = codec.Answer(5, PORT)
    assert answer.feed(error(5, 0))
    assert (answer.outcome.code, answer.outcome.extack, answer.payloads) == (0, None, [])
    answer = codec.Answer(6, PORT)
    assert answer.feed(error(6, 22, text=b"mtu less than device minimum"))
    assert (answer.outcome.code, answer.outcome.extack) == (22, "mtu less than device minimum")
    # without NETLINK_CAP_ACK the whole request is echoed (33 bytes here: unaligned)
    request = struct.pack("=IHHII", 33, 19, 5, 7, 0) + bytes(17)
    answer = codec.Answer(7, PORT)
    assert answer.feed(error(7, 19, text=b"no such device", echo=request))
    assert (answer.outcome.code, answer.outcome.extack) == (19, "no such device")


@pytest.mark.parametrize("data", [
    error(1, -5),  # a positive value in the errno field
    msg(ERROR, 0, 1, struct.pack("=i", -1) + struct.pack("=IHHII", 15, 18, 5, 1, 0)),  # echo < 16
    msg(ERROR, 0, 1, struct.pack("=i", -1) + struct.pack("=IHHII", 40, 18, 5, 1, 0)),  # overrun
    msg(ERROR, CAPPED, 1, struct.pack("=i", 0) + bytes(16) + b"junk"),  # junk, no ACK_TLVS flag
    msg(ERROR, CAPPED | ACK_TLVS, 1, struct.pack("=i", -1) + bytes(16) + nla(1, b"no nul")),
    msg(DONE, MULTI, 1, b"\0\0"),  # DONE without its errno
])
def test_malformed_acknowledgements_are_refused(data: bytes) -> None:
    with pytest.raises(CodecError):
        codec.Answer(1, PORT).feed(data)


# --- answers ------------------------------------------------------------------------------------


def test_a_dump_in_several_datagrams() -> None:
    other = ifinfo(8) + nla(3, b"eth1\0")
    answer = codec.Answer(9, PORT)
    assert not answer.feed(msg(NEWLINK, MULTI, 9, LINK) + msg(NEWLINK, MULTI, 9, other))
    assert answer.feed(msg(NEWLINK, MULTI, 9, other) + msg(DONE, MULTI, 9, struct.pack("=i", 0)))
    assert answer.payloads == [LINK, other, other]
    assert answer.outcome.code == 0 and not answer.interrupted
    interrupted = codec.Answer(9, PORT)
    interrupted.feed(msg(NEWLINK, MULTI | DUMP_INTR, 9, LINK) + msg(DONE, MULTI, 9, bytes(4)))
    assert interrupted.done and interrupted.interrupted
    overrun = codec.Answer(9, PORT)
    assert overrun.feed(msg(OVERRUN, 0, 9, b"")) and overrun.overrun


def test_answers_to_other_requests_are_skipped() -> None:
    answer = codec.Answer(2, PORT)
    assert answer.feed(msg(NEWLINK, 0, 1, LINK) + error(1, 0) + msg(NEWLINK, 0, 2, LINK)
                       + error(2, 0))
    assert answer.payloads == [LINK]


@pytest.mark.parametrize("data", [
    msg(NEWLINK, 0, 1, LINK, port=PORT + 1) + error(1, 0),  # addressed to another socket
    error(1, 0) + error(1, 0),  # something after the end
    error(1, 0) + msg(NEWLINK, 0, 1, LINK),
])
def test_what_no_answer_of_ours_holds_is_refused(data: bytes) -> None:
    with pytest.raises(CodecError):
        codec.Answer(1, PORT).feed(data)


# --- messages and attributes --------------------------------------------------------------------


@pytest.mark.parametrize("data", [
    b"\x10\x00\x00",  # shorter than a header
    struct.pack("=IHHII", 15, 16, 0, 1, PORT),  # length below the header's
    struct.pack("=IHHII", 40, 16, 0, 1, PORT) + bytes(8),  # length past the end
    struct.pack("=IHHII", 17, 3, 0, 1, PORT) + b"\0\x01\0\0",  # padding not zero
    msg(DONE, 0, 1, bytes(4)) + b"\0" * 8,  # stray bytes
])
def test_malformed_datagrams_are_refused(data: bytes) -> None:
    with pytest.raises(CodecError):
        codec.split_messages(data)


def test_messages_split_exactly() -> None:
    data = (struct.pack("=IHHII", 21, 3, 2, 1, PORT) + b"abcde" + b"\0\0\0"
            + msg(ERROR, CAPPED, 1, bytes(20)))
    first, second = codec.split_messages(data)
    assert (first.kind, first.flags, first.seq, first.port, first.payload) == (3, 2, 1, PORT,
                                                                               b"abcde")
    assert (second.kind, second.payload) == (ERROR, bytes(20))
    # a datagram may end right after its last message, without that message's padding
    assert codec.split_messages(struct.pack("=IHHII", 21, 3, 2, 1, PORT) + b"abcde")[0].payload \
        == b"abcde"


def test_attributes() -> None:
    data = nla(3, b"a\0") + nla(3 | 0x8000, b"second") + nla(4, b"xyz")[:7]  # padding cut
    assert codec.iter_attrs(data) == [(3, b"a\0"), (0x8003, b"second"), (4, b"xyz")]
    assert codec.parse_attrs(data) == {3: b"a\0", 4: b"xyz"}  # the first counts, flags masked
    for bad in (nla(3, b"abc") + b"\0\0", struct.pack("=HH", 3, 1), struct.pack("=HH", 12, 1)):
        with pytest.raises(CodecError):
            codec.iter_attrs(bad)


# --- links --------------------------------------------------------------------------------------


def test_a_bridge_port_veth() -> None:
    port = nla(8, b"\0") + nla(33, b"\x01") + nla(39, b"\x01") + nla(2, struct.pack("=H", 32))
    info = nla(1, b"veth\0") + nla(4, b"bridge\0") + nla(5 | 0x8000, port)
    link = codec.parse_link(ifinfo(7, flags=0x1043) + nla(3, b"vethA\0") + nla(4, u32(1400))
                            + nla(10, u32(3)) + nla(1, bytes.fromhex("fe0102030405"))
                            + nla(5, u32(9)) + nla(18, info))
    assert (link.index, link.name, link.kind, link.mtu, link.master, link.link, link.up) == \
        (7, "vethA", "veth", 1400, 3, 9, True)
    assert link.address == bytes.fromhex("fe0102030405")
    assert link.slave_kind == "bridge" and link.port == {8: 0, 33: 1, 39: 1}


def test_a_bridge_and_its_ports_dump() -> None:
    bridge = codec.parse_link(ifinfo(3) + nla(3, b"br0\0")
                              + nla(18, nla(1, b"bridge\0") + nla(2, nla(7, b"\x01"))))
    assert (bridge.kind, bridge.vlan_filtering, bridge.up, bridge.link, bridge.mtu) == \
        ("bridge", True, False, 3, 0)  # no IFLA_LINK: the kernel's iflink is the link itself
    port = codec.parse_link(ifinfo(7, family=7) + nla(3, b"vethA\0")
                            + nla(12 | 0x8000, nla(8, b"\x01") + nla(33, b"\0")))
    assert (port.family, port.port, port.kind) == (7, {8: 1, 33: 0}, None)
    # IFLA_PROTINFO means bridge-port flags only in AF_BRIDGE messages
    assert codec.parse_link(ifinfo(7) + nla(3, b"x\0") + nla(12, b"")).port is None


def test_names_are_bytes_the_kernel_allows() -> None:
    assert codec.parse_link(ifinfo(1) + nla(3, b"\xe9t\xff\0")).name.encode(
        "utf-8", "surrogateescape") == b"\xe9t\xff"


@pytest.mark.parametrize("payload", [
    ifinfo(7)[:15],  # shorter than ifinfomsg
    ifinfo(0) + nla(3, b"eth0\0"),  # ifindex 0
    ifinfo(-2) + nla(3, b"eth0\0"),
    ifinfo(7),  # no name
    ifinfo(7) + nla(3, b"eth0"),  # no NUL
    ifinfo(7) + nla(3, b"eth\x000\0"),  # a NUL inside: which name is it?
    ifinfo(7) + nla(3, b"eth0\0") + nla(4, b"\xdc\x05"),  # mtu of 2 bytes
    ifinfo(7) + nla(3, b"eth0\0") + nla(10, u32(1) + u32(2)),  # master of 8 bytes
    ifinfo(7) + nla(3, b"eth0\0") + nla(5, b""),  # link of 0 bytes
    ifinfo(7) + nla(3, b"eth0\0") + nla(18, nla(1, b"bridge\0") + nla(2, nla(7, u32(1)))),
    ifinfo(7) + nla(3, b"eth0\0") + nla(18, nla(1, b"veth")),  # kind without NUL
    ifinfo(7) + nla(3, b"eth0\0") + nla(18, b"\x08\x00"),  # a nest holding stray bytes
    ifinfo(7, family=7) + nla(3, b"eth0\0") + nla(12, nla(8, b"\x01\x00")),  # 2-byte flag
])
def test_malformed_links_are_refused(payload: bytes) -> None:
    with pytest.raises(CodecError):
        codec.parse_link(payload)


# --- link notifications (RTNLGRP_LINK), read by the service's janitor --------------------------

DELLINK = 17


def test_link_deletions_are_the_dellink_messages_of_both_families() -> None:
    port_left = ifinfo(7, family=7) + nla(3, b"veth1\0") + nla(10, u32(3))
    gone = ifinfo(7) + nla(3, b"veth1\0")
    data = (msg(NEWLINK, 0, 0, LINK, port=0) + msg(DELLINK, 0, 0, port_left, port=0)
            + msg(DELLINK, 0, 5, gone, port=812))  # seq and port: the deleting request's
    links = codec.link_deletions(data)
    assert [(link.family, link.name, link.index, link.master) for link in links] == [
        (codec.AF_BRIDGE, "veth1", 7, 3), (codec.AF_UNSPEC, "veth1", 7, 0)]
    assert codec.link_deletions(b"") == []
    assert codec.link_deletions(msg(NEWLINK, 0, 0, b"")) == []  # other changes: not read


def test_link_changes_are_the_newlink_messages() -> None:
    """What the network keeper reads besides the deletions: links made or changed."""
    made = ifinfo(9) + nla(3, b"nsgu1000\0")
    data = (msg(DELLINK, 0, 0, b"", port=0) + msg(NEWLINK, 0, 3, made, port=77))
    assert [(link.name, link.index) for link in codec.link_changes(data)] == [("nsgu1000", 9)]
    assert codec.link_changes(b"") == []
    with pytest.raises(CodecError):
        codec.link_changes(msg(NEWLINK, 0, 0, ifinfo(9)))  # no name
    with pytest.raises(CodecError):
        codec.link_changes(msg(18, 0, 0, LINK))  # RTM_GETLINK


@pytest.mark.parametrize("data", [
    msg(ERROR, 0, 0, struct.pack("=i", 0) + bytes(16)),
    msg(DONE, 0, 0, bytes(4)),
    msg(1, 0, 0, b""),  # NLMSG_NOOP
    msg(18, 0, 0, LINK),  # RTM_GETLINK
    msg(DELLINK, 0, 0, ifinfo(7)),  # no name
    msg(DELLINK, 0, 0, ifinfo(0) + nla(3, b"x\0")),  # no ifindex
    msg(DELLINK, 0, 0, LINK)[:-2],  # cut short
    msg(DELLINK, 0, 0, LINK) + b"\0\0\0",  # stray bytes
], ids=["error", "done", "noop", "getlink", "nameless", "index-0", "short", "stray"])
def test_anything_else_refuses_the_whole_notification(data: bytes) -> None:
    with pytest.raises(CodecError):
        codec.link_deletions(msg(DELLINK, 0, 0, LINK) + data)


# --- requests -----------------------------------------------------------------------------------


def test_requests_are_built_as_the_kernel_reads_them() -> None:
    body = (codec.ifinfomsg(5, flags=1, change=1) + codec.string(3, "eth0")
            + codec.nested(18, codec.string(1, "veth")) + codec.u8(8, 1))
    assert body == (struct.pack("=BxHiII", 0, 0, 5, 1, 1) + nla(3, b"eth0\0")
                    + nla(18 | 0x8000, nla(1, b"veth\0")) + nla(8, b"\x01"))
    assert codec.request(16, 0x405, 9, body) == \
        struct.pack("=IHHII", 16 + len(body), 16, 0x405, 9, 0) + body
    with pytest.raises(CodecError):
        codec.attr(1, bytes(0x10000))


def test_the_codec_is_pure() -> None:
    """Bytes in, values out: the codec imports nothing but `_struct` (no socket, no posix), so
    the fuzzer and the pyroute2 comparison exercise exactly what the helpers run."""
    import ast

    tree = ast.parse(Path(codec.__file__).read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported == {"_struct"}
