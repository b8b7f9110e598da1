"""Delegated session cgroups for real (issue 11 §4): system/cgroups.py on this machine's kernel.

This machine class is a hybrid host (v1 hierarchies under /sys/fs/cgroup, a cgroup2 at
/sys/fs/cgroup/unified offering only hugetlb, no systemd): most tests run there, in-process from
pytest (the package under helpers/, the compiled `_nsgate_sys` of the installed prefix). The
pure-v2 host is this machine's unified hierarchy bound over /sys/fs/cgroup in a child's private
mount namespace, running the installed package; the systemd host is /run/systemd/system made in
the session's private /run with a recording systemctl bound over /usr/bin/systemctl.

cgroupfs is shared with the host: every test uses its own top directory (`nsgate-test-<pid>`,
set through cgroups.TOP) instead of `nsgate`, and the `cg` fixture kills whatever is left in it
and removes it in every hierarchy, also when the test fails. The pytest process itself never
enters a test cgroup (checked after each test): "session processes" are children that wait, as
root, until their session is open, then run the test's script as the user (as a login does).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import (
    ALICE,
    BOB,
    PREFIX,
    SANDBOX,
    User,
    as_user,
    lock_holders,
    wait_for,
)

sys.path.append(str(PREFIX / "lib" / "nsgate"))  # _nsgate_sys, the compiled cffi module

from nsgate.errors import Refusal
from nsgate.system import cgroups

CGROUP = Path("/sys/fs/cgroup")
MOUNTS = [p for p in sorted(CGROUP.iterdir()) if os.path.ismount(p)]
V1 = [p for p in MOUNTS if p.name != "unified"]
UNIFIED = CGROUP / "unified"
SESSIONS = Path("/run/nsgate/sessions")
TOP = f"nsgate-test-{os.getpid()}"
UID = ALICE.uid


def user_dir(mount: Path, uid: int = UID) -> Path:
    return mount / TOP / f"user-{uid}"


def delegate(mount: Path, uid: int = UID) -> Path:
    return user_dir(mount, uid) / "delegate"


def cgroups_of(pid: int) -> dict[str, str]:
    """/proc/PID/cgroup as {controllers: path}."""
    lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    return {line.split(":", 2)[1]: line.split(":", 2)[2] for line in lines}


def in_delegate(pid: int, uid: int = UID) -> bool:
    return all(path == f"/{TOP}/user-{uid}/delegate" for path in cgroups_of(pid).values())


def _kill_and_remove(top: Path) -> None:
    dirs = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
    for directory in [*dirs, top]:
        for pid in (directory / "cgroup.procs").read_text().split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
    for directory in [*dirs, top]:
        wait_for(lambda d=directory: not (d / "cgroup.procs").read_text().strip(),
                 f"{directory} to empty")
        directory.rmdir()


@pytest.fixture
def cg() -> Iterator[object]:
    """system/cgroups.py with this test's own top directory; everything removed afterwards."""
    cgroups.TOP = TOP
    before = Path("/proc/self/cgroup").read_text()
    try:
        yield cgroups
    finally:
        cgroups.TOP = "nsgate"
        assert Path("/proc/self/cgroup").read_text() == before, "pytest was moved"
        for mount in MOUNTS:
            if (mount / TOP).exists():
                _kill_and_remove(mount / TOP)
        shutil.rmtree(SESSIONS, ignore_errors=True)
    assert not [m for m in MOUNTS if (m / TOP).exists()]


