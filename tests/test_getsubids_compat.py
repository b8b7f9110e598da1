"""getsubids side by side with Debian 12's (shadow 4.13, /usr/bin/getsubids), the oracle: which
lines a query selects. shadow's list_owner_ranges takes the lines keyed by the argument exactly
as given, and, when a user (with -g: a group) of that name exists, the lines keyed by its
decimal id; a line keyed by both is listed twice. No other name of the same id, and a number is
a name like any other. rootlesskit's --subid-source=dynamic relies on this: it asks by name and
by uid and concatenates the answers (test_rootlesskit.py).

The files here hold only lines both implementations honour alike; the lines nsgate ignores and
shadow lists (count 0, octal) are the deliberate difference test_getsubids.py covers."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import CAROL, helper, run_as, write_etc

pytestmark = pytest.mark.usefixtures("transport")

# Accounts only these tests need: a user named by its own uid, a user named by another uid, a
# user whose group of the same name has another id, and a group no user is named after.
EXTRA_USERS = ["23050:x:23050:23050::/nonexistent:/bin/sh",
               "23051:x:23052:23052::/nonexistent:/bin/sh",
               "nsgt-dave:x:23004:23024::/nonexistent:/bin/sh"]
EXTRA_GROUPS = ["23050:x:23050:", "nsgt-dave:x:23024:", "nsgt-grp:x:23021:"]

LINES = ["nsgt-alice:200000:10", "23001:200100:10", "nsgt-alias:200200:10",
         "nsgt-dave:200300:10", "23004:200400:10", "23024:200500:10", "23050:200600:10",
         "23051:200700:10", "23052:200800:10", "023001:200900:10", "nosuchuser:201000:10",
         "23021:201100:10", "nsgt-alice:201200:10", "nsgt-grp:201300:10"]

QUERIES = ["nsgt-alice", "23001", "nsgt-alias", "nsgt-dave", "23004", "23024", "23050", "23051",
           "23052", "023001", "nosuchuser", "nsgt-grp", "23021", "nsgt-carol", "23099", "",
           "nsgt-alic", "nsgt-alice:200000"]


@pytest.fixture(autouse=True)
def extra_accounts():
    saved = {name: Path(f"/etc/{name}").read_bytes() for name in ("passwd", "group")}
    with open("/etc/passwd", "a") as passwd:
        passwd.write("".join(line + "\n" for line in EXTRA_USERS))
    with open("/etc/group", "a") as group:
        group.write("".join(line + "\n" for line in EXTRA_GROUPS))
    text = "".join(line + "\n" for line in LINES)
    write_etc("subuid", text)
    write_etc("subgid", text.replace(":2", ":3"))  # other numbers: uid and gid lists differ
    yield
    for name, data in saved.items():
        Path(f"/etc/{name}").write_bytes(data)


def both(*args: str) -> tuple[tuple[int, bytes, bytes], tuple[int, bytes, bytes]]:
    ours = run_as(CAROL, [helper("getsubids"), *args])
    theirs = run_as(CAROL, [helper("getsubids", "shadow"), *args])
    return ((ours.returncode, ours.stdout, ours.stderr),
            (theirs.returncode, theirs.stdout, theirs.stderr))


@pytest.mark.parametrize("option", [[], ["-g"]], ids=["uid", "gid"])
@pytest.mark.parametrize("query", QUERIES)
def test_same_answer_as_shadow(query, option):
    ours, theirs = both(*option, query)
    assert ours == theirs


def test_the_cases_rootlesskit_meets():
    """By name: the name's lines and the uid's; by uid: the uid's only (and an error when there
    are none), so the two answers concatenated hold every range once."""
    ours, _ = both("nsgt-alice")
    assert ours == (0, b"0: nsgt-alice 200000 10\n1: nsgt-alice 200100 10\n"
                       b"2: nsgt-alice 201200 10\n", b"")
    ours, _ = both("23001")
    assert ours == (0, b"0: 23001 200100 10\n", b"")
    write_etc("subuid", "nsgt-alice:200000:65536\n")
    ours, theirs = both("23001")
    assert ours == theirs == (1, b"", b"Error fetching ranges\n")


def test_with_dash_g_the_group_of_that_name_decides():
    """shadow's -g looks the name up as a group: nsgt-dave's own gid (23024), not its uid."""
    ours, theirs = both("-g", "nsgt-dave")
    assert ours == theirs == (0, b"0: nsgt-dave 300300 10\n1: nsgt-dave 300500 10\n", b"")
    ours, theirs = both("-g", "nsgt-grp")  # a group, no user: its gid's lines count
    assert ours == theirs == (0, b"0: nsgt-grp 301100 10\n1: nsgt-grp 301300 10\n", b"")


def test_a_user_named_by_its_own_uid_is_listed_twice_as_in_shadow():
    ours, theirs = both("23050")
    assert ours == theirs == (0, b"0: 23050 200600 10\n1: 23050 200600 10\n", b"")


def test_a_missing_file_is_an_error_as_in_shadow():
    Path("/etc/subuid").unlink()
    ours, theirs = both("nsgt-alice")
    assert ours == theirs == (1, b"", b"Error fetching ranges\n")
