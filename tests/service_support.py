"""nsgated in the tests: the installed service started by hand in the session's sandbox (private
mount and network namespaces, tmpfs /run), and a direct client of its protocol that tests run as
a test user (`python3 -c CLIENT`, the test user's own process, so SO_PEERCRED is the user's).

Fixtures (conftest.py): `nsgated` (module-wide; started on first use, stopped after the module) and
`fresh_nsgated` (a service of the test's own, for tests that stop, kill or restart it).
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

from tests.support import NSGATE, PATIENCE, PREFIX, User, run_as, wait_for

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
