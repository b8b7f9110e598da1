"""`nsgate subid add|remove|allocate`: byte-for-byte results (comments, blank and unknown lines
kept), the backup, owner and mode kept, refusals, the allocation checked against `useradd` as
the oracle, and a race against `usermod --add-subuids` under shadow's lock."""

from __future__ import annotations

import fcntl
import os
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest
from nsgate.policy import subid

from tests.admin_support import (
    NSGATE_BIN,
    no_lock_left,  # noqa: F401 - the fixture, by name
    nsgate,
)
from tests.support import ALICE, BOB, lock_holders, lock_waiters, wait_for, wchan, write_etc

pytestmark = pytest.mark.usefixtures("no_lock_left")

SUBUID = Path("/etc/subuid")
SUBGID = Path("/etc/subgid")
ORIGINAL = (b"# subordinate uids, kept by hand\n"
            b"nsgt-alice:200000:65536\n"
            b"\n"
            b"  weird: line \xff\xfe kept as it is\n"
            b"nsgt-bob:300000:65536\n")


def assert_ok(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert (result.returncode, result.stderr) == (0, ""), result
    for word in words:
        assert word in result.stdout, result.stdout


def assert_refused(result: subprocess.CompletedProcess[str], status: int, *words: str) -> None:
    assert result.returncode == status, result
    assert result.stdout == "" and result.stderr.startswith("nsgate: "), result
    for word in words:
        assert word in result.stderr, result.stderr




# --- add -------------------------------------------------------------------------------------


def test_add_appends_and_keeps_everything_else_byte_for_byte():
    write_etc("subuid", ORIGINAL, mode=0o640)
    os.chown(SUBUID, 0, 42)  # group shadow, as some distributions have it
    before = SUBUID.stat()
    assert_ok(nsgate("subid", "add", "nsgt-carol", "400000", "65536"),
              "added nsgt-carol:400000:65536 to /etc/subuid")
    assert SUBUID.read_bytes() == ORIGINAL + b"nsgt-carol:400000:65536\n"
    after = SUBUID.stat()
    assert (after.st_uid, after.st_gid, stat.S_IMODE(after.st_mode)) == (0, 42, 0o640)
    assert after.st_ino != before.st_ino  # a new file renamed over the old one
    backup = Path("/etc/subuid-")
    assert backup.read_bytes() == ORIGINAL
    st = backup.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 42, 0o640)
    assert st.st_mtime_ns == before.st_mtime_ns


def test_add_to_a_file_without_a_final_newline():
    write_etc("subuid", b"nsgt-alice:200000:65536")
    assert_ok(nsgate("subid", "add", "nsgt-bob", "300000", "65536"))
    assert SUBUID.read_bytes() == b"nsgt-alice:200000:65536\nnsgt-bob:300000:65536\n"


def test_add_by_uid_and_to_subgid():
    assert_ok(nsgate("subid", "add", "23003", "400000", "10", "-g"))
    assert SUBGID.read_text().endswith("nsgt-bob:300000:65536\n23003:400000:10\n")
    assert "23003" not in SUBUID.read_text()
    assert_ok(nsgate("subid", "add", "--gid", "nsgt-carol", "400010", "10"))
    assert SUBGID.read_text().endswith("23003:400000:10\nnsgt-carol:400010:10\n")


def test_add_creates_a_missing_file():
    SUBUID.unlink()
    assert_ok(nsgate("subid", "add", "nsgt-carol", "400000", "65536"))
    assert SUBUID.read_bytes() == b"nsgt-carol:400000:65536\n"
    st = SUBUID.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o644)


@pytest.mark.parametrize("argv, words", [
    (["nsgt-carol", "265000", "10"],
     ["overlaps nsgt-alice:200000:65536 on line 2 of /etc/subuid", "nsgate subid allocate"]),
    (["nsgt-alice", "200000", "65536"], ["already grants", "line 2"]),
    (["23001", "200000", "65536"], ["already grants", "line 2 is nsgt-alice:200000:65536"]),
    (["nsgt-alias", "200000", "65536"], ["already grants"]),
    (["nsgt-carol", "23000", "2"], ["contains uid 23001 (nsgt-alice)"]),
    (["nsgt-carol", "23003", "1"], ["contains uid 23003 (the owner's own)"]),
    (["nsgt-nosuchuser", "400000", "10"], ["no user 'nsgt-nosuchuser'"]),
])
def test_add_refusals_change_nothing(argv, words):
    write_etc("subuid", ORIGINAL)
    assert_refused(nsgate("subid", "add", *argv), 1, *words, "nothing was changed")
    assert SUBUID.read_bytes() == ORIGINAL
    assert not Path("/etc/subuid-").exists()


