"""nsgated's lifetime (issue 10, nsgated(8)): SIGTERM, socket activation and idle exit, the
restart when the installed code changes, and the pool of idle workers. The installed service,
observed through the kernel: its children, where they wait, its descriptors, /proc/net/unix.

The restart tests run a copy of the installed tree in the session's sandbox (a scratch PREFIX
under /run/nsgate-test, root's, 0755), which they change as a package upgrade does: a module
renamed into place (dpkg writes NAME.dpkg-new and renames it), or the whole library directory
emptied and copied again (`make install`).
"""

from __future__ import annotations

import fcntl
import os
import re
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.service_support import (
    LIBDIR,
    NSGATED,
    RECEIVING,
    SOCKET,
    Activator,
    Asking,
    answers,
    ask,
    creates_waiting_for_the_lock,
    listener_inode,
    traced,
)
from tests.support import (
    ALICE,
    BOB,
    PATIENCE,
    PREFIX,
    SANDBOX,
    proc_state,
    wait_for,
    wchan,
    write_etc,
)
from tests.usernic_support import LOCK, Proc, add_bridge, clean_db, ip

USAGE = ("Usage: getsubids [-g] user\n    list subuid ranges for user\n"
         "    pass -g to list subgid ranges\n")
BRIDGE = "nsgtlife0"


def socket_fds(pid: int) -> dict[int, int]:
    """fd -> socket inode of every socket `pid` holds."""
    fds = {}
    for entry in Path(f"/proc/{pid}/fd").iterdir():
        target = os.readlink(entry)
        if target.startswith("socket:["):
            fds[int(entry.name)] = int(target[8:-1])
    return fds


def environ(pid: int) -> dict[str, str]:
    """The environment `pid` was exec'd with."""
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


# --- SIGTERM --------------------------------------------------------------------------------


@pytest.fixture
def nic_world() -> Iterator[Proc]:
    """A bridge alice may use and her container: an lxc-user-nic create is a request that can be
    held in flight (it waits for the database lock, which the test takes)."""
    clean_db()
    add_bridge(BRIDGE)
    write_etc("lxc/lxc-usernet", f"nsgt-alice veth {BRIDGE} 100\n")
    try:
        yield Proc.container(ALICE)
    finally:
        Proc.stop_all()
        ip("link", "del", BRIDGE)
        clean_db()


class HeldLock:
    """The nic database's lock, taken by the test: creates wait for it in flight."""

    def __init__(self) -> None:
        LOCK.parent.mkdir(mode=0o755, exist_ok=True)
        self.fd = os.open(LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def create_in_flight(service_pid: int, container: Proc, nic: str) -> Asking:
    """An lxc-user-nic create sent, and its worker waiting for the lock the test holds (through
    the service's committer)."""
    asking = Asking(ALICE, "lxc-user-nic", ["create", "/var/lib/lxc", "c1", str(container.pid),
                                            "veth", BRIDGE, nic])
    wait_for(lambda: bool(creates_waiting_for_the_lock(service_pid))
             or asking.proc.poll() is not None, "the create to wait for the lock")
    assert asking.proc.poll() is None, asking.answer()
    return asking


def test_sigterm_finishes_requests_in_flight_removes_its_socket_and_exits_0(fresh_nsgated,
                                                                           nic_world):
    service = fresh_nsgated()
    lock = HeldLock()
    try:
        in_flight = create_in_flight(service.pid, nic_world, "eth1")
        service.proc.send_signal(signal.SIGTERM)
        # no new connections: the socket goes at once, while the request still runs
        wait_for(lambda: not SOCKET.exists(), "the socket to be removed")
        assert service.proc.poll() is None and not answers()
    finally:
        lock.release()
    answer = in_flight.answer()
    assert answer["status"] == 0 and str(answer["out"]).startswith("eth1:"), answer
    assert "eth1" in nic_world.links()
    _, err = service.proc.communicate(timeout=PATIENCE)  # the SIGTERM above stops it: a second
    assert (service.proc.returncode, err) == (0, b"")  # one could land in Python's exit
    assert not SOCKET.exists()


def test_sigterm_leaves_a_socket_it_was_given():
    """Socket-activated, the socket is the activator's: the service stops (status 0) and leaves
    it, and the next connection starts the service again."""
    activator = Activator()
    try:
        pid = activator.ready_service()
        inode = listener_inode()
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: activator.exited(pid) is not None, "the service to stop")
        assert activator.exited(pid) == 0
        assert SOCKET.exists() and listener_inode() == inode
        assert ask(ALICE, "getsubids", ["nsgt-alice"])["status"] == 0
        assert activator.service() not in (None, pid)
    finally:
        activator.stop()


