"""Group commit of lxc-user-nic creates (issue 10 item 5), for real: the installed committer
(nsgate.system.nic_committer from $PREFIX/lib/nsgate) run as root in its own process, its members
real worker processes that run the installed helper code (`usernic.main`) with the setuid
helper's credential shape (real uid the test user's, effective and saved uid 0) and their own
channel to the committer, each making a real veth for a real container of a test user. The
assertions read the kernel (links on both sides), /run/lxc/nics, the workers' outputs and, with
strace on the committer, how many times it wrote the database (fsync, rename).

A batch is made deterministic without any test hook in the committer: the test holds the
committer's end of every channel until the kernel shows each worker's intent queued on it
(POLLIN), then enrolls them all in one control message, so the committer finds them all ready at
once. The setuid helper's own path, a batch of one, is the rest of the suite (test_usernic*.py).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.service_support import CLIENT, children, is_committer
from tests.service_support import LIBDIR as SERVICE_LIBDIR
from tests.support import (
    ALICE,
    BOB,
    PATIENCE,
    PREFIX,
    User,
    lock_holders,
    proc_state,
    wait_for,
    write_etc,
)
from tests.test_usernic import (  # noqa: F401 (fixtures)
    assert_created,
    assert_refused,
    grant,
    host_baseline,
    nic_world,
    nsgate_veths,
)
from tests.usernic_support import DB, LOCK, NSGATE_NIC, WORK, Proc, db_entries, db_lines, setpriv

LIBDIR = str(PREFIX / "lib" / "nsgate")
PYTHON = "/usr/bin/python3"

# A worker as nsgated's will be: the helper's code with the caller's credential shape and its
# channel to the committer; what escapes usernic.main is reported as nsgate's entry point does.
WORKER = r"""
import os, sys
sys.path.insert(0, sys.argv[1])
from nsgate.cli import usernic
from nsgate.system import nic_channel, nic_commit
name, uid, gid, channel = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
os.initgroups(name, gid)
os.setresgid(gid, gid, gid)
os.setresuid(uid, 0, 0)
nic_commit.CHANNEL = channel
try:
    status, out, err = usernic.main(sys.argv[6:])
except BaseException as exc:
    status, out, err = 1, "", f"lxc-user-nic: internal error ({type(exc).__name__})\n"
os.write(1, out.encode()); os.write(2, err.encode())
os._exit(status)
"""

# A worker that makes its reserved veth and then goes silent without reporting.
SILENT_AFTER_CREATE = r"""
import os, sys
sys.path.insert(0, sys.argv[1])
from nsgate.policy import nic_batch, usernet
from nsgate.system import nic_channel, rtnl
token, uid, channel, pid = sys.argv[2].encode(), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
grants = [usernet.Grant(token, b"veth", b"br0", 5, 1)]
session = nic_channel.RemoteSession(channel)
reserved = session.reserve(nic_batch.Intent(uid, b"veth", b"br0", grants, private=False,
                                            guarded=True))
target = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
with rtnl.Rtnl() as net:
    net.create_veth(reserved.host.decode(), "eth0", target, 1500)