class Session:
    """A session process: root's, it waits for its session to be opened, then runs `script`
    as `user` (sh -c; as root if None), where the open put it."""

    def __init__(self, script: str, user: User | None = ALICE) -> None:
        argv: list[str | bytes] = ["sh", "-c", script]
        self.proc = subprocess.Popen(
            ["sh", "-c", 'read go && exec "$@"', "sh",
             *(argv if user is None else as_user(user, argv))],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.pid = self.proc.pid
        wait_for(lambda: Path(f"/proc/{self.pid}/cmdline").read_bytes().startswith(b"sh\0-c"),
                 "the session process to start")

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"go\n")
        self.proc.stdin.close()
        self.proc.stdin = None

    def line(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().decode()

    def finish(self) -> tuple[int, str, str]:
        out, err = self.proc.communicate(timeout=120)
        return self.proc.returncode, out.decode(), err.decode()

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def sessions() -> Iterator[list[Session]]:
    made: list[Session] = []
    yield made
    for session in made:
        if session.proc.poll() is None:
            session.stop()


def started(sessions: list[Session], script: str = "echo ready; exec sleep 600",
            user: User | None = ALICE) -> Session:
    session = Session(script, user)
    sessions.append(session)
    return session


def running(cg, sessions: list[Session], limits: dict[str, str] | None = None,
            user: User = ALICE) -> tuple[Session, list[str]]:
    """A session opened for `user` whose process then sleeps, as the user, in its cgroup."""
    session = started(sessions, user=user)
    notes = cg.open_session(user.uid, user.gid, limits or {}, session.pid)
    session.go()
    assert session.line() == "ready\n"
    return session, notes


def owner(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_uid, st.st_gid, st.st_mode & 0o7777


# --- v1/hybrid: this machine ------------------------------------------------------------------

def test_this_machine_is_hybrid(cg) -> None:
    assert cg.host_kind() == "v1"
    assert UNIFIED in MOUNTS and len(V1) >= 9


def test_open_delegates_a_tree_in_every_hierarchy(cg, sessions) -> None:
    origin = cgroups_of(os.getpid())
    session, notes = running(cg, sessions)
    assert notes == []
    assert in_delegate(session.pid)
    for mount in MOUNTS:
        assert owner(mount / TOP) == (0, 0, 0o755)
        assert owner(user_dir(mount)) == (0, 0, 0o755)
        assert owner(delegate(mount)) == (UID, ALICE.gid, 0o755)
        theirs = ({"cgroup.procs", "cgroup.threads", "cgroup.subtree_control"}
                  if mount == UNIFIED else {"cgroup.procs", "tasks"})
        for file in delegate(mount).iterdir():
            if file.is_dir():
                continue
            expected = (UID, ALICE.gid) if file.name in theirs else (0, 0)
            assert owner(file)[:2] == expected, file
        for file in user_dir(mount).iterdir():
            if not file.is_dir():
                assert owner(file)[:2] == (0, 0), file
    cpuset = CGROUP / "cpuset"
    for name in ("cpuset.cpus", "cpuset.mems"):
        assert (delegate(cpuset) / name).read_text() == (cpuset / name).read_text()
    assert (delegate(cpuset) / "cgroup.clone_children").read_text() == "1\n"
    # the record: root's alone, where the process was before
    assert owner(SESSIONS) == (0, 0, 0o700)
    record_file = SESSIONS / f"{UID}.{session.pid}"
    assert owner(record_file) == (0, 0, 0o600)
    record = json.loads(record_file.read_text())
    assert record["pid"] == session.pid
    assert record["start"] == int(Path(f"/proc/{session.pid}/stat").read_text()
                                  .rsplit(")", 1)[1].split()[19])
    assert {k: v for k, v in record["origins"].items()} == {
        ",".join(sorted(k.split(","))) if k else "": v for k, v in origin.items()}


LIMITS = {"pids.max": "50", "memory.max": "64M", "memory.swap.max": "16M",
          "cpu.max": "50000 200000", "cpu.weight": "200", "io.weight": "300"}


def test_limits_are_read_back_from_the_kernel(cg, sessions) -> None:
    _, notes = running(cg, sessions, LIMITS)
    # no BFQ here: blkio has no weight file, and the unified hierarchy has no io controller
    assert notes == ["io.weight not applied in blkio: the kernel has no blkio.weight there"]
    read = {
        "pids": ("pids.max", "50"),
        "memory": ("memory.limit_in_bytes", str(64 << 20)),
        "cpu": ("cpu.cfs_quota_us", "50000"),
    }
    for mount, (name, value) in read.items():
        assert (user_dir(CGROUP / mount) / name).read_text().strip() == value
    memory, cpu = user_dir(CGROUP / "memory"), user_dir(CGROUP / "cpu")
    assert (memory / "memory.memsw.limit_in_bytes").read_text().strip() == str(80 << 20)
    assert (cpu / "cpu.cfs_period_us").read_text().strip() == "200000"
    assert (cpu / "cpu.shares").read_text().strip() == "2048"
    described = {d["hierarchy"]: d for d in cg.describe(UID)}
    assert set(described) == {"unified" if m == UNIFIED else m.name.replace("systemd",
                                                                           "name=systemd")
                              for m in MOUNTS}
    assert described["pids"]["limits"] == {"pids.max": "50"}
    assert described["memory"]["limits"] == {"memory.limit_in_bytes": str(64 << 20),
                                             "memory.memsw.limit_in_bytes": str(80 << 20)}
    assert described["cpu"]["limits"] == {"cpu.cfs_quota_us": "50000",
                                          "cpu.cfs_period_us": "200000", "cpu.shares": "2048"}
    for entry in described.values():
        assert entry["owner"] == UID and entry["processes"] == 1
    assert described["pids"]["path"] == str(user_dir(CGROUP / "pids"))
    assert described["pids"]["delegate"] == str(delegate(CGROUP / "pids"))
    assert cg.describe(BOB.uid) == []


def test_explain_shows_the_cgroup_as_it_is_now(cg, sessions) -> None:
    """`nsgate explain USER`'s session part: the user's cgroup per hierarchy, as described."""
    from nsgate.cli.admin import explain_session
    from nsgate.cli.admin.common import Out

    assert explain_session.live_cgroup(UID) == []
    running(cg, sessions, {"pids.max": "50", "memory.max": "64M"})
    assert explain_session.live_cgroup(UID) == cg.describe(UID)
    report = explain_session.explain(ALICE.name.encode(), UID, ALICE.gid, [])
    out = Out()
    explain_session.render(out, report)
    start = out.lines.index("  cgroup now:")
    assert out.lines[start + 1].split() == ["HIERARCHY", "CGROUP", "DELEGATE", "PROCESSES",
                                            "LIMITS"]
    rows = {line.split()[0]: line.split() for line in out.lines[start + 2:]}
    assert rows["pids"] == ["pids", str(user_dir(CGROUP / "pids")), "uid", str(UID), "1",
                            "pids.max=50"]
    assert rows["memory"][-2:] == [f"memory.limit_in_bytes={64 << 20}",
                                   "memory.memsw.limit_in_bytes=9223372036854771712"]
    assert rows["unified"][-2:] == ["1", "-"]
    assert len(rows) == len(MOUNTS)


def test_invalid_limits_are_refused_before_anything(cg, sessions) -> None:
    session = started(sessions)
    with pytest.raises(Refusal) as refused:
        cg.open_session(UID, ALICE.gid, {"pids.max": "-1", "memory.high": "1G"}, session.pid)
    assert len(refused.value.details) == 2
    assert not [m for m in MOUNTS if (m / TOP).exists()]
    with pytest.raises(Refusal):
        cg.open_session(0, 0, {}, session.pid)


ESCAPES = r"""
try() { if { eval "$1"; } 2>/dev/null; then echo "ESCAPED: $1"; else echo "denied: $1"; fi; }
P=@pids@; U=@unified@; B=@bob@
mkdir "$P/delegate/c1" && echo $$ > "$P/delegate/c1/cgroup.procs" && echo moved-v1
mkdir "$U/delegate/c1" && echo $$ > "$U/delegate/c1/cgroup.procs" && echo moved-v2
try 'echo $$ > "$P/cgroup.procs"'
try 'echo $$ > "$P/../cgroup.procs"'
try 'echo $$ > "@pids_root@/cgroup.procs"'
try 'echo $$ > "$B/cgroup.procs"'
try 'echo $$ > "$U/cgroup.procs"'
try 'echo $$ > "@unified_root@/cgroup.procs"'
try 'echo max > "$P/pids.max"'
try 'echo 1 > "$P/delegate/pids.max"'
try 'echo -1 > "@memory@/memory.limit_in_bytes"'
try 'echo "+memory" > "$U/cgroup.subtree_control"'
try 'rmdir "$P/delegate"'
try 'mkdir "$P/sibling"'
try 'chmod 777 "$P"'
echo $$ > "$P/delegate/cgroup.procs" && echo back-in-delegate
cat /proc/self/cgroup
"""


def test_the_user_delegates_further_but_cannot_escape(cg, sessions) -> None:
    running(cg, sessions, {"pids.max": "50"}, user=BOB)
    script = ESCAPES
    for name, path in (("pids", user_dir(CGROUP / "pids")), ("unified", user_dir(UNIFIED)),
                       ("bob", delegate(CGROUP / "pids", BOB.uid)),
                       ("pids_root", CGROUP / "pids"), ("unified_root", UNIFIED),
                       ("memory", user_dir(CGROUP / "memory"))):
        script = script.replace(f"@{name}@", str(path))
    session = started(sessions, script)
    cg.open_session(UID, ALICE.gid, {"pids.max": "50", "memory.max": "1G"}, session.pid)
    session.go()
    status, out, err = session.finish()
    assert status == 0, err
    assert "moved-v1\nmoved-v2\n" in out, err
    assert "ESCAPED" not in out
    assert out.count("denied:") == 13
    assert "back-in-delegate" in out
    shown = dict(line.split(":", 2)[1:] for line in out.splitlines() if line[:1].isdigit())
    assert shown["pids"] == f"/{TOP}/user-{UID}/delegate"
    assert shown[""] == f"/{TOP}/user-{UID}/delegate/c1"
    assert (user_dir(CGROUP / "pids") / "pids.max").read_text() == "50\n"


BOMB = """
import os, time
n = 0
try:
    while n < 500:
        if os.fork() == 0:
            os.closerange(0, 3)
            time.sleep(600)
            os._exit(0)
        n += 1
except OSError as err:
    print('fork failed', err.errno, 'after', n)
"""


def test_a_fork_bomb_stops_at_pids_max(cg, sessions) -> None:
    bomb = BOMB
    session = started(sessions, f"exec /usr/bin/python3 -c \"{bomb}\"")
    cg.open_session(UID, ALICE.gid, {"pids.max": "20"}, session.pid)
    session.go()
    status, out, err = session.finish()
    assert status == 0, err
    assert out == "fork failed 11 after 19\n"  # EAGAIN; 19 children + itself = pids.max
    pids = user_dir(CGROUP / "pids")
    assert (pids / "pids.current").read_text() == "19\n"  # the children, still sleeping
    # v1 counts the failed fork where it was tried: the session's cgroup, under the limit
    assert int((pids / "delegate" / "pids.events").read_text().split()[1]) >= 1


def test_a_memory_hog_is_killed_at_memory_max(cg, sessions) -> None:
    session = started(sessions, "exec /usr/bin/python3 -c 'b = bytearray(512 << 20); print(1)'")
    cg.open_session(UID, ALICE.gid, {"memory.max": "64M", "memory.swap.max": "0"},
                    session.pid)
    session.go()
    status, out, _ = session.finish()
    assert status == -signal.SIGKILL and out == ""
    memory = user_dir(CGROUP / "memory")
    # the limit was reached (this kernel keeps memory.failcnt at 0 in v1) and the OOM killer
    # killed the hog
    assert (memory / "memory.max_usage_in_bytes").read_text() == f"{64 << 20}\n"
    control = dict(line.split() for line in (memory / "delegate" / "memory.oom_control")
                   .read_text().splitlines())
    assert control["oom_kill"] == "1"  # v1 counts the kill where the process was


def test_close_keeps_the_tree_while_a_process_is_left(cg, sessions) -> None:
    origin = cgroups_of(os.getpid())
    session = started(sessions, "setsid sleep 600 </dev/null >/dev/null 2>&1 & "
                                "echo ready; exec sleep 600")
    cg.open_session(UID, ALICE.gid, {"pids.max": "50"}, session.pid)
    session.go()
    assert session.line() == "ready\n"
    wait_for(lambda: len((delegate(CGROUP / "pids") / "cgroup.procs").read_text().split()) == 2,
             "the background process")
    left = [int(p) for p in (delegate(CGROUP / "pids") / "cgroup.procs").read_text().split()
            if int(p) != session.pid]
    notes = cg.close_session(UID, session.pid)
    assert notes == [f"kept the cgroups of uid {UID}: 1 process(es) still in them"]
    assert cgroups_of(session.pid) == origin  # back where it was
    assert all(user_dir(m).is_dir() for m in MOUNTS)
    assert in_delegate(left[0])
    assert not (SESSIONS / f"{UID}.{session.pid}").exists()
    os.kill(left[0], signal.SIGKILL)
    wait_for(lambda: not (delegate(CGROUP / "pids") / "cgroup.procs").read_text().strip(),
             "the delegate to empty")
    assert cg.close_session(UID, session.pid) == []
    assert not [m for m in MOUNTS if user_dir(m).exists()]
    assert all((m / TOP).is_dir() for m in MOUNTS)  # the top stays: opens race with closes


def test_two_sessions_share_the_tree_until_the_last_closes(cg, sessions) -> None:
    origin = cgroups_of(os.getpid())
    first, _ = running(cg, sessions, {"pids.max": "50"})
    second, _ = running(cg, sessions, {"pids.max": "50"})
    assert in_delegate(first.pid) and in_delegate(second.pid)
    assert (delegate(CGROUP / "pids") / "cgroup.procs").read_text().split() == sorted(
        [str(first.pid), str(second.pid)], key=int)
    assert cg.close_session(UID, first.pid) == [
        f"kept the cgroups of uid {UID}: 1 process(es) still in them"]
    assert cgroups_of(first.pid) == origin and in_delegate(second.pid)
    assert cg.close_session(UID, second.pid) == []
    assert cgroups_of(second.pid) == origin
    assert not [m for m in MOUNTS if user_dir(m).exists()]
    assert sorted(SESSIONS.iterdir()) == [SESSIONS / f"{UID}.lock"]


HOOK = """
import json, os, sys
sys.path.insert(0, sys.argv[1])
from nsgate.system import cgroups
cgroups.TOP = sys.argv[2]
print(json.dumps(cgroups.close_session(int(sys.argv[3]), os.getppid())))
"""


def test_close_from_the_hook_moves_the_hooks_own_processes_out(cg, sessions) -> None:
    """The hook runs as a child of the session process, inside the user's tree: close moves
    the session process and the hook out, and the tree, then empty, is removed."""
    origin = cgroups_of(os.getpid())
    session = started(sessions, f"/usr/bin/python3 -I -c '{HOOK}' {PREFIX}/lib/nsgate {TOP} "
                                f"{UID}; cat /proc/self/cgroup", user=None)
    cg.open_session(UID, ALICE.gid, {"pids.max": "50"}, session.pid)
    session.go()
    status, out, err = session.finish()
    assert status == 0, err
    notes, *shown = out.splitlines()
    assert json.loads(notes) == []
    assert {line.split(":", 2)[1]: line.split(":", 2)[2] for line in shown} == origin
    assert not [m for m in MOUNTS if user_dir(m).exists()]


def test_close_never_moves_a_process_that_may_not_be_the_sessions(cg, sessions) -> None:
    """close_session(uid, pid) with a pid that is not the caller's ancestor and whose start time
    is not the recorded one (the session process gone, its pid reused, say by a process of the
    user's inside the tree): that process stays under the limits, and the tree is kept."""
    session, _ = running(cg, sessions, {"pids.max": "50"})
    record = SESSIONS / f"{UID}.{session.pid}"
    forged = json.loads(record.read_text())
    forged["start"] -= 1
    record.write_text(json.dumps(forged))
    assert cg.close_session(UID, session.pid) == [
        f"kept the cgroups of uid {UID}: 1 process(es) still in them"]
    assert in_delegate(session.pid)
    other, _ = running(cg, sessions)
    (SESSIONS / f"{UID}.{other.pid}").unlink()  # no record at all
    cg.close_session(UID, other.pid)
    assert in_delegate(other.pid)


RACER = """
import json, sys
sys.path.insert(0, sys.argv[1])
from nsgate.system import cgroups
cgroups.TOP = sys.argv[2]
uid, pid = int(sys.argv[3]), int(sys.argv[4])
sys.stdin.read(1)  # all start together
if sys.argv[5] == "open":
    print(json.dumps(cgroups.open_session(uid, uid, {"pids.max": "64"}, pid)))
else:
    print(json.dumps(cgroups.close_session(uid, pid)))
"""


def race(what: str, pids: list[int]) -> list[list[str]]:
    """`what` (open or close) for each pid at once, each from its own process."""
    racers = [subprocess.Popen(["/usr/bin/python3", "-I", "-c", RACER,
                                str(PREFIX / "lib" / "nsgate"), TOP, str(UID), str(pid), what],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE) for pid in pids]
    for racer in racers:
        assert racer.stdin is not None
        racer.stdin.write(b"g")
        racer.stdin.close()
        racer.stdin = None
    results = []
    for racer in racers:
        out, err = racer.communicate(timeout=120)
        assert racer.returncode == 0, err.decode()
        results.append(json.loads(out))
    return results


def test_concurrent_opens_and_closes_of_one_user(cg, sessions) -> None:
    """Opens and closes of the same user's sessions at once (the user's lock serialises them):
    every session lands in the one tree; after every close it is gone."""
    origin = cgroups_of(os.getpid())
    members = [started(sessions) for _ in range(6)]
    assert race("open", [m.pid for m in members]) == [[]] * 6
    assert all(in_delegate(m.pid) for m in members)
    assert (user_dir(CGROUP / "pids") / "pids.max").read_text() == "64\n"
    notes = race("close", [m.pid for m in members])
    assert sorted(map(len, notes)) == [0] + [1] * 5  # the last close alone removes the tree
    assert all(cgroups_of(m.pid) == origin for m in members)
    assert not [m for m in MOUNTS if user_dir(m).exists()]


def test_close_removes_what_the_user_made_inside(cg, sessions) -> None:
    session, _ = running(cg, sessions)
    for mount in (CGROUP / "pids", UNIFIED):
        made = delegate(mount) / "a" / "b" / "c"
        subprocess.run(as_user(ALICE, ["mkdir", "-p", str(made)]), check=True)
        subprocess.run(as_user(ALICE, ["chmod", "000", str(delegate(mount) / "cgroup.procs"),
                                       str(made.parent), str(delegate(mount))]), check=True)
    assert cg.close_session(UID, session.pid) == []
    assert not [m for m in MOUNTS if user_dir(m).exists()]


def test_a_process_deep_in_the_users_tree_keeps_it(cg, sessions) -> None:
    session, _ = running(cg, sessions)
    deep = delegate(CGROUP / "freezer") / "x" / "y"
    other = started(sessions, f"mkdir -p {deep} && echo $$ > {deep}/cgroup.procs && "
                              "echo ready && exec sleep 600")
    cg.open_session(UID, ALICE.gid, {}, other.pid)
    other.go()
    assert other.line() == "ready\n"
    assert cgroups_of(other.pid)["freezer"] == f"/{TOP}/user-{UID}/delegate/x/y"
    assert cg.close_session(UID, session.pid) == [
        f"kept the cgroups of uid {UID}: 1 process(es) still in them"]
    assert deep.is_dir()


def test_close_never_writes_into_a_cgroup_the_user_could_replace(cg, sessions) -> None:
    """A nested session (su in a session): its process came from inside the user's tree. The
    user renames that cgroup and makes another of the same name: at close, root puts the
    process in the hierarchy's root, never in the user's lookalike."""
    running(cg, sessions)
    pids = delegate(CGROUP / "pids")
    inner = started(sessions, f"mkdir {pids}/sub && echo $$ > {pids}/sub/cgroup.procs && "
                              "echo ready && exec sleep 600")
    cg.open_session(UID, ALICE.gid, {}, inner.pid)  # only to run its script in the delegate
    inner.go()
    assert inner.line() == "ready\n"
    assert cg.open_session(UID, ALICE.gid, {}, inner.pid) == []  # the nested open
    record = json.loads((SESSIONS / f"{UID}.{inner.pid}").read_text())
    assert record["origins"]["pids"] == f"/{TOP}/user-{UID}/delegate/sub"
    assert cgroups_of(inner.pid)["pids"] == f"/{TOP}/user-{UID}/delegate"
    subprocess.run(as_user(ALICE, ["sh", "-c", f"mv {pids}/sub {pids}/moved && mkdir "
                                               f"{pids}/sub"]), check=True)
    cg.close_session(UID, inner.pid)
    assert cgroups_of(inner.pid)["pids"] == "/"
    assert not (pids / "sub" / "cgroup.procs").read_text().strip()


@pytest.mark.parametrize("tampered", [TOP, f"{TOP}/user-{UID}"])
def test_a_tampered_tree_is_refused_and_the_open_undone(cg, sessions, tampered) -> None:
    """The top or user-<uid> not root's in one hierarchy (say chowned by hand): the open is
    refused, the cgroups it made in the hierarchies before are removed, nothing moved."""
    (UNIFIED / TOP / f"user-{UID}").mkdir(parents=True)
    os.chown(UNIFIED / tampered, UID, ALICE.gid)
    session = started(sessions)
    origin = cgroups_of(session.pid)
    with pytest.raises(Refusal) as refused:
        cg.open_session(UID, ALICE.gid, {"pids.max": "50"}, session.pid)
    assert "not root's alone" in refused.value.first
    assert cgroups_of(session.pid) == origin
    assert [m for m in MOUNTS if (m / TOP).exists()] == [UNIFIED]
    assert not (SESSIONS / f"{UID}.{session.pid}").exists()


def test_something_mounted_over_a_cgroup_is_never_written_into(cg, sessions) -> None:
    """Each directory is opened from its parent's fd and must be on the same cgroup file
    system: a tmpfs mounted over the delegated cgroup stops open and close (fail closed)."""
    first, _ = running(cg, sessions)
    over = delegate(CGROUP / "pids")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "nsgate-over", str(over)],
                   check=True)
    try:
        (over / "cgroup.procs").write_text("")
        second = started(sessions)
        origin = cgroups_of(second.pid)
        with pytest.raises(Refusal) as refused:
            cg.open_session(UID, ALICE.gid, {}, second.pid)
        assert refused.value.first.endswith("delegate is not on the parent's cgroup file system")
        assert cgroups_of(second.pid) == origin
        with pytest.raises(Refusal):  # the session process goes home, the tree stays
            cg.close_session(UID, first.pid)
        assert (over / "cgroup.procs").read_text() == ""
        assert cgroups_of(first.pid) == cgroups_of(os.getpid())
    finally:
        subprocess.run(["umount", str(over)], check=True)
    assert all(delegate(m).is_dir() for m in MOUNTS)


