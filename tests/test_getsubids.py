"""getsubids: the reference's output format, and of the lines the map helpers honour, those shadow
selects (test_getsubids_compat.py runs the selection side by side with shadow's)."""

from __future__ import annotations

import pytest

from tests.support import ALICE, BOB, CAROL, Target, helper, run_as, write_etc

pytestmark = pytest.mark.usefixtures("transport")

MIXED = (
    "nsgt-alice:200000:65536\n"
    "nsgt-bob:300000:65536\n"
    "nsgt-alice:0:0\n"                         # count 0: grants nothing (A3)
    "nsgt-alice:1:18446744073709551615\n"      # beyond 32 bits (A4)
    "nsgt-alice:010:5\n"                       # not canonical: ignored
    "nsgt-alice:400000:10 \n"                  # trailing space: ignored
    "23001:500000:10\n"                        # numeric owner
    "nsgt-alias:600000:10\n"                   # another name of the same uid
    "nsgt-alicex:700000:10\n"                  # prefix-named user
    "nosuchuser:800000:10\n"
)


def getsubids(*args: str, user=ALICE, impl: str = "nsgate"):
    return run_as(user, [helper("getsubids", impl), *args])


def test_format_is_the_references():
    ours, theirs = getsubids("nsgt-alice"), getsubids("nsgt-alice", impl="shadow")
    assert ours.returncode == theirs.returncode == 0
    assert ours.stdout == theirs.stdout == b"0: nsgt-alice 200000 65536\n"
    assert ours.stderr == b""


def test_gid_listing():
    write_etc("subgid", "nsgt-alice:100:5\nnsgt-alice:7000:3\n")
    result = getsubids("-g", "nsgt-alice")
    assert result.stdout == b"0: nsgt-alice 100 5\n1: nsgt-alice 7000 3\n"


@pytest.mark.parametrize("arg, ranges", [
    ("nsgt-alice", [(200000, 65536), (500000, 10)]),  # its name's lines and its uid's
    ("23001", [(500000, 10)]),                         # a number is matched as text only
    ("nsgt-alias", [(500000, 10), (600000, 10)]),      # not the lines of alice's other name
])
def test_lists_the_honoured_lines_shadow_selects(arg, ranges):
    write_etc("subuid", MIXED)
    result = getsubids(arg)
    assert result.returncode == 0, result.stderr
    expected = "".join(f"{i}: {arg} {s} {c}\n" for i, (s, c) in enumerate(ranges))
    assert result.stdout.decode() == expected


def test_every_listed_range_maps_and_every_other_line_does_not():
    """A12: getsubids and newuidmap agree, entry by entry."""
    write_etc("subuid", MIXED)
    for start, count, allowed in [(200000, 65536, True), (500000, 10, True), (600000, 10, True),
                                  (0, 1, False), (1, 10, False), (8, 5, False),
                                  (400000, 10, False), (700000, 10, False), (800000, 10, False),
                                  (300000, 10, False)]:
        target = Target.start(ALICE)
        try:
            result = run_as(ALICE, [helper("newuidmap"), str(target.pid), "0", str(start),
                                    str(count)])
            assert (result.returncode == 0) == allowed, (start, result.stderr)
        finally:
            target.stop()


def test_unknown_user_and_no_ranges():
    for arg in ("nosuchuser", "nsgt-carol"):
        result = getsubids(arg, user=CAROL)
        assert (result.returncode, result.stdout, result.stderr) == \
            (1, b"", b"Error fetching ranges\n")


@pytest.mark.parametrize("argv", [[], ["-h"]])
def test_usage(argv):
    ours, theirs = getsubids(*argv), getsubids(*argv, impl="shadow")
    assert ours.returncode == theirs.returncode == 1
    assert ours.stderr == (b"Usage: getsubids [-g] user\n    list subuid ranges for user\n"
                           b"    pass -g to list subgid ranges\n")


def test_dash_g_alone_is_a_user_name_as_in_the_reference():
    ours, theirs = getsubids("-g"), getsubids("-g", impl="shadow")
    assert ours.returncode == theirs.returncode == 1
    assert ours.stderr == b"Error fetching ranges\n"


def test_any_user_may_ask_about_another():
    result = getsubids("nsgt-bob", user=ALICE)
    assert result.stdout == b"0: nsgt-bob 300000 65536\n"
    assert getsubids("nsgt-alice", user=BOB).stdout == b"0: nsgt-alice 200000 65536\n"


def test_getsubids_is_not_privileged():
    import os
    import stat
    mode = os.stat(helper("getsubids")).st_mode
    assert not mode & (stat.S_ISUID | stat.S_ISGID)
    assert "security.capability" not in os.listxattr(helper("getsubids"))
