"""`nsgate subid allocate` in the modes of shadow HEAD's login.defs (linear, deterministic, the
unsafe wrap, store by uid) and `--if-missing`, the path of the session hook's `ensure`: the
deterministic start checked against shadow's formula written out here, refusals that leave the
files as they were, 16 racing allocations that leave one range per user, and the lock waits
(a dead writer's lock taken over, a live one ending a bounded wait in a refusal).

Debian's useradd (shadow 4.13) predates the deterministic mode, so the oracle for it is the
formula of shadow HEAD's lib/find_new_sub_uids.c, below, not a run of useradd."""

from __future__ import annotations

import fcntl
import itertools
import os
import subprocess
from pathlib import Path

import pytest
from nsgate.policy import subid

from tests.admin_support import (
    NSGATE_BIN,
    no_lock_left,  # noqa: F401 - the fixture, by name
    nsgate,
)
from tests.support import ALICE, BOB, CAROL, PREFIX, write_etc
from tests.test_admin_subid import assert_ok, assert_refused

pytestmark = pytest.mark.usefixtures("no_lock_left")

SUBUID = Path("/etc/subuid")
SUBGID = Path("/etc/subgid")
DEFAULT_FILE = b"nsgt-alice:200000:65536\nnsgt-bob:300000:65536\n"
MODE_KEYS = ("UID_MIN", "SUB_UID_MIN", "SUB_UID_MAX", "SUB_UID_COUNT", "SUB_GID_MIN",
             "SUB_GID_MAX", "SUB_GID_COUNT", "SUB_UID_DETERMINISTIC", "SUB_GID_DETERMINISTIC",
             "UNSAFE_SUB_UID_DETERMINISTIC_WRAP", "UNSAFE_SUB_GID_DETERMINISTIC_WRAP",
             "SUB_UID_STORE_BY_UID", "SUB_GID_STORE_BY_UID")
# Users of this module only (no line in the default subid files), added to the overlay's passwd.
EXTRA_USERS = [("nsgt-dora", 23051), ("nsgt-emil", 23052), ("nsgt-fay", 23053)]


def shadow_deterministic(defs: dict[str, str], uid: int, kind: str) -> tuple[int, int] | str:
    """shadow HEAD's find_new_sub_{u,g}ids_deterministic: (start, count), or why it fails."""
    k = kind.upper()
    uid_min = int(defs.get("UID_MIN", 1000))
    low = int(defs.get(f"SUB_{k}_MIN", 65536))
    high = int(defs.get(f"SUB_{k}_MAX", 4294967295))
    count = int(defs.get(f"SUB_{k}_COUNT", 65536))
    if uid < uid_min:
        return "below UID_MIN"
    if low > high or count == 0 or count > high - low + 1:
        return "invalid configuration"
    slots = (high - low + 1) // count
    offset = uid - uid_min
    if offset >= slots:
        if defs.get(f"UNSAFE_SUB_{k}_DETERMINISTIC_WRAP", "").lower() != "yes":
            return "exceeds SUB_MAX"
        offset %= slots
    return low + offset * count, count


def set_defs(**values: str | int) -> dict[str, str]:
    """login.defs with every key of the modes removed, then `values` set."""
    kept = [line for line in Path("/etc/login.defs").read_text().splitlines()
            if not line.split() or line.split()[0] not in MODE_KEYS]
    write_etc("login.defs", "\n".join(kept) + "\n" + "".join(f"{k} {v}\n"
                                                               for k, v in values.items()))
    return {k: str(v) for k, v in values.items()}


def lines_of(path: Path) -> list[subid.SubidLine]:
    parsed = [subid.parse_line(raw, n) for n, raw in enumerate(path.read_bytes().split(b"\n"), 1)
              if raw]
    assert all(isinstance(p, subid.SubidLine) for p in parsed), path.read_bytes()
    return [p for p in parsed if isinstance(p, subid.SubidLine)]




@pytest.fixture
def extra_users():
    passwd = Path("/etc/passwd")
    before = passwd.read_bytes()
    with passwd.open("a") as out:
        for name, uid in EXTRA_USERS:
            out.write(f"{name}:x:{uid}:{uid}::/nonexistent:/bin/sh\n")
    yield EXTRA_USERS
    passwd.write_bytes(before)