def test_a_hierarchy_root_is_proven_before_use() -> None:
    from nsgate.policy.cgroup_tree import Hierarchy
    from nsgate.system import cgroupfs

    pids = CGROUP / "pids"
    st = pids.stat()
    device = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    os.close(cgroupfs.open_root(Hierarchy(str(pids), device, False, frozenset({"pids"}))))
    for wrong in (Hierarchy(str(pids), "0:1", False, frozenset({"pids"})),  # another device
                  Hierarchy(str(pids), device, True, frozenset()),  # not cgroup2
                  Hierarchy("/run", device, False, frozenset({"pids"}))):  # a tmpfs
        with pytest.raises(cgroupfs.NotCgroupfs):
            cgroupfs.open_root(wrong)


def test_a_delegate_of_another_user_is_refused(cg, sessions) -> None:
    running(cg, sessions, user=BOB)
    os.rename(user_dir(CGROUP / "memory", BOB.uid), user_dir(CGROUP / "memory"))
    session = started(sessions)
    with pytest.raises(Refusal) as refused:
        cg.open_session(UID, ALICE.gid, {}, session.pid)
    assert f"owned by uid {BOB.uid}, not {UID}" in refused.value.first
    assert not in_delegate(session.pid)
    assert not user_dir(CGROUP / "cpu").exists()  # made before memory's refusal, undone


