"""nsgated under faults (issue 10): a worker, or the service itself, killed at every step of a
request. The kernel's state afterwards is the old one or the exact new one, in step with the
call killed (newgidmap's self map and lxc-user-nic's create have states between, named in
their tests, as the setuid helpers killed there have); the caller gets an answer only for a
request carried out, else the connection closes (carried out or not: the state says which);
and the next request is served: by the same parent when only a worker died, by a service the
socket activator started again when the parent died, a connection that waited meanwhile
included.

The kills are strace's (`-e inject=NAME:signal=KILL:when=N` on the process, attached while it
waits): the kernel aborts the N-th NAME call before it runs, so "killed at a call" means right
before it. Where a request makes more calls than the time allows, the calls before its first
change are sampled and every call from there on is a kill point. What the caller itself could
do to a worker is another test's (the worker runs with the caller's real uid but root's saved
one, like a setuid helper, so its caller cannot signal it); this is the OOM killer's or an
administrator's SIGKILL.
"""

from __future__ import annotations

import fcntl
import os
import re
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.ovs_support import Bridge, OpenVSwitch
from tests.service_support import (
    POLLING,
    Activator,
    Asking,
    Nsgated,
    answers,
    ask,
    children,
    is_committer,
    pool_ready,
    strays,
    syscalls,
    traced,
)
from tests.support import (
    ALICE,
    BOB,
    PATIENCE,
    SANDBOX,
    Target,
    proc_state,
    wait_for,
    wchan,
    write_etc,
)
from tests.usernic_support import (
    LOCK,
    Proc,
    add_bridge,
    clean_db,
    db_lines,
    host_veth_pattern,
    ip,
    ip_links,
    write_db,
)

UID_ARGS = ["0", "23001", "1", "1", "200000", "1000"]
UID_MAP = [(0, 23001, 1), (1, 200000, 1000)]
GID_ARGS = ["0", "23001", "1"]  # a map of the caller's own group: setgroups is denied first
GID_MAP = [(0, 23001, 1)]
BRIDGE = "nsgtflt0"
NIC = "eth7"
SERVED = {"status": 0, "out": "", "err": ""}
CLOSED = {"closed": True}
GONE = {"status": 1, "out": "",
        "err": "lxc-user-nic: /run/lxc/nics is busy: nsgated's nic committer is gone; try again\n"}
Answer = dict[str, object]


# The C allocator growing or trimming the heap: whether a worker makes the n-th such call
# depends on the heap it inherited from the parent at its fork (what the parent and its other
# children did meanwhile), not on the request; no step of the request is one of these.
ALLOCATOR_CALLS = ("brk",)


def kill_points(calls: list[tuple[str, int, str]], first_change: int,
                every: int) -> Iterator[tuple[int, str, int]]:
    """(position, name, n) of the calls to kill at: every `every`-th before `first_change` (the
    checks, which change nothing), each one from there on. Position 0 is the worker's wait for
    its hand-over: killed there, it dies idle, and another worker serves the request."""
    for position, (name, nth, _) in enumerate(calls):
        if name in ALLOCATOR_CALLS:
            continue
        if position >= first_change or position % every == 0:
            yield position, name, nth


def position(calls: list[tuple[str, int, str]], pattern: str) -> int:
    """Where the first call whose strace line matches `pattern` is."""
    return next(i for i, (_, _, line) in enumerate(calls) if re.search(pattern, line))


def worker_trace(service: Nsgated, request: Callable[[], Answer]) -> list[tuple[str, int, str]]:
    """Every system call the worker makes to serve one request that succeeds."""
    service.settle()
    (worker,) = service.workers()
    log = SANDBOX / "worker-trace"
    with traced(worker, log=log) as tracer:
        answer = request()
        tracer.wait(timeout=PATIENCE)
    assert answer.get("status") == 0, answer
    return syscalls(log)


