"""The service's nic janitor (nsgate.system.nic_janitor), run standalone from the installed
prefix as root, in the session's private network namespace and /run/lxc: nics are made by the
installed lxc-user-nic as the test users, for their own "containers" (user + net namespaces);
a container is killed, its netns goes, the host end of its veth goes with it, and the janitor
must take the line out of /run/lxc/nics (and a private bridge with no port left, with its
record in /run/lxc/nsgate-bridges).

Nothing here waits on the wall clock: the janitor is ready when the kernel shows its socket
subscribed to RTNLGRP_LINK (/proc/net/netlink, Groups) and the process asleep in epoll_wait with
that socket's queue empty (Rmem 0); lost notifications are the socket's Drops counter; a wait
for the lock is /proc/locks.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import re
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from tests.support import (
    ALICE,
    BOB,
    PREFIX,
    lock_waiters,
    private_dev_log,
    proc_state,
    wait_for,
    wchan,
    write_etc,
)
from tests.usernic_support import (
    DB,
    DB_DIR,
    LOCK,
    WORK,
    Proc,
    add_bridge,
    add_veth,
    clean_db,
    create,
    db_lines,
    ip,
    ip_links,
    master_of,
    write_db,
)

LIBDIR = PREFIX / "lib" / "nsgate"
CODE = ("import sys; sys.path.insert(0, sys.argv[1]); from nsgate.system import nic_janitor; "
        "nic_janitor.main()")
RECORD = DB_DIR / "nsgate-bridges"
PRIVATE = f"nsgu{ALICE.uid}"
LOG_AUTHPRIV = 10 << 3
LOG_WARNING, LOG_NOTICE = 4, 5
RTNLGRP_LINK = 1


# --- the janitor process, as the kernel shows it ------------------------------------------


def subscription(pid: int) -> dict[str, int] | None:
    """The netlink socket of process `pid` in RTNLGRP_LINK: its /proc/net/netlink counters."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    except FileNotFoundError:
        return None
    for line in Path("/proc/net/netlink").read_text().splitlines()[1:]:
        fields = line.split()
        if (int(fields[1]) == 0 and int(fields[3], 16) & (1 << (RTNLGRP_LINK - 1))
                and int(fields[9]) in inodes):
            return {"rmem": int(fields[4]), "drops": int(fields[8])}
    return None


def idle(pid: int) -> bool:
    """Subscribed, nothing queued, asleep in epoll_wait."""
    found = subscription(pid)
    return (found is not None and found["rmem"] == 0 and proc_state(pid) == "S"
            and wchan(pid) == "do_epoll_wait")