os.write(1, reserved.host + b"\n")
import signal
signal.pause()
"""

COMMITTER = r"""
import sys
sys.path.insert(0, sys.argv[1])
from nsgate.system import nic_committer, rtnl
nic_committer.Committer(rtnl.Rtnl(), float(sys.argv[3])).serve(int(sys.argv[2]))
"""


def _queued(sock: socket.socket) -> int:
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN | select.POLLHUP)
    return next((events for _, events in poller.poll(0)), 0)


class Worker:
    """One create through the committer: a worker process and the committer's end of its
    channel (held by the test until it is enrolled)."""

    def __init__(self, user: User, ctr: Proc, name: str | None = None, *,
                 script: str = WORKER) -> None:
        mine, self.end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        if script == WORKER:
            args = [user.name, str(user.uid), str(user.gid), str(mine.fileno()), "create",
                    "/var/lib/lxc", "c1", str(ctr.pid), "veth", "br0",
                    *([name] if name else [])]
        else:
            args = [user.name, str(user.uid), str(mine.fileno()), str(ctr.pid)]
        self.proc = subprocess.Popen([PYTHON, "-I", "-c", script, LIBDIR, *args],
                                     pass_fds=[mine.fileno()], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        mine.close()
        self.pidfd = os.pidfd_open(self.proc.pid)
        self.ctr = ctr

    def intent_queued(self) -> bool:
        """The kernel holds the worker's intent on the committer's end; a worker that ended
        before sending one fails the test here."""
        events = _queued(self.end)
        assert events & select.POLLIN or self.proc.poll() is None, self.result()
        return bool(events & select.POLLIN)

    def result(self) -> subprocess.CompletedProcess[bytes]:
        out, err = self.proc.communicate(timeout=PATIENCE)
        return subprocess.CompletedProcess(self.proc.args, self.proc.returncode, out, err)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate()


class CommitterRun:
    """The installed committer in a process of its own, under strace (fsync and rename)."""

    def __init__(self, member_seconds: float = 60.0) -> None:
        self.trace = WORK / "committer.strace"
        self.trace.unlink(missing_ok=True)
        self.control, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.proc = subprocess.Popen(
            ["strace", "-f", "-qq", "-e", "trace=fsync,rename,renameat,renameat2", "-o",
             str(self.trace), PYTHON, "-I", "-c", COMMITTER, LIBDIR, str(theirs.fileno()),
             str(member_seconds)], pass_fds=[theirs.fileno()])
        theirs.close()
        self.workers: list[Worker] = []

    def start(self, workers: list[Worker]) -> None:
        """Enroll `workers` in one control message once each one's intent is queued."""
        self.workers += workers
        wait_for(lambda: all(w.intent_queued() for w in workers), "every worker's intent")
        socket.send_fds(self.control, [b"E"], [fd for w in workers
                                               for fd in (w.end.fileno(), w.pidfd)])
        for worker in workers:
            worker.end.close()
            os.close(worker.pidfd)

    def stop(self) -> dict[str, int]:
        """Stop the committer; how many fsyncs and renames of the database it made."""
        self.control.close()
        self.proc.wait(timeout=PATIENCE)
        calls = self.trace.read_text().splitlines()
        return {"fsync": sum(bool(re.search(r"\bfsync\(", call)) for call in calls),
                "rename": sum(bool(re.search(r"\brename(at2?)?\(.*/run/lxc/nics\"", call))
                              for call in calls)}

    def close(self) -> None:
        for worker in self.workers:
            worker.kill()
        if self.proc.poll() is None:
            self.control.close()
            try:
                self.proc.wait(timeout=PATIENCE)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def committer():
    runs: list[CommitterRun] = []

    def start(member_seconds: float = 60.0) -> CommitterRun:
        runs.append(CommitterRun(member_seconds))
        return runs[-1]

    yield start
    for run in runs:
        run.close()


def refused_names(result: subprocess.CompletedProcess[bytes]) -> set[str]:
    """The nics a quota refusal names as using the quota."""
    first = result.stderr.split(b"\n", 1)[0].decode()
    return set(first.split(" used by ", 1)[1].split(", ")) if " used by " in first else set()


# --- a batch: one write, exact quotas --------------------------------------------------------


def test_eight_creates_quota_three_one_write(committer):
    grant("nsgt-alice veth br0 3")
    run = committer()
    workers = [Worker(ALICE, Proc.container(ALICE)) for _ in range(8)]
    run.start(workers)
    results = [worker.result() for worker in workers]
    made = [assert_created(result, worker.ctr)
            for result, worker in zip(results, workers, strict=True) if result.returncode == 0]
    assert len(made) == 3, [r.stderr for r in results]
    for result, worker in zip(results, workers, strict=True):
        if result.returncode:
            assert_refused(result, b"quota 3 on br0 used by ")
            assert refused_names(result) == set(made)  # the batch's own reservations counted
            assert set(worker.ctr.links()) == {"lo"}
    assert sorted(db_lines() or []) == sorted(f"nsgt-alice veth br0 {host}" for host in made)
    assert nsgate_veths() == set(made)
    assert run.stop() == {"fsync": 1, "rename": 1}