@pytest.mark.parametrize("argv, words", [
    (["nsgt-carol", "0x61a80", "10"], "START must be a decimal number"),
    (["nsgt-carol", "400000", "010"], "COUNT must be a decimal number"),
    (["nsgt-carol", "-1", "10"], "unknown option"),
    (["nsgt-carol", "400000", "0"], "COUNT must be at least 1"),
    (["nsgt-carol", "4294967295", "2"], "goes past the last id"),
    (["nsgt-carol", "400000"], "usage: nsgate subid"),
    (["bad:name", "400000", "10"], "cannot be an owner"),
    (["nsgt-carol", "400000", "10", "--count", "3"], "unknown option"),
])
def test_bad_arguments_are_usage_errors(argv, words):
    write_etc("subuid", ORIGINAL)
    assert_refused(nsgate("subid", "add", *argv), 2, words)
    assert SUBUID.read_bytes() == ORIGINAL


def test_subid_needs_root():
    write_etc("subuid", ORIGINAL)
    for argv in (["add", "nsgt-alice", "400000", "10"], ["remove", "nsgt-alice", "200000",
                                                           "65536"], ["allocate", "nsgt-alice"]):
        assert_refused(nsgate("subid", *argv, user=ALICE), 1, "must run as root")
    assert SUBUID.read_bytes() == ORIGINAL


def test_a_symlinked_file_is_not_written_through():
    real = Path("/etc/subuid.real")
    real.write_bytes(ORIGINAL)
    SUBUID.unlink()
    SUBUID.symlink_to(real)
    try:
        assert_refused(nsgate("subid", "add", "nsgt-carol", "400000", "10"), 1,
                       "symbolic link")
        assert SUBUID.is_symlink() and real.read_bytes() == ORIGINAL
    finally:
        real.unlink()


def test_an_untrusted_file_is_not_rewritten():
    write_etc("subuid", ORIGINAL, mode=0o666)
    assert_refused(nsgate("subid", "add", "nsgt-carol", "400000", "10"), 1,
                   "refusing to trust /etc/subuid")
    assert SUBUID.read_bytes() == ORIGINAL


def test_a_stale_lock_of_a_dead_writer_is_taken_over():
    dead = subprocess.Popen(["true"])
    dead.wait()  # its pid no longer runs
    Path("/etc/subuid.lock").write_bytes(b"%d\0" % dead.pid)
    assert_ok(nsgate("subid", "add", "nsgt-carol", "400000", "10"))
    assert SUBUID.read_text().endswith("nsgt-carol:400000:10\n")


def test_a_lock_without_a_pid_is_left_alone_and_named():
    Path("/etc/subuid.lock").write_bytes(b"")
    try:
        assert_refused(nsgate("subid", "add", "nsgt-carol", "400000", "10"), 1,
                       "the lock file /etc/subuid.lock holds no valid pid",
                       "if no tool is editing the file now, remove /etc/subuid.lock")
    finally:
        Path("/etc/subuid.lock").unlink()


PWD_LOCK = Path("/etc/.pwd.lock")