def kill_worker(service: Nsgated, name: str, nth: int, request: Callable[[], Answer]) -> Answer:
    """Serve `request` with the worker killed right before its `nth` call of `name`; the
    answer, once the worker and what it forked are gone and the parent has its pool back."""
    service.settle()
    (worker,) = service.workers()
    with traced(worker, "-e", f"inject={name}:signal=KILL:when={nth}") as tracer:
        answer = request()
        tracer.wait(timeout=PATIENCE)
    wait_for(lambda: proc_state(worker) == "gone", "the worker to be reaped")
    service.settle()  # the same parent, serving on
    # what the worker forked (a runner of ovs-vsctl or nft) finishes and exits too
    wait_for(lambda: not strays(service.pid), "the worker's children to exit")
    return answer


def map_request(helper: str, target: Target, args: list[str]) -> Callable[[], Answer]:
    return lambda: ask(ALICE, helper, [str(target.pid), *args])


@pytest.fixture
def one_worker_service(fresh_nsgated) -> Nsgated:
    """A service with one idle worker: the one the next request goes to."""
    return fresh_nsgated("--workers", "1")


def test_worker_killed_at_each_step_of_newuidmap(one_worker_service, targets):
    service = one_worker_service
    calls = worker_trace(service, map_request("newuidmap", targets(), UID_ARGS))
    write = position(calls, r'^write\(\d+, "0 23001 1\\n1 200000 1000\\n"')
    answer_sent = position(calls, r'^sendto\(\d+, "nsgate')
    outcomes = {"old": 0, "new": 0}
    for at, name, nth in kill_points(calls, write - 12, every=4):
        target = targets()
        answer = kill_worker(service, name, nth, map_request("newuidmap", target, UID_ARGS))
        state = target.uid_map()
        # killed right before the write: nothing written; after it: all of it
        assert state == ([] if 0 < at <= write else UID_MAP), (name, nth, state)
        assert answer == (CLOSED if 0 < at <= answer_sent else SERVED), (name, nth, answer)
        outcomes["old" if not state else "new"] += 1
        target.stop()
    assert outcomes["old"] > 20 and outcomes["new"] >= 5, outcomes
    target = targets()
    assert ask(ALICE, "newuidmap", [str(target.pid), *UID_ARGS]) == SERVED
    assert target.uid_map() == UID_MAP
    assert service.proc.poll() is None


def test_worker_killed_at_each_step_of_newgidmap(one_worker_service, targets):
    """A map of the caller's own group takes two writes, as with shadow's newgidmap: setgroups
    "deny", then the map. Killed between them, the namespace keeps "deny" and has no map (the
    kernel has no transaction over both): the only state in between, and the next newgidmap on
    it works."""
    service = one_worker_service
    calls = worker_trace(service, map_request("newgidmap", targets(), GID_ARGS))
    deny = position(calls, r'^write\(\d+, "deny')
    write = position(calls, r'^write\(\d+, "0 23001 1\\n"')
    answer_sent = position(calls, r'^sendto\(\d+, "nsgate')
    between = 0
    for at, name, nth in kill_points(calls, deny - 12, every=6):
        target = targets()
        answer = kill_worker(service, name, nth, map_request("newgidmap", target, GID_ARGS))
        state = (target.setgroups(), target.gid_map())
        if at == 0:
            assert state == ("deny", GID_MAP), state
        elif at <= deny:
            assert state == ("allow", []), (name, nth, state)
        elif at <= write:
            assert state == ("deny", []), (name, nth, state)
            between += 1
            assert ask(ALICE, "newgidmap", [str(target.pid), *GID_ARGS]) == SERVED
            assert target.gid_map() == GID_MAP
        else:
            assert state == ("deny", GID_MAP), (name, nth, state)
        assert answer == (CLOSED if 0 < at <= answer_sent else SERVED), (name, nth, answer)
        target.stop()
    assert between > 0
    assert service.proc.poll() is None


# --- lxc-user-nic ---------------------------------------------------------------------------


def alice_veths() -> dict[str, dict]:
    pattern = host_veth_pattern(ALICE)
    return {name: link for name, link in ip_links().items() if pattern.fullmatch(name)}