def test_a_limit_the_kernel_refuses_undoes_the_open(cg, sessions) -> None:
    """v1 cpu refuses a parent quota below a child's: the user's own child blocks the new
    limit. The second open is refused; the first session's tree is left as it was."""
    first, _ = running(cg, sessions)
    child = delegate(CGROUP / "cpu") / "greedy"
    subprocess.run(as_user(ALICE, ["sh", "-c", f"mkdir {child} && echo 900000 > "
                                               f"{child}/cpu.cfs_quota_us"]), check=True)
    second = started(sessions)
    origin = cgroups_of(second.pid)
    with pytest.raises(Refusal) as refused:
        cg.open_session(UID, ALICE.gid, {"cpu.max": "50000"}, second.pid)
    assert refused.value.first.startswith("cannot set cpu.max (cpu.cfs_quota_us = 50000)")
    assert cgroups_of(second.pid) == origin
    assert in_delegate(first.pid) and child.is_dir()


def test_session_records_must_be_roots_alone(cg, sessions) -> None:
    SESSIONS.mkdir(parents=True, exist_ok=True)
    SESSIONS.chmod(0o733)
    session = started(sessions)
    with pytest.raises(Refusal) as refused:
        cg.open_session(UID, ALICE.gid, {}, session.pid)
    assert "owned by uid 0 with mode 0733" in refused.value.first
    assert not [m for m in MOUNTS if (m / TOP).exists()]


