"""nsgated in the tests: the installed service started by hand in the session's sandbox (private
mount and network namespaces, tmpfs /run), and a direct client of its protocol that tests run as
a test user (`python3 -c CLIENT`, the test user's own process, so SO_PEERCRED is the user's).

Fixtures (conftest.py): `nsgated` (module-wide; started on first use, stopped after the module),
the service transport (`transport`, module-wide, shares that one service) and `fresh_nsgated` (a
service of the test's own, for tests that stop, kill or restart it). One service listens at a time:
a test with a service or socket of its own, and the setuid transport, pause the module-wide one.

For the lifetime and fault tests: what the kernel shows of the service (`children`,
`pool_ready`: the parent waiting in epoll_wait with its idle workers each waiting for a
hand-over and its nic committer in poll), `traced` (strace attached to a process, to watch it or
to kill it at its N-th system call), and `Activator` (tests/socket_activator.py: the socket held
and the service started on demand, as systemd's nsgate.socket does).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tests.support import (
    NSGATE,
    PATIENCE,
    PREFIX,
    SANDBOX,
    User,
    as_user,
    lock_waiters,
    proc_state,
    transport,
    wait_for,
    wchan,
)
from tests.usernic_support import LOCK

SOCKET = Path("/run/nsgate/io.socket")
NSGATED = NSGATE / "nsgated"
LIBDIR = PREFIX / "lib" / "nsgate"


def answers() -> bool:
    """Whether something accepts connections on the service's socket."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        probe.connect(str(SOCKET))
        return True
    except OSError:
        return False
    finally:
        probe.close()


def listener_inode(path: Path = SOCKET) -> int | None:
    """The inode of the socket listening on `path`, as /proc/net/unix shows it (the kernel's
    socket, not the file), None if nothing listens there (yet: a file exists from bind(2) on,
    a listener from listen(2))."""
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) == 8 and fields[7] == str(path) and int(fields[3], 16) & 0x10000:
            return int(fields[6])
    return None


def children(pid: int) -> list[int]:
    """The children of process `pid` (none once it is gone)."""
    try:
        return [int(child) for child in
                Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (FileNotFoundError, ProcessLookupError):
        return []


def strays(pid: int) -> list[int]:
    """Processes running nsgated's program (forks of service `pid`: workers, their runner
    children) that are neither `pid` nor one of its workers: what a killed worker left."""
    try:
        program = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return []
    ours = {pid, *children(pid)}
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) not in ours:
            try:
                if (entry / "cmdline").read_bytes() == program:
                    found.append(int(entry.name))
            except (FileNotFoundError, ProcessLookupError):
                continue
    return found


IDLE_PARENT = "do_epoll_wait"  # the parent's loop, waiting for connections and signals
RECEIVING = "__skb_wait_for_more_packets"  # in a socket receive: a worker waiting for its
# hand-over, a client for its answer