def is_keeper(pid: int) -> bool:
    """The service's other child subscribed to link notifications: its network keeper."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == "nsgated-net"
    except FileNotFoundError:
        return False


def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


class Janitor:
    """`python3 -I -c <import nic_janitor; main()>` as root, optionally under strace."""

    running: ClassVar[list[Janitor]] = []

    def __init__(self, strace: list[str] | None = None) -> None:
        WORK.mkdir(mode=0o755, exist_ok=True)
        self.errors = WORK / f"janitor-{len(Janitor.running)}-{os.getpid()}.err"
        argv = ["/usr/bin/python3", "-I", "-c", CODE, str(LIBDIR)]
        if strace is not None:
            argv = ["strace", "-qq", "-o", str(WORK / "janitor.strace"), *strace, "--", *argv]
        with self.errors.open("wb") as err:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=err)
        Janitor.running.append(self)
        self.pid = self.proc.pid
        if strace is not None:  # its tracee (strace forks probes of its own first)
            wait_for(lambda: self._tracee() is not None, "strace to start the janitor")
            self.pid = self._tracee() or 0
        self.wait_idle()

    def _tracee(self) -> int | None:
        for pid in children(self.proc.pid):
            try:
                if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"/usr/bin/python3\0"):
                    return pid
            except FileNotFoundError:
                continue
        return None

    def drops(self) -> int:
        found = subscription(self.pid)
        assert found is not None, self.failure()
        return found["drops"]

    def wait_idle(self) -> None:
        try:
            wait_for(lambda: idle(self.pid) or self.proc.poll() is not None,
                     f"the janitor {self.pid} to be idle")
        except AssertionError as err:
            raise AssertionError(f"{err}: {self.state()}") from None
        assert self.proc.poll() is None, self.failure()

    def state(self) -> str:
        return (f"state {proc_state(self.pid)}, wchan {wchan(self.pid)}, "
                f"subscription {subscription(self.pid)}, {self.failure()}")

    def failure(self) -> str:
        return f"janitor exit {self.proc.poll()}: {self.errors.read_text()}"

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            if proc_state(self.pid) == "T":
                os.kill(self.pid, signal.SIGCONT)
        status = self.proc.wait(timeout=120)
        if self in Janitor.running:
            Janitor.running.remove(self)
        return status

    def kill(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        self.proc.wait(timeout=120)
        Janitor.running.remove(self)

    @classmethod
    def stop_all(cls) -> None:
        while cls.running:
            janitor = cls.running[-1]
            if janitor.proc.poll() is None:
                for pid in {janitor.pid, *children(janitor.proc.pid)}:  # strace's tracee first
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                janitor.proc.kill()
            janitor.stop()


@pytest.fixture(scope="module")
def host_baseline() -> set[str]:
    return set(ip_links())


@pytest.fixture(autouse=True)
def nic_world(host_baseline: set[str]) -> Iterator[None]:
    """Each test: an empty /run/lxc, alice and bob granted nics on br0 and on private bridges.
    Afterwards janitors and containers are stopped and every new link is deleted."""
    clean_db()
    write_etc("lxc/lxc-usernet", "nsgt-alice veth br0 8\nnsgt-bob veth br0 8\n"
                                 "nsgt-alice veth nsgate-private 8\n")
    add_bridge("br0")
    yield
    Janitor.stop_all()
    Proc.stop_all()
    for name in set(ip_links()) - host_baseline:
        subprocess.run(["ip", "link", "del", name], capture_output=True, check=False)
    assert set(ip_links()) == host_baseline
    Path("/etc/lxc/lxc-usernet").unlink(missing_ok=True)
    clean_db()


def nic(user, bridge: str = "br0") -> tuple[Proc, str]:
    """A new container of `user` with one nic on `bridge`; the host end's name."""
    container = Proc.container(user)
    result = create(user, container.pid, bridge)
    assert result.returncode == 0, result.stderr
    return container, result.stdout.decode().split(":")[2]


def kill(container: Proc, host: str) -> None:
    """Kill the container; its netns goes, and the host end of its veth with it."""
    container.stop()
    wait_for(lambda: host not in ip_links(), f"{host} to go with its container's netns")


def line_of(host: str) -> str:
    (line,) = [line for line in db_lines() or [] if line.endswith(" " + host)]
    return line


def gone_from_db(host: str) -> bool:
    return not any(line.endswith(" " + host) for line in db_lines() or [])


def record_lines() -> list[str]:
    return RECORD.read_text().splitlines() if RECORD.exists() else []


# --- lifetime ------------------------------------------------------------------------------


def test_a_line_leaves_the_database_when_its_host_end_goes() -> None:
    janitor = Janitor()
    first, first_host = nic(ALICE)
    _, second_host = nic(ALICE)
    _, bob_host = nic(BOB)
    kept = [line_of(second_host), line_of(bob_host)]
    kill(first, first_host)
    wait_for(lambda: gone_from_db(first_host), "the janitor to remove the dead nic's line")
    janitor.wait_idle()
    assert db_lines() == kept  # alice's other nic and bob's, byte for byte, in order
    assert janitor.stop() == 0


def test_any_recorded_name_counts_and_unreadable_lines_stay() -> None:
    """Lines LXC's helper or an older nsgate wrote name interfaces in other ways; a line nsgate
    cannot read is never touched."""
    add_veth("nsgtjan0")
    write_db(["nsgt-bob veth br0 nsgtjan0", "# a comment", "nsgt-bob veth br0 nsgtjan1 extra"])
    janitor = Janitor()
    ip("link", "del", "nsgtjan0")
    wait_for(lambda: gone_from_db("nsgtjan0"), "the line of nsgtjan0 to go")
    janitor.wait_idle()
    assert db_lines() == ["# a comment", "nsgt-bob veth br0 nsgtjan1 extra"]


