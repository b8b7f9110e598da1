"""nsgated against hostile direct clients (issue 10: "Tests", items 3 and 4): forged and oversized
frames, wrong descriptor kinds and counts, callers that are not simply a user, clients that say
nothing or hang up, floods of connections, workers that crash or hang.

Every client is a real process of a test user (tests/service_support.py, `ask`, `HeldClient`),
talking nsgate-protocol(7) to the installed service. Each test asserts on the kernel's state (maps
not written, links not made, the nic database unchanged), on what the service's processes hold
(/proc: their children, real uids, descriptors; `ss`: which process holds which connection), and
that the service still serves a normal request afterwards.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.service_support import SOCKET, HeldClient, Nsgated, ask
from tests.support import (
    ALICE,
    BOB,
    CAROL,
    as_user,
    lock_waiters,
    private_dev_log,
    proc_state,
    wait_for,
    wchan,
    write_etc,
)
from tests.usernic_support import LOCK, Proc, add_bridge, clean_db, db_lines, ip_links

HEADER = struct.Struct("=6sHIIi")  # nsgate-protocol(7), REQUEST
ALICE_SUBIDS = "0: nsgt-alice 200000 65536\n"
BOB_SUBIDS = "0: nsgt-bob 300000 65536\n"
BRIDGE = "nsgthost0"
NESTED = "nsgated serves callers of the initial user namespace only"
GONE = "the caller went away before its request was served"


# --- the service, and what the kernel shows of it ------------------------------------------------


@pytest.fixture
def service(fresh_nsgated) -> Nsgated:
    return fresh_nsgated()


def still_serves() -> None:
    """Another user's ordinary request is answered as the helper answers it."""
    assert ask(BOB, "getsubids", ["nsgt-bob"]) == {"status": 0, "out": BOB_SUBIDS, "err": ""}


