"""/etc/nsgate/session.conf as policy (nsgate-session.conf(5)): parsing, the resolution of each
key for a user (user > @group > range > *, the first line among equals, login.defs' defaults),
the refusal of a malformed file with its line, the cgroup v2 value syntax, and the lint. Pure:
bytes in, decisions out, no root and no files."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nsgate.errors import Refusal
from nsgate.policy import cgroup_limits, session_conf, session_conf_lint
from nsgate.policy.accounts import Accounts

FAST = settings(max_examples=300, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])
NO_DEFS = b""


def resolve(text: str | bytes, name: bytes = b"alice", uid: int = 1500,
            groups: list[bytes] | None = None, login_defs: bytes = NO_DEFS
            ) -> session_conf.Settings:
    data = text.encode() if isinstance(text, str) else text
    return session_conf.parse(data).settings_for(name, uid, groups or [], login_defs)


def refusal(text: str | bytes) -> Refusal:
    with pytest.raises(Refusal) as caught:
        session_conf.parse(text.encode() if isinstance(text, str) else text)
    return caught.value


# --- defaults ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("uid", "covered"), [
    (0, False), (999, False), (1000, True), (1500, True), (60000, True), (60001, False),
    (65534, False)])
def test_no_file_covers_uid_min_to_uid_max(uid, covered):
    got = resolve(b"", uid=uid)
    assert (got.subids, got.cgroup) == (covered, covered)
    assert got.limits == {} and got.unapplied == {}
    assert got.origin == {key: "default" for key in session_conf.KEYS}


@pytest.mark.parametrize(("defs", "uid", "covered"), [
    (b"UID_MIN 2000\nUID_MAX 3000\n", 1999, False),
    (b"UID_MIN 2000\nUID_MAX 3000\n", 2000, True),
    (b"UID_MIN 2000\nUID_MAX 3000\n", 3000, True),
    (b"UID_MIN 2000\nUID_MAX 3000\n", 3001, False),
    (b"# UID_MIN 5000\nUID_MIN\t500\n", 500, True),   # a comment is no definition; tab
    (b"UID_MIN 500\nUID_MIN 700\n", 600, False),       # the last definition wins (getdef)
    (b"UID_MAX 100000\n", 99999, True),                # UID_MIN keeps its default 1000
    (b"UID_MAX 100000\n", 999, False),
])
def test_defaults_follow_login_defs(defs, uid, covered):
    got = resolve(b"", uid=uid, login_defs=defs)
    assert (got.subids, got.cgroup) == (covered, covered)


def test_a_key_no_line_sets_keeps_its_default():
    got = resolve("* subids no\n", uid=1500)
    assert (got.subids, got.cgroup) == (False, True)
    assert (got.origin["subids"], got.origin["cgroup"]) == ("line 1", "default")


@pytest.mark.parametrize("defs", [b"UID_MIN 0x3e8\n", b"UID_MAX -1\n", b"UID_MIN 01000\n"])
def test_a_login_defs_bound_that_is_no_number_is_refused_when_needed(defs):
    with pytest.raises(Refusal, match=r"in /etc/login\.defs is"):
        resolve(b"", login_defs=defs)
    # lines that decide both switches need no default
    got = resolve("* subids yes\n* cgroup no\n", login_defs=defs)
    assert (got.subids, got.cgroup) == (True, False)


# --- precedence --------------------------------------------------------------------------------

FULL = """\
* memory.max 1G
1000-2000 memory.max 2G
@staff memory.max 3G
alice memory.max 4G
"""


@pytest.mark.parametrize(("name", "uid", "groups", "value", "line"), [
    (b"alice", 1500, [b"staff"], "4G", 4),   # user beats everything
    (b"bob", 1500, [b"staff"], "3G", 3),     # @group beats range and *
    (b"bob", 1500, [b"other"], "2G", 2),     # range beats *
    (b"bob", 2001, [b"other"], "1G", 1),     # only *
    (b"alice", 70000, [], "4G", 4),          # the user line, whatever the uid
])
def test_most_specific_who_wins_whatever_the_order(name, uid, groups, value, line):
    everyone = b"UID_MIN 0\nUID_MAX 4294967295\n"  # a cgroup by default, for the limits
    for text in (FULL, "".join(reversed(FULL.splitlines(keepends=True)))):
        got = resolve(text, name, uid, groups, everyone)
        assert got.limits == {"memory.max": value}
        lines = text.splitlines()
        assert lines[int(got.origin["memory.max"].split()[1]) - 1].endswith(value)
    assert resolve(FULL, name, uid, groups).origin["memory.max"] == f"line {line}"


def test_limits_outside_the_default_range_need_a_cgroup_line():
    got = resolve(FULL, b"alice", 70000)
    assert (got.cgroup, got.limits, got.unapplied) == (False, {}, {"memory.max": "4G"})
    got = resolve(FULL + "alice cgroup yes\n", b"alice", 70000)
    assert (got.cgroup, got.limits) == (True, {"memory.max": "4G"})


def test_each_key_is_resolved_on_its_own():
    text = ("* pids.max 100\n@staff memory.max 1G\nalice cpu.weight 50\n"
            "1000-1999 io.weight default 200\n* cgroup yes\n")
    got = resolve(text, b"alice", 1500, [b"staff"])
    assert got.limits == {"pids.max": "100", "memory.max": "1G", "cpu.weight": "50",
                          "io.weight": "default 200"}
    assert [got.origin[k] for k in ("pids.max", "memory.max", "cpu.weight", "io.weight",
                                    "cgroup", "cpu.max")] == [
        "line 1", "line 2", "line 3", "line 4", "line 5", "default"]


@pytest.mark.parametrize(("text", "value", "line"), [
    ("@a pids.max 1\n@b pids.max 2\n", "1", 1),            # two groups: the first line
    ("@b pids.max 2\n@a pids.max 1\n", "2", 1),
    ("1000-1999 pids.max 1\n1500-1600 pids.max 2\n", "1", 1),  # overlapping ranges
    ("1500-1600 pids.max 2\n1000-1999 pids.max 1\n", "2", 1),
    ("* pids.max 1\n* pids.max 2\n", "1", 1),              # a repeated line never overrides
    ("alice pids.max 1\nalice pids.max 2\n", "1", 1),
])
def test_first_line_in_file_order_wins_among_equals(text, value, line):
    got = resolve(text, b"alice", 1550, [b"a", b"b"])
    assert (got.limits["pids.max"], got.origin["pids.max"]) == (value, f"line {line}")


def test_lines_of_others_do_not_apply():
    text = "bob subids no\n@wheel subids no\n2000-2999 subids no\n"
    got = resolve(text, b"alice", 1500, [b"staff"])
    assert (got.subids, got.origin["subids"]) == (True, "default")


def test_group_membership_is_what_the_caller_passes():
    """@group matches a name among the login's groups (initgroups: primary and supplementary
    alike); nothing is looked up here."""
    text = "@users cgroup no\n"
    assert resolve(text, groups=[b"users"]).cgroup is False
    assert resolve(text, groups=[b"staff", b"users"]).cgroup is False
    assert resolve(text, groups=[b"staff"]).cgroup is True
    assert resolve(text, groups=[b"user"]).cgroup is True  # whole names only


def test_cgroup_off_applies_no_limit():
    got = resolve("* memory.max 1G\nalice cgroup no\n")
    assert got.cgroup is False
    assert got.limits == {}
    assert got.unapplied == {"memory.max": "1G"}
    assert got.origin["memory.max"] == "line 1"


def test_subids_and_cgroup_can_differ():
    got = resolve("* subids no\n@ldap subids yes\n* cgroup yes\n", groups=[b"ldap"], uid=10**6)
    assert (got.subids, got.cgroup) == (True, True)
    assert (got.origin["subids"], got.origin["cgroup"]) == ("line 2", "line 3")


def test_ranges_are_inclusive_and_span_the_id_space():
    text = ("0-0 pids.max 1\n4294967295-4294967295 pids.max 2\n1-4294967294 pids.max 3\n"
            "* cgroup yes\n")
    assert resolve(text, uid=0).limits == {"pids.max": "1"}
    assert resolve(text, uid=4294967295).limits == {"pids.max": "2"}
    assert resolve(text, uid=1).limits == {"pids.max": "3"}


def test_names_are_bytes_never_decoded():
    text = b"\xffbob pids.max 7\n@gr\xe9 pids.max 8\n"
    assert resolve(text, b"\xffbob").limits == {"pids.max": "7"}
    assert resolve(text, b"\xc3\xbfbob").limits == {}  # the UTF-8 spelling is another name
    assert resolve(text, b"x", groups=[b"gr\xe9"]).limits == {"pids.max": "8"}


# --- syntax --------------------------------------------------------------------------------------

def test_comments_blanks_and_tabs():
    text = ("# policy\n\n   \n\t# indented comment\nalice\tpids.max \t 10   # ten\n"
            "alice cpu.max  50000\t100000\n")
    got = resolve(text)
    assert got.limits == {"pids.max": "10", "cpu.max": "50000 100000"}  # blanks normalized
    assert got.origin["pids.max"] == "line 5"


def test_a_hash_inside_a_field_is_no_comment():
    # a name with # is a name (it matches nobody usual); a value with # is junk
    assert resolve("alice#x pids.max 10\n").limits == {}
    assert resolve("alice#x pids.max 10\n", name=b"alice#x").limits == {"pids.max": "10"}
    assert "pids.max '10#x'" in refusal("alice pids.max 10#x\n").first


def test_a_missing_final_newline_is_fine():
    assert resolve("alice pids.max 10").limits == {"pids.max": "10"}


@pytest.mark.parametrize(("text", "line", "words"), [
    ("alice subids\n", 1, "is not WHO KEY VALUE"),
    ("alice\n", 1, "is not WHO KEY VALUE"),
    ("# ok\nalice subids maybe\n", 2, "subids is 'maybe', not yes or no"),
    ("alice subids Yes\n", 1, "not yes or no"),
    ("alice subids yes please\n", 1, "'yes please', not yes or no"),
    ("alice cgroup 1\n", 1, "not yes or no"),
    ("alice memory.high 1G\n", 1, "unknown key 'memory.high'"),
    ("alice Subids yes\n", 1, "unknown key"),
    ("alice pids.max 10 junk\n", 1, "pids.max '10 junk'"),
    ("alice pids.max -1\n", 1, "pids.max '-1'"),
    ("alice memory.max 1.5G\n", 1, "memory.max '1.5G'"),
    ("alice memory.max 1GB\n", 1, "memory.max '1GB'"),
    ("alice cpu.max 50000 100000 3\n", 1, "cpu.max"),
    ("alice cpu.weight 0\n", 1, "cpu.weight '0'"),
    ("2000-1000 subids yes\n", 1, "is empty: its low end is above its high end"),
    ("1000- subids yes\n", 1, "is not a uid range"),
    ("-1000 subids yes\n", 1, "is no user name (a name never starts with '-')"),
    ("01000-2000 subids yes\n", 1, "is not a uid range"),
    ("1000-4294967296 subids yes\n", 1, "is not a uid range"),
    ("1000-2000-3000 subids yes\n", 1, "is not a uid range"),
    ("1000 subids yes\n", 1, "is a number, not a WHO: write 1000-1000"),
    ("@ subids yes\n", 1, "'@' names no group"),
    ("al* subids yes\n", 1, "wildcards are not supported"),
    ("@st* subids yes\n", 1, "wildcards are not supported"),
    ("!alice subids yes\n", 1, "negation is not supported"),
    ("alice subids yes\r\n", 1, "control character"),
    ("alice subids yes\n\x1b[31mbob subids no\n", 2, "control character"),
    ("alice subids\x00 yes\n", 1, "control character"),
    ("ok subids yes\n" * 3 + "bad\n", 4, "is not WHO KEY VALUE"),
])
def test_a_malformed_file_is_refused_whole_with_its_line(text, line, words):
    refused = refusal(text)
    assert refused.first.startswith(f"line {line}: "), refused.first
    assert words in refused.first, refused.first
    assert refused.details  # the fix


def test_the_first_bad_line_is_named():
    assert refusal("a subids yes\nb subids x\nc subids y\n").first.startswith("line 2: ")


def test_size_is_bounded():
    line = b"alice pids.max 10\n"
    big = line * (session_conf.SIZE_LIMIT // len(line) + 1)
    assert "larger than 1048576 bytes" in refusal(big).first
    long_line = b"alice pids.max 10" + b" " * 4096 + b"\n"
    assert refusal(long_line).first.startswith("line 1: the line is longer than 4096 bytes")
    fits = b"alice pids.max 10" + b" " * (4096 - 17) + b"\n"
    assert session_conf.parse(fits).settings[0].value == "10"


@pytest.mark.parametrize("make", [
    lambda i: b"%d-%d pids.max 1\n" % (i, i),                       # many small ranges
    lambda i: b"%d-%d pids.max 1\n" % (100000 - i, 100000 + i),     # nested ranges
    lambda i: b"u%d pids.max 1\n%d-%d cgroup no\n" % (i, i, i),      # users and ranges
])
def test_a_file_at_the_size_limit_costs_little_cpu(make):
    """Parsing, resolving and linting stay near-linear up to the 1 MiB bound (CPU time, not
    the wall clock: a loaded CI stretches the latter)."""
    data = b"".join(make(i) for i in range(100000))[:session_conf.SIZE_LIMIT]
    data = data[:data.rfind(b"\n") + 1]
    accounts = Accounts([(b"u%d" % i, i, i) for i in range(20000)], [])
    start = time.process_time()
    conf = session_conf.parse(data)
    conf.settings_for(b"u5", 5, [], NO_DEFS)
    session_conf.lint("p", data, accounts)
    assert time.process_time() - start < 20  # quadratic work takes minutes here


def test_shown_bytes_are_escaped():
    refused = refusal(b"\xff\xfe subids nope\xff\n")
    assert "\\xff" in refused.first and "\xff" not in refused.first


# --- cgroup v2 values ---------------------------------------------------------------------------

@pytest.mark.parametrize(("key", "value"), [
    ("pids.max", "max"), ("pids.max", "0"), ("pids.max", "4194304"),
    ("memory.max", "max"), ("memory.max", "0"), ("memory.max", "4096"),
    ("memory.max", "512K"), ("memory.max", "512M"), ("memory.max", "4G"), ("memory.max", "2T"),
    ("memory.max", "4g"), ("memory.max", "512k"),  # either case, as the kernel's memparse
    ("memory.swap.max", "0"), ("memory.swap.max", "max"), ("memory.swap.max", "1G"),
    ("cpu.max", "max"), ("cpu.max", "50000"), ("cpu.max", "50000 100000"),
    ("cpu.max", "max 100000"), ("cpu.max", "1000 1000"), ("cpu.max", "200000 1000000"),
    ("cpu.weight", "1"), ("cpu.weight", "100"), ("cpu.weight", "10000"),
    ("io.weight", "1"), ("io.weight", "10000"), ("io.weight", "default 100"),
])
def test_valid_limit_values(key, value):
    assert cgroup_limits.check_value(key, value) is None
    assert resolve(f"alice {key} {value}\n").limits == {key: value}


@pytest.mark.parametrize(("key", "value"), [
    ("pids.max", ""), ("pids.max", "4194305"), ("pids.max", "+5"), ("pids.max", "010"),
    ("pids.max", "0x10"), ("pids.max", "Max"), ("pids.max", "max "), ("pids.max", "5 5"),
    ("memory.max", "1KB"), ("memory.max", "K"), ("memory.max", "-1"),
    ("memory.max", "9223372036854775808"), ("memory.max", "8388608T"), ("memory.max", "1 G"),
    ("memory.max", "1P"), ("memory.swap.max", "1.0G"), ("memory.max", "\uff11G"),
    ("cpu.max", ""), ("cpu.max", "0"), ("cpu.max", "999"), ("cpu.max", "50000 999"),
    ("cpu.max", "50000 1000001"), ("cpu.max", "50000 max"), ("cpu.max", "50000  100000"),
    ("cpu.max", "50000 100000 1"), ("cpu.max", "-1 100000"),
    ("cpu.weight", "0"), ("cpu.weight", "10001"), ("cpu.weight", "default 100"),
    ("io.weight", "0"), ("io.weight", "10001"), ("io.weight", "default"),
    ("io.weight", "8:0 100"), ("io.weight", "default 0"), ("io.weight", "default  100"),
    ("memory.high", "1G"),
])
def test_invalid_limit_values(key, value):
    assert cgroup_limits.check_value(key, value) is not None


# --- a property: resolution against an independent oracle -------------------------------------

WHOS = ["*", "1000-1999", "1500-2500", "@a", "@b", "alice", "bob"]
VALUES = ["1", "2", "3", "max"]


def _oracle(lines: list[tuple[str, str, str]], name: str, uid: int, groups: list[str]
            ) -> dict[str, tuple[str, int]]:
    """Per key: sort the matching lines by (less specific last, then file order), take the
    first."""
    def rank(who: str) -> int:
        if who == "*":
            return 3
        if who[0].isdigit():
            return 2
        return 1 if who.startswith("@") else 0

    def matches(who: str) -> bool:
        if who == "*":
            return True
        if who[0].isdigit():
            low, high = map(int, who.split("-"))
            return low <= uid <= high
        return who[1:] in groups if who.startswith("@") else who == name

    found: dict[str, tuple[str, int]] = {}
    for key in ("pids.max", "memory.max"):
        candidates = sorted((rank(who), number, value)
                            for number, (who, k, value) in enumerate(lines, 1)
                            if k == key and matches(who))
        if candidates:
            found[key] = (candidates[0][2], candidates[0][1])
    return found


@FAST
@given(lines=st.lists(st.tuples(st.sampled_from(WHOS), st.sampled_from(["pids.max",
                                                                        "memory.max"]),
                                 st.sampled_from(VALUES)), max_size=12),
       name=st.sampled_from(["alice", "bob", "carol"]),
       uid=st.sampled_from([999, 1000, 1500, 1999, 2000, 2500, 2501]),
       groups=st.lists(st.sampled_from(["a", "b", "c"]), unique=True))
def test_resolution_matches_the_oracle(lines, name, uid, groups):
    text = "".join(f"{who} {key} {value}\n" for who, key, value in lines)
    got = resolve(text, name.encode(), uid, [g.encode() for g in groups],
                  login_defs=b"UID_MIN 0\nUID_MAX 4294967295\n")
    expected = _oracle(lines, name, uid, groups)
    assert got.limits == {key: value for key, (value, _) in expected.items()}
    for key in ("pids.max", "memory.max"):
        want = f"line {expected[key][1]}" if key in expected else "default"
        assert got.origin[key] == want


# --- lint ----------------------------------------------------------------------------------------

ACCOUNTS = Accounts(
    users=[(b"alice", 1001, 1001), (b"bob", 1002, 1002), (b"root", 0, 0),
           (b"\xffodd", 1003, 1003)],
    groups=[(b"alice", 1001, []), (b"bob", 1002, []), (b"staff", 50, [b"alice"]),
            (b"root", 0, [])])


def lint(text: str | bytes, login_defs: bytes = NO_DEFS) -> list[tuple[int | None, str]]:
    data = text.encode() if isinstance(text, str) else text
    return [(f.line, f.code) for f in session_conf.lint("/etc/nsgate/session.conf", data,
                                                        ACCOUNTS, login_defs)]


def test_a_clean_policy_has_no_findings():
    text = ("# the site's policy\n* subids yes\n* cgroup yes\n0-999 subids no\n"
            "0-999 cgroup no\n* pids.max 4096\n@staff memory.max 8G\nalice memory.max 16G\n"
            "1000-59999 cpu.weight 100\n\xffodd pids.max max\n".encode("latin-1"))
    assert lint(text) == []


def test_every_bad_line_is_a_syntax_finding_with_its_line():
    findings = session_conf.lint("/etc/nsgate/session.conf",
                                 b"alice subids yes\nalice subids x\nok\n* pids.max -1\n",
                                 ACCOUNTS)
    assert [(f.line, f.code, f.severity) for f in findings] == [
        (2, "syntax", "error"), (3, "syntax", "error"), (4, "syntax", "error")]
    assert "session hook refuses the whole file" in findings[0].message
    assert findings[0].where == "/etc/nsgate/session.conf:2"


def test_a_file_too_large_is_a_finding_on_the_file():
    assert lint(b"#" * (session_conf.SIZE_LIMIT + 1)) == [(None, "syntax")]


def test_unknown_users_and_groups_are_warnings_once_each():
    findings = session_conf.lint("/etc/nsgate/session.conf",
                                 b"carol subids no\n@nogroup pids.max 5\ncarol pids.max 4\n"
                                 b"@staff subids yes\n", ACCOUNTS)
    assert [(f.line, f.code, f.severity) for f in findings] == [
        (1, "unknown-who", "warning"), (2, "unknown-who", "warning")]
    assert "no user 'carol'" in findings[0].message
    assert "no group 'nogroup'" in findings[1].message


def test_repeated_settings():
    assert lint("alice pids.max 5\nalice pids.max 5\n") == [(2, "duplicate-setting")]
    assert lint("alice pids.max 5\nalice pids.max 6\n") == [(2, "shadowed-setting")]
    assert lint("* subids yes\n* subids no\n") == [(2, "shadowed-setting")]
    assert lint("alice pids.max 5\n@staff pids.max 6\n") == []  # different WHOs


def test_a_range_hidden_by_earlier_ranges_is_shadowed():
    assert lint("1000-1999 pids.max 1\n2000-2999 pids.max 2\n1500-2500 pids.max 3\n") == [
        (3, "shadowed-setting")]
    assert lint("1000-1999 pids.max 1\n2001-2999 pids.max 2\n1500-2500 pids.max 3\n") == []
    assert lint("1000-1999 pids.max 1\n1500-2500 memory.max 3G\n") == []  # another key
    assert lint("1500-2500 pids.max 3\n1000-2999 pids.max 1\n") == []  # partly new


def test_limits_for_someone_without_a_cgroup():
    assert lint("@staff cgroup no\n@staff memory.max 1G\n") == [(2, "limit-without-cgroup")]
    assert lint("@staff cgroup yes\n@staff memory.max 1G\n") == []
    # a known user whose cgroup the whole policy turns off
    assert lint("@staff cgroup no\nalice memory.max 1G\n") == [(2, "limit-without-cgroup")]
    assert lint("@staff cgroup no\nalice cgroup yes\nalice memory.max 1G\n") == []
    # root, uid 0, is outside UID_MIN..UID_MAX: no cgroup by default
    findings = session_conf.lint("/etc/nsgate/session.conf", b"root pids.max 10\n", ACCOUNTS)
    assert [(f.line, f.code) for f in findings] == [(1, "limit-without-cgroup")]
    assert "uid 0 is outside UID_MIN..UID_MAX" in findings[0].message
    assert lint("root pids.max 10\n", login_defs=b"UID_MIN 0\n") == []


def test_the_shipped_example_and_the_man_page_example_parse():
    repo = Path(__file__).resolve().parents[1]
    example = (repo / "etc" / "session.conf.example").read_bytes()
    got = session_conf.parse(example).settings_for(b"alice", 1500, [], NO_DEFS)
    assert got.limits == {"pids.max": "4096", "memory.max": "8G", "memory.swap.max": "1G",
                          "cpu.weight": "100"}
    uncommented = b"\n".join(line.removeprefix(b"#") for line in example.splitlines()
                             if not line.startswith(b"# ") and line != b"#")
    session_conf.parse(uncommented)
    page = (repo / "man" / "nsgate-session.conf.5.scd").read_text()
    block = page.split("# EXAMPLE", 1)[1].split("```")[1]
    conf = session_conf.parse(block.encode())
    got = conf.settings_for(b"alice", 1500, [b"builders"], NO_DEFS)
    assert got.limits["memory.max"] == "64G" and got.limits["cpu.weight"] == "200"
    assert conf.settings_for(b"ci-runner", 1200, [], NO_DEFS).subids is False


RANGE_LISTS = st.lists(st.tuples(st.integers(0, 40), st.integers(0, 12)), max_size=25)


@FAST
@given(ranges=RANGE_LISTS)
def test_range_coverage_against_brute_force(ranges):
    """The lint's index of range lines (painted in file order) against counting uid by uid:
    which line decides each uid, and whether a line covers any uid no earlier one did."""
    text = "".join(f"{low}-{low + width} pids.max {n}\n"
                   for n, (low, width) in enumerate(ranges, 1))
    conf = session_conf.parse(text.encode())
    cover = session_conf_lint.FirstCover()
    fresh = [cover.paint(s.who.low, s.who.high, s) for s in conf.settings]
    seen: set[int] = set()
    for (low, width), is_fresh in zip(ranges, fresh, strict=True):
        ids = set(range(low, low + width + 1))
        assert is_fresh == bool(ids - seen)
        seen |= ids
    for uid in range(0, 55):
        expected = next((s for s in conf.settings if s.who.low <= uid <= s.who.high), None)
        assert cover.decider(uid) is expected
    shadowed = {f.line for f in session_conf.lint("p", text.encode(), ACCOUNTS)
                if f.code == "shadowed-setting"}
    for line, is_fresh in enumerate(fresh, 1):
        assert (line in shadowed) == (not is_fresh), line  # a repeat too: its value differs


WHO_CHOICES = ["*", "0-1500", "1000-1999", "1500-2500", "@staff", "@alice", "@bob", "alice",
               "bob", "root"]


@FAST
@given(lines=st.lists(st.tuples(st.sampled_from(WHO_CHOICES),
                                st.sampled_from(["cgroup yes", "cgroup no", "pids.max 5"])),
                      max_size=14),
       defs=st.sampled_from([b"", b"UID_MIN 1002\n", b"UID_MIN 0\n"]))
def test_limit_without_cgroup_agrees_with_the_resolver(lines, defs):
    """For users the accounts list, the lint's indexed decision of `cgroup` is the hook's."""
    text = "".join(f"{who} {setting}\n" for who, setting in lines).encode()
    conf = session_conf.parse(text)
    flagged = {f.line for f in session_conf.lint("p", text, ACCOUNTS, defs)
               if f.code == "limit-without-cgroup"}
    groups = {b"alice": [b"alice", b"staff"], b"bob": [b"bob"], b"root": [b"root"]}
    uids = {b"alice": 1001, b"bob": 1002, b"root": 0}
    firsts: set[tuple[str, str]] = set()
    for number, (who, setting) in enumerate(lines, 1):
        key = setting.split()[0]
        first = (who, key) not in firsts
        firsts.add((who, key))
        if key != "pids.max" or not first or who not in ("alice", "bob", "root"):
            continue
        same_who = next((s for w, s in lines if w == who and s.startswith("cgroup")), None)
        if same_who is not None:
            expected = same_who == "cgroup no"
        else:
            name = who.encode()
            expected = not conf.settings_for(name, uids[name], groups[name], defs).cgroup
        assert (number in flagged) == expected, (number, text)
