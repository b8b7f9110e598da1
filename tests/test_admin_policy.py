"""The pure side of the admin command, from bytes, without privilege: edits keep every other
byte, allocation never overlaps, the linters never crash on any input."""

from __future__ import annotations

from hypothesis import assume, given, settings
from hypothesis import strategies as st
from nsgate.errors import Refusal
from nsgate.policy import subid_edit, subid_lint, usernet_lint
from nsgate.policy.accounts import Accounts
from nsgate.policy.install_lint import CAP_SETUID, effective_capabilities

ACCOUNTS = Accounts([(b"alice", 1000, 1000), (b"bob", 1001, 1001)],
                    [(b"alice", 1000, []), (b"staff", 50, [b"alice"])])
LINES = st.lists(st.one_of(
    st.binary(max_size=40).filter(lambda b: b"\n" not in b),
    st.builds(lambda o, s, c: b"%s:%d:%d" % (o, s, c), st.sampled_from([b"alice", b"bob",
                                                                        b"1000", b"ghost"]),
              st.integers(0, 1 << 33), st.integers(0, 1 << 20))), max_size=12)


def _file(lines: list[bytes], final_newline: bool) -> bytes:
    data = b"\n".join(lines)
    return data + b"\n" if lines and final_newline else data


@settings(max_examples=300, deadline=None)
@given(LINES, st.booleans())
def test_remove_undoes_add_byte_for_byte(lines, final_newline):
    data = _file([line for line in lines if line != b"carol:7:3"], final_newline)
    try:
        added = subid_edit.add(data, "/etc/subuid", "uid", b"carol", 7, 3, Accounts([], []))
    except Refusal:  # another owner's line overlaps 7-9
        assume(False)
    assert added.content.startswith(data)
    assert added.content.endswith(b"carol:7:3\n")
    removed = subid_edit.remove(added.content, "/etc/subuid", b"carol", 7, 3, ACCOUNTS)
    assert removed.content == (data + b"\n" if data and not data.endswith(b"\n") else data)


@settings(max_examples=300, deadline=None)
@given(LINES, st.integers(0, 1 << 20), st.integers(0, 1 << 21), st.integers(1, 1 << 16))
def test_allocation_overlaps_nothing_and_stays_in_the_pool(lines, low, span, count):
    valid = subid_lint.valid_lines(_file(lines, True))
    start = subid_edit.find_free_range(valid, low, low + span, count)
    if start is not None:
        assert low <= start and start + count - 1 <= low + span
        assert all(line.end <= start or line.start >= start + count for line in valid)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.sampled_from(["uid", "gid"]))
def test_linters_take_any_bytes(data, kind):
    for finding in subid_lint.lint("/etc/subuid", data, kind, ACCOUNTS):
        assert finding.line is not None and finding.message.isprintable()
    usernet_lint.lint_usernet("/etc/lxc/lxc-usernet", data, ACCOUNTS, {"br0": "bridge"})
    usernet_lint.lint_nics("/run/lxc/nics", data, usernet_lint.grants(data), {"eth0"})
    effective_capabilities(data)


def test_capability_attribute():
    rev2 = (0x02000001).to_bytes(4, "little") + (1 << CAP_SETUID).to_bytes(4, "little") + \
        bytes(12)
    assert effective_capabilities(rev2) == 1 << CAP_SETUID
    assert effective_capabilities(b"\x00\x00\x00\x02" + rev2[4:]) == 0  # not effective
    assert effective_capabilities(rev2[:-1]) == 0
    assert effective_capabilities(None) == 0