def real_uid(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Uid:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return None


def serving(service: Nsgated, uid: int) -> list[int]:
    """The service's workers running with `uid` as their real uid (the caller's)."""
    return [pid for pid in service.workers() if real_uid(pid) == uid]


def fds_of(pid: int) -> list[str]:
    """What each descriptor of `pid` is (readlink of /proc/PID/fd/N)."""
    found = []
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                found.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
    return found


def sockets_of(pid: int) -> set[int]:
    return {int(link[8:-1]) for link in fds_of(pid) if link.startswith("socket:[")}


def pidfds_of(pid: int) -> int:
    return sum(1 for link in fds_of(pid) if link == "anon_inode:[pidfd]")


def unix_peers() -> dict[int, int]:
    """Every connected unix socket of the test's network namespace: inode -> its peer's."""
    text = subprocess.run(["ss", "-xaH"], capture_output=True, text=True, check=True).stdout
    peers = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 8 and fields[5].isdigit() and fields[7].isdigit():
            peers[int(fields[5])] = int(fields[7])
    return peers


def backlog() -> int:
    """Connections made to the service's socket and not yet accepted (its listen queue)."""
    text = subprocess.run(["ss", "-xlH", "src", str(SOCKET)], capture_output=True, text=True,
                          check=True).stdout
    return sum(int(line.split()[2]) for line in text.splitlines())


def settle(service: Nsgated, waiting: int) -> None:
    """Wait until the service has accepted every connection made and holds `waiting`
    requests for their turn (one pidfd each)."""
    wait_for(lambda: backlog() == 0 and pidfds_of(service.pid) == waiting,
             f"every connection accepted and {waiting} waiting")


def holders(service: Nsgated, client: int) -> dict[int, int]:
    """Which of the service's processes hold the service's end of `client`'s connections, and
    how many each: the parent holds those waiting for their turn, a worker the one it serves."""
    peers = unix_peers()
    ends = {peers[inode] for inode in sockets_of(client) if inode in peers}
    held = {}
    for pid in [service.pid, *service.workers()]:
        count = len(sockets_of(pid) & ends)
        if count:
            held[pid] = count
    return held


def in_flight(service: Nsgated, client: int) -> int:
    """How many of `client`'s connections workers hold."""
    return sum(n for pid, n in holders(service, client).items() if pid != service.pid)


def shared_sockets(service: Nsgated) -> set[int]:
    """Sockets open in more than one of the service's processes: a worker must hold nothing of
    the parent's, nor another request's connection."""
    seen: dict[int, int] = {}
    for pid in [service.pid, *service.workers()]:
        for inode in sockets_of(pid):
            seen[inode] = seen.get(inode, 0) + 1
    return {inode for inode, count in seen.items() if count > 1}


def started(pid: int) -> int:
    """When `pid` started, in clock ticks since boot (/proc/PID/stat)."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])


def uptime_ticks() -> int:
    return int(float(Path("/proc/uptime").read_text().split()[0]) * os.sysconf("SC_CLK_TCK"))


@contextlib.contextmanager
def syslog_blocked() -> Iterator[None]:
    """The test's own /dev/log with its queue full: every helper that logs blocks in the send
    of its record, with the caller's ids, until the context ends (the socket goes away)."""
    with private_dev_log() as log:
        filler = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while True:
                filler.sendto(b"filler", "/dev/log")
        filler.close()
        yield
        log.close()


@contextlib.contextmanager
def nics_lock_held() -> Iterator[None]:
    """The nic database's lock, held by the test: lxc-user-nic waits for it under its bound."""
    import fcntl

    LOCK.parent.mkdir(exist_ok=True)
    fd = os.open(LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def spawn_with_pid(pid: int, argv: list[str]) -> int:
    """Start argv as process `pid` exactly (clone3 with set_tid, root's right in its pid
    namespace): a free pid reused on purpose."""
    libc = ctypes.PyDLL(None, use_errno=True)  # keeps the GIL across the call: the child execs
    libc.syscall.restype = ctypes.c_long
    tid = (ctypes.c_int * 1)(pid)
    clone_args = struct.pack("=11Q", 0, 0, 0, 0, signal.SIGCHLD, 0, 0, 0,
                             ctypes.addressof(tid), 1, 0)
    buffer = ctypes.create_string_buffer(clone_args, len(clone_args))
    child = libc.syscall(435, buffer, ctypes.c_size_t(len(clone_args)))  # SYS_clone3
    if child == 0:
        try:
            os.execvp(argv[0], argv)
        finally:
            os._exit(127)
    if child < 0:
        raise OSError(ctypes.get_errno(), "clone3 with set_tid")
    return child


def mapping(pid: int, lower: int = 23001) -> list[str]:
    return [str(pid), "0", str(lower), "1"]


def refused(answer: dict, *reasons: str) -> None:
    assert answer.get("status") == 1, answer
    assert any(reason in answer["err"] for reason in reasons), answer


# --- forged frames ---------------------------------------------------------------------------


def frame(pid: int, *, magic: bytes = b"nsgate", version: int = 1, helper: int = 0,
          argc: int | None = None, target: int = 0, body: bytes | None = None) -> str:
    """A newuidmap request for `pid` (hex), with the fields the test forges."""
    args = [arg.encode() for arg in mapping(pid)]
    if body is None:
        body = b"".join(arg + b"\0" for arg in args)
    return (HEADER.pack(magic, version, helper, len(args) if argc is None else argc, target)
            + body).hex()


FORGED = {
    "wrong magic": (lambda pid: frame(pid, magic=b"nsgatf"), "does not start with the protocol's"),
    "version 2": (lambda pid: frame(pid, version=2), "protocol version 2; nsgated speaks "
                  "version 1"),
    "version 2 with a shorter header": (lambda pid: frame(pid, version=2)[:16],
                                        "protocol version 2; nsgated speaks version 1"),
    "unknown helper": (lambda pid: frame(pid, helper=4), "unknown helper number 4"),
    "argc above the arguments": (lambda pid: frame(pid, argc=5), "argument count does not"),
    "argc below the arguments": (lambda pid: frame(pid, argc=3), "argument count does not"),
    "argc beyond 4096": (lambda pid: frame(pid, argc=5000), "more than 4096 arguments"),
    "unterminated argument": (lambda pid: frame(pid)[:-2], "last argument is not terminated"),
    "empty packet": (lambda pid: "", "shorter than its header"),
    "header only": (lambda pid: frame(pid, body=b""), "last argument is not terminated"),
    "bytes after no arguments": (lambda pid: frame(pid, argc=0, target=-1, body=b"x"),
                                 "bytes after its last argument"),
    "target beyond errno": (lambda pid: frame(pid, target=4096), "target field is out of range"),
}


@pytest.mark.parametrize("case", list(FORGED))
def test_forged_frames_are_refused_and_change_nothing(service, target, case):
    build, reason = FORGED[case]
    answer = ask(ALICE, "newuidmap", [], open_target=False, raw=build(target.pid),
                 hand=[f"dir:/proc/{target.pid}"])
    assert answer["status"] == 1 and answer["err"].startswith("nsgated: "), answer
    assert reason in answer["err"], answer
    assert target.uid_map() == []
    # the same target, asked properly, is mapped: the frame, not the target, was refused
    assert ask(ALICE, "newuidmap", mapping(target.pid)) == {"status": 0, "out": "", "err": ""}
    assert target.uid_map() == [(0, 23001, 1)]


def test_an_oversized_request_is_refused(service, target):
    """A packet over 65,536 bytes is cut by the kernel at the service's buffer, which says so
    (MSG_TRUNC): refused. One of exactly 65,536 bytes is read whole and goes to the helper."""
    header = len(bytes.fromhex(frame(target.pid)))  # the header and the four arguments
    for size in (70000, 65537, 65536):
        answer = ask(ALICE, "newuidmap", [*mapping(target.pid), "x" * (size - header - 1)])
        if size > 65536:
            assert answer == {"status": 1, "out": "", "err": "nsgated: the request is longer "
                              "than 65536 bytes, carries more than one descriptor or other "
                              "control data\n"}, size
        else:
            assert answer["status"] == 1 and answer["err"].startswith("newuidmap: "), answer
    assert target.uid_map() == []
    assert ask(ALICE, "newuidmap", mapping(target.pid)) == {"status": 0, "out": "", "err": ""}


# --- descriptors -------------------------------------------------------------------------------


DESCRIPTORS = {
    "two descriptors": ({"hand": ["dir:/proc/{pid}", "dir:/proc/{pid}"], "target": 0},
                        "more than one descriptor"),
    "three descriptors": ({"hand": ["dir:/proc/{pid}"] * 3, "target": 0},
                          "carries more than one descriptor"),
    "target 0 and no descriptor": ({"target": 0}, "does not match the descriptors"),
    "a descriptor and target -1": ({"hand": ["dir:/proc/{pid}"], "target": -1},
                                   "does not match the descriptors"),
    "a descriptor and an errno": ({"hand": ["dir:/proc/{pid}"], "target": 13},
                                  "does not match the descriptors"),
    "no descriptor for a pid": ({"target": -1}, "does not match its arguments"),
}


@pytest.mark.parametrize("case", list(DESCRIPTORS))
def test_wrong_descriptor_counts_are_refused(service, target, case):
    spec, reason = DESCRIPTORS[case]
    hand = [item.format(pid=target.pid) for item in spec.get("hand", [])]
    answer = ask(ALICE, "newuidmap", mapping(target.pid), open_target=False, hand=hand,
                 target=spec["target"])
    assert answer["status"] == 1 and answer["err"].startswith("nsgated: "), answer
    assert reason in answer["err"], answer
    assert target.uid_map() == []
    still_serves()


def test_getsubids_takes_no_descriptor(service):
    answer = ask(ALICE, "getsubids", ["nsgt-alice"], open_target=False,
                 hand=["file:/etc/passwd"], target=0)
    refused(answer, "target field does not match its arguments")
    assert answer["err"].startswith("nsgated: ") and answer["out"] == ""
    still_serves()


@pytest.mark.parametrize("prog", ["newuidmap", "newgidmap"])
@pytest.mark.parametrize("kind", ["file:/etc/passwd", "socket:", "dir:/", "dir:/proc",
                                  "dir:/proc/self/ns", "dir:/proc/self", "victim's"])
def test_wrong_kinds_of_target_for_the_map_writers(service, targets, prog, kind):
    """The descriptor, not the number, is the target, and it is checked for what it is: a
    file, a socket, a directory off procfs or not a process's, the client's own /proc/self (a
    process in no new user namespace) named as the victim's pid, the victim's /proc/PID opened
    by the attacker (opening another user's /proc/PID works; the owner check refuses it)."""
    victim, own = targets(BOB), targets(ALICE)
    hand = f"dir:/proc/{victim.pid}" if kind == "victim's" else kind
    answer = ask(ALICE, prog, mapping(victim.pid), open_target=False, hand=[hand], target=0)
    reasons = {"file:/etc/passwd": "is not a directory on procfs",
               "socket:": "is not a directory on procfs",
               "dir:/": "is not a directory on procfs",
               "dir:/proc": "is not a process's /proc directory",
               "dir:/proc/self/ns": "is not a process's /proc directory",
               "dir:/proc/self": "target is not in a new user namespace",
               "victim's": "Target process is owned by a different user"}
    refused(answer, reasons[kind])
    assert answer["err"].startswith(f"{prog}: "), answer
    for process in (victim, own):
        assert process.uid_map() == [] and process.gid_map() == []
        assert process.setgroups() == "allow"
    still_serves()


def test_another_users_process_by_pid(service, targets):
    """Bob's pid in alice's request: her client opens /proc/<pid> as she can (it works), and
    the owner check refuses; the same for the pid of a process of root's."""
    victim = targets(BOB)
    for pid in (victim.pid, os.getpid()):
        answer = ask(ALICE, "newuidmap", mapping(pid))
        refused(answer, "Target process is owned by a different user")
    assert victim.uid_map() == [] and victim.gid_map() == []
    still_serves()


@pytest.fixture
def nic_world() -> Iterator[None]:
    clean_db()
    add_bridge(BRIDGE)
    write_etc("lxc/lxc-usernet", f"nsgt-alice veth {BRIDGE} 4\nnsgt-bob veth {BRIDGE} 4\n")
    try:
        yield
    finally:
        Proc.stop_all()
        for name in ip_links():
            if name == BRIDGE or name.startswith(("veth23001_", "veth23002_")):
                subprocess.run(["ip", "link", "del", name], capture_output=True, check=False)
        clean_db()


def host_links() -> set[str]:
    return set(ip_links())


def create_args(pid: int | str) -> list[str]:
    return ["create", "/var/lib/lxc", "c1", str(pid), "veth", BRIDGE, "eth0"]


@pytest.mark.parametrize("kind", ["file:/etc/passwd", "socket:", "file:/proc/self/ns/user",
                                  "file:/proc/self/ns/net", "bob's"])
def test_wrong_kinds_of_netns_for_create(service, nic_world, kind):
    """lxc-user-nic create with a descriptor that is no netns (a file, a socket, a user
    namespace), the netns of the client itself (the host's, which alice may not modify), or
    bob's container named by pid (alice cannot open its ns/net: the client hands the errno)."""
    ctr, bobs = Proc.container(ALICE), Proc.container(BOB)
    before = host_links()
    if kind == "bob's":
        answer = ask(ALICE, "lxc-user-nic", create_args(bobs.pid))
    else:
        answer = ask(ALICE, "lxc-user-nic", create_args(ctr.pid), open_target=False,
                     hand=[kind], target=0)
    reasons = {"file:/etc/passwd": "is not a network namespace",
               "socket:": "is not a network namespace",
               "file:/proc/self/ns/user": "is not a network namespace",
               "file:/proc/self/ns/net": "may not modify that network namespace",
               "bob's": "cannot open the network namespace of pid"}
    refused(answer, reasons[kind])
    assert answer["err"].startswith("lxc-user-nic: "), answer
    assert host_links() == before
    assert set(ctr.links()) == {"lo"} and set(bobs.links()) == {"lo"}
    assert not db_lines()
    answer = ask(ALICE, "lxc-user-nic", create_args(ctr.pid))
    assert answer["status"] == 0, answer  # and the service still serves a proper one
    assert "eth0" in ctr.links()


@pytest.mark.parametrize("kind", ["path:/etc/passwd", "path:/proc/self/ns/user", "dir:/proc/self",
                                  "socket:"])
def test_wrong_kinds_of_netns_for_delete(service, nic_world, kind):
    """lxc-user-nic delete: the O_PATH descriptor of something that is not a netns file."""
    ctr = Proc.container(ALICE)
    made = ask(ALICE, "lxc-user-nic", create_args(ctr.pid))
    assert made["status"] == 0, made
    host = made["out"].strip().split(":")[2]
    before, lines = host_links(), db_lines()
    answer = ask(ALICE, "lxc-user-nic", ["delete", "/var/lib/lxc", "c1", ctr.netns, "veth",
                                         BRIDGE, host], open_target=False, hand=[kind], target=0)
    refused(answer, "Failed while opening netns file for")
    assert host_links() == before and host in before
    assert db_lines() == lines
    still_serves()


# --- identity ----------------------------------------------------------------------------------


def test_real_and_effective_ids_that_differ_are_refused(service, targets):
    """A set-id process connecting with alice's real and bob's effective uid asks for bob."""
    victim = targets(BOB)
    answer = ask(None, "newuidmap", mapping(victim.pid, 23002),
                 connect_as=[[ALICE.uid, BOB.uid]])
    refused(answer, "real and effective ids differ")
    assert victim.uid_map() == []
    still_serves()


@pytest.mark.parametrize(("connect", "send"), [((ALICE.uid, ALICE.uid), (0, 0)),
                                              ((0, 0), (ALICE.uid, ALICE.uid))])
def test_ids_changed_after_connecting_are_refused(service, target, connect, send):
    answer = ask(None, "newuidmap", mapping(target.pid), connect_as=[list(connect)],
                 send_as=list(send))
    refused(answer, "ids changed after it connected")
    assert target.uid_map() == []
    still_serves()


def test_a_caller_in_a_user_namespace_is_refused(service, target):
    answer = ask(ALICE, "newuidmap", mapping(target.pid),
                 wrap=["unshare", "--user", "--map-root-user", "--"])
    refused(answer, NESTED)
    assert target.uid_map() == []
    still_serves()


def test_a_caller_that_exits_after_sending(service, target):
    """The service copes: the request is served as alice's or refused, never anything else."""
    client = HeldClient(ALICE, "newuidmap", mapping(target.pid), send="exit")
    client.send()
    assert client.answer() is None
    wait_for(lambda: not any(real_uid(pid) == ALICE.uid for pid in service.workers()),
             "the request to end")
    assert target.uid_map() in ([], [(0, 23001, 1)])
    still_serves()


def test_a_reused_pid_is_not_taken_for_the_caller(service, target):
    """The process that connected exits and its pid goes to another process of alice's (the
    same uid: every check of /proc/PID would pass): the pidfd the kernel gave at connect(2)
    says the caller is gone, and nothing is done."""
    client = HeldClient(ALICE, "newuidmap", mapping(target.pid), connector="exit")
    assert proc_state(client.connector) == "gone"
    reuser = spawn_with_pid(client.connector, as_user(ALICE, ["sleep", "600"]))
    try:
        wait_for(lambda: real_uid(reuser) == ALICE.uid, "the pid to be alice's again")
        client.send()
        answer = client.answer()
    finally:
        os.kill(reuser, signal.SIGKILL)
        os.waitpid(reuser, 0)
    refused(answer, GONE)
    assert target.uid_map() == []
    still_serves()


# --- clients that say nothing --------------------------------------------------------------------


def test_a_half_closed_client_is_answered_at_once(service):
    answer = ask(ALICE, "getsubids", ["nsgt-alice"], send="shutdown")
    refused(answer, "shorter than its header")
    still_serves()


def test_silent_clients_are_dropped_after_the_read_bound(service):
    """Eight connections of alice's that send nothing hold eight workers until the 5 s read
    bound, well before the 60 s request bound (their lifetime, from /proc); bob is served
    meanwhile."""
    client = HeldClient(ALICE, "getsubids", ["nsgt-alice"], connections=8, send="nothing")
    wait_for(lambda: in_flight(service, client.pid) == 8, "8 workers to take the connections")
    workers = {pid: started(pid) for pid in holders(service, client.pid) if pid != service.pid}
    still_serves()
    client.send()  # says nothing: the client waits for the answers
    answers = client.answer()
    lived = {pid: uptime_ticks() - start for pid, start in workers.items()}
    assert answers == [{"status": 1, "out": "", "err": "nsgated: no request arrived within 5 s "
                        "of connecting\n"}] * 8
    for pid in workers:
        wait_for(lambda pid=pid: proc_state(pid) == "gone", "the worker to be reaped")
    ticks = os.sysconf("SC_CLK_TCK")
    assert all(5 * ticks <= ticks_lived < 60 * ticks for ticks_lived in lived.values()), lived
    still_serves()


# --- floods ----------------------------------------------------------------------------------

IN_FLIGHT_REFUSAL = ("nsgated: uid {uid} has 72 requests in flight already: try again when "
                     "they are done\n")
SILENT = "nsgated: no request arrived within 5 s of connecting\n"


def tally(answers: list[dict], expected: dict[str, object]) -> dict[str, int]:
    """How many answers are each of `expected` (name -> answer dict); any other answer fails."""
    counts = dict.fromkeys(expected, 0)
    for answer in answers:
        names = [name for name, known in expected.items() if answer == known]
        assert names, f"unexpected answer {answer}"
        counts[names[0]] += 1
    return counts


def check_flood(answers: list[dict], uid: int, subids: str) -> None:
    """1,000 connections of one user: 72 admitted (8 served at once, 64 waiting), the rest
    refused as they came; each connection a worker dropped for silence while the flood was
    still being made (5 s: only on a very slow machine) let one more in."""
    counts = tally(answers, {
        "served": {"status": 0, "out": subids, "err": ""},
        "refused": {"status": 1, "out": "", "err": IN_FLIGHT_REFUSAL.format(uid=uid)},
        "silent": {"status": 1, "out": "", "err": SILENT}})
    assert len(answers) == 1000
    assert counts["served"] <= 72 and counts["refused"] >= 928 - counts["silent"], counts


def test_a_thousand_connections_of_one_user(service):
    """Alice makes 1,000 connections at once and holds them: 8 workers take hers, 64 wait in the
    service, the rest are refused at once; the service's descriptors stay bounded, no worker
    holds another request's connection, bob is served meanwhile; then every connection is
    answered."""
    flood = HeldClient(ALICE, "getsubids", ["nsgt-alice"], connections=1000)
    try:
        wait_for(lambda: in_flight(service, flood.pid) == 8, "8 of alice's to be in flight")
        wait_for(lambda: len(service.workers()) == 8 + 2, "the pool to be refilled")
        settle(service, 64)
        held = holders(service, flood.pid)
        assert held.pop(service.pid) == 64, held  # waiting their turn
        assert sorted(held.values()) == [1] * 8, held  # one each, in 8 workers
        assert shared_sockets(service) == set()
        assert len(fds_of(service.pid)) <= 2 * 64 + 16
        still_serves()
        assert in_flight(service, flood.pid) == 8
        flood.send()
        check_flood(flood.answer(), ALICE.uid, ALICE_SUBIDS)
    finally:
        flood.kill()
    wait_for(lambda: len(service.workers()) == 2, "the workers to end")
    assert pidfds_of(service.pid) == 0
    still_serves()


def nested_flood(count: int, **spec: object) -> HeldClient:
    """Alice's client in a user namespace of hers that maps her 65,536 subordinate uids (by
    shadow's newuidmap, as `unshare --map-users` runs it), connecting as `count` of them."""
    return HeldClient(ALICE, "getsubids", ["nsgt-alice"], connections=count,
                      connect_as=[[uid, uid] for uid in range(1, count + 1)],
                      wrap=["unshare", "--user", "--map-users=200000,0,65536",
                            "--map-groups=200000,0,65536", "--setuid=0", "--setgid=0", "--"],
                      **spec)


def test_a_thousand_connections_of_several_users(service):
    """Alice and bob make 1,000 connections each, and alice 1,000 more from a user namespace
    of hers, each as another of its uids (1,000 uids of the host, her subordinate ones): at
    most 8 of alice's and 8 of bob's are in flight, none of the namespace's (they are refused
    as they connect, without a word sent: they can neither hold workers nor take turns of
    users'); carol is served meanwhile; every connection is answered."""
    floods = {}
    try:
        floods["nested"] = nested_flood(1000, send="nothing")
        floods["alice"] = HeldClient(ALICE, "getsubids", ["nsgt-alice"], connections=1000)
        floods["bob"] = HeldClient(BOB, "getsubids", ["nsgt-bob"], connections=1000)
        wait_for(lambda: in_flight(service, floods["alice"].pid) == 8
                 and in_flight(service, floods["bob"].pid) == 8, "8 of each user in flight")
        settle(service, 2 * 64)
        assert in_flight(service, floods["nested"].pid) == 0
        assert shared_sockets(service) == set()
        assert len(fds_of(service.pid)) <= 2 * 2 * 64 + 16
        assert ask(CAROL, "getsubids", ["nsgt-alice"]) == {"status": 0, "out": ALICE_SUBIDS,
                                                           "err": ""}
        for flood in floods.values():
            flood.send()
        nested = floods.pop("nested").answer()
        assert len(nested) == 1000 and all(NESTED in answer["err"] for answer in nested), \
            nested[:3]
        check_flood(floods["alice"].answer(), ALICE.uid, ALICE_SUBIDS)
        check_flood(floods["bob"].answer(), BOB.uid, BOB_SUBIDS)
    finally:
        for flood in floods.values():
            flood.kill()
    still_serves()


def test_the_requests_waiting_are_bounded_in_all(service):
    """1,100 connections of 1,100 different users (processes of a root client, each with one
    uid as its real and effective one), each request blocked in the send of its audit record:
    64 in flight, 1,024 waiting in all, the rest refused; the service's descriptors stay
    bounded; stopped, it answers every waiting request itself, and the answer reaches even a
    client that reads but once (the service drops the request it did not read before it closes
    the connection: unread, it would make the client's read fail with ECONNRESET)."""
    uids = range(40000, 41100)
    busy = "nsgated: the service has 1024 requests waiting already: try again when they are " \
           "done\n"
    stopping = "nsgated: the service is stopping; nothing was done\n"
    with syslog_blocked():
        flood = HeldClient(None, "newuidmap", ["notapid"], connections=len(uids),
                           connect_as=[[uid, uid] for uid in uids], connector="stay",
                           naive=True)
        try:
            flood.send()
            wait_for(lambda: len([pid for pid in service.workers()
                                  if wchan(pid) == "unix_wait_for_peer"]) == 64,
                     "64 requests to be in flight")
            settle(service, 1024)
            assert len(fds_of(service.pid)) <= 2 * 1024 + 16
            assert shared_sockets(service) == set()
            service.proc.send_signal(signal.SIGTERM)
            wait_for(lambda: pidfds_of(service.pid) == 0, "the waiting requests to be answered")
        except BaseException:
            flood.kill()
            raise
    answers = flood.answer()
    service.proc.communicate(timeout=60)
    assert service.proc.returncode == 0
    helper = "invalid target 'notapid'"
    counts = tally(answers, {
        "busy": {"status": 1, "out": "", "err": busy},
        "stopping": {"status": 1, "out": "", "err": stopping},
        "served": next((a for a in answers if helper in a.get("err", "")), {}),
        "silent": {"status": 1, "out": "", "err": SILENT}})
    assert counts["served"] == 64 and counts["stopping"] == 1024, counts
    assert counts["busy"] >= 12 - counts["silent"], counts


# --- workers that crash or hang ----------------------------------------------------------------


def test_a_worker_killed_while_it_serves(service, nic_world):
    """Alice's create waits for the nic database's lock (the test holds it) in its worker; the
    worker is killed: her client sees the connection closed, nothing was made or written, bob
    is served meanwhile, and her next create is served."""
    ctr = Proc.container(ALICE)
    before = host_links()
    with nics_lock_held():
        client = HeldClient(ALICE, "lxc-user-nic", create_args(ctr.pid))
        client.send()
        wait_for(lambda: len(lock_waiters(LOCK)) == 1, "the create to wait for the lock")
        worker = next(iter(lock_waiters(LOCK)))
        assert worker in service.workers()
        still_serves()
        os.kill(worker, signal.SIGKILL)
        assert client.answer() == {"closed": True}
    assert host_links() == before and set(ctr.links()) == {"lo"}
    assert not db_lines()
    assert ask(ALICE, "lxc-user-nic", create_args(ctr.pid))["status"] == 0
    assert "eth0" in ctr.links()
    still_serves()


def test_a_killed_worker_closes_its_connection_while_others_wait(service):
    """Twelve requests of alice's, each blocked in the send of its audit record (a full
    /dev/log): eight workers serve, four wait. Killing the workers one by one closes exactly
    their clients' connections: no other process of the service holds a copy of them, even
    of those that waited while workers were forked."""
    with syslog_blocked():
        client = HeldClient(ALICE, "newuidmap", ["notapid"], connections=12, stream=True)
        client.send()
        wait_for(lambda: len(serving(service, ALICE.uid)) == 8
                 and all(wchan(pid) == "unix_wait_for_peer"
                         for pid in serving(service, ALICE.uid)), "8 workers to block")
        for pid in serving(service, ALICE.uid):
            os.kill(pid, signal.SIGKILL)
        closed = [client.next_answer() for _ in range(8)]
        assert all(answer["closed"] for answer in closed), closed
        wait_for(lambda: len(serving(service, ALICE.uid)) == 4
                 and all(wchan(pid) == "unix_wait_for_peer"
                         for pid in serving(service, ALICE.uid)), "the other 4 to block")
        for worker in serving(service, ALICE.uid):
            os.kill(worker, signal.SIGKILL)
            answer = client.next_answer(timeout=30)
            assert answer["closed"], answer
        assert holders(service, client.pid) == {}
    client.kill()
    still_serves()


def test_a_hung_worker_is_ended_by_the_request_bound(fresh_nsgated, nic_world):
    """With --request-seconds 2, alice's create stuck behind the lock (10 s before it would
    give up itself) is ended by the service: her connection closes with no answer, nothing was
    made, bob is served meanwhile."""
    service = fresh_nsgated("--request-seconds", "2")
    ctr = Proc.container(ALICE)
    before = host_links()
    with nics_lock_held():
        client = HeldClient(ALICE, "lxc-user-nic", create_args(ctr.pid))
        client.send()
        wait_for(lambda: len(lock_waiters(LOCK)) == 1, "the create to wait for the lock")
        worker = next(iter(lock_waiters(LOCK)))
        still_serves()
        wait_for(lambda: proc_state(worker) == "gone", "the service to end the request")
        assert client.answer() == {"closed": True}
        assert lock_waiters(LOCK) == set()
    assert host_links() == before and not db_lines()
    assert ask(ALICE, "lxc-user-nic", create_args(ctr.pid))["status"] == 0
    assert service.proc.poll() is None
    still_serves()


@pytest.fixture
def pids_cgroup() -> Iterator[Path]:
    """A cgroup of the pids hierarchy for the test; what is left in it goes back to the root."""
    root = Path("/sys/fs/cgroup/pids")
    cgroup = root / f"nsgate-hostile-{os.getpid()}"
    cgroup.mkdir()
    try:
        yield cgroup
    finally:
        def emptied() -> bool:
            for pid in (cgroup / "cgroup.procs").read_text().split():
                with contextlib.suppress(OSError):
                    (root / "cgroup.procs").write_text(pid)
            try:
                cgroup.rmdir()
            except OSError:
                return False  # a process forked in it meanwhile
            return True

        wait_for(emptied, f"{cgroup} to be removed")


def test_no_worker_to_be_had(service, pids_cgroup):
    """The service may fork no more (the parent alone in a cgroup whose pids.max is 1): the
    requests take the idle workers it has, the next waits in the service for a worker it can
    fork, and is served once it can; the service does not end."""
    (pids_cgroup / "pids.max").write_text("1")
    (pids_cgroup / "cgroup.procs").write_text(str(service.pid))
    client = HeldClient(ALICE, "getsubids", ["nsgt-alice"], connections=3)
    client.send()
    refused = pids_cgroup / "pids.events"  # "max N": N forks refused at the limit
    wait_for(lambda: (holders(service, client.pid).get(service.pid, 0) >= 1
                      and int(refused.read_text().split()[1]) > 0)
             or service.proc.poll() is not None, "a request to wait for a worker")
    assert service.proc.poll() is None, service.proc.communicate()
    (pids_cgroup / "pids.max").write_text("max")
    assert client.answer() == [{"status": 0, "out": ALICE_SUBIDS, "err": ""}] * 3
    still_serves()
    assert service.stop()[0] == 0