# --- the modes -------------------------------------------------------------------------------


@pytest.mark.parametrize("defs", [
    {"SUB_UID_DETERMINISTIC": "yes"},  # every other key unset: shadow's defaults
    {"SUB_UID_DETERMINISTIC": "YES", "UID_MIN": 23000, "SUB_UID_MIN": 500000,
     "SUB_UID_COUNT": 1000},
    {"SUB_UID_DETERMINISTIC": "Yes", "UID_MIN": 20000, "SUB_UID_MIN": 1000000,
     "SUB_UID_MAX": 2000000000, "SUB_UID_COUNT": 65536},
    {"SUB_UID_DETERMINISTIC": "yes", "UID_MIN": 23003, "SUB_UID_MIN": 400000,
     "SUB_UID_MAX": 465535},  # exactly one slot, the first uid's
])
def test_deterministic_start_is_shadows_formula(defs):
    defs = set_defs(**defs)
    expected = shadow_deterministic(defs, CAROL.uid, "uid")
    assert isinstance(expected, tuple), expected
    assert_ok(nsgate("subid", "allocate", CAROL.name),
              f"added {CAROL.name}:{expected[0]}:{expected[1]} to /etc/subuid")
    assert SUBUID.read_bytes() == DEFAULT_FILE + b"%s:%d:%d\n" % (CAROL.name.encode(),
                                                                   *expected)
    assert SUBGID.read_bytes() == DEFAULT_FILE  # SUB_GID_DETERMINISTIC unset: not touched
    # The same layout on another host: the same range, again, from an empty file.
    write_etc("subuid", b"")
    assert_ok(nsgate("subid", "allocate", CAROL.name))
    assert SUBUID.read_bytes() == b"%s:%d:%d\n" % (CAROL.name.encode(), *expected)


def test_subgid_deterministic_uses_the_uid_and_its_own_keys():
    defs = set_defs(SUB_GID_DETERMINISTIC="yes", UID_MIN=23000, SUB_GID_MIN=700000,
                    SUB_GID_COUNT=10, SUB_UID_MIN=400000, SUB_UID_COUNT=100)
    expected = shadow_deterministic(defs, CAROL.uid, "gid")
    assert expected == (700030, 10)
    assert_ok(nsgate("subid", "allocate", CAROL.name, "-g"),
              f"added {CAROL.name}:700030:10 to /etc/subgid")
    # /etc/subuid stays linear: SUB_UID_DETERMINISTIC is not set
    assert_ok(nsgate("subid", "allocate", CAROL.name), f"added {CAROL.name}:400000:100")


def test_a_flag_other_than_yes_keeps_the_linear_search():
    set_defs(SUB_UID_DETERMINISTIC="true", SUB_UID_STORE_BY_UID="1")
    assert_ok(nsgate("subid", "allocate", CAROL.name), f"added {CAROL.name}:100000:65536")


def test_linear_defaults_when_the_keys_are_unset():
    set_defs()
    write_etc("subuid", b"nsgt-alice:100000:65536\n")
    assert_ok(nsgate("subid", "allocate", CAROL.name), f"added {CAROL.name}:165536:65536")


@pytest.mark.parametrize("deterministic", [False, True])
def test_store_by_uid_writes_the_decimal_uid(deterministic):
    defs = set_defs(SUB_UID_STORE_BY_UID="yes", SUB_GID_STORE_BY_UID="yes",
                    **({"SUB_UID_DETERMINISTIC": "yes", "SUB_GID_DETERMINISTIC": "yes",
                        "UID_MIN": 23000, "SUB_UID_MIN": 1000000, "SUB_GID_MIN": 2000000}
                       if deterministic else {}))
    for kind, path in (("uid", SUBUID), ("gid", SUBGID)):
        start, count = (shadow_deterministic(defs, CAROL.uid, kind) if deterministic
                        else (100000, 65536))
        assert_ok(nsgate("subid", "allocate", CAROL.name, *(["-g"] if kind == "gid" else [])),
                  f"added {CAROL.uid}:{start}:{count} to {path}")
        assert path.read_bytes() == DEFAULT_FILE + b"%d:%d:%d\n" % (CAROL.uid, start, count)
    # the uid line is carol's: --if-missing finds it, under her name or her uid
    assert_ok(nsgate("subid", "allocate", CAROL.name, "--if-missing"), "already holds")
    assert_ok(nsgate("subid", "allocate", str(CAROL.uid), "--if-missing"), "already holds")