def test_a_held_lock_is_waited_for_a_bounded_time(cg, sessions, monkeypatch) -> None:
    """Opens and closes of a user's sessions take the user's lock; one that hangs holding it
    makes the next fail after LOCK_SECONDS, having made nothing."""
    SESSIONS.mkdir(parents=True, mode=0o700)
    holder = subprocess.Popen(["flock", str(SESSIONS / f"{UID}.lock"), "sleep", "600"])
    try:
        wait_for(lambda: bool(lock_holders(SESSIONS / f"{UID}.lock")), "flock to hold the lock")
        monkeypatch.setattr(cgroups, "LOCK_SECONDS", 0.2)
        session = started(sessions)
        with pytest.raises(Refusal) as refused:
            cg.open_session(UID, ALICE.gid, {}, session.pid)
        assert refused.value.first == (f"cannot lock {SESSIONS}/{UID}.lock: still held after "
                                       "0.2 s")
        assert not [m for m in MOUNTS if (m / TOP).exists()]
    finally:
        holder.kill()
        holder.wait()


def test_a_session_process_that_is_gone(cg) -> None:
    proc = subprocess.Popen(["true"])
    proc.wait()
    with pytest.raises(Refusal) as refused:
        cg.open_session(UID, ALICE.gid, {}, proc.pid)
    assert refused.value.first == f"no session process {proc.pid}"
    assert not [m for m in MOUNTS if (m / TOP / f"user-{UID}").exists()]