# --- socket activation and idle exit ----------------------------------------------------------


def test_socket_activated_by_systemd_socket_activate_it_exits_when_idle_leaving_the_socket():
    """systemd-socket-activate listens, and at the first connection execs nsgated with the
    socket (LISTEN_FDS, LISTEN_PID): the connection that woke it is served; idle for
    --idle-exit seconds, it exits 0 and leaves the socket file (systemd's) where it is."""
    activate = subprocess.Popen(
        ["systemd-socket-activate", "--seqpacket", "-l", str(SOCKET), "--", str(NSGATED),
         "--idle-exit", "1"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE)
    try:
        wait_for(lambda: listener_inode() is not None or activate.poll() is not None,
                 "systemd-socket-activate to listen")
        SOCKET.chmod(0o666)  # nsgate.socket's SocketMode= (systemd-socket-activate has none)
        assert Path(f"/proc/{activate.pid}/comm").read_text().startswith("systemd-socket")
        assert ask(ALICE, "getsubids", ["nsgt-alice"]) == {
            "status": 0, "out": "0: nsgt-alice 200000 65536\n", "err": ""}
        assert Path(f"/proc/{activate.pid}/comm").read_text() == "nsgated\n"  # exec'd in place
        _, err = activate.communicate(timeout=PATIENCE)  # exits of itself, idle
        assert activate.returncode == 0, err
        assert SOCKET.is_socket()  # left in place
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with pytest.raises(ConnectionRefusedError):  # its only listener was the service
            probe.connect(str(SOCKET))
        probe.close()
    finally:
        if activate.poll() is None:
            activate.kill()
            activate.communicate()
        SOCKET.unlink(missing_ok=True)


@pytest.mark.parametrize("fd3", ["closed", "a pipe"])
def test_a_socket_activation_without_the_socket_is_refused(fd3):
    """LISTEN_FDS=1 for this pid, and fd 3 is not the listening socket: refused in one line,
    exit 1 (no traceback, no socket of its own instead)."""
    read_end, write_end = os.pipe()
    start = ("import os, sys\n"
             "if sys.argv[1] != '-': os.dup2(int(sys.argv[1]), 3)\n"
             "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1')\n"
             "os.execv(sys.argv[2], sys.argv[2:])\n")
    try:
        result = subprocess.run(["/usr/bin/python3", "-I", "-c", start,
                                 str(read_end) if fd3 == "a pipe" else "-", str(NSGATED)],
                                pass_fds=(read_end,), capture_output=True, timeout=PATIENCE)
    finally:
        os.close(read_end)
        os.close(write_end)
    assert result.returncode == 1
    why = "Bad file descriptor" if fd3 == "closed" else "Socket operation on non-socket"
    assert result.stderr.decode() == (
        f"nsgated: nsgated was passed LISTEN_FDS=1 but no socket on fd 3: {why}\n"
        "nsgated: whatever started it must pass the listening socket as fd 3\n")
    assert not SOCKET.exists()


def test_a_service_started_by_hand_never_exits_when_idle(fresh_nsgated):
    """The same --idle-exit, started by hand (it made its socket): it keeps running. Measured
    against an activated service with the same --idle-exit started after it: that one exits
    twice (idle, started again, idle again) while the one started by hand stays."""
    by_hand_socket = Path("/run/nsgate-hand/io.socket")
    by_hand = fresh_nsgated("--idle-exit", "1", "--socket", str(by_hand_socket))
    assert ask(ALICE, "getsubids", ["nsgt-alice"], socket=str(by_hand_socket))["status"] == 0
    activator = Activator("--idle-exit", "1")
    try:
        for _ in range(2):
            pid = activator.ready_service()
            assert ask(ALICE, "getsubids", ["nsgt-alice"])["status"] == 0
            wait_for(lambda pid=pid: activator.exited(pid) is not None, "the idle exit")
            assert activator.exited(pid) == 0
        assert by_hand.proc.poll() is None
        assert ask(ALICE, "getsubids", ["nsgt-alice"], socket=str(by_hand_socket))["status"] == 0
    finally:
        activator.stop()
    assert by_hand.stop() == (0, b"")
    assert not by_hand_socket.exists()


# --- restart when the installed code changes -------------------------------------------------

SCRATCH = SANDBOX / "prefix"
SCRATCH_LIB = SCRATCH / "lib" / "nsgate"
SCRATCH_NSGATED = SCRATCH / "libexec" / "nsgate" / "nsgated"
MODULE = Path("nsgate/cli/getsubids.py")  # what the upgrades change: its usage text


def install_scratch(tree: Path = SCRATCH_LIB) -> None:
    """A copy of the installed library at `tree`, root's, as `make install` leaves it."""
    subprocess.run(["rm", "-rf", str(tree)], check=True)
    tree.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    subprocess.run(["cp", "-a", str(LIBDIR), str(tree)], check=True)


@pytest.fixture
def scratch() -> Iterator[Path]:
    """The installed nsgate copied to a PREFIX of the test's own; its nsgated."""
    subprocess.run(["rm", "-rf", str(SCRATCH)], check=True)
    SCRATCH.mkdir(mode=0o755)
    install_scratch()
    SCRATCH_NSGATED.parent.mkdir(mode=0o755, parents=True)
    SCRATCH_NSGATED.write_text(NSGATED.read_text().replace(str(PREFIX), str(SCRATCH)))
    SCRATCH_NSGATED.chmod(0o755)
    yield SCRATCH_NSGATED
    subprocess.run(["rm", "-rf", str(SCRATCH)], check=True)


def new_version(tree: Path, version: str, mode: int = 0o644) -> None:
    """A new getsubids module in `tree`, as dpkg installs a file: written beside it, compiled as
    `make install` compiles (unchecked-hash .pyc), both renamed into place."""
    source = tree / MODULE
    staged = source.with_name(source.name + ".dpkg-new")
    staged.write_text(source.read_text().replace("list subuid ranges for user",
                                                 f"list subuid ranges for user ({version})"))
    staged.chmod(mode)
    subprocess.run(["/usr/bin/python3", "-I", "-c",
                    "import py_compile, sys; py_compile.compile(sys.argv[1], cfile=sys.argv[2],"
                    " dfile=sys.argv[3], invalidation_mode="
                    "py_compile.PycInvalidationMode.UNCHECKED_HASH, doraise=True)",
                    str(staged), str(source.parent / "__pycache__" / "getsubids.cpython-311.pyc"),
                    str(source)], check=True)
    staged.rename(source)


def usage_version() -> str:
    """Which getsubids the service runs: the version its usage text names ("" for the
    installed one)."""
    answer = ask(ALICE, "getsubids", [])
    assert answer["status"] == 1, answer
    found = re.search(r"list subuid ranges for user(?: \((\w+)\))?\n", str(answer["err"]))
    assert found, answer
    return found.group(1) or ""


def execs(log: Path) -> int:
    """The execve calls an `strace -e trace=execve` log shows completed."""
    return len(re.findall(r"^execve\(.*\) = 0$", log.read_text(), re.MULTILINE))


def test_a_changed_install_restarts_the_same_process_on_the_same_socket(scratch, fresh_nsgated,
                                                                        nic_world):
    """dpkg renames a new module into place: the service re-execs itself (same pid, the
    listening socket passed on as fd 3, LISTEN_FDS); a request in flight in a worker finishes;
    a connection made while the new program starts waits in the backlog and is served by it;
    the pool is refilled with workers of the new code."""
    service = fresh_nsgated(program=scratch)
    assert usage_version() == ""
    inode = listener_inode()
    lock = HeldLock()
    try:
        in_flight = create_in_flight(service.pid, nic_world, "eth1")
        # the re-exec'd program is held right after its execve, before it runs a line
        with traced(service.pid, "-e", "trace=execve", "-e",
                    "inject=execve:delay_exit=600000000"):
            new_version(SCRATCH_LIB, "v2")
            # the new program's environment (set by nothing but that execve)
            wait_for(lambda: environ(service.pid).get("LISTEN_PID") == str(service.pid),
                     "the service to re-exec itself")
            assert environ(service.pid).get("LISTEN_FDS") == "1"
            assert socket_fds(service.pid) == {3: inode}  # the same socket, nothing else
            during = Asking(ALICE, "getsubids", [])
            wait_for(during.waiting, "a connection made during the restart")
        assert during.answer() == {"status": 1, "out": "",
                                   "err": USAGE.replace("for user", "for user (v2)")}
    finally:
        lock.release()
    answer = in_flight.answer()  # served by a worker of the old code, to the end
    assert answer["status"] == 0 and str(answer["out"]).startswith("eth1:"), answer
    assert "eth1" in nic_world.links()
    assert listener_inode() == inode and service.proc.poll() is None
    service.settle()
    assert usage_version() == "v2"


def test_a_reinstall_restarts_it_into_the_new_code(scratch, fresh_nsgated):
    """`make install` empties the library directory and copies the new tree: the service
    restarts once the tree has stopped changing, and runs the new code."""
    new = SANDBOX / "new-tree"
    install_scratch(new)
    new_version(new, "v3")
    service = fresh_nsgated(program=scratch)
    log = SANDBOX / "execve-trace"
    with traced(service.pid, "-e", "trace=execve", log=log):
        subprocess.run(f"rm -rf {SCRATCH_LIB}/* && cp -a {new}/. {SCRATCH_LIB}/", shell=True,
                       check=True)
        wait_for(lambda: execs(log) == 1, "the service to re-exec itself")
        service.settle()
    assert usage_version() == "v3"
    assert service.stop() == (0, b"")
    subprocess.run(["rm", "-rf", str(new)], check=True)


def test_a_broken_install_is_refused_by_the_restarted_service(scratch, fresh_nsgated):
    """The new module is group-writable: the re-exec'd service checks the code as at any
    start, refuses to run it, says why and exits 1. (After exec the old code is gone: serving on
    with it is not an option; under systemd the unit fails and shows the reason.) Its socket is
    left, with no one listening: the setuid helpers' in-process path refuses the same tree
    for the same reason."""
    service = fresh_nsgated(program=scratch)
    new_version(SCRATCH_LIB, "bad", mode=0o664)
    _, err = service.proc.communicate(timeout=PATIENCE)
    assert service.proc.returncode == 1
    assert err.decode() == (
        f"nsgated: refusing to run: {SCRATCH_LIB / MODULE} is owned by uid 0 with mode 0664\n"
        "nsgated: code that runs as root must be owned by root and not writable by group or "
        "others: reinstall nsgate, or fix the owner and mode of that path\n")
    assert not answers()


def pending(pid: int) -> int:
    """The signals pending for process `pid` (ShdPnd: sent to the process, not a thread)."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^ShdPnd:\s*([0-9a-f]+)$", status, re.MULTILINE).group(1), 16)


def test_sigterm_during_the_restart_still_stops_it_cleanly(scratch, fresh_nsgated):
    """SIGTERM arriving while the service execs its new code (here: held at the execve's entry)
    is not lost, nor does it kill the new program before it can act on it: the restarted
    service stops as asked, removes its socket and exits 0."""
    service = fresh_nsgated(program=scratch)
    with traced(service.pid, "-e", "trace=execve", "-e", "inject=execve:delay_enter=600000000"):
        new_version(SCRATCH_LIB, "v2")
        wait_for(lambda: Path(f"/proc/{service.pid}/syscall").read_text().split()[0] == "59",
                 "the service to enter execve")  # 59: execve on x86_64
        service.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: pending(service.pid) & 1 << (signal.SIGTERM - 1),
                 "SIGTERM pending")
    _, err = service.proc.communicate(timeout=PATIENCE)
    assert (service.proc.returncode, err) == (0, b"")
    assert not SOCKET.exists()


def test_an_uninstall_stops_the_service(scratch, fresh_nsgated):
    """The installed code removed (nsgated and its library): the service cannot restart into
    it; it says so, removes its socket and exits 1 (no traceback)."""
    service = fresh_nsgated(program=scratch)
    subprocess.run(["rm", "-rf", str(SCRATCH / "libexec"), str(SCRATCH / "lib")], check=True)
    _, err = service.proc.communicate(timeout=PATIENCE)
    assert (service.proc.returncode, err.decode()) == (1, (
        f"nsgated: cannot restart: {scratch}: No such file or directory; the requests in flight "
        "finish, the service stops\n"))
    assert not SOCKET.exists()


# --- the pool of idle workers ----------------------------------------------------------------


def test_the_pool_is_refilled_after_each_request(fresh_nsgated):
    service = fresh_nsgated()  # two idle workers
    for _ in range(3):
        before = set(service.workers())
        assert ask(ALICE, "getsubids", ["nsgt-alice"])["status"] == 0
        service.settle()
        after = set(service.workers())
        assert len(after) == 2 and len(before & after) == 1  # the one that served: replaced


def test_an_idle_worker_that_dies_is_replaced(fresh_nsgated):
    service = fresh_nsgated()
    victim = service.workers()[0]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: proc_state(victim) == "gone", "the worker to be reaped")
    service.settle()
    assert victim not in service.workers() and len(service.workers()) == 2
    assert ask(ALICE, "getsubids", ["nsgt-alice"])["status"] == 0


def test_idle_workers_that_died_unnoticed_are_passed_over(fresh_nsgated, targets):
    """Both idle workers killed while the service could not see it yet (stopped): the request
    that arrives meanwhile goes to a worker that lives, not to an error."""
    service = fresh_nsgated()
    target = targets()
    os.kill(service.pid, signal.SIGSTOP)
    try:
        dead = service.workers()
        for worker in dead:
            os.kill(worker, signal.SIGKILL)
        wait_for(lambda: all(proc_state(worker) == "Z" for worker in dead), "dead workers")
        asking = Asking(ALICE, "newuidmap", [str(target.pid), "0", "23001", "1"])
        wait_for(asking.waiting, "the request to wait in the backlog")
    finally:
        os.kill(service.pid, signal.SIGCONT)
    assert asking.answer() == {"status": 0, "out": "", "err": ""}
    assert target.uid_map() == [(0, 23001, 1)]
    service.settle()


TICK = r"epoll_wait\(.*\)\s+= 0$"  # the loop's poll timing out: a second went by, idle


def test_workers_that_die_as_they_start_are_not_forked_in_a_loop(fresh_nsgated):
    """Every new worker killed at its first call of its own (strace -f, the OOM killer's part):
    after ten deaths the service forks no more for ten seconds (its ticks: epoll_wait timing
    out); a request is served meanwhile (a worker forked for it) once workers live again."""
    service = fresh_nsgated()
    log = SANDBOX / "fork-trace"
    parent = str(service.pid)

    def calls(pattern: str) -> int:
        return sum(1 for line in log.read_text().splitlines()
                   if line.startswith(parent + " ") and re.search(pattern, line))

    with traced(service.pid, "-f", "-e", "trace=clone,epoll_wait,recvmsg", "-e",
                "inject=recvmsg:signal=KILL", log=log):
        for worker in service.workers():
            os.kill(worker, signal.SIGKILL)
        wait_for(lambda: calls(r"clone\(") >= 8, "a burst of forks")
        ticks = calls(TICK)
        wait_for(lambda: calls(TICK) >= ticks + 3, "three ticks")
        # ten deaths stop the forks; at most the two of the pool were on their way
        assert 8 <= calls(r"clone\(") <= 10 + 2
    assert ask(ALICE, "getsubids", ["nsgt-alice"])["status"] == 0
    assert service.proc.poll() is None


def test_a_worker_holds_no_other_request_than_its_own(fresh_nsgated, nic_world):
    """Workers forked while a request waits for its turn (alice has 8 in flight) hold neither
    its connection nor its caller's pidfd: only their own channels to the service and to its
    nic committer."""
    service = fresh_nsgated()
    lock = HeldLock()
    try:
        in_flight = [Asking(ALICE, "lxc-user-nic", ["create", "/var/lib/lxc", "c1",
                                                    str(nic_world.pid), "veth", BRIDGE,
                                                    f"eth{n}"]) for n in range(1, 9)]
        wait_for(lambda: len(creates_waiting_for_the_lock(service.pid)) == 8,
                 "eight creates waiting for the lock")
        waiting = Asking(ALICE, "lxc-user-nic", ["create", "/var/lib/lxc", "c1",
                                                 str(nic_world.pid), "veth", BRIDGE, "eth9"])
        wait_for(waiting.waiting, "the ninth request to wait for its turn")
        busy = creates_waiting_for_the_lock(service.pid)

        def idle() -> set[int]:
            return set(service.workers()) - busy

        before = idle()
        while idle() & before:  # bob's requests take the idle workers: the pool is refilled
            assert ask(BOB, "getsubids", ["nsgt-bob"])["status"] == 0
            wait_for(lambda: bool(idle()) and all(wchan(w) == RECEIVING for w in idle()),
                     "an idle worker")
        for worker in idle():
            held = [os.readlink(fd) for fd in Path(f"/proc/{worker}/fd").iterdir()]
            # its channel to the service and its channel to the service's nic committer
            assert sum(target.startswith("socket:") for target in held) == 2, held
            assert "anon_inode:[pidfd]" not in held, held
    finally:
        lock.release()
    for n, asking in enumerate([*in_flight, waiting], 1):
        answer = asking.answer()
        assert str(answer["out"]).startswith(f"eth{n}:"), answer


def test_requests_waiting_for_their_turn_are_answered_when_it_stops(fresh_nsgated, nic_world):
    """A request the service accepted but no worker read (alice has 8 in flight: the ninth
    waits) is answered by the service itself: the answer reaches the caller (the request it
    never read is dropped first: closed unread, the connection would reset and the caller read
    ECONNRESET instead), and nothing was done."""
    service = fresh_nsgated()
    lock = HeldLock()
    try:
        in_flight = [Asking(ALICE, "lxc-user-nic", ["create", "/var/lib/lxc", "c1",
                                                    str(nic_world.pid), "veth", BRIDGE,
                                                    f"eth{n}"]) for n in range(1, 9)]
        wait_for(lambda: len(creates_waiting_for_the_lock(service.pid)) == 8,
                 "eight creates waiting for the lock")
        waiting = Asking(ALICE, "lxc-user-nic", ["create", "/var/lib/lxc", "c1",
                                                 str(nic_world.pid), "veth", BRIDGE, "eth9"])
        wait_for(waiting.waiting, "the ninth request to wait for its turn")
        service.proc.send_signal(signal.SIGTERM)
        assert waiting.answer() == {"status": 1, "out": "",
                                    "err": "nsgated: the service is stopping; nothing was done\n"}
    finally:
        lock.release()
    for n, asking in enumerate(in_flight, 1):
        assert str(asking.answer()["out"]).startswith(f"eth{n}:")
    assert "eth9" not in nic_world.links()
    _, err = service.proc.communicate(timeout=PATIENCE)  # the SIGTERM above stops it: a second
    assert (service.proc.returncode, err) == (0, b"")  # one could land in Python's exit