@pytest.fixture
def nic_world(one_worker_service) -> Iterator[tuple[Nsgated, Proc, list[str]]]:
    """A Linux bridge alice and bob may use, each with one nic on it already (nsgate's nftables
    table in place, so every create makes the same calls); alice's container; the lines."""
    clean_db()
    add_bridge(BRIDGE)
    write_etc("lxc/lxc-usernet", f"nsgt-alice veth {BRIDGE} 100\nnsgt-bob veth {BRIDGE} 100\n")
    service = one_worker_service
    try:
        for user in (BOB, ALICE):
            container = Proc.container(user)
            answer = ask(user, "lxc-user-nic", ["create", "/var/lib/lxc", "c1",
                                                str(container.pid), "veth", BRIDGE, "eth0"])
            assert answer["status"] == 0, answer
        yield service, container, db_lines() or []
    finally:
        Proc.stop_all()
        ip("link", "del", BRIDGE)
        clean_db()


def create_request(container: Proc) -> Callable[[], Answer]:
    return lambda: ask(ALICE, "lxc-user-nic", ["create", "/var/lib/lxc", "c1",
                                               str(container.pid), "veth", BRIDGE, NIC])


def back_to(lines: list[str], veths: set[str]) -> None:
    """Undo what a create did or left: its interface (both ends) and its line."""
    for name in set(alice_veths()) - veths:
        ip("link", "del", name)
    write_db(lines)
    for leftover in temp_files():
        leftover.unlink()