def test_lxc_start_puts_its_container_under_the_users_cgroup(cg, sessions) -> None:
    """An unprivileged lxc-start (Debian's liblxc) run in the session: the delegation is enough
    for it on this hybrid host, and its container lands under the user's limits."""
    home = SANDBOX / "cg-lxc"
    shutil.rmtree(home, ignore_errors=True)
    rootfs = home / "lxc" / "c1" / "rootfs"
    for sub in ("bin", "dev", "proc", "sys", "tmp", "etc"):
        (rootfs / sub).mkdir(parents=True)
    shutil.copy("/bin/busybox", rootfs / "bin" / "busybox")
    (rootfs / "bin" / "sleep").symlink_to("busybox")
    subprocess.run(["chown", "-hR", "200000:200000", str(rootfs)], check=True)  # alice's ids
    (home / "lxc" / "c1" / "config").write_text(
        f"lxc.uts.name = c1\nlxc.rootfs.path = dir:{rootfs}\n"
        "lxc.idmap = u 0 200000 65536\nlxc.idmap = g 0 200000 65536\n"
        "lxc.net.0.type = empty\nlxc.init.cmd = /bin/sleep 3600\n"
        "lxc.apparmor.profile = unconfined\nlxc.mount.auto = proc:mixed sys:ro\n"
        "lxc.tty.max = 0\nlxc.pty.max = 1\nlxc.console.path = none\n")
    (home / "run").mkdir()
    for path in (home, home / "run", home / "lxc", home / "lxc" / "c1"):
        path.chmod(0o755)
        os.chown(path, UID, ALICE.gid)
    env = (f"env -i PATH={PREFIX}/libexec/nsgate:/usr/sbin:/usr/bin:/sbin:/bin HOME={home} "
           f"XDG_RUNTIME_DIR={home}/run USER={ALICE.name} LOGNAME={ALICE.name}")
    lxc = f"-P {home}/lxc -n c1"
    session = started(sessions, f"{env} lxc-start {lxc} -d -l trace -o {home}/log && "
                                f"echo started; {env} lxc-info {lxc} -p -H")
    cg.open_session(UID, ALICE.gid, {"pids.max": "100"}, session.pid)
    session.go()
    status, out, err = session.finish()
    try:
        log = (home / "log").read_text() if (home / "log").exists() else ""
        assert status == 0 and out.startswith("started\n"), err + "\n".join(
            line for line in log.splitlines() if " ERROR " in line)
        init = int(out.split()[1])
        for line in Path(f"/proc/{init}/cgroup").read_text().splitlines():
            assert line.split(":", 2)[2].startswith(f"/{TOP}/user-{UID}/delegate/"), line
        assert int((user_dir(CGROUP / "pids") / "pids.current").read_text()) >= 1
    finally:
        subprocess.run(as_user(ALICE, ["sh", "-c", f"{env} lxc-stop {lxc} -k"]),
                       capture_output=True, timeout=60)
        shutil.rmtree(home, ignore_errors=True)