def subscribed_to_links(pid: int) -> bool:
    """Whether `pid` holds a netlink socket subscribed to multicast groups: the service's nic
    janitor (link deletions) and network keeper (its private bridges) do, a worker never
    does."""
    subscribed = set()
    for line in Path("/proc/net/netlink").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[3], 16):
            subscribed.add(int(fields[9]))
    try:
        held = [os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return any(int(target[8:-1]) in subscribed for target in held
               if target.startswith("socket:["))


COMMITTER = "nsgated-commit"  # the comm of the service's nic committer
POLLING = "poll_schedule_timeout"  # the committer's loop, waiting for its workers' messages


def is_committer(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == COMMITTER
    except (FileNotFoundError, ProcessLookupError):
        return False


def workers_of(pid: int) -> list[int]:
    """The children of service `pid` but its nic janitor, its network keeper and its nic
    committer: its workers (idle or serving)."""
    return [child for child in children(pid)
            if not subscribed_to_links(child) and not is_committer(child)]


def confined(pid: int) -> bool:
    """Whether `pid` runs under a seccomp filter: a worker does once its helper confined itself
    (an idle worker does not)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return "\nSeccomp:\t2\n" in status


def creates_waiting_for_the_lock(pid: int) -> set[int]:
    """The workers of service `pid` whose lxc-user-nic create waits for the nic database's lock:
    while the service's committer waits for the lock, each such worker, confined, waits for the
    committer's answer (in a socket receive)."""
    committers = {child for child in children(pid) if is_committer(child)}
    if not lock_waiters(LOCK) & committers:
        return set()
    return {worker for worker in workers_of(pid)
            if wchan(worker) == RECEIVING and confined(worker)}


def pool_ready(pid: int, workers: int) -> bool:
    """nsgated `pid` waits for connections with exactly `workers` idle workers, each waiting
    for a hand-over, and its nic janitor and network keeper (if they run) wait for link
    notifications: no request is being accepted or served, no nic being cleaned up."""
    pool = children(pid)
    committers = [child for child in pool if is_committer(child)]
    waiting = [child for child in pool if wchan(child) == RECEIVING]
    return (wchan(pid) == IDLE_PARENT and len(waiting) == workers
            and all(wchan(child).startswith(POLLING) for child in committers)
            and all(wchan(child) == IDLE_PARENT and subscribed_to_links(child)
                    for child in pool if child not in waiting and child not in committers))


def worker_count(args: tuple[str, ...]) -> int:
    return int(args[args.index("--workers") + 1]) if "--workers" in args else 2


class Nsgated:
    """A running nsgated: its process (the parent), started with `args` (the installed nsgated,
    or `program`); started when its pool is ready."""

    def __init__(self, *args: str, program: Path = NSGATED) -> None:
        self.args, self.program = args, program
        self.socket = Path(args[args.index("--socket") + 1]) if "--socket" in args else SOCKET
        self.start()

    def start(self) -> None:
        """Start it (again: the same object, a new process)."""
        assert not answers(), "another nsgated already listens in this sandbox"
        self.proc = subprocess.Popen([str(self.program), *self.args], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        wait_for(lambda: self.proc.poll() is not None or self.ready(), "nsgated to listen")
        if self.proc.poll() is not None:
            raise AssertionError(f"nsgated exited: {self.proc.communicate()}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def ready(self) -> bool:
        return self.socket.exists() and pool_ready(self.pid, worker_count(self.args))

    def settle(self) -> None:
        """Wait until no request is in flight and the pool is full again."""
        wait_for(lambda: self.proc.poll() is not None or self.ready(), "nsgated's pool")
        assert self.proc.poll() is None, self.proc.communicate()

    def workers(self) -> list[int]:
        """The parent's workers (its children but the nic janitor)."""
        return workers_of(self.pid)

    def stop(self) -> tuple[int, bytes]:
        """SIGTERM, and its exit status and stderr."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        _, err = self.proc.communicate(timeout=PATIENCE)
        return self.proc.returncode, err


@contextlib.contextmanager
def nsgated_running(*args: str) -> Iterator[Nsgated]:
    service = Nsgated(*args)
    try:
        yield service
    finally:
        if service.proc.poll() is None:
            service.stop()
        else:
            service.proc.communicate()


_shared: list[Nsgated] = []  # the module-wide service, while one is up


@contextlib.contextmanager
def shared_nsgated() -> Iterator[Nsgated]:
    """The module-wide service (fixture `nsgated`, the service transport): the one already up,
    or one started here and stopped when this ends."""
    if _shared:
        yield _shared[0]
        return
    with nsgated_running() as service:
        _shared.append(service)
        try:
            yield service
        finally:
            _shared.remove(service)


@contextlib.contextmanager
def shared_nsgated_paused() -> Iterator[None]:
    """No module-wide service while this lasts (a test with a service or a socket of its own,
    the setuid transport); afterwards it is started again, under the same object."""
    paused = [service for service in _shared if service.proc.poll() is None]
    for service in paused:
        service.stop()
    try:
        yield
    finally:
        for service in paused:
            service.start()


def module_service() -> Nsgated:
    """The module-wide service (the service transport's), which must be up."""
    assert _shared, "no module-wide nsgated is up"
    return _shared[0]


KEEPER = "nsgated-net"  # the comm of the service's network keeper


@contextlib.contextmanager
def keeper_paused() -> Iterator[None]:
    """The module-wide service's network keeper (if one runs) stopped (SIGSTOP) while the block
    runs: a test of what the helper itself does with networks.conf, which the keeper would
    otherwise apply too, at a moment of its own."""
    keepers = [pid for service in _shared if service.proc.poll() is None
               for pid in children(service.pid) if _comm(pid) == KEEPER]
    for pid in keepers:
        os.kill(pid, signal.SIGSTOP)
        wait_for(lambda pid=pid: proc_state(pid) in ("T", "gone"), "the keeper to stop")
    try:
        yield
    finally:
        for pid in keepers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except (FileNotFoundError, ProcessLookupError):
        return ""


def acting_pids(client: int) -> set[int]:
    """The processes that act on the request of a helper started as `client`: the helper itself
    in-process, or, through the service transport, the module-wide service's workers and its
    nic committer, which takes the nic database's lock for them (the client only waits for the
    answer)."""
    if transport() == "service" and _shared:
        service = _shared[0]
        return {*service.workers(), *(pid for pid in children(service.pid) if is_committer(pid))}
    return {client}


def settled() -> None:
    """Wait until the module-wide service serves nothing (its workers all idle): what a request
    whose client is gone does is done by then."""
    module_service().settle()


@contextlib.contextmanager
def service_traced(*options: str) -> Iterator[list[tuple[int, str]]]:
    """strace (`-f`, and `options`) attached to the module-wide service's parent, its idle
    workers and its nic committer while the block runs one request; afterwards the list holds
    (pid, line) of what the processes that served it did: those gone once it is done (its worker
    and that worker's children) and the committer (which takes the nic database's lock for a
    create), not the parent, its nic janitor nor the workers still idle. It waits for the pool
    to settle first (all --workers prepared), so the request goes to a worker it traces."""
    service = module_service()
    service.settle()
    workers = set(service.workers())
    committers = {pid for pid in children(service.pid) if is_committer(pid)}
    attached = {service.pid, *workers, *committers}
    out = SANDBOX / "service.trace"
    out.unlink(missing_ok=True)
    tracer = subprocess.Popen(["strace", "-f", "-o", str(out), *options,
                               *(f"-p{pid}" for pid in sorted(attached))],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
    wait_for(lambda: all(tracer_of(pid) == tracer.pid for pid in attached)
             or tracer.poll() is not None, "strace to attach to nsgated")
    assert tracer.poll() is None, tracer.communicate()
    events: list[tuple[int, str]] = []
    try:
        yield events
        wait_for(lambda: any(proc_state(pid) in ("Z", "gone") for pid in workers),
                 "the worker that served the request to exit")
    finally:
        tracer.send_signal(signal.SIGINT)
        tracer.communicate(timeout=PATIENCE)
    for line in out.read_text().splitlines():
        pid, _, rest = line.partition(" ")
        if int(pid) in committers or proc_state(int(pid)) in ("Z", "gone"):
            events.append((int(pid), rest.strip()))


def trace_text(events: list[tuple[int, str]]) -> str:
    """service_traced's lines as `strace -f` prints them (`[pid N] ` first)."""
    return "".join(f"[pid {pid}] {line}\n" for pid, line in events)


@contextlib.contextmanager
def traced(pid: int, *options: str, log: Path | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """strace attached to `pid` (not its children unless `options` says -f) with `options`, e.g.
    an inject=NAME:signal=KILL:when=N; every system call `pid` makes inside the block is seen.
    strace ends with its tracee; one still attached at the end is detached."""
    argv = ["strace", "-qq", "-o", str(log or "/dev/null"), *options, "-p", str(pid)]
    tracer = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: tracer_of(pid) in (tracer.pid, None) or tracer.poll() is not None,
                 f"strace to attach to {pid}")
        # attached, or already done: an injection at the first call killed `pid`
        assert tracer.poll() is None or (tracer.returncode == 0
                                         and proc_state(pid) in ("gone", "Z")), tracer.communicate()
        yield tracer
    finally:
        if tracer.poll() is None:
            tracer.send_signal(signal.SIGINT)  # detaches
        tracer.communicate(timeout=PATIENCE)


def tracer_of(pid: int) -> int | None:
    """The TracerPid /proc shows for `pid` (0: none), None if it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return int(status.split("TracerPid:", 1)[1].split()[0])


def syscalls(log: Path) -> list[tuple[str, int, str]]:
    """The system calls of an `strace -o` log of one process: (name, its n-th call, line)."""
    seen: dict[str, int] = {}
    calls = []
    for line in log.read_text().splitlines():
        if "(" not in line or not line[0].isalpha():
            continue
        name = line.split("(", 1)[0]
        seen[name] = seen.get(name, 0) + 1
        calls.append((name, seen[name], line))
    return calls


ACTIVATOR = Path(__file__).with_name("socket_activator.py")


class Activator:
    """tests/socket_activator.py holding the service's socket and starting the installed nsgated
    (with `args`) whenever a connection waits and no service runs."""

    def __init__(self, *args: str) -> None:
        assert not answers(), "another nsgated already listens in this sandbox"
        self.log = SANDBOX / "activator.log"
        self.log.unlink(missing_ok=True)
        self.args = args
        self.proc = subprocess.Popen(["/usr/bin/python3", "-I", str(ACTIVATOR), str(SOCKET),
                                      str(self.log), "--", str(NSGATED), *args],
                                     stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_for(lambda: listener_inode() is not None or self.proc.poll() is not None,
                 "the socket")
        assert self.proc.poll() is None, self.proc.communicate()

    def service(self) -> int | None:
        """The pid of the service it runs now, if any (it started it and has not reaped it)."""
        running = None
        for event in self.events():
            kind, _, rest = event.partition(" ")
            if kind == "start":
                running = int(rest)
            elif kind == "exit" and running == int(rest.split()[0]):
                running = None
        return running

    def exited(self, pid: int) -> int | None:
        """The exit code of service `pid` once the activator reaped it (-N: killed by N)."""
        for event in self.events():
            kind, _, rest = event.partition(" ")
            if kind == "exit" and int(rest.split()[0]) == pid:
                return int(rest.split()[1])
        return None

    def events(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    def ready_service(self) -> int:
        """Start the service if none runs (a connection does that) and wait for its pool."""
        if self.service() is None:
            assert answers(), "the activator's socket refused a connection"
        wait_for(lambda: self.proc.poll() is not None or (
            (pid := self.service()) is not None and pool_ready(pid, worker_count(self.args))),
            "the activated service")
        pid = self.service()
        assert pid is not None, (self.events(), self.proc.communicate())
        return pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        _, err = self.proc.communicate(timeout=PATIENCE)
        assert self.proc.returncode == 0, err


# A direct client of nsgate-protocol(7), as a test user (or an attacker) runs it:
# `python3 -c CLIENT <libdir> <json>`. The json names the helper, its arguments, and what to hand
# over: "open" (the rule of the launchers: open the target argument as this user), and/or "hand",
# descriptors of the client's own making ("file:PATH" O_RDONLY, "dir:PATH" a directory,
# "path:PATH" O_PATH, "socket:" one end of a socketpair); "target" overrides the target field,
# "raw" sends bytes as they are (hex). Beyond one polite request:
# - "connections": N connections, all made before anything is sent (the answers as a list);
# - "send": "request" (default), "nothing" (a silent client: wait for the service's answer),
#   "shutdown" (shut the writing side, send nothing), "exit" (send, then exit at once);
# - "connect_as": [[ruid, euid], ...] the ids each connection is made with (in turn; the saved
#   uid stays, so a client started as root, or as root of a user namespace, can come back),
#   "send_as": [ruid, euid] the ids the request is then sent with;
# - "connector": "exit", a child process makes each connection and exits, and is reaped, before
#   this process sends on it (the peer the kernel recorded is gone; its pid is free); "stay",
#   a child makes each (with the ids of "connect_as") and lives as long as this process;
# - "hold": print "connected <connector pid>" once the connections are made and wait for a line
#   on stdin;
# - "stream": print each answer as a json line as it arrives, with its connection's "index";
# - "naive": a read that fails with ECONNRESET ends the connection (by default the client reads
#   again, for the answer that may be queued behind the error: nsgate-protocol(7), ANSWER).
# It prints the answer as json ({"closed": true} for a connection closed without one).
CLIENT = r"""
import array, json, os, resource, socket, sys
sys.path.insert(0, sys.argv[1])
from nsgate.policy import service_wire as w
spec = json.loads(sys.argv[2])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
args = [a.encode("utf-8", "surrogateescape") for a in spec.get("args", [])]
helper = spec.get("helper", "newuidmap")
fds, target = [], -1
if spec.get("open") == "launcher":
    index = w.target_argument(helper, args)
    if index is not None:
        arg = args[index].decode()
        try:
            if helper.startswith("new") and arg.startswith("fd:"):
                fds = [int(arg[3:])]
            elif helper.startswith("new"):
                fds = [os.open("/proc/" + arg, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)]
            elif args[0] == b"create":
                fds = [os.open("/proc/" + arg + "/ns/net", os.O_RDONLY)]
            else:
                fds = [os.open(arg, os.O_PATH)]
            target = 0
        except OSError as err:
            target = err.errno
kept = []
for item in spec.get("hand", []):
    kind, _, path = item.partition(":")
    if kind == "socket":
        pair = socket.socketpair()
        kept.append(pair)
        fds.append(pair[0].fileno())
    else:
        flags = {"file": os.O_RDONLY, "dir": os.O_RDONLY | os.O_DIRECTORY, "path": os.O_PATH}
        fds.append(os.open(path, flags[kind] | os.O_CLOEXEC))
if "target" in spec:
    target = spec["target"]
packet = bytes.fromhex(spec["raw"]) if "raw" in spec else w.encode_request(helper, args, target)
ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds else []
connect_as = spec.get("connect_as", [])
conns, connector = [], os.getpid()
path = spec.get("socket", "/run/nsgate/io.socket")
for number in range(spec.get("connections", 1)):
    if connect_as:
        ruid, euid = connect_as[number % len(connect_as)]
        os.setresuid(0, 0, 0)
        os.setresuid(ruid, euid, 0)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    if spec.get("connector"):
        if not conns:
            alive_r, alive_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            s.connect(path)
            if spec["connector"] == "stay":
                os.close(alive_w)
                os.read(alive_r, 1)
            os._exit(0)
        connector = connector if conns else pid
        if spec["connector"] == "exit":
            assert os.waitpid(pid, 0)[1] == 0
        else:
            while s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)[:4] == bytes(4):
                os.sched_yield()  # connected by the child: the same socket, now connected
    else:
        s.connect(path)
    conns.append(s)
if "send_as" in spec:
    os.setresuid(0, 0, 0)
    os.setresuid(*spec["send_as"], 0)
if spec.get("hold"):
    print("connected", connector, flush=True)
    sys.stdin.readline()
send = spec.get("send", "request")
for s in conns:
    try:
        if send in ("request", "exit"):
            s.sendmsg([packet], ancillary)
        elif send == "shutdown":
            s.shutdown(socket.SHUT_WR)
    except OSError:
        pass  # refused (answered and closed) before anything was sent: the answer says why
if send == "exit":
    os._exit(0)
def answer(s):
    try:
        data = s.recv(70000)
    except ConnectionResetError:  # closed with our request unread: the answer may follow
        data = b"" if spec.get("naive") else s.recv(70000)
    if not data:
        return {"closed": True}
    status, out, err = w.decode_answer(data)
    return {"status": status, "out": out.decode("utf-8", "replace"),
            "err": err.decode("utf-8", "replace")}
if spec.get("stream"):
    import select
    poller, index = select.poll(), {s.fileno(): n for n, s in enumerate(conns)}
    for s in conns:
        poller.register(s, select.POLLIN)
    while index:
        for fd, _ in poller.poll():
            n = index.pop(fd)
            print(json.dumps({"index": n, **answer(conns[n])}), flush=True)
            poller.unregister(fd)
    sys.exit(0)
answers = [answer(s) for s in conns]
print(json.dumps(answers if "connections" in spec else answers[0]))
"""


def client_argv(user: User | None, helper: str, args: list[str], *, open_target: bool = True,
                wrap: Sequence[str] = (), **spec: object) -> list[str]:
    """The direct client (see CLIENT) as `user` (root if None), inside `wrap` (a command that
    runs the rest, such as `unshare --user --map-root-user --`)."""
    request = {"helper": helper, "args": args, **spec}
    if open_target:
        request["open"] = "launcher"
    argv = [*wrap, "/usr/bin/python3", "-I", "-c", CLIENT, str(LIBDIR), json.dumps(request)]
    return argv if user is None else as_user(user, argv)


def ask(user: User | None, helper: str, args: list[str], *, open_target: bool = True,
        **spec: object) -> Any:
    """Send one request to nsgated as `user` with the direct client; the answer as a dict
    (status, out, err) or {"closed": True}; with `connections`, a list of them; None for a
    client that does not wait for one (send: exit)."""
    result = subprocess.run(client_argv(user, helper, args, open_target=open_target, **spec),
                            capture_output=True, timeout=PATIENCE)
    assert result.returncode == 0, result.stderr.decode()
    return json.loads(result.stdout) if result.stdout else None


class HeldClient:
    """A direct client that has made its connections and waits (`hold`) for `send()`."""

    def __init__(self, user: User | None, helper: str, args: list[str], **spec: object) -> None:
        self.proc = subprocess.Popen(client_argv(user, helper, args, hold=True, **spec),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, bufsize=0)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith(b"connected "):
            self.proc.kill()
            raise AssertionError(f"client did not connect: {line!r} "
                                 f"{self.proc.communicate()[1].decode()}")
        self.connector = int(line.split()[1])  # the pid the service sees as its peer

    @property
    def pid(self) -> int:
        return self.proc.pid

    def next_answer(self, timeout: float = PATIENCE) -> dict[str, Any]:
        """With `stream`: the next answer to arrive, with the index of its connection."""
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        assert ready, f"no answer arrived within {timeout:.0f} s"
        line = self.proc.stdout.readline()
        assert line, f"the client ended: {self.proc.communicate()[1].decode()}"
        return json.loads(line)

    def send(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"go\n")
        self.proc.stdin.close()
        self.proc.stdin = None

    def answer(self) -> Any:
        out, err = self.proc.communicate(timeout=PATIENCE)
        assert self.proc.returncode == 0, err.decode()
        return json.loads(out) if out else None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate()


class Asking:
    """A request sent in the background (the same client as `ask`): `answer()` waits for it."""

    def __init__(self, user: User, helper: str, args: list[str], **spec: object) -> None:
        self.proc = subprocess.Popen(client_argv(user, helper, args, **spec),
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)

    def waiting(self) -> bool:
        """The client has sent its request and waits for the answer (its connection is made,
        accepted or still in the listening socket's backlog)."""
        return wchan(self.proc.pid) == RECEIVING

    def answer(self) -> dict[str, object]:
        out, err = self.proc.communicate(timeout=PATIENCE)
        assert self.proc.returncode == 0, err.decode()
        return json.loads(out)