def test_a_private_bridge_goes_with_its_last_nic_and_its_record() -> None:
    janitor = Janitor()
    first, first_host = nic(ALICE, "nsgate-private")
    second, second_host = nic(ALICE, "nsgate-private")
    assert master_of(ip_links()[first_host]) == PRIVATE
    assert record_lines() == [f"{ALICE.uid} {PRIVATE}"]
    kill(first, first_host)
    wait_for(lambda: gone_from_db(first_host), "the first nic's line to go")
    janitor.wait_idle()
    assert PRIVATE in ip_links()  # a port remains
    assert record_lines() == [f"{ALICE.uid} {PRIVATE}"]
    kill(second, second_host)
    wait_for(lambda: PRIVATE not in ip_links(), "the private bridge to go with its last port")
    wait_for(lambda: record_lines() == [], "its record line to go")
    # the three go in one pass of the janitor's, in no order the test may count on
    wait_for(lambda: gone_from_db(second_host), "the second nic's line to go")
    janitor.wait_idle()
    assert db_lines() == []
    # and the user gets a new one on the next create
    _, host = nic(ALICE, "nsgate-private")
    assert master_of(ip_links()[host]) == PRIVATE
    assert record_lines() == [f"{ALICE.uid} {PRIVATE}"]


def test_a_private_bridge_left_without_ports_goes_too() -> None:
    """Its last port detached rather than deleted: the bridge goes all the same."""
    janitor = Janitor()
    _, host = nic(ALICE, "nsgate-private")
    ip("link", "set", host, "nomaster")
    wait_for(lambda: PRIVATE not in ip_links(), "the portless private bridge to go")
    wait_for(lambda: record_lines() == [], "its record line to go")
    janitor.wait_idle()
    assert not gone_from_db(host)  # the nic itself lives on


def test_a_bridge_nsgate_did_not_record_is_never_removed() -> None:
    janitor = Janitor()
    add_bridge(f"nsgu{BOB.uid}")
    add_veth("nsgtjan0")
    ip("link", "set", "nsgtjan0", "master", f"nsgu{BOB.uid}")
    ip("link", "del", "nsgtjan0")
    janitor.wait_idle()
    _, host = nic(ALICE, "nsgate-private")  # a recorded one, as a control
    ip("link", "set", host, "nomaster")
    wait_for(lambda: PRIVATE not in ip_links(), "the recorded private bridge to go")
    janitor.wait_idle()
    assert f"nsgu{BOB.uid}" in ip_links()


def test_a_line_whose_name_a_new_link_took_stays() -> None:
    """The notification is a hint: under the lock the name is looked up again."""
    janitor = Janitor()
    first, first_host = nic(ALICE)
    second, second_host = nic(ALICE)
    os.kill(janitor.pid, signal.SIGSTOP)
    wait_for(lambda: proc_state(janitor.pid) == "T", "the janitor to stop")
    kill(first, first_host)
    kill(second, second_host)
    ip("link", "add", first_host, "type", "veth", "peer", "name", "nsgtjanp")  # the name again
    reused = line_of(first_host)
    os.kill(janitor.pid, signal.SIGCONT)
    wait_for(lambda: gone_from_db(second_host), "the other dead nic's line to go")
    janitor.wait_idle()
    assert db_lines() == [reused]


def test_a_restarted_janitor_reconciles_what_it_missed() -> None:
    janitor = Janitor()
    container, host = nic(ALICE, "nsgate-private")
    _, bob_host = nic(BOB)
    assert janitor.stop() == 0
    kill(container, host)
    assert not gone_from_db(host)  # nobody watched
    assert PRIVATE in ip_links()
    janitor = Janitor()  # ready only after its first pass
    assert db_lines() == [line_of(bob_host)]
    assert PRIVATE not in ip_links()
    assert record_lines() == []


def test_lost_notifications_mean_a_full_reconciliation() -> None:
    """The socket's queue overflows while the janitor is stopped: the kernel drops the rest,
    among them the deletion of the nic's host end, and the janitor reads ENOBUFS."""
    janitor = Janitor()
    container, host = nic(ALICE)
    _, bob_host = nic(BOB)
    os.kill(janitor.pid, signal.SIGSTOP)
    wait_for(lambda: proc_state(janitor.pid) == "T", "the janitor to stop")
    for _ in range(20):  # 400 deletions overflow the default queue (rmem_default 208 KiB)
        subprocess.run(["ip", "-batch", "-"], check=True, text=True, input="".join(
            f"link add nsgtf{i} type veth peer name nsgtf{i}p\n" for i in range(200)))
        subprocess.run(["ip", "-batch", "-"], check=True, text=True, input="".join(
            f"link del nsgtf{i}\n" for i in range(200)))
        if janitor.drops():
            break
    assert janitor.drops() > 0, "the queue never overflowed"
    before = janitor.drops()
    kill(container, host)
    assert janitor.drops() > before, "the nic's deletion was queued, not lost"
    os.kill(janitor.pid, signal.SIGCONT)
    wait_for(lambda: gone_from_db(host), "the full reconciliation to remove the line")
    janitor.wait_idle()
    assert db_lines() == [line_of(bob_host)]