@pytest.mark.parametrize("held", ["lckpwdf", "link"])
def test_waits_while_another_writer_holds_the_lock(held):
    if held == "lckpwdf":
        fd = os.open("/etc/.pwd.lock", os.O_WRONLY | os.O_CREAT, 0o600)
        fcntl.lockf(fd, fcntl.LOCK_EX)
        release = lambda: os.close(fd)  # noqa: E731
    else:
        Path("/etc/subuid.lock").write_bytes(b"%d\0" % os.getpid())  # a live writer: us
        release = Path("/etc/subuid.lock").unlink
    proc = subprocess.Popen([str(NSGATE_BIN), "subid", "add", "nsgt-carol", "400000", "10"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:  # seen waiting by the kernel: blocked on lckpwdf, or holding it and polling the link
        if held == "lckpwdf":
            waiting = lambda: proc.pid in lock_waiters(PWD_LOCK)  # noqa: E731
        else:
            waiting = lambda: (proc.pid in lock_holders(PWD_LOCK)  # noqa: E731
                               and "nanosleep" in wchan(proc.pid))
        wait_for(lambda: waiting() or proc.poll() is not None, "the writer to wait for the lock")
        assert proc.poll() is None, proc.communicate()
        assert "nsgt-carol" not in SUBUID.read_text()
    finally:
        release()
    out, err = proc.communicate(timeout=20)
    assert "added nsgt-carol:400000:10" in out
    assert (proc.returncode, err) == (0, ""), err
    assert SUBUID.read_text().endswith("nsgt-carol:400000:10\n")


# --- remove ----------------------------------------------------------------------------------


def test_remove_takes_exactly_the_matching_line():
    write_etc("subuid", ORIGINAL + b"23002:400000:10\nnsgt-bob:300000:65536")
    assert_ok(nsgate("subid", "remove", "nsgt-bob", "300000", "65536"),
              "removed nsgt-bob:300000:65536 from /etc/subuid (lines 5, 7)")
    assert SUBUID.read_bytes() == ORIGINAL.replace(b"nsgt-bob:300000:65536\n", b"") + \
        b"23002:400000:10\n"
    assert Path("/etc/subuid-").read_bytes() == ORIGINAL + b"23002:400000:10\n" \
        b"nsgt-bob:300000:65536"


def test_remove_keeps_a_missing_final_newline():
    write_etc("subuid", b"nsgt-alice:200000:65536\nnsgt-bob:300000:65536\nnsgt-carol:1:1")
    assert_ok(nsgate("subid", "remove", "nsgt-bob", "300000", "65536"))
    assert SUBUID.read_bytes() == b"nsgt-alice:200000:65536\nnsgt-carol:1:1"


def test_remove_of_a_user_that_no_longer_exists():
    write_etc("subuid", ORIGINAL + b"nsgt-gone:500000:10\n")
    assert_ok(nsgate("subid", "remove", "nsgt-gone", "500000", "10"))
    assert SUBUID.read_bytes() == ORIGINAL


def test_remove_by_name_does_not_match_uid_lines():
    write_etc("subuid", ORIGINAL + b"23002:400000:10\n")
    assert_refused(nsgate("subid", "remove", "nsgt-bob", "400000", "10"), 1,
                   "/etc/subuid has no line nsgt-bob:400000:10",
                   "23002:400000:10 (line 6)", "nothing was changed")
    assert SUBUID.read_bytes() == ORIGINAL + b"23002:400000:10\n"
    assert_ok(nsgate("subid", "remove", "23002", "400000", "10"))
    assert SUBUID.read_bytes() == ORIGINAL


def test_remove_from_subgid():
    assert_ok(nsgate("subid", "remove", "-g", "nsgt-alice", "200000", "65536"))
    assert SUBGID.read_text() == "nsgt-bob:300000:65536\n"
    assert SUBUID.read_text() == "nsgt-alice:200000:65536\nnsgt-bob:300000:65536\n"


# --- allocate: useradd is the oracle ---------------------------------------------------------


def _defs(**values: int | str) -> None:
    text = Path("/etc/login.defs").read_text()
    text = "\n".join(line for line in text.splitlines() if not line.startswith("SUB_"))
    write_etc("login.defs", text + "\n" + "".join(f"{k} {v}\n" for k, v in values.items()))


def _range_of(path: Path, owner: str) -> tuple[int, int]:
    found = [line.split(":") for line in path.read_text().splitlines()
             if line.startswith(owner + ":")]
    assert len(found) == 1, found
    return int(found[0][1]), int(found[0][2])


@pytest.mark.parametrize("subuid, subgid, defs", [
    ("nsgt-alice:200000:65536\nnsgt-bob:300000:65536\n", None, {}),
    ("nsgt-alice:100000:65536\nnsgt-bob:170000:65536\n# note\n23003:235536:10\n",
     "nsgt-bob:100000:1\n", {}),
    ("nsgt-bob:100000:65536\nnsgt-alice:600000:100\n", None,
     {"SUB_UID_MIN": 500000, "SUB_UID_MAX": 900000, "SUB_UID_COUNT": 1000,
      "SUB_GID_MIN": 700000, "SUB_GID_COUNT": 5}),
    ("nsgt-alice:100000:1\nnsgt-bob:165537:10\n",  # a hole of exactly 65536
     "nsgt-alice:100000:65536\nnsgt-bob:165537:10\n", {}),
])
def test_allocate_picks_what_useradd_picks(subuid, subgid, defs):
    write_etc("subuid", subuid)
    write_etc("subgid", subgid if subgid is not None else subuid)
    if defs:
        _defs(**defs)
    before = {path: path.read_bytes() for path in (SUBUID, SUBGID)}
    subprocess.run(["useradd", "-M", "nsgt-dave"], check=True, capture_output=True)
    try:
        shadow_uid = _range_of(SUBUID, "nsgt-dave")
        shadow_gid = _range_of(SUBGID, "nsgt-dave")
    finally:
        subprocess.run(["userdel", "nsgt-dave"], check=True, capture_output=True)
    for path, data in before.items():
        path.write_bytes(data)
    assert_ok(nsgate("subid", "allocate", "nsgt-carol"))
    assert_ok(nsgate("subid", "allocate", "nsgt-carol", "-g"))
    assert _range_of(SUBUID, "nsgt-carol") == shadow_uid
    assert _range_of(SUBGID, "nsgt-carol") == shadow_gid
    assert SUBUID.read_bytes() == before[SUBUID] + b"nsgt-carol:%d:%d\n" % shadow_uid


def test_allocate_with_a_count_and_when_the_pool_is_full():
    assert_ok(nsgate("subid", "allocate", "nsgt-carol", "--count", "10"),
              "added nsgt-carol:100000:10")
    assert_ok(nsgate("subid", "allocate", "nsgt-carol", "--count=5"),
              "added nsgt-carol:100010:5")
    _defs(SUB_UID_MIN=200000, SUB_UID_MAX=300000, SUB_UID_COUNT=65536)
    before = SUBUID.read_bytes()
    assert_refused(nsgate("subid", "allocate", "nsgt-carol"), 1, "no free range of 65536 ids")
    assert SUBUID.read_bytes() == before
    _defs(SUB_UID_MIN="0x100000")
    assert_refused(nsgate("subid", "allocate", "nsgt-carol"), 1, "SUB_UID_MIN")
    assert_refused(nsgate("subid", "allocate", "nsgt-carol", "--count", "0"), 2,
                   "at least 1")


# --- the race against shadow's own writer ----------------------------------------------------


ROUNDS = 40


def test_no_update_is_lost_racing_usermod():
    """nsgate adds 40 ranges for alice while usermod adds 40 for bob, at the same time (two
    loops of each, so that writers keep meeting); a reader samples the file throughout. Every
    range lands, every run succeeds, and every sample parses."""
    write_etc("subuid", ORIGINAL)
    ours = [(1_000_000 + i * 100, 10) for i in range(ROUNDS)]
    theirs = [(2_000_000 + i * 100, 10) for i in range(ROUNDS)]
    failures: list[str] = []
    samples: list[bytes] = []
    done = threading.Event()

    def nsgate_loop(ranges: list[tuple[int, int]]) -> None:
        for start, count in ranges:
            result = nsgate("subid", "add", ALICE.name, str(start), str(count))
            if result.returncode != 0:
                failures.append(result.stderr)

    def usermod_loop(ranges: list[tuple[int, int]]) -> None:
        for start, count in ranges:
            result = subprocess.run(["usermod", "--add-subuids", f"{start}-{start + count - 1}",
                                     BOB.name], capture_output=True, text=True, timeout=60)
            if result.returncode != 0:
                failures.append(result.stderr)

    def reader() -> None:
        while not done.is_set():
            samples.append(SUBUID.read_bytes())
            time.sleep(0.001)

    threads = [threading.Thread(target=loop, args=(ranges[half::2],))
               for loop, ranges in ((nsgate_loop, ours), (usermod_loop, theirs))
               for half in (0, 1)]
    sampler = threading.Thread(target=reader)
    sampler.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done.set()
    sampler.join()
    assert failures == []
    final = SUBUID.read_text(errors="surrogateescape").splitlines()
    for owner, ranges in ((ALICE.name, ours), (BOB.name, theirs)):
        for start, count in ranges:
            assert f"{owner}:{start}:{count}" in final, (owner, start)
    assert len(samples) > 50
    for sample in samples:
        assert sample.endswith(b"\n")
        for number, line in enumerate(sample.split(b"\n")[:-1], 1):
            if line.startswith(b"#") or not line.strip() or line.startswith(b"  weird"):
                continue
            assert isinstance(subid.parse_line(line, number), subid.SubidLine), line
