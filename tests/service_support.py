"""nsgated in the tests: the installed service started by hand in the session's sandbox (private
mount and network namespaces, tmpfs /run), and a direct client of its protocol that tests run as
a test user (`python3 -c CLIENT`, the test user's own process, so SO_PEERCRED is the user's).

Fixtures (conftest.py): `nsgated` (module-wide; started on first use, stopped after the module),
the service transport (`transport`, module-wide, shares that one service) and `fresh_nsgated` (a
service of the test's own, for tests that stop, kill or restart it). One service listens at a time:
a test with a service or socket of its own, and the setuid transport, pause the module-wide one.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

from tests.support import (
    NSGATE,
    PATIENCE,
    PREFIX,
    SANDBOX,
    User,
    proc_state,
    run_as,
    transport,
    wait_for,
    wchan,
)

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


class Nsgated:
    """A running nsgated: its process (the parent), started with `args`."""

    def __init__(self, *args: str) -> None:
        self.args = args
        self.start()

    def start(self) -> None:
        """Start it (again: the same object, a new process)."""
        assert not answers(), "another nsgated already listens in this sandbox"
        self.proc = subprocess.Popen([str(NSGATED), *self.args], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        wait_for(lambda: answers() or self.proc.poll() is not None, "nsgated to listen")
        if self.proc.poll() is not None:
            raise AssertionError(f"nsgated exited: {self.proc.communicate()}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def workers(self) -> list[int]:
        """The parent's children: its workers (and, once they exist, its helpers)."""
        children = Path(f"/proc/{self.pid}/task/{self.pid}/children")
        try:
            return [int(pid) for pid in children.read_text().split()]
        except FileNotFoundError:
            return []

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


# A direct client of nsgate-protocol(7), as a test user runs it: `python3 -c CLIENT <json>`.
# The json names the helper, its arguments, and what to hand over: "open" (the rule of the
# launchers: open the target argument as this user), an explicit list of paths to open, or
# nothing; "raw" sends bytes as they are (hex). It prints the answer as json.
CLIENT = r'''
import array, json, os, socket, sys
sys.path.insert(0, sys.argv[1])
from nsgate.policy import service_wire as w
spec = json.loads(sys.argv[2])
s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
s.connect(spec.get("socket", "/run/nsgate/io.socket"))
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
for path in spec.get("paths", []):
    fds.append(os.open(path, os.O_RDONLY | os.O_CLOEXEC))
if "target" in spec:
    target = spec["target"]
packet = bytes.fromhex(spec["raw"]) if "raw" in spec else w.encode_request(helper, args, target)
ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds else []
s.sendmsg([packet], ancillary)
data = s.recv(70000)
if not data:
    print(json.dumps({"closed": True}))
    sys.exit(0)
status, out, err = w.decode_answer(data)
print(json.dumps({"status": status, "out": out.decode("utf-8", "replace"),
                  "err": err.decode("utf-8", "replace")}))
'''


def ask(user: User, helper: str, args: list[str], *, open_target: bool = True,
        **spec: object) -> dict[str, object]:
    """Send one request to nsgated as `user` with the direct client; the answer as a dict
    (status, out, err) or {"closed": True}."""
    request = {"helper": helper, "args": args, **spec}
    if open_target:
        request["open"] = "launcher"
    result = run_as(user, ["/usr/bin/python3", "-I", "-c", CLIENT, str(LIBDIR),
                           json.dumps(request)], timeout=PATIENCE)
    assert result.returncode == 0, result.stderr.decode()
    return json.loads(result.stdout)


def module_service() -> Nsgated:
    """The module-wide service (the service transport's), which must be up."""
    assert _shared, "no module-wide nsgated is up"
    return _shared[0]


def acting_pids(client: int) -> set[int]:
    """The processes that act on the request of a helper started as `client`: the helper itself
    in-process, or, through the service transport, the module-wide service's workers (the client
    only waits for the answer)."""
    if transport() == "service" and _shared:
        return set(_shared[0].workers())
    return {client}


IDLE_WAIT = "__skb_wait_for_more_packets"  # a prepared worker's wait for its connection


def idle_workers(service: Nsgated) -> list[int]:
    """The service's workers once all of them wait prepared for a connection (none busy,
    starting or exiting), else []."""
    workers = service.workers()
    if all(wchan(pid) == IDLE_WAIT and proc_state(pid) == "S" for pid in workers):
        return workers
    return []


@contextlib.contextmanager
def service_traced(*options: str) -> Iterator[list[tuple[int, str]]]:
    """strace (`-f`, and `options`) attached to the module-wide service's parent and its idle
    workers while the block runs one request; afterwards the list holds (pid, line) of what
    the processes that served it did: those gone once it is done (its worker and that worker's
    children), not the parent nor the workers still idle. It waits for the pool to settle
    first (all --workers prepared), so the request goes to a worker it traces."""
    service = module_service()
    settled()
    workers = set(idle_workers(service))
    out = SANDBOX / "service.trace"
    out.unlink(missing_ok=True)
    tracer = subprocess.Popen(["strace", "-f", "-o", str(out), *options,
                               *(f"-p{pid}" for pid in sorted({service.pid, *workers}))],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE)
    wait_for(lambda: all(_tracer(pid) == tracer.pid for pid in {service.pid, *workers})
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
        if proc_state(int(pid)) in ("Z", "gone"):
            events.append((int(pid), rest.strip()))


def _tracer(pid: int) -> int:
    """The TracerPid /proc shows for `pid` (0: none; -1: gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("TracerPid:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return -1


def trace_text(events: list[tuple[int, str]]) -> str:
    """service_traced's lines as `strace -f` prints them (`[pid N] ` first)."""
    return "".join(f"[pid {pid}] {line}\n" for pid, line in events)


def settled() -> None:
    """Wait until the module-wide service serves nothing (its workers all idle): what a request
    whose client is gone does is done by then."""
    service = module_service()
    count = int(service.args[service.args.index("--workers") + 1]) \
        if "--workers" in service.args else 2
    wait_for(lambda: len(idle_workers(service)) == count, "nsgated's workers to be idle")