def lock_is_free() -> bool:
    """No one holds the database's lock: the test can take it at once (and lets it go)."""
    fd = os.open(LOCK, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def temp_files() -> list[Path]:
    """The database writer's temporary files (.nics.PID, renamed over the database)."""
    return list(LOCK.parent.glob(".nics.*"))


def test_worker_killed_at_each_step_of_lxc_user_nic_create(nic_world):
    """Under nsgated the database is written by the nic committer (group commit): the worker
    sends its intent, gets its reservation (the line recorded, the lock held by the committer),
    makes the veth, reports. Killed before the veth: the old database and links (a reservation
    whose worker died without a link is released by the committer). From the veth on: the nic
    exists with its line, inside the container (it goes with the container's network
    namespace); attached and up once the last link change is made (before: made and recorded,
    not attached: no kernel transaction spans the steps); an answer only once it is all done.
    Never an interface without its line, never another user's line touched, never the lock left
    held, no temporary file (the worker writes none)."""
    service, container, lines = nic_world
    veths = set(alice_veths())
    calls = worker_trace(service, create_request(container))
    back_to(lines, veths)
    created = position(calls, r"^sendto\(.*nlmsg_type=RTM_NEWLINK")
    intent_sent = max(i for i, (name, _, _) in enumerate(calls[:created]) if name == "sendmsg")
    attached = max(i for i, (name, _, line) in enumerate(calls)
                   if name == "sendto" and "nlmsg_type=RTM_SETLINK" in line)
    answer_sent = position(calls, r'^sendto\(\d+, "nsgate')
    seen = set()
    for at, name, nth in kill_points(calls, intent_sent, every=8):
        answer = kill_worker(service, name, nth, create_request(container))
        # not left held (the committer releases it once the batch's members are accounted for)
        wait_for(lock_is_free, "the lock to be free")
        assert temp_files() == [], (name, nth)
        if 0 < at <= created:
            wait_for(lambda: (db_lines() or [])[len(lines):] == [],
                     "the committer to release the dead worker's reservation")
        now, live = db_lines() or [], alice_veths()
        new_lines, new_veths = now[len(lines):], set(live) - veths
        assert now[:len(lines)] == lines, (name, nth, now)  # nothing else changed
        if 0 < at <= created:
            assert (new_lines, new_veths) == ([], set()), (name, nth, now, live)
            seen.add("old")
        else:
            (line,) = new_lines
            assert re.fullmatch(rf"nsgt-alice veth {BRIDGE} veth23001_\w{{4}}", line), line
            host = line.split()[3]
            assert new_veths == {host}, (name, nth, line, live)
            if at > attached or at == 0:
                assert live[host].get("master") == BRIDGE and "UP" in live[host]["flags"]
                assert NIC in container.links()
                seen.add("new")
            else:
                seen.add("created")
        if 0 < at <= answer_sent:
            assert answer == CLOSED, (name, nth, answer)
        else:
            assert answer["status"] == 0 and answer["out"].startswith(f"{NIC}:"), answer
        back_to(lines, veths)
    assert seen == {"old", "created", "new"}, seen
    answer = create_request(container)()
    assert answer["status"] == 0, answer
    assert service.proc.poll() is None


def committer_of(service: Nsgated, other_than: int = 0) -> int:
    """The service's nic committer (once it has one other than `other_than`)."""
    found: list[int] = []

    def look() -> bool:
        found[:] = [pid for pid in children(service.pid)
                    if is_committer(pid) and pid != other_than]
        return bool(found)

    wait_for(look, "nsgated's nic committer")
    return found[0]


def committer_done(committer: int) -> bool:
    """The committer waits for intents again, its batch finished and the lock free."""
    return wchan(committer).startswith(POLLING) and lock_is_free()


def test_committer_killed_at_each_step_of_lxc_user_nic_create(nic_world):
    """The service's nic committer killed at each system call of its part in a create (taking
    the lock, reading and writing the database, answering the worker, collecting its report;
    what else it does meanwhile, the enrollment of the next worker, the end of the last, varies
    from run to run, so the state is judged by what is found). Killed before it answers the
    worker: the worker refuses (its committer is gone) having made nothing, and the database is
    the old one or holds the create's line alone, whose nic was never made (stale: the next
    create prunes it, the quota does not count it), as when a setuid helper is killed between
    its write and its veth; the lock goes with the committer. Once it has answered: the worker
    holds the reservation and the lock and finishes the create: the exact new state. Always: the
    service starts a new committer, the lock is free, and the next create is served."""
    service, container, lines = nic_world
    veths = set(alice_veths())
    service.settle()
    committer = committer_of(service)
    log = SANDBOX / "committer-trace"
    with traced(committer, log=log):
        answer = create_request(container)()
        wait_for(lambda: committer_done(committer), "the committer to finish the batch")
    assert answer["status"] == 0, answer
    calls = syscalls(log)
    back_to(lines, veths)
    intent = position(calls, r'^recvmsg\(\d+, .*iov_base="I\\0')
    assert intent < position(calls, r'^rename\(".*/\.nics\.') < position(
        calls, r'^sendmsg\(\d+, .*iov_base="R\\0')
    seen = set()
    for _, name, nth in kill_points(calls, intent, every=4):
        service.settle()
        old = committer_of(service)
        with traced(old, "-e", f"inject={name}:signal=KILL:when={nth}"):
            answer = create_request(container)()
            wait_for(lambda old=old: proc_state(old) == "gone" or committer_done(old),
                     "the committer to die or finish")
        killed = proc_state(old) == "gone"
        if killed:
            committer_of(service, other_than=old)  # the service starts another
        service.settle()
        wait_for(lock_is_free, "the lock to be free")
        assert len(temp_files()) <= killed, (name, nth)  # a write it was killed in
        now, live = db_lines() or [], alice_veths()
        new_lines, new_veths = now[len(lines):], set(live) - veths
        assert now[:len(lines)] == lines, (name, nth, now)
        if answer["status"]:
            assert killed and answer == GONE, (name, nth, answer)
            assert new_veths == set() and NIC not in container.links(), (name, nth, live)
            if new_lines:
                (line,) = new_lines  # recorded, never made: stale
                assert re.fullmatch(rf"nsgt-alice veth {BRIDGE} veth23001_\w{{4}}", line)
            seen.add("recorded" if new_lines else "old")
        else:
            assert answer["out"].startswith(f"{NIC}:"), answer
            (line,) = new_lines
            assert new_veths == {line.split()[3]}, (name, nth, line, live)
            assert live[line.split()[3]].get("master") == BRIDGE
            seen.add("new, killed after" if killed else "new")
        back_to(lines, veths)
    assert {"old", "recorded", "new, killed after"} <= seen, seen
    answer = create_request(container)()
    assert answer["status"] == 0, answer
    assert service.proc.poll() is None


def test_worker_killed_at_each_step_of_lxc_user_nic_delete_on_open_vswitch(
        one_worker_service, openvswitch: OpenVSwitch):
    """A delete on Open vSwitch removes the nic's port (ovs-vsctl del-port, run by a child the
    worker forked before confining itself); the line stays until the interface goes, as with
    LXC. Killed before the worker asks its runner: the port stays. After: the runner carries
    the one command to its end and exits, so the port goes, though no answer comes. The
    database never changes; the lock is never left held."""
    service = one_worker_service
    clean_db()
    write_etc("lxc/lxc-usernet", "nsgt-alice veth ovsbr 100\n")
    bridge = Bridge(openvswitch, "ovsbr")
    container = Proc.container(ALICE)

    def create() -> str:
        answer = ask(ALICE, "lxc-user-nic", ["create", "x", "x", str(container.pid), "veth",
                                             "ovsbr", NIC])
        assert answer["status"] == 0, answer
        return str(answer["out"]).split(":")[2]

    def delete(host: str) -> Callable[[], Answer]:
        return lambda: ask(ALICE, "lxc-user-nic", ["delete", "x", "x", container.netns, "veth",
                                                   "ovsbr", host])

    def undo(host: str) -> None:
        ip("link", "del", host)
        openvswitch.vsctl("--if-exists", "del-port", "ovsbr", host)
        write_db([])

    try:
        host = create()
        calls = worker_trace(service, delete(host))
        assert bridge.ports() == []
        undo(host)
        locked = position(calls, r"^flock\(")
        asked = locked + position(calls[locked:], r"^write\(")  # the runner's one command
        answer_sent = position(calls, r'^sendto\(\d+, "nsgate')
        seen = set()
        for at, name, nth in kill_points(calls, locked - 8, every=8):
            host = create()
            lines = db_lines()
            answer = kill_worker(service, name, nth, delete(host))
            wait_for(lock_is_free, "the lock to be free")
            assert db_lines() == lines
            assert bridge.ports() == ([host] if 0 < at <= asked else []), (name, nth)
            assert answer == (CLOSED if 0 < at <= answer_sent else SERVED), (name, nth, answer)
            seen.add("old" if bridge.ports() else "new")
            undo(host)
        assert seen == {"old", "new"}
        host = create()
        assert delete(host)() == SERVED and bridge.ports() == []
    finally:
        Proc.stop_all()
        bridge.remove()
        clean_db()


# --- the service itself killed, brought back by socket activation ------------------------------

# Calls the loop also makes when idle (its tick): not a step of the request.
TICK_CALLS = {"epoll_wait", "wait4", "newfstatat"}


def parent_kill_points(calls: list[tuple[str, int, str]]) -> list[tuple[str, int]]:
    """Right before the service's poll returns for the connection (epoll_wait, the first one
    since the attach), and each of its calls from accepting the connection to handing it over
    and forking the replacement worker."""
    start = position(calls, r"^accept4\(")
    end = position(calls, r"^clone")
    points = [("epoll_wait", 1)]
    points += [(name, nth) for name, nth, _ in calls[start:end + 2] if name not in TICK_CALLS]
    return points


@pytest.fixture
def activator() -> Iterator[Activator]:
    started = Activator("--workers", "1")
    try:
        yield started
    finally:
        started.stop()


def kill_parent(activator: Activator, name: str, nth: int,
                request: Callable[[], Answer]) -> tuple[Answer, int]:
    """Serve `request` with the service killed right before its `nth` call of `name`: the
    answer, and the pid of the service that was killed."""
    pid = activator.ready_service()
    workers = children(pid)  # and its nic janitor
    with traced(pid, "-e", f"inject={name}:signal=KILL:when={nth}") as tracer:
        answer = request()
        tracer.wait(timeout=PATIENCE)
    wait_for(lambda: activator.exited(pid) is not None, "the activator to reap the service")
    assert activator.exited(pid) == -9, activator.events()
    # its workers, idle or serving, finish and exit (the activator reaps them, as systemd does)
    wait_for(lambda: all(proc_state(w) == "gone" for w in workers), "the old workers to exit")
    return answer, pid


@pytest.mark.parametrize("helper", ["newuidmap", "lxc-user-nic"])
def test_service_killed_at_each_step_of_a_request(activator, targets, helper, request):
    """Killed before it accepts: the connection waits in the socket's backlog and the service
    the activator starts again serves it. Killed after accepting, before handing over: the
    caller sees the connection close, and nothing was done. After the hand-over: the worker
    finishes the request and answers, its parent gone."""
    if helper == "newuidmap":
        def one() -> tuple[Callable[[], Answer], Callable[[], bool | None]]:
            target = targets()
            return (lambda: ask(ALICE, "newuidmap", [str(target.pid), *UID_ARGS]),
                    lambda: {(): False, tuple(UID_MAP): True}.get(tuple(target.uid_map())))
    else:
        container, lines, veths = request.getfixturevalue("activated_nic_world")

        def one() -> tuple[Callable[[], Answer], Callable[[], bool | None]]:
            back_to(lines, veths)
            return create_request(container), lambda: nic_created(lines, veths, container)
    run, done = one()
    pid = activator.ready_service()
    log = SANDBOX / "parent-trace"
    with traced(pid, log=log):
        assert run()["status"] == 0
        wait_for(lambda: pool_ready(pid, 1), "the replacement worker")
    calls = syscalls(log)
    handed = position(calls, r"^sendmsg\(")
    points = parent_kill_points(calls)
    for name, nth in points:
        run, done = one()
        answer, killed = kill_parent(activator, name, nth, run)
        state = done()
        assert state is not None, (name, nth)  # old or exactly new, nothing else
        if (name, nth) in (("epoll_wait", 1), ("accept4", 1)):
            expected = "served by the next service"
        elif calls.index(next(c for c in calls if c[:2] == (name, nth))) <= handed:
            expected = "closed"
        else:
            expected = "served by the orphaned worker"
        if expected == "closed":
            assert (answer, state) == (CLOSED, False), (name, nth, answer)
        else:
            assert answer.get("status") == 0 and state, (name, nth, expected, answer)
        # the next request: served by a service the activator started again
        run, done = one()
        assert activator.proc.poll() is None and answers(), (name, nth, activator.events(),
                                                            activator.proc.communicate())
        assert run().get("status") == 0 and done(), activator.events()
        assert activator.service() not in (None, killed)
    assert len(points) >= 10


@pytest.fixture
def activated_nic_world(activator) -> Iterator[tuple[Proc, list[str], set[str]]]:
    clean_db()
    add_bridge(BRIDGE)
    write_etc("lxc/lxc-usernet", f"nsgt-alice veth {BRIDGE} 100\n")
    try:
        container = Proc.container(ALICE)
        activator.ready_service()
        answer = ask(ALICE, "lxc-user-nic", ["create", "/var/lib/lxc", "c1", str(container.pid),
                                             "veth", BRIDGE, "eth0"])
        assert answer["status"] == 0, answer  # and nsgate's nftables table is in place
        yield container, db_lines() or [], set(alice_veths())
    finally:
        Proc.stop_all()
        ip("link", "del", BRIDGE)
        clean_db()


def nic_created(lines: list[str], veths: set[str], container: Proc) -> bool | None:
    """False: the old state; True: exactly one new nic, recorded, attached, in the container;
    None: anything else."""
    now, live = db_lines() or [], alice_veths()
    new_lines, new_veths = now[len(lines):], set(live) - veths
    if now[:len(lines)] != lines:
        return None
    if not new_lines and not new_veths:
        return False
    if len(new_lines) != 1 or new_veths != {new_lines[0].split()[3]}:
        return None
    host = new_lines[0].split()[3]
    return (live[host].get("master") == BRIDGE and NIC in container.links()) or None


def test_a_connection_made_while_no_service_runs_is_served_once_it_is_started(activator,
                                                                             targets):
    """The service killed, and the activator not yet at its loop (stopped): the client's
    connection waits in the backlog of the socket the activator holds; once the activator runs,
    it starts the service, which serves that connection."""
    pid = activator.ready_service()
    os.kill(activator.proc.pid, signal.SIGSTOP)
    try:
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: proc_state(pid) == "Z", "the service to die")
        target = targets()
        client = Asking(ALICE, "newuidmap", [str(target.pid), *UID_ARGS])
        wait_for(client.waiting, "the client to connect and wait")
        assert activator.exited(pid) is None and target.uid_map() == []  # no service yet
    finally:
        os.kill(activator.proc.pid, signal.SIGCONT)
    assert client.answer() == SERVED
    assert target.uid_map() == UID_MAP
    assert activator.exited(pid) == -9 and activator.service() not in (None, pid)