def test_two_users_and_a_stale_line_in_one_batch(committer):
    """Each user's quota is exact in a mixed batch; a stale line of alice's is pruned in the
    same write and does not count."""
    grant("nsgt-alice veth br0 2", "nsgt-bob veth br0 3")
    DB.write_text("nsgt-alice veth br0 veth23001_dead\nnsgt-carol veth br0 vethgone\n")
    DB.chmod(0o600)
    run = committer()
    workers = [Worker(user, Proc.container(user)) for _ in range(4) for user in (ALICE, BOB)]
    run.start(workers)
    results = [worker.result() for worker in workers]
    for result, worker in zip(results, workers, strict=True):
        if result.returncode:
            assert_refused(result, b"quota ")
        else:
            assert_created(result, worker.ctr)
    entries = db_entries()
    assert entries[0] == ("nsgt-carol", "veth", "br0", "vethgone")  # not ours to prune
    assert sorted(owner for owner, *_ in entries[1:]) == ["nsgt-alice"] * 2 + ["nsgt-bob"] * 3
    assert {dev for *_, dev in entries[1:]} == nsgate_veths()
    assert run.stop() == {"fsync": 1, "rename": 1}


def test_batches_follow_each_other_and_the_next_sees_the_first(committer):
    grant("nsgt-alice veth br0 3")
    run = committer()
    first = [Worker(ALICE, Proc.container(ALICE)) for _ in range(2)]
    run.start(first)
    for worker in first:
        assert_created(worker.result(), worker.ctr)
    second = [Worker(ALICE, Proc.container(ALICE)) for _ in range(2)]
    run.start(second)
    outcomes = sorted(worker.result().returncode for worker in second)
    assert outcomes == [0, 1]
    assert len(db_lines() or []) == 3 and len(nsgate_veths()) == 3
    assert run.stop() == {"fsync": 2, "rename": 2}


# --- failures inside a batch -----------------------------------------------------------------


def test_a_failing_create_rolls_back_only_its_own_line(committer):
    """One member's veth cannot be made (its container name was taken after it checked): it
    rolls back and reports; the committer drops its line alone, in one more write."""
    grant("nsgt-alice veth br0 5")
    run = committer()
    doomed_ctr = Proc.container(ALICE)
    workers = [Worker(ALICE, Proc.container(ALICE)), Worker(ALICE, doomed_ctr, "eth1"),
               Worker(ALICE, Proc.container(ALICE))]
    wait_for(lambda: all(w.intent_queued() for w in workers), "every worker's intent")
    subprocess.run(["nsenter", f"--net={doomed_ctr.netns}", "ip", "link", "add", "eth1", "type",
                    "veth", "peer", "name", "eth1p"], check=True, timeout=10)
    run.start(workers)
    results = [worker.result() for worker in workers]
    assert results[1].returncode == 1 and b"internal error" in results[1].stderr, results[1]
    made = [assert_created(results[i], workers[i].ctr) for i in (0, 2)]
    assert set(doomed_ctr.links()) == {"lo", "eth1", "eth1p"}  # nothing of nsgate's
    assert sorted(db_lines() or []) == sorted(f"nsgt-alice veth br0 {host}" for host in made)
    assert nsgate_veths() == set(made)
    assert run.stop() == {"fsync": 2, "rename": 2}


def _watch_db(until: Callable[[], bool]) -> set[bytes]:
    """Every content of the database seen until `until()` holds."""
    seen = set()
    deadline = time.monotonic() + PATIENCE  # only stops a hang
    while time.monotonic() < deadline:
        seen.add(DB.read_bytes() if DB.exists() else b"<none>")
        if until():
            return seen
    raise AssertionError("the database never reached its final content")