def test_a_busy_lock_is_waited_for_boundedly_and_tried_again() -> None:
    janitor = Janitor()
    container, host = nic(ALICE)
    _, bob_host = nic(BOB)
    before = DB.read_bytes()
    fd = os.open(LOCK, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        kill(container, host)
        wait_for(lambda: janitor.pid in lock_waiters(LOCK), "the janitor to wait for the lock")
        wait_for(lambda: janitor.pid not in lock_waiters(LOCK), "the janitor to give up")
        assert janitor.proc.poll() is None
        wait_for(lambda: janitor.pid in lock_waiters(LOCK), "the janitor to try again")
        assert DB.read_bytes() == before
    finally:
        os.close(fd)
    wait_for(lambda: gone_from_db(host), "the line to go once the lock is free")
    janitor.wait_idle()
    assert db_lines() == [line_of(bob_host)]


def test_deletions_of_unrecorded_links_never_take_the_lock() -> None:
    """Creates never wait for the janitor on account of links the database does not name: it
    locks (flock, seen by strace) only for a recorded line or private bridge."""
    janitor = Janitor(strace=["-e", "trace=flock"])
    trace = WORK / "janitor.strace"
    assert trace.read_text().count("flock(") == 0  # nothing recorded: no pass at start
    assert list(DB_DIR.iterdir()) == []  # and no file made (LXC may never be used here)
    for i in range(20):
        add_veth(f"nsgtjan{i}")
    add_bridge(f"nsgu{BOB.uid}")
    ip("link", "set", "nsgtjan0", "master", f"nsgu{BOB.uid}")
    for i in range(20):
        ip("link", "del", f"nsgtjan{i}")
    ip("link", "del", f"nsgu{BOB.uid}")
    janitor.wait_idle()
    assert trace.read_text().count("flock(") == 0
    container, host = nic(ALICE)  # control: a recorded line's deletion does
    kill(container, host)
    wait_for(lambda: gone_from_db(host), "the line to go")
    janitor.wait_idle()
    assert trace.read_text().count("flock(") == 1  # (closing the fd unlocks)


# --- audit ---------------------------------------------------------------------------------


def _janitor_records(sock: socket.socket, count: int) -> list[bytes]:
    """The next `count` records tagged nsgated (the helpers' own records are skipped)."""
    found = []
    sock.settimeout(120)
    while len(found) < count:
        record = sock.recv(65536)
        if re.search(rb"\d nsgated\[\d+\]: ", record):
            found.append(record)
    return found


def test_every_removal_and_failure_goes_to_syslog() -> None:
    with private_dev_log() as log:
        janitor = Janitor()
        container, host = nic(ALICE, "nsgate-private")
        kill(container, host)
        wait_for(lambda: record_lines() == [], "the private bridge's record to go")
        line, bridge = sorted(_janitor_records(log, 2), key=lambda r: b"bridge " in r)
        notice = b"<%d>" % (LOG_AUTHPRIV | LOG_NOTICE)
        pid = b"nsgated[%d]: " % janitor.pid
        assert line.startswith(notice) and pid in line, line
        assert line.endswith(b"removed the line 'nsgt-alice veth nsgate-private %s' from "
                             b"/run/lxc/nics: its interface %s is gone"
                             % (host.encode(), host.encode())), line
        assert bridge.startswith(notice) and pid in bridge, bridge
        assert bridge.endswith(b"removed the private bridge %s and its line in "
                               b"/run/lxc/nsgate-bridges: no port left" % PRIVATE.encode())
        container, host = nic(ALICE)
        fd = os.open(LOCK, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            kill(container, host)
            (failed,) = _janitor_records(log, 1)
        finally:
            os.close(fd)
        assert failed.startswith(b"<%d>" % (LOG_AUTHPRIV | LOG_WARNING)), failed
        assert (b"failed: cleaning up after deleted links: /run/lxc/nics is busy" in failed
                and b"trying again in 1 s" in failed), failed
        (removed,) = _janitor_records(log, 1)
        while b"failed: " in removed:  # tried again before the lock was released
            assert b"is busy" in removed, removed
            (removed,) = _janitor_records(log, 1)
        assert removed.endswith(b"its interface %s is gone" % host.encode()), removed
        assert janitor.stop() == 0


# --- faults --------------------------------------------------------------------------------


def _whole(content: bytes, old: list[bytes]) -> bool:
    """Whether the database is whole: the old lines, some of them removed, nothing else."""
    if content and not content.endswith(b"\n"):
        return False
    lines = content.splitlines()
    position = 0
    for line in lines:
        while position < len(old) and old[position] != line:
            position += 1
        if position == len(old):
            return False
        position += 1
    return True


@pytest.mark.parametrize("step", ["flock", "write", "fsync", "rename"])
def test_killed_at_each_step_of_a_removal_the_database_is_old_or_new(step: str) -> None:
    """SIGKILL (strace's signal injection) as the janitor enters each system call of a
    removal: lock, write the new file, fsync it, rename it over the database."""
    janitor = Janitor(strace=["-e", f"trace={step}", "-e", f"inject={step}:signal=SIGKILL"])
    container, _ = nic(ALICE)
    _, bob_host = nic(BOB)
    old = DB.read_bytes()
    new = f"{line_of(bob_host)}\n".encode()
    container.stop()
    janitor.proc.wait(timeout=120)
    Janitor.running.remove(janitor)
    assert janitor.proc.returncode != 0
    assert DB.read_bytes() in (old, new)
    janitor = Janitor()
    assert DB.read_bytes() == new


def test_killed_at_random_points_the_database_is_always_whole() -> None:
    rng = random.Random(10)
    bob_container, bob_host = nic(BOB)
    for _ in range(4):
        janitor = Janitor()
        nics = [nic(ALICE) for _ in range(3)]
        old = DB.read_bytes().splitlines()
        for container, _ in nics:
            container.stop()
        for _ in range(rng.randrange(0, 2000)):  # a random moment of the janitor's work
            proc_state(janitor.pid)
        janitor.kill()
        assert _whole(DB.read_bytes(), old), DB.read_bytes()
        for _, host in nics:
            wait_for(lambda host=host: host not in ip_links(), f"{host} to go")
        Janitor()  # its first pass finishes the work
        assert db_lines() == [line_of(bob_host)]
        Janitor.stop_all()
    assert bob_container.proc.poll() is None


# --- in the service ------------------------------------------------------------------------


def test_the_service_runs_the_janitor_and_starts_it_again_when_it_dies() -> None:
    """nsgated forks the janitor beside its workers; killed, it is started again (and its
    first pass catches up); the service's stop ends it too."""
    WORK.mkdir(mode=0o755, exist_ok=True)
    socket_path = WORK / "janitor-service.sock"
    errors = WORK / "nsgated.err"
    with errors.open("wb") as err:
        service = subprocess.Popen([str(PREFIX / "libexec" / "nsgate" / "nsgated"), "--socket",
                                    str(socket_path), "--workers", "1"],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=err)
    try:
        def janitor_pid(other_than: int = 0) -> int:
            found = []

            def ready() -> bool:
                assert service.poll() is None, errors.read_text()
                found[:] = [pid for pid in children(service.pid)
                            if pid != other_than and idle(pid) and not is_keeper(pid)]
                return bool(found)

            wait_for(ready, "the service's janitor to be idle")
            return found[0]

        first = janitor_pid()
        container, host = nic(ALICE, "nsgate-private")
        kill(container, host)
        wait_for(lambda: gone_from_db(host) and PRIVATE not in ip_links(),
                 "the service's janitor to remove the line and the bridge")
        container, host = nic(ALICE)
        _, bob_host = nic(BOB)
        os.kill(first, signal.SIGKILL)
        kill(container, host)  # while no janitor runs, or the new one already
        second = janitor_pid(other_than=first)
        wait_for(lambda: gone_from_db(host), "the new janitor to remove the line")
        assert db_lines() == [line_of(bob_host)]
        service.send_signal(signal.SIGTERM)
        assert service.wait(timeout=120) == 0, errors.read_text()
        assert proc_state(second) == "gone"
        assert not socket_path.exists()
    finally:
        if service.poll() is None:
            service.kill()
            service.wait()