def test_deterministic_count_takes_the_first_ids_of_the_slot():
    defs = set_defs(SUB_UID_DETERMINISTIC="yes", UID_MIN=23000, SUB_UID_MIN=500000,
                    SUB_UID_COUNT=1000)
    start, _ = shadow_deterministic(defs, CAROL.uid, "uid")
    assert_ok(nsgate("subid", "allocate", CAROL.name, "--count", "10"),
              f"added {CAROL.name}:{start}:10")
    before = SUBUID.read_bytes()
    assert_refused(nsgate("subid", "allocate", CAROL.name, "--count", "1001"), 1,
                   "--count 1001 is more than SUB_UID_COUNT (1000)", "uid 23004's",
                   "nothing was changed")
    assert_refused(nsgate("subid", "allocate", CAROL.name, "--count", "10"), 1,
                   "already grants", "nothing was changed")
    assert SUBUID.read_bytes() == before


# --- refusals: nothing written ---------------------------------------------------------------


@pytest.mark.parametrize("defs, words", [
    ({"UID_MIN": 30000}, ["uid 23003 is below UID_MIN 30000: no deterministic range",
                          "nsgate subid add"]),
    ({"SUB_UID_MAX": 300000},  # 3 slots from 65536: uids 1000-1002 only
     ["the deterministic range of uid 23003 would end past SUB_UID_MAX (300000)",
      "holds 3 ranges of 65536, for uids 1000-1002", "raise SUB_UID_MAX"]),
    ({"SUB_UID_MIN": 500000, "SUB_UID_MAX": 400000}, ["invalid configuration"]),
    ({"SUB_UID_COUNT": 0}, ["SUB_UID_COUNT is 0 in /etc/login.defs: it asks for no "
                            "subordinate uids (useradd allocates none)"]),
    ({"SUB_UID_MIN": 100, "SUB_UID_MAX": 200, "SUB_UID_COUNT": 1000}, ["no room"]),
    ({"UID_MIN": 23000, "SUB_UID_MIN": 100000},  # slot 3: 296608-362143, over bob's range
     ["nsgt-carol:296608:65536, the deterministic range of uid 23003, overlaps "
      "nsgt-bob:300000:65536 on line 2 of /etc/subuid", "nsgate subid remove nsgt-bob"]),
    ({"UID_MIN": 23000, "SUB_UID_MIN": 200000 - 3 * 65536 + 10},  # starts inside alice's
     ["nsgt-carol:200010:65536", "overlaps nsgt-alice:200000:65536 on line 1"]),
    ({"UID_MIN": 23003, "SUB_UID_MIN": 22000, "SUB_UID_COUNT": 2000},
     ["contains uid 23003 (the owner's own), uid 23001 (nsgt-alice)", "raise SUB_UID_MIN"]),
    ({"SUB_UID_MIN": "0x10000"}, ["SUB_UID_MIN in /etc/login.defs is '0x10000', not a decimal"]),
    ({"UID_MIN": "-1"}, ["UID_MIN in /etc/login.defs is '-1'"]),
    ({"SUB_UID_MAX": 4294967296}, ["SUB_UID_MAX", "from 0 to 4294967295"]),
    ({"SUB_UID_STORE_BY_UID": '"yes"'}, ["SUB_UID_STORE_BY_UID in /etc/login.defs is quoted",
                                          "write the value without quotes"]),
])
@pytest.mark.parametrize("if_missing", [False, True])
def test_deterministic_refusals_write_nothing(defs, words, if_missing):
    all_defs = set_defs(SUB_UID_DETERMINISTIC="yes", **defs)
    if all(str(v).isdigit() and int(v) <= 4294967295 for v in defs.values()):
        # shadow's formula fails where nsgate does, but for a clash with the file
        expected = shadow_deterministic(all_defs, CAROL.uid, "uid")
        clash = any("overlaps" in word or "contains uid" in word for word in words)
        assert isinstance(expected, str) != clash, expected
    argv = ["subid", "allocate", CAROL.name] + (["--if-missing"] if if_missing else [])
    assert_refused(nsgate(*argv), 1, *words, "nothing was changed")
    assert SUBUID.read_bytes() == DEFAULT_FILE
    assert not Path("/etc/subuid-").exists()


