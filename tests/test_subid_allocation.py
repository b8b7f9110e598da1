"""The pure allocation of policy/subid_edit.py, from bytes, without privilege: the deterministic
slot equals shadow HEAD's formula (written out here, from lib/find_new_sub_uids.c) for any
login.defs, the linear search finds the lowest free hole (checked against a brute force), an
allocation never overlaps another owner or swallows a real id, and `ensure` recognises a user's
range by name, by uid and by another name of the uid."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nsgate.errors import Refusal
from nsgate.policy import subid, subid_edit, subid_lint
from nsgate.policy.accounts import Accounts

ACCOUNTS = Accounts([(b"alice", 1000, 1000), (b"bob", 1001, 1001), (b"alias", 1000, 1000),
                     (b"carol", 1002, 1002), (b"high", 70000, 70000)],
                    [(b"alice", 1000, []), (b"bob", 1001, [])])
UINT32_MAX = 4294967295


def shadow_deterministic(defs: dict[str, int | str], uid: int,
                         kind: str) -> tuple[int, int] | None:
    """find_new_sub_{u,g}ids_deterministic of shadow HEAD: (start, count), None on its errors."""
    k = kind.upper()
    uid_min = int(defs.get("UID_MIN", 1000))
    low = int(defs.get(f"SUB_{k}_MIN", 65536))
    high = int(defs.get(f"SUB_{k}_MAX", 4294967295))
    count = int(defs.get(f"SUB_{k}_COUNT", 65536))
    if uid < uid_min or low > high or count == 0 or count > high - low + 1:
        return None
    slots = (high - low + 1) // count
    offset = uid - uid_min
    if offset >= slots:
        if str(defs.get(f"UNSAFE_SUB_{k}_DETERMINISTIC_WRAP", "")).lower() != "yes":
            return None
        offset %= slots
    return low + offset * count, count


def login_defs(defs: dict[str, int | str]) -> bytes:
    return b"# login.defs\n" + b"".join(b"%s\t%s\n" % (k.encode(), str(v).encode())
                                         for k, v in defs.items())


NUMBERS = st.one_of(st.integers(0, 100), st.integers(0, 1 << 20), st.integers(0, UINT32_MAX))
DEFS = st.fixed_dictionaries({}, optional={
    "UID_MIN": NUMBERS, "SUB_UID_MIN": NUMBERS, "SUB_UID_MAX": NUMBERS,
    "SUB_UID_COUNT": NUMBERS, "SUB_GID_MIN": NUMBERS, "SUB_GID_MAX": NUMBERS,
    "SUB_GID_COUNT": NUMBERS,
    "UNSAFE_SUB_UID_DETERMINISTIC_WRAP": st.sampled_from(["yes", "YES", "no", "1"]),
    "UNSAFE_SUB_GID_DETERMINISTIC_WRAP": st.sampled_from(["yes", "Yes", "no"])})


@settings(max_examples=2000, deadline=None)
@given(DEFS, st.one_of(st.integers(0, 100), st.integers(0, 1 << 20), st.integers(0, UINT32_MAX)),
       st.sampled_from(["uid", "gid"]))
def test_deterministic_slot_is_shadows_formula(defs, uid, kind):
    expected = shadow_deterministic(defs, uid, kind)
    try:
        got = subid_edit.deterministic_range(login_defs(defs), kind, uid)
    except Refusal as refusal:
        assert expected is None, (refusal.first, expected)
        return
    assert got == expected
    assert got[0] + got[1] <= subid.ID_SPACE_END


@pytest.mark.parametrize("defs, uid, expected", [
    ({}, 1000, (65536, 65536)),  # every key unset: UID_MIN 1000, SUB_UID_MIN 65536 ...
    ({}, 1001, (131072, 65536)),
    ({}, 1000 + 65534, (65536 + 65534 * 65536, 65536)),  # the last slot below 2^32
    ({"UID_MIN": 500, "SUB_UID_COUNT": 10}, 512, (65536 + 120, 10)),
    ({"SUB_UID_MAX": 300000, "UNSAFE_SUB_UID_DETERMINISTIC_WRAP": "yes"}, 1004, (131072, 65536)),
])
def test_deterministic_examples(defs, uid, expected):
    assert subid_edit.deterministic_range(login_defs(defs), "uid", uid) == expected


@pytest.mark.parametrize("defs, uid, first_line", [
    ({}, 999, "uid 999 is below UID_MIN 1000: no deterministic range"),
    ({}, 1000 + 65535, "the deterministic range of uid 66535 would end past SUB_UID_MAX "
                       "(4294967295)"),
    ({"SUB_UID_COUNT": 0}, 1000, "invalid configuration in /etc/login.defs"),
    ({"SUB_UID_MIN": 2, "SUB_UID_MAX": 1}, 1000, "invalid configuration"),
    ({"SUB_UID_MIN": "010"}, 1000, "SUB_UID_MIN in /etc/login.defs is '010', not a decimal"),
    ({"SUB_UID_MAX": UINT32_MAX + 1}, 1000, "SUB_UID_MAX in /etc/login.defs is"),
    ({"SUB_UID_COUNT": '"10"'}, 1000, "SUB_UID_COUNT in /etc/login.defs is quoted"),
    ({"UNSAFE_SUB_UID_DETERMINISTIC_WRAP": '"yes"', "SUB_UID_MAX": 200000}, 1005,
     "UNSAFE_SUB_UID_DETERMINISTIC_WRAP in /etc/login.defs is quoted"),
])
def test_deterministic_refusals(defs, uid, first_line):
    with pytest.raises(Refusal) as refusal:
        subid_edit.deterministic_range(login_defs(defs), "uid", uid)
    assert refusal.value.first.startswith(first_line), refusal.value.first
    assert "nothing was changed" in refusal.value.text("nsgate")


def brute_force_first_fit(lines: list[subid.SubidLine], low: int, high: int,
                          count: int) -> int | None:
    candidates = sorted({low} | {line.end for line in lines if line.end >= low})
    for start in candidates:
        if start + count - 1 > high:
            return None
        if all(line.end <= start or line.start >= start + count for line in lines):
            return start
    return None


LINES = st.lists(st.builds(lambda o, s, c: b"%s:%d:%d" % (o, s, c),
                           st.sampled_from([b"alice", b"bob", b"1000", b"ghost"]),
                           st.integers(0, 1 << 12), st.integers(1, 1 << 10)), max_size=10)


@settings(max_examples=1000, deadline=None)
@given(LINES, st.integers(0, 1 << 12), st.integers(0, 1 << 12), st.integers(1, 1 << 11))
def test_linear_search_is_the_first_free_hole(lines, low, span, count):
    valid = subid_lint.valid_lines(b"\n".join(lines))
    assert subid_edit.find_free_range(valid, low, low + span, count) == \
        brute_force_first_fit(valid, low, low + span, count)


def test_linear_hole_reaches_sub_uid_max_included():
    lines = subid_lint.valid_lines(b"x:200000:10\n")
    assert subid_edit.find_free_range(lines, 100000, 165535, 65536) == 100000
    assert subid_edit.find_free_range(lines, 100000, 165534, 65536) is None


@settings(max_examples=500, deadline=None)
@given(LINES, st.booleans(), st.booleans(), st.integers(0, 1 << 12), st.integers(1, 1 << 10),
       st.sampled_from([(b"carol", 1002), (b"dora", 999), (b"dora", 1005), (b"alias", 1000)]))
def test_an_allocation_overlaps_no_other_owner_and_no_real_id(lines, deterministic, by_uid,
                                                              low, count, user):
    """dora is a directory user NSS does not enumerate: her own uid is a real id all the same."""
    name, uid = user
    defs = {"SUB_UID_MIN": low, "SUB_UID_MAX": low + (1 << 13), "SUB_UID_COUNT": count,
            "SUB_UID_DETERMINISTIC": "yes" if deterministic else "no",
            "SUB_UID_STORE_BY_UID": "yes" if by_uid else "no"}
    data = b"\n".join(lines) + b"\n"
    try:
        edit = subid_edit.allocate(data, "/etc/subuid", "uid", name, uid, login_defs(defs),
                                   None, ACCOUNTS)
    except Refusal:
        return
    assert edit.content.startswith(data)
    new = subid.parse_line(edit.content[len(data):-1], 0)
    assert isinstance(new, subid.SubidLine)
    assert new.owner == (b"%d" % uid if by_uid else name)
    if deterministic:
        assert (new.start, new.count) == shadow_deterministic(defs, uid, "uid")
    for line in subid_lint.valid_lines(data):
        if ACCOUNTS.owner_key(line.owner) != ACCOUNTS.owner_key(new.owner):
            assert line.end <= new.start or line.start >= new.end
    assert not ACCOUNTS.known_ids_in("uid", new.start, new.end)
    assert not new.start <= uid < new.end


def test_a_quoted_mode_flag_is_refused():
    """shadow HEAD reads `"yes"` as not yes, shadow 4.13 as yes: neither is assumed."""
    for key in (b"SUB_UID_DETERMINISTIC", b"SUB_UID_STORE_BY_UID"):
        with pytest.raises(Refusal) as refusal:
            subid_edit.allocate(b"", "/etc/subuid", "uid", b"carol", 1002,
                                key + b' "yes"\n', None, ACCOUNTS)
        assert refusal.value.first.startswith(f"{key.decode()} in /etc/login.defs is quoted")


def test_store_by_uid_and_gid_keys():
    defs = login_defs({"SUB_GID_STORE_BY_UID": "YES"})
    assert subid_edit.stored_owner(defs, "gid", b"carol", 1002) == b"1002"
    assert subid_edit.stored_owner(defs, "uid", b"carol", 1002) == b"carol"


@pytest.mark.parametrize("data, name, uid, held", [
    (b"alice:200000:10\n", b"alice", 1000, True),
    (b"1000:200000:10\n", b"alice", 1000, True),
    (b"alias:200000:10\n", b"alice", 1000, True),  # another name of uid 1000
    (b"alice:200000:0\nalice:x:1\n# alice:1:1\n", b"alice", 1000, False),  # not valid lines
    (b"bob:200000:10\n1001:1:1\n", b"alice", 1000, False),
    (b"diruser:5:5\n", b"diruser", 5000, True),  # a name NSS does not enumerate
])
def test_ensure_finds_the_users_range(data, name, uid, held):
    found = subid_edit.ensure(data, "/etc/subuid", "uid", name, uid, b"", ACCOUNTS)
    if held:
        assert found is None
    else:
        assert found is not None and found.content.startswith(data)
        assert found.report.startswith(f"added {name.decode()}:")


def test_ensure_refuses_rather_than_overlap_in_deterministic_mode():
    defs = login_defs({"SUB_UID_DETERMINISTIC": "yes", "SUB_UID_MIN": 100000})
    with pytest.raises(Refusal) as refusal:
        subid_edit.ensure(b"bob:231000:100\n", "/etc/subuid", "uid", b"carol", 1002, defs,
                          ACCOUNTS)
    assert "carol:231072:65536, the deterministic range of uid 1002, overlaps " \
        "bob:231000:100 on line 1" in refusal.value.first


def test_the_own_uid_of_a_user_nsgate_cannot_enumerate_is_a_real_id():
    with pytest.raises(Refusal) as refusal:
        subid_edit.ensure(b"", "/etc/subuid", "uid", b"diruser", 150000, b"", ACCOUNTS)
    assert refusal.value.first == ("diruser:100000:65536 contains uid 150000 (the owner's "
                                   "own)")


OWNER_LINES = st.lists(st.one_of(
    st.builds(lambda o, s, c, sp: b"%s%s:%d:%d" % (sp, o, s, c),
              st.sampled_from([b"alice", b"alias", b"1000", b"01000", b"bob", b"1001", b"al",
                               b"#alice", b"+alice", b"alice2"]),
              st.integers(0, 1 << 33), st.integers(0, 10), st.sampled_from([b"", b" "])),
    st.binary(max_size=20).filter(lambda b: b"\n" not in b)), max_size=8)


@settings(max_examples=1000, deadline=None)
@given(OWNER_LINES, st.booleans())
def test_held_range_is_any_valid_line_of_the_user(lines, final_newline):
    data = b"\n".join(lines) + (b"\n" if final_newline else b"")
    expected = [line for line in subid_lint.valid_lines(data)
                if line.owner == b"alice" or ACCOUNTS.owner_uid(line.owner) == 1000]
    found = subid_edit.held_range(data, b"alice", 1000, ACCOUNTS)
    assert (found is None) == (not expected)
    if found is not None:
        assert (found.owner, found.start, found.count) == \
            (expected[0].owner, expected[0].start, expected[0].count)


@pytest.mark.parametrize("name", [b"evil\nroot:0:1", b"a:b", b"two words", b"#x", b"-x", b"",
                                  b"tab\there", b"esc\x1b[0m"])
def test_a_name_that_cannot_be_an_owner_field_is_refused(name):
    """A directory user's name is not checked by useradd: a newline in it would add a line."""
    with pytest.raises(Refusal) as refusal:
        subid_edit.ensure(b"", "/etc/subuid", "uid", name, 5000, b"", ACCOUNTS)
    assert "cannot be an owner in /etc/subuid" in refusal.value.first
    assert refusal.value.first.isprintable()
    by_uid = subid_edit.ensure(b"", "/etc/subuid", "uid", name, 5000,
                               b"SUB_UID_STORE_BY_UID yes\n", ACCOUNTS)
    assert by_uid is not None and by_uid.content == b"5000:100000:65536\n"
