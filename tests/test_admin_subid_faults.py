"""Crash consistency of what `nsgate subid` writes (issue 4, fault injection, for the writer issue
5 added): the command is killed, or a system call fails, at every system call from taking
shadow's lock to the end of an `add`, while `usermod --add-subuids` adds ranges for another user
all along. After each fault /etc/subuid and its backup parse, keep everything they held, and are
root's 0644; the added line is there exactly when the command said so (an EIO) or whole or not
at all (a kill); no lock is left that blocks the next writer; and no update of usermod's is lost.
The backup is checked once usermod has stopped: shadow rewrites it in place, so a reader can
catch it half written by usermod (nsgate's own is written aside and renamed).

Faults are injected by strace (`-e inject=NAME:signal=KILL:when=N`, `error=EIO`) on the
installed command, as root, which is who runs it."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import threading
from pathlib import Path

import pytest
from nsgate.policy import subid

from tests.admin_support import NSGATE_BIN, nsgate
from tests.support import ALICE, BOB, write_etc

SUBUID = Path("/etc/subuid")
BACKUP = Path("/etc/subuid-")
ORIGINAL = (b"# subordinate uids, kept by hand\n"
            b"nsgt-alice:200000:65536\n"
            b"\n"
            b"  weird: line \xff\xfe kept as it is\n")
TRACE = "/run/nsgate-test/subid-trace"
STALE_FOR_USERMOD = re.compile(r"usermod: lock /etc/subuid\.lock already used by PID \d+\n"
                               r"usermod: cannot lock /etc/subuid; try again later\.\n")


def add_argv(start: int) -> list[str]:
    return [str(NSGATE_BIN), "subid", "add", ALICE.name, str(start), "10"]


def calls_from_the_lock_on(start: int) -> list[tuple[str, int]]:
    """(system call, its n-th invocation) for every call of one successful `add`, from opening
    /etc/.pwd.lock (where shadow's lock, and with it every change, begins) to the end."""
    result = subprocess.run(["strace", "-qq", "-o", TRACE, *add_argv(start)],
                            capture_output=True, text=True, timeout=60,
                            env={"PATH": os.environ["PATH"]})
    assert result.returncode == 0, result.stderr
    with open(TRACE) as trace:
        lines = [line for line in trace if re.match(r"[a-z_0-9]+\(", line)]
    first = next(i for i, line in enumerate(lines) if '"/etc/.pwd.lock"' in line)
    seen: dict[str, int] = {}
    points = []
    for position, line in enumerate(lines):
        name = line.split("(", 1)[0]
        seen[name] = seen.get(name, 0) + 1
        if position >= first:
            points.append((name, seen[name]))
    return points


def faulted_add(start: int, inject: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["strace", "-qq", "-o", "/dev/null", "-e", f"inject={inject}",
                           *add_argv(start)], capture_output=True, text=True, timeout=60,
                          env={"PATH": os.environ["PATH"]}, stdin=subprocess.DEVNULL)


def assert_whole(path: Path) -> list[bytes]:
    """`path` is root's 0644, starts with what it held before the test, and every other line
    parses as a subordinate range; its lines."""
    st = path.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 0, 0o644), path
    data = path.read_bytes()
    assert data.startswith(ORIGINAL) and data.endswith(b"\n"), data[-200:]
    lines = data[len(ORIGINAL):].split(b"\n")[:-1]
    for number, line in enumerate(lines, 5):
        assert isinstance(subid.parse_line(line, number), subid.SubidLine), line
    return lines


@pytest.fixture(autouse=True)
def no_leftovers():
    """What killed writers leave (their `subuid.<pid>` link files, as shadow's would) is not
    carried into the session's later tests."""
    yield
    for leftover in [*Path("/etc").glob("subuid.[0-9]*"), BACKUP, Path("/etc/subuid+")]:
        leftover.unlink(missing_ok=True)


@pytest.mark.parametrize("fault", ["signal=KILL", "error=EIO"])
def test_every_system_call_of_an_add_is_a_safe_place_to_fail(fault):
    write_etc("subuid", ORIGINAL)
    BACKUP.unlink(missing_ok=True)
    points = calls_from_the_lock_on(1_000_000)
    assert len(points) > 30, points  # the lock, the backup, the new file, the renames ...
    stop = threading.Event()
    theirs: list[bytes] = []  # usermod said it added these
    refused: list[bytes] = []  # usermod said it did not
    failures: list[str] = []

    def usermod_adds() -> None:  # shadow's own writer, all along
        start = 5_000_000
        while not stop.is_set():
            result = subprocess.run(["usermod", "--add-subuids", f"{start}-{start + 9}",
                                     BOB.name], capture_output=True, text=True, timeout=60)
            line = f"{BOB.name}:{start}:10".encode()
            if result.returncode == 0:
                theirs.append(line)
            elif STALE_FOR_USERMOD.fullmatch(result.stderr):
                # shadow's lock_nowait: a lock left by a writer that was just killed (or could
                # not remove it), seen before that process was gone, looks held; usermod says
                # so and changes nothing
                refused.append(line)
            else:
                failures.append(result.stderr)
            start += 100

    racer = threading.Thread(target=usermod_adds)
    racer.start()
    ours: dict[bytes, bool] = {}
    outcomes = {"done": 0, "killed": 0, "refused": 0}
    try:
        for round_number, (name, when) in enumerate(points):
            line = f"{ALICE.name}:{2_000_000 + round_number * 100}:10".encode()
            result = faulted_add(2_000_000 + round_number * 100, f"{name}:{fault}:when={when}")
            assert "Traceback" not in result.stderr, result.stderr
            present = line in assert_whole(SUBUID)
            if result.returncode == 0:
                outcomes["done"] += 1
                assert present, (name, when)
            elif fault == "signal=KILL":
                outcomes["killed"] += 1
            elif "cannot write to standard output" in result.stderr:
                outcomes["refused"] += 1  # the report comes after the change: it is there
                assert result.returncode == 1 and present, (name, when, result.stderr)
            else:
                outcomes["refused"] += 1
                assert result.returncode == 1, result
                assert result.stderr.startswith("nsgate: "), result.stderr
                assert not present, (name, when, result.stderr)
            ours[line] = present
    finally:
        stop.set()
        racer.join()
    # The faults did hit: few calls are ones an add may shrug off (a close, a lock file gone).
    assert outcomes["done"] <= len(points) // 4, outcomes
    assert failures == [] and theirs, failures
    # Nothing a fault left behind stops the next writer, and no update of anyone's was lost.
    before_final_add = SUBUID.read_bytes()
    final_add = nsgate(*add_argv(3_000_000)[1:])
    assert final_add.returncode == 0, final_add.stderr
    final = assert_whole(SUBUID)
    # (usermod rewrites the backup in place, so it is only checked once usermod has stopped)
    assert BACKUP.read_bytes() == before_final_add
    assert set(theirs) <= set(final), set(theirs) - set(final)
    assert not set(refused) & set(final)
    assert {line for line, present in ours.items() if present} <= set(final)
    assert not {line for line, present in ours.items() if not present} & set(final)
    assert f"{ALICE.name}:3000000:10".encode() in final
    assert not Path("/etc/subuid.lock").exists()