def test_a_member_killed_before_creating_leaves_old_or_exact_new(committer):
    """A member stopped before it reads its reservation holds the batch (and the lock, which
    came with its reservation) until it is killed: the database is the batch's exact write
    meanwhile, then exactly that without the dead member's line; the committer goes on."""
    grant("nsgt-alice veth br0 5")
    run = committer()
    workers = [Worker(ALICE, Proc.container(ALICE)) for _ in range(3)]
    wait_for(lambda: all(w.intent_queued() for w in workers), "every worker's intent")
    victim = workers[1]
    victim.proc.send_signal(signal.SIGSTOP)
    wait_for(lambda: proc_state(victim.proc.pid) == "T", "the victim to stop")
    run.start(workers)
    made = [assert_created(workers[i].result(), workers[i].ctr) for i in (0, 2)]
    written = db_lines()
    assert written is not None and len(written) == 3
    assert len([line for line in written if line.split()[-1] not in made]) == 1  # the victim's
    probe = os.open(LOCK, os.O_RDONLY)  # the batch, and so the lock, waits for the victim
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(probe)
    victim.proc.kill()
    final = [f"nsgt-alice veth br0 {host}" for host in made]
    seen = _watch_db(lambda: db_lines() == final)
    assert seen <= {"".join(line + "\n" for line in lines).encode() for lines in (written, final)}
    assert nsgate_veths() == set(made)
    wait_for(lambda: not lock_holders(LOCK), "the lock to be free")
    late = Worker(ALICE, Proc.container(ALICE))
    run.start([late])
    assert_created(late.result(), late.ctr)
    assert run.stop() == {"fsync": 3, "rename": 3}


def test_a_silent_member_is_killed_and_its_line_dropped(committer):
    grant("nsgt-alice veth br0 5")
    run = committer(member_seconds=1.0)
    workers = [Worker(ALICE, Proc.container(ALICE)) for _ in range(2)]
    wait_for(lambda: all(w.intent_queued() for w in workers), "every worker's intent")
    workers[0].proc.send_signal(signal.SIGSTOP)
    wait_for(lambda: proc_state(workers[0].proc.pid) == "T", "the member to stop")
    run.start(workers)
    made = assert_created(workers[1].result(), workers[1].ctr)
    silent = workers[0].result()  # the committer killed it
    assert silent.returncode == -signal.SIGKILL
    wait_for(lambda: db_lines() == [f"nsgt-alice veth br0 {made}"], "the silent line to go")
    assert nsgate_veths() == {made}
    assert run.stop() == {"fsync": 2, "rename": 2}


def test_a_member_silent_after_creating_keeps_its_nic_recorded(committer):
    """A member that made its veth and then went silent is killed; its nic exists, so its line
    stays: a live host end is never without its line."""
    grant("nsgt-alice veth br0 5")
    run = committer(member_seconds=1.0)
    ctr = Proc.container(ALICE)
    silent = Worker(ALICE, ctr, script=SILENT_AFTER_CREATE)
    other = Worker(ALICE, Proc.container(ALICE))
    run.start([silent, other])
    made = assert_created(other.result(), other.ctr)
    result = silent.result()
    assert result.returncode == -signal.SIGKILL
    host = result.stdout.decode().strip()
    assert set(ctr.links()) == {"lo", "eth0"}
    assert sorted(db_lines() or []) == sorted(f"nsgt-alice veth br0 {h}" for h in (host, made))
    assert nsgate_veths() == {host, made}
    assert run.stop() == {"fsync": 1, "rename": 1}


# --- the setuid helper: a batch of one --------------------------------------------------------


def _fsyncs_of_create(user: User, ctr: Proc) -> tuple[subprocess.CompletedProcess[bytes], int]:
    trace = WORK / "create.strace"
    trace.unlink(missing_ok=True)
    result = subprocess.run(["strace", "-f", "-qq", "-e", "trace=fsync", "-o", str(trace),
                             "-u", user.name, NSGATE_NIC, "create", "/var/lib/lxc", "c1",
                             str(ctr.pid), "veth", "br0"], capture_output=True, timeout=60)
    return result, len(trace.read_text().splitlines())