# --- pure v2: the unified hierarchy over /sys/fs/cgroup, in a child's mount namespace ---------

V2_CODE = """
import json, sys
sys.path.insert(0, sys.argv[1])
from nsgate.system import cgroups
cgroups.TOP = sys.argv[2]
uid, pid, what = int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
if what == "open":
    notes = cgroups.open_session(uid, uid, json.loads(sys.argv[6]), pid)
else:
    notes = cgroups.close_session(uid, pid)
print(json.dumps({"kind": cgroups.host_kind(), "notes": notes,
                  "describe": cgroups.describe(uid)}))
"""


def in_pure_v2(*args: str) -> dict:
    script = ("mount --make-rprivate / && mount --bind /sys/fs/cgroup/unified /sys/fs/cgroup "
              '&& exec /usr/bin/python3 -I -c "$0" "$@"')
    done = subprocess.run(["unshare", "-m", "sh", "-c", script, V2_CODE,
                           str(PREFIX / "lib" / "nsgate"), TOP, *args],
                          capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    return json.loads(done.stdout)


def test_pure_v2_host(cg, sessions) -> None:
    session = started(sessions)
    opened = in_pure_v2(str(UID), str(session.pid), "open", json.dumps(LIMITS))
    assert opened["kind"] == "v2"
    # this kernel's unified hierarchy offers hugetlb alone: every limit is a note
    assert sorted(note.split(" ")[0] for note in opened["notes"]) == sorted(LIMITS)
    (described,) = opened["describe"]
    assert described["hierarchy"] == "unified"
    assert described["path"] == f"/sys/fs/cgroup/{TOP}/user-{UID}"
    assert described["owner"] == UID and described["processes"] == 1
    # seen from outside: only the unified hierarchy got a tree, the user owning what the
    # kernel's delegation model asks, the rest root's
    assert [m for m in MOUNTS if (m / TOP).exists()] == [UNIFIED]
    assert owner(user_dir(UNIFIED)) == (0, 0, 0o755)
    assert owner(delegate(UNIFIED)) == (UID, ALICE.gid, 0o755)
    for file in delegate(UNIFIED).iterdir():
        theirs = file.name in ("cgroup.procs", "cgroup.threads", "cgroup.subtree_control")
        assert owner(file)[:2] == ((UID, ALICE.gid) if theirs else (0, 0)), file
    assert cgroups_of(session.pid)[""] == f"/{TOP}/user-{UID}/delegate"
    assert cgroups_of(session.pid)["pids"] == cgroups_of(os.getpid())["pids"]  # v1 untouched
    session.go()
    assert session.line() == "ready\n"
    moved = in_pure_v2(str(UID), str(session.pid), "close")
    assert moved["notes"] == [] and moved["describe"] == []
    assert cgroups_of(session.pid)[""] == cgroups_of(os.getpid())[""]
    assert not user_dir(UNIFIED).exists()


# --- systemd: a recording systemctl -----------------------------------------------------------

FAKE_SYSTEMCTL = """#!/bin/sh
n=$(ls "{record}" | wc -l)
printf '%s\\n' "$@" > "{record}/$n"
"""


@pytest.fixture
def systemd() -> Iterator[Path]:
    """/run/systemd/system in the session's private /run, and a systemctl that records its
    arguments (one file per run) bound over /usr/bin/systemctl in its mount namespace."""
    record = SANDBOX / "systemctl-runs"
    shutil.rmtree(record, ignore_errors=True)
    record.mkdir(parents=True)
    fake = SANDBOX / "fake-systemctl"
    fake.write_text(FAKE_SYSTEMCTL.format(record=record))
    fake.chmod(0o755)
    Path("/run/systemd/system").mkdir(parents=True)
    subprocess.run(["mount", "--bind", str(fake), "/usr/bin/systemctl"], check=True)
    try:
        yield record
    finally:
        subprocess.run(["umount", "/usr/bin/systemctl"], check=True)
        shutil.rmtree("/run/systemd")
        shutil.rmtree(record)


def runs(record: Path) -> list[list[str]]:
    return [p.read_text().splitlines()
            for p in sorted(record.iterdir(), key=lambda p: int(p.name))]


def test_systemd_host_sets_properties_on_the_user_slice(cg, systemd, sessions) -> None:
    session = started(sessions)
    origin = cgroups_of(session.pid)
    assert cg.host_kind() == "systemd"
    assert cg.open_session(UID, ALICE.gid, LIMITS, session.pid) == []
    assert runs(systemd) == [[
        "set-property", "--runtime", f"user-{UID}.slice", "TasksMax=50",
        f"MemoryMax={64 << 20}", f"MemorySwapMax={16 << 20}", "CPUQuota=25%",
        "CPUQuotaPeriodSec=200000us", "CPUWeight=200", "IOWeight=300"]]
    assert cgroups_of(session.pid) == origin  # nothing written to cgroupfs
    assert not [m for m in MOUNTS if (m / TOP).exists()]
    assert not SESSIONS.exists()
    assert cg.close_session(UID, session.pid) == []
    assert len(runs(systemd)) == 1
    (described,) = cg.describe(UID)
    assert described["path"] == f"user-{UID}.slice"
    assert runs(systemd)[1][:2] == ["show", f"user-{UID}.slice"]
    assert cg.open_session(UID, ALICE.gid, {}, session.pid) == []
    assert len(runs(systemd)) == 2  # no limits: systemctl is not run


def test_systemd_failure_is_a_refusal(cg, systemd, sessions) -> None:
    fake = SANDBOX / "fake-systemctl"
    fake.write_text("#!/bin/sh\necho 'Failed to set unit properties: Access denied' >&2\n"
                    "exit 1\n")
    session = started(sessions)
    with pytest.raises(Refusal) as refused:
        cg.open_session(UID, ALICE.gid, {"pids.max": "5"}, session.pid)
    assert refused.value.first == ("systemctl set-property --runtime user-23001.slice failed: "
                                   "Failed to set unit properties: Access denied")


def test_a_limit_removed_from_the_policy_goes_at_the_next_open(cg, sessions) -> None:
    """The tree outlives a session while another holds it: a later open with fewer limits
    resets the ones no longer set (no limit, the default weight), not only once it is gone."""
    running(cg, sessions, {"pids.max": "50", "memory.max": "64M", "cpu.max": "50000",
                           "cpu.weight": "200"})
    pids, memory, cpu = (user_dir(CGROUP / name) for name in ("pids", "memory", "cpu"))
    assert (pids / "pids.max").read_text().strip() == "50"
    assert (cpu / "cpu.shares").read_text().strip() == "2048"
    _, notes = running(cg, sessions, {"pids.max": "70"})
    assert notes == []  # a key left unset is never a note, even where its controller is absent
    assert (pids / "pids.max").read_text().strip() == "70"
    assert int((memory / "memory.limit_in_bytes").read_text()) > 1 << 60
    assert int((memory / "memory.memsw.limit_in_bytes").read_text()) > 1 << 60
    assert (cpu / "cpu.cfs_quota_us").read_text().strip() == "-1"
    assert (cpu / "cpu.shares").read_text().strip() == "1024"