def test_wrap_mode_reuses_a_slot_but_never_over_another_owners_range():
    defs = set_defs(SUB_UID_DETERMINISTIC="yes", SUB_UID_MAX=300000,
                    UNSAFE_SUB_UID_DETERMINISTIC_WRAP="yes")
    expected = shadow_deterministic(defs, CAROL.uid, "uid")
    assert expected == (65536 + (22003 % 3) * 65536, 65536)  # slot 1: 131072-196607
    assert_ok(nsgate("subid", "allocate", CAROL.name),
              f"added {CAROL.name}:131072:65536 to /etc/subuid")
    # uid 23002 (bob) wraps to slot 0; a line of another owner there makes it a refusal
    write_etc("subuid", b"nsgt-alice:65536:10\n")
    assert_refused(nsgate("subid", "allocate", BOB.name), 1, "nsgt-bob:65536:65536, the "
                   "deterministic range of uid 23002, overlaps nsgt-alice:65536:10",
                   "nothing was changed")
    assert SUBUID.read_bytes() == b"nsgt-alice:65536:10\n"


@pytest.mark.parametrize("deterministic", [False, True])
def test_a_real_uid_above_uid_max_counts(deterministic):
    """A uid above UID_MAX (60000) is still a real user: no range may swallow it."""
    passwd = Path("/etc/passwd")
    before = passwd.read_bytes()
    passwd.write_bytes(before + b"nsgt-high:x:70000:70000::/nonexistent:/bin/sh\n")
    try:
        set_defs(SUB_UID_MIN=65536, **({"SUB_UID_DETERMINISTIC": "yes", "UID_MIN": 23003}
                                       if deterministic else {}))
        assert_refused(nsgate("subid", "allocate", CAROL.name), 1,
                       "nsgt-carol:65536:65536", "contains uid 70000 (nsgt-high)",
                       "nothing was changed")
        assert_refused(nsgate("subid", "allocate", CAROL.name, "--if-missing"), 1,
                       "contains uid 70000 (nsgt-high)")
        assert SUBUID.read_bytes() == DEFAULT_FILE
    finally:
        passwd.write_bytes(before)


def test_linear_pool_that_cannot_hold_one_range_is_refused():
    set_defs(SUB_UID_MIN=100000, SUB_UID_MAX=100009, SUB_UID_COUNT=11)
    assert_refused(nsgate("subid", "allocate", CAROL.name), 1, "invalid configuration",
                   "must hold SUB_UID_COUNT ids")
    set_defs(SUB_UID_MIN=100000, SUB_UID_MAX=100009, SUB_UID_COUNT=10)  # exactly one
    assert_ok(nsgate("subid", "allocate", CAROL.name), f"added {CAROL.name}:100000:10")
    assert SUBUID.read_bytes() == DEFAULT_FILE + b"nsgt-carol:100000:10\n"


def test_sub_uid_count_0_asks_for_no_range_unless_a_count_is_given():
    set_defs(SUB_UID_COUNT=0)
    for extra in ([], ["--if-missing"]):
        assert_refused(nsgate("subid", "allocate", CAROL.name, *extra), 1,
                       "SUB_UID_COUNT is 0 in /etc/login.defs", "nothing was changed")
    assert SUBUID.read_bytes() == DEFAULT_FILE
    assert_ok(nsgate("subid", "allocate", CAROL.name, "--count", "10"),
              f"added {CAROL.name}:100000:10")


def test_linear_hole_up_to_sub_uid_max_included():
    """shadow's find_free_range: the hole before a range reaching past SUB_UID_MAX ends at
    SUB_UID_MAX itself."""
    set_defs(SUB_UID_MIN=100000, SUB_UID_MAX=165535)
    assert_ok(nsgate("subid", "allocate", CAROL.name), f"added {CAROL.name}:100000:65536")