def test_the_setuid_helper_writes_once_per_create_and_not_on_a_refusal():
    grant("nsgt-alice veth br0 1")
    ctr = Proc.container(ALICE)
    result, fsyncs = _fsyncs_of_create(ALICE, ctr)
    assert_created(result, ctr)
    assert fsyncs == 1
    other = Proc.container(ALICE)
    result, fsyncs = _fsyncs_of_create(ALICE, other)
    assert_refused(result, b"quota 1 on br0 used by ")
    assert fsyncs == 0


def test_the_setuid_helper_and_a_committer_share_the_quota(committer):
    """In-process creates and committed ones take the same lock and count the same lines."""
    grant("nsgt-alice veth br0 3")
    run = committer()
    workers = [Worker(ALICE, Proc.container(ALICE)) for _ in range(3)]
    ctrs = [Proc.container(ALICE) for _ in range(3)]
    run.start(workers)
    helpers = [subprocess.Popen(setpriv(ALICE, [NSGATE_NIC, "create", "/var/lib/lxc", "c1",
                                                str(ctr.pid), "veth", "br0"]),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
               for ctr in ctrs]
    results = [worker.result() for worker in workers]
    for helper in helpers:
        out, err = helper.communicate(timeout=PATIENCE)
        results.append(subprocess.CompletedProcess(helper.args, helper.returncode, out, err))
    assert sorted(result.returncode for result in results) == [0, 0, 0, 1, 1, 1]
    assert len(db_lines() or []) == 3 and len(nsgate_veths()) == 3
    run.stop()


assert Path(LIBDIR).is_absolute()


# --- the committer's process, and when it goes ------------------------------------------------

SERVICE_STAND_IN = r"""
import json, os, subprocess, sys
sys.path.insert(0, sys.argv[1])
from nsgate.system import nic_channel, nic_committer
committer = nic_committer.CommitterProcess()
worker_script, user, uid, gid = sys.argv[2:6]
pids = sys.argv[6:]
procs, pairs = [], []
for pid in pids:
    mine, theirs = nic_channel.pair()
    proc = subprocess.Popen([sys.executable, "-I", "-c", worker_script, sys.argv[1], user, uid, gid,
                             str(mine), "create", "/var/lib/lxc", "c1", pid, "veth", "br0"],
                            pass_fds=[mine], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    os.close(mine)
    procs.append(proc)
    pairs.append((theirs, os.pidfd_open(proc.pid)))
committer.enroll(pairs)
results = []
for proc in procs:
    out, err = proc.communicate()
    results.append([proc.returncode, out.decode(), err.decode()])
committer.close(10)
print(json.dumps(results))
"""


def test_the_committer_process_of_the_service(committer):
    """CommitterProcess: forked as the service will, enrolled as the service will."""
    grant("nsgt-alice veth br0 2")
    ctrs = [Proc.container(ALICE) for _ in range(4)]
    out = subprocess.run([PYTHON, "-I", "-c", SERVICE_STAND_IN, LIBDIR, WORKER, ALICE.name,
                          str(ALICE.uid), str(ALICE.gid), *(str(c.pid) for c in ctrs)],
                         capture_output=True, check=True, timeout=PATIENCE).stdout
    results = [subprocess.CompletedProcess([], status, o.encode(), e.encode())
               for status, o, e in json.loads(out)]
    made = [assert_created(r, c) for r, c in zip(results, ctrs, strict=True) if r.returncode == 0]
    assert len(made) == 2
    for result in results:
        if result.returncode:
            assert_refused(result, b"quota 2 on br0 used by ")
    assert sorted(db_lines() or []) == sorted(f"nsgt-alice veth br0 {h}" for h in made)


def test_the_lock_outlives_a_dead_committer_until_its_members_are_done(committer):
    """The committer is killed while a member of its batch has not yet made its nic: the lock
    came with the reservation, so it stays held until that member is done, and nobody can take
    the member's recorded line for stale meanwhile. The member then completes: the exact new
    state."""
    grant("nsgt-alice veth br0 5")
    run = committer()
    workers = [Worker(ALICE, Proc.container(ALICE)) for _ in range(2)]
    wait_for(lambda: all(w.intent_queued() for w in workers), "every worker's intent")
    late = workers[1]
    late.proc.send_signal(signal.SIGSTOP)
    wait_for(lambda: proc_state(late.proc.pid) == "T", "the member to stop")
    run.start(workers)
    first = assert_created(workers[0].result(), workers[0].ctr)
    python = int(Path(f"/proc/{run.proc.pid}/task/{run.proc.pid}/children").read_text())
    os.kill(python, signal.SIGKILL)
    wait_for(lambda: proc_state(python) in ("Z", "gone"), "the committer to die")
    probe = os.open(LOCK, os.O_RDONLY)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        late.proc.send_signal(signal.SIGCONT)
        second = assert_created(late.result(), late.ctr)
        fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free once the member is done
    finally:
        os.close(probe)
    assert sorted(db_lines() or []) == sorted(f"nsgt-alice veth br0 {h}" for h in (first, second))
    assert nsgate_veths() == {first, second}


def _play_committer(answer: bytes | None) -> subprocess.CompletedProcess[bytes]:
    """A worker whose committer reads its intent and then answers `answer` (None: closes)."""
    grant("nsgt-alice veth br0 5")
    worker = Worker(ALICE, Proc.container(ALICE))
    wait_for(worker.intent_queued, "the worker's intent")
    assert worker.end.recv(70000)[:1] == b"I"
    if answer is not None:
        worker.end.send(answer)
    worker.end.close()
    return worker.result()


def test_a_worker_whose_committer_is_gone_refuses_and_makes_nothing():
    result = _play_committer(None)
    assert_refused(result, b"/run/lxc/nics is busy: nsgated's nic committer is gone")
    assert not nsgate_veths() and not db_lines()


@pytest.mark.parametrize("answer", [b"R\x00\x04eth0\x00\x00\x00\x04\x00\x00\x00\x00",  # no lock
                                    b"R", b"X\xff\xff", b"K", b"Z", b"\x00" * 70000])
def test_a_worker_refuses_what_it_cannot_read(answer):
    result = _play_committer(answer)
    assert_refused(result, b"/run/lxc/nics is busy: nsgated's nic committer answered what "
                           b"this worker cannot read")
    assert not nsgate_veths() and not db_lines()


def test_the_committer_refuses_what_it_cannot_read_and_goes_on(committer):
    grant("nsgt-alice veth br0 5")
    run = committer()
    hostile, end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    bystander = Proc.plain(None)
    socket.send_fds(run.control, [b"E"], [end.fileno(), os.pidfd_open(bystander.pid)])
    end.close()
    for garbage in (b"I", b"I\x00\x04\x00\x00\x00\x01", b"D", b"\xff" * 100):
        hostile.send(garbage)
        answer = hostile.recv(70000)
        assert answer.startswith(b"X") and b"could not read the request" in answer, answer
    worker = Worker(ALICE, Proc.container(ALICE))
    run.start([worker])
    assert_created(worker.result(), worker.ctr)
    hostile.close()
    assert proc_state(bystander.pid) != "gone"


# --- through nsgated ----------------------------------------------------------------------------

IN_MOVED_TO = 0x80


class RenameWatch:
    """inotify on /run/lxc: how many times a file was renamed onto /run/lxc/nics (each database
    write is one rename), as the kernel reports it."""

    def __init__(self) -> None:
        import ctypes

        self._libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        assert self.fd >= 0
        assert self._libc.inotify_add_watch(self.fd, str(DB.parent).encode(), IN_MOVED_TO) >= 0

    def renames(self) -> int:
        data = b""
        try:
            while chunk := os.read(self.fd, 65536):
                data += chunk
        except BlockingIOError:
            pass
        os.close(self.fd)
        count, position = 0, 0
        while position < len(data):
            _wd, mask, _cookie, size = struct.unpack_from("=iIII", data, position)
            name = data[position + 16:position + 16 + size].rstrip(b"\0")
            count += bool(mask & IN_MOVED_TO and name == b"nics")
            position += 16 + size
        return count


def committer_of(service, other_than: int = 0) -> int:
    """The pid of the service's committer (its child named nsgated-commit), once it has one
    (other than `other_than`)."""
    found: list[int] = []

    def look() -> bool:
        found[:] = [pid for pid in children(service.pid)
                    if is_committer(pid) and pid != other_than]
        return bool(found)

    wait_for(look, "nsgated's committer")
    return found[0]


def intents_sent(service, committer_pid: int) -> int:
    """How many of the service's workers have sent something the committer has not read yet:
    their SOCK_SEQPACKET sockets with data queued (ss: Send-Q) towards a peer that is not the
    service's parent (a worker's READY to it) nor a client (whose sockets no worker writes to
    before its answer). The committer's end may still be on its way to it (not yet enrolled)."""
    out = subprocess.run(["ss", "-x", "-a", "-p", "-H"], capture_output=True, text=True,
                         check=True, timeout=10).stdout
    rows = [line.split() for line in out.splitlines() if line.startswith("u_seq")]
    owner = {row[5]: row[-1] for row in rows}  # inode -> the users:(...) column
    workers = set(service.workers())
    return sum(1 for row in rows
               if int(row[3]) and any(f"pid={pid}," in row[-1] for pid in workers)
               and f"pid={service.pid}," not in row[-1]
               and f"pid={service.pid}," not in owner.get(row[7], "pid=0,"))


def ask_popen(user: User, args: list[str]) -> subprocess.Popen[bytes]:
    request = {"helper": "lxc-user-nic", "args": args, "open": "launcher"}
    return subprocess.Popen(setpriv(user, [PYTHON, "-I", "-c", CLIENT, str(SERVICE_LIBDIR),
                                           json.dumps(request)]),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def answer_of(proc: subprocess.Popen[bytes]) -> subprocess.CompletedProcess[bytes]:
    out, err = proc.communicate(timeout=PATIENCE)
    assert proc.returncode == 0, err
    answer = json.loads(out)
    return subprocess.CompletedProcess(proc.args, answer["status"], answer["out"].encode(),
                                       answer["err"].encode())


def create_args(ctr: Proc) -> list[str]:
    return ["create", "/var/lib/lxc", "c1", str(ctr.pid), "veth", "br0"]


def test_nsgated_commits_concurrent_creates_in_one_write(fresh_nsgated):
    """Eight creates reach the service's committer while it is stopped (the kernel shows their
    intents queued on its sockets); resumed, it decides them in one batch: exactly the quota
    succeed, the rest get the setuid helper's quota refusal, and /run/lxc/nics is written once.
    No worker ever waits on the database lock itself."""
    grant("nsgt-alice veth br0 3")
    service = fresh_nsgated()
    committer_pid = committer_of(service)
    ctrs = [Proc.container(ALICE) for _ in range(8)]
    os.kill(committer_pid, signal.SIGSTOP)
    try:
        wait_for(lambda: proc_state(committer_pid) == "T", "the committer to stop")
        clients = [ask_popen(ALICE, create_args(ctr)) for ctr in ctrs]
        wait_for(lambda: intents_sent(service, committer_pid) == 8,
                 "eight intents on their way to the committer")
        watch = RenameWatch()
    finally:
        os.kill(committer_pid, signal.SIGCONT)
    results = [answer_of(client) for client in clients]
    made = [assert_created(result, ctr)
            for result, ctr in zip(results, ctrs, strict=True) if result.returncode == 0]
    assert len(made) == 3, [r.stderr for r in results]
    for result in results:
        if result.returncode:
            assert_refused(result, b"quota 3 on br0 used by ")
            assert refused_names(result) == set(made)
    assert sorted(db_lines() or []) == sorted(f"nsgt-alice veth br0 {host}" for host in made)
    assert nsgate_veths() == set(made)
    assert watch.renames() == 1
    assert not lock_holders(LOCK)


def test_nsgated_and_the_setuid_helper_give_the_same_answers(fresh_nsgated):
    """A refusal through the committer is the in-process helper's, byte for byte (the service
    stopped, the launcher runs the helper in-process)."""
    grant("nsgt-alice veth br0 1")
    service = fresh_nsgated()
    first, second = Proc.container(ALICE), Proc.container(ALICE)
    made = assert_created(answer_of(ask_popen(ALICE, create_args(first))), first)
    served = answer_of(ask_popen(ALICE, create_args(second)))
    assert service.stop()[0] == 0
    local = subprocess.run(setpriv(ALICE, [NSGATE_NIC, *create_args(second)]),
                           capture_output=True, timeout=PATIENCE)
    assert (served.returncode, served.stdout, served.stderr) == \
        (local.returncode, local.stdout, local.stderr)
    assert local.stderr == (b"lxc-user-nic: quota 1 on br0 used by " + made.encode() + b"\n"
                            b"lxc-user-nic: remove one of these nics (stop its container) or "
                            b"ask for a larger quota in /etc/lxc/lxc-usernet\n")


def test_a_killed_committer_is_replaced_and_creates_go_on(fresh_nsgated):
    grant("nsgt-alice veth br0 5")
    service = fresh_nsgated()
    old = committer_of(service)
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: proc_state(old) == "gone", "the parent to reap the committer")
    committer_of(service, other_than=old)
    ctr = Proc.container(ALICE)
    assert_created(answer_of(ask_popen(ALICE, create_args(ctr))), ctr)


def test_nsgated_stops_its_committer(fresh_nsgated):
    service = fresh_nsgated()
    pid = committer_of(service)
    assert service.stop()[0] == 0
    wait_for(lambda: proc_state(pid) in ("gone", "Z"), "the committer to end")


def test_more_grants_than_a_channel_carries_are_refused_by_the_worker(committer):
    write_etc("lxc/lxc-usernet", "nsgt-alice veth br0 1\n" * 513)
    run = committer()
    worker = Worker(ALICE, Proc.container(ALICE))
    result = worker.result()
    assert_refused(result, b"513 lines of /etc/lxc/lxc-usernet apply to this request: nsgated "
                           b"passes at most 512 on")
    assert not nsgate_veths() and not db_lines()
    run.stop()


MANY_REQUESTS = r"""
import socket, sys
sys.path.insert(0, sys.argv[1])
from nsgate.policy import service_wire as w
for _ in range(int(sys.argv[2])):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.connect("/run/nsgate/io.socket")
    s.send(w.encode_request("getsubids", [b"nsgt-alice"], -1))
    status, out, err = w.decode_answer(s.recv(70000))
    assert (status, out) == (0, b"0: nsgt-alice 200000 65536\n"), (status, out, err)
    s.close()
print("ok")
"""


def test_a_stalled_committer_never_stops_the_service(fresh_nsgated):
    """While the committer is stopped, the service serves on: more workers are forked than its
    control socket can queue enrollments for (each request's worker is replaced), and the
    parent neither blocks nor fails; resumed, the committer serves creates again."""
    grant("nsgt-alice veth br0 5")
    service = fresh_nsgated()
    committer_pid = committer_of(service)
    os.kill(committer_pid, signal.SIGSTOP)
    try:
        wait_for(lambda: proc_state(committer_pid) == "T", "the committer to stop")
        result = subprocess.run(setpriv(ALICE, [PYTHON, "-I", "-c", MANY_REQUESTS,
                                                str(SERVICE_LIBDIR), "400"]),
                                capture_output=True, timeout=PATIENCE)
        assert result.stdout == b"ok\n", result.stderr.decode()[-2000:]
    finally:
        os.kill(committer_pid, signal.SIGCONT)
    ctr = Proc.container(ALICE)
    assert_created(answer_of(ask_popen(ALICE, create_args(ctr))), ctr)
    assert committer_of(service) == committer_pid
