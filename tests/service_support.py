"""nsgated in the tests: the installed service started by hand in the session's sandbox (private
mount and network namespaces, tmpfs /run), and a direct client of its protocol that tests run as
a test user (`python3 -c CLIENT`, the test user's own process, so SO_PEERCRED is the user's).

Fixtures (conftest.py): `nsgated` (module-wide; started on first use, stopped after the module) and
`fresh_nsgated` (a service of the test's own, for tests that stop, kill or restart it).
"""

from __future__ import annotations

import contextlib
import json
import select
import signal
import socket
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tests.support import NSGATE, PATIENCE, PREFIX, User, as_user, wait_for

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
        assert not answers(), "another nsgated already listens in this sandbox"
        self.proc = subprocess.Popen([str(NSGATED), *args], stdin=subprocess.DEVNULL,
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


def client_argv(user: User | None, request: dict[str, object],
                wrap: Sequence[str] = ()) -> list[str]:
    """The direct client's command line: as `user` (root if None), inside `wrap` (a command
    that runs the rest, such as `unshare --user --map-root-user`)."""
    argv = [*wrap, "/usr/bin/python3", "-I", "-c", CLIENT, str(LIBDIR), json.dumps(request)]
    return argv if user is None else as_user(user, argv)


def ask(user: User | None, helper: str, args: list[str], *, open_target: bool = True,
        wrap: Sequence[str] = (), **spec: object) -> Any:
    """Send one request to nsgated as `user` with the direct client; the answer as a dict
    (status, out, err) or {"closed": True}; with `connections`, a list of them."""
    request = {"helper": helper, "args": args, **spec}
    if open_target:
        request["open"] = "launcher"
    result = subprocess.run(client_argv(user, request, wrap), capture_output=True,
                            timeout=PATIENCE)
    assert result.returncode == 0, result.stderr.decode()
    return json.loads(result.stdout) if result.stdout else None


class HeldClient:
    """A direct client that has made its connections and waits (`hold`) for `send()`."""

    def __init__(self, user: User | None, helper: str, args: list[str], *,
                 open_target: bool = True, wrap: Sequence[str] = (), **spec: object) -> None:
        request = {"helper": helper, "args": args, "hold": True, **spec}
        if open_target:
            request["open"] = "launcher"
        self.proc = subprocess.Popen(client_argv(user, request, wrap), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)
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