# --- --if-missing: the path of the session hook ----------------------------------------------


@pytest.mark.parametrize("subuid, who", [
    (DEFAULT_FILE, ALICE.name),  # by name
    (DEFAULT_FILE, "nsgt-alias"),  # another name of alice's uid
    (DEFAULT_FILE + b"23003:400000:10\n", CAROL.name),  # by decimal uid
    (DEFAULT_FILE + b"nsgt-carol:400000:10\n", str(CAROL.uid)),  # asked by uid, held by name
])
def test_if_missing_leaves_a_user_who_holds_a_range_alone(subuid, who):
    write_etc("subuid", subuid)
    mtime = SUBUID.stat().st_mtime_ns
    result = nsgate("subid", "allocate", who, "--if-missing")
    assert_ok(result, f"{who} already holds a range in /etc/subuid; nothing was changed")
    assert SUBUID.read_bytes() == subuid and SUBUID.stat().st_mtime_ns == mtime
    assert not Path("/etc/subuid-").exists()


def test_if_missing_allocates_for_a_user_without_a_range():
    set_defs(SUB_GID_DETERMINISTIC="yes", UID_MIN=23000, SUB_GID_MIN=1000000)
    assert_ok(nsgate("subid", "allocate", CAROL.name, "--if-missing"),
              f"added {CAROL.name}:100000:65536 to /etc/subuid")
    assert_ok(nsgate("subid", "allocate", CAROL.name, "--if-missing", "-g"),
              f"added {CAROL.name}:{1000000 + 3 * 65536}:65536 to /etc/subgid")
    assert_ok(nsgate("subid", "allocate", CAROL.name, "--if-missing"), "already holds")
    assert_refused(nsgate("subid", "allocate", CAROL.name, "--if-missing", "--count", "5"), 2,
                   "no --count")


def test_if_missing_for_a_user_unknown_by_name():
    assert_refused(nsgate("subid", "allocate", "nsgt-nosuchuser", "--if-missing"), 1,
                   "no user 'nsgt-nosuchuser'", "nothing was changed")
    assert SUBUID.read_bytes() == DEFAULT_FILE


@pytest.mark.parametrize("deterministic", [False, True])
def test_sixteen_racing_allocations_leave_one_range_per_user(extra_users, deterministic):
    """16 concurrent `--if-missing` runs, four for each of four users without a range (by name
    and by uid), and for both files: every run succeeds, exactly one per user and file adds
    a range, the files parse, and no two owners' ranges overlap."""
    if deterministic:
        set_defs(SUB_UID_DETERMINISTIC="yes", SUB_GID_DETERMINISTIC="yes", UID_MIN=23000,
                 SUB_UID_MIN=1000000, SUB_GID_MIN=2000000, SUB_UID_STORE_BY_UID="yes")
    users = [(CAROL.name, CAROL.uid), *extra_users]
    for path, flag in ((SUBUID, []), (SUBGID, ["-g"])):
        procs = []
        for round_ in range(4):
            for name, uid in users:
                who = name if round_ % 2 == 0 else str(uid)
                procs.append(subprocess.Popen(
                    [str(NSGATE_BIN), "subid", "allocate", who, "--if-missing", *flag],
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                    env={"PATH": os.environ["PATH"]}))
        results = [(p.args[3], *p.communicate(timeout=120), p.returncode) for p in procs]
        assert [r for r in results if r[2] != "" or r[3] != 0] == []
        added = [r[0] for r in results if r[1].startswith("added ")]
        assert len(added) == len(users), results
        assert sorted(int(w) if w.isdigit() else dict(users)[w] for w in added) == \
            sorted(uid for _, uid in users)
        lines = lines_of(path)
        assert len(lines) == 2 + len(users)
        owners = [line.owner.decode() for line in lines]
        for name, uid in users:
            held = [o for o in owners if o in (name, str(uid))]
            assert len(held) == 1, (name, owners)
        ordered = sorted(lines, key=lambda x: x.start)
        assert all(a.end <= b.start for a, b in itertools.pairwise(ordered)), lines
        if deterministic:
            k = "uid" if path == SUBUID else "gid"
            defs = {"UID_MIN": "23000", f"SUB_{k.upper()}_MIN":
                    "1000000" if k == "uid" else "2000000"}
            for name, uid in users:
                start, count = shadow_deterministic(defs, uid, k)
                owner = str(uid) if k == "uid" else name
                assert f"{owner}:{start}:{count}" in path.read_text().splitlines()


# --- the locks -------------------------------------------------------------------------------


def test_if_missing_takes_over_the_stale_lock_of_a_dead_writer():
    dead = subprocess.Popen(["true"])
    dead.wait()
    Path("/etc/subuid.lock").write_bytes(b"%d\0" % dead.pid)
    assert_ok(nsgate("subid", "allocate", CAROL.name, "--if-missing"),
              f"added {CAROL.name}:100000:65536")
    assert SUBUID.read_bytes() == DEFAULT_FILE + b"nsgt-carol:100000:65536\n"


ENSURE = """
import sys
sys.path.insert(0, {libdir!r})
from nsgate.errors import Refusal
from nsgate.system import accounts, subid_writer
try:
    print(subid_writer.ensure("uid", b"nsgt-carol", 23003, accounts.load(), b"",
                              lock_wait=float(sys.argv[1])))
except Refusal as refusal:
    sys.stderr.write(refusal.text("ensure"))
    sys.exit(1)
"""


def run_ensure(wait: float) -> subprocess.CompletedProcess[str]:
    """subid_writer.ensure from the installed prefix, as the session hook calls it."""
    code = ENSURE.format(libdir=str(PREFIX / "lib" / "nsgate"))
    return subprocess.run(["/usr/bin/python3", "-I", "-c", code, str(wait)], capture_output=True,
                          text=True, timeout=60, env={"PATH": os.environ["PATH"]})


@pytest.mark.parametrize("held", ["lckpwdf", "link"])
def test_a_live_lock_holder_ends_a_bounded_wait_in_a_refusal(held):
    if held == "lckpwdf":
        fd = os.open("/etc/.pwd.lock", os.O_WRONLY | os.O_CREAT, 0o600)
        fcntl.lockf(fd, fcntl.LOCK_EX)  # a live writer holding it: this process
        release = lambda: os.close(fd)  # noqa: E731
        words = ["/etc/.pwd.lock is busy", "for over 0.3 s"]
    else:
        Path("/etc/subuid.lock").write_bytes(b"%d\0" % os.getpid())  # a live writer: us
        release = Path("/etc/subuid.lock").unlink
        words = [f"/etc/subuid.lock is held by process {os.getpid()}", "after 0.3 s"]
    try:
        result = run_ensure(0.3)
    finally:
        release()
    assert result.returncode == 1 and result.stdout == "", result
    for word in words:
        assert word in result.stderr, result.stderr
    assert "nothing was changed" in result.stderr
    assert SUBUID.read_bytes() == DEFAULT_FILE and not Path("/etc/subuid-").exists()
    # once the holder is gone, the same call allocates
    done = run_ensure(0.3)
    assert (done.returncode, done.stderr) == (0, ""), done
    assert done.stdout == "added nsgt-carol:100000:65536 to /etc/subuid\n"


def test_ensure_with_a_user_already_holding_takes_no_lock():
    """The usual login: the range is there, so useradd's lock is not even waited for."""
    fd = os.open("/etc/.pwd.lock", os.O_WRONLY | os.O_CREAT, 0o600)
    fcntl.lockf(fd, fcntl.LOCK_EX)
    try:
        write_etc("subuid", DEFAULT_FILE + b"nsgt-carol:400000:10\n")
        result = run_ensure(30)
    finally:
        os.close(fd)
    assert (result.returncode, result.stdout, result.stderr) == (0, "None\n", ""), result


def test_ensure_on_a_read_only_etc_is_a_refusal():
    subprocess.run(["mount", "-o", "remount,ro", "/etc"], check=True)
    try:
        result = run_ensure(1)
    finally:
        subprocess.run(["mount", "-o", "remount,rw", "/etc"], check=True)
    assert result.returncode == 1 and "Read-only file system" in result.stderr, result
    assert "nothing was changed" in result.stderr
    assert SUBUID.read_bytes() == DEFAULT_FILE
