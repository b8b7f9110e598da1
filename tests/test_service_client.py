"""The launchers' client of nsgated (csrc/service_client.c; nsgate-protocol(7), CLIENT and TARGET).

The service is played by the test: a real SOCK_SEQPACKET socket bound at /run/nsgate/io.socket
(the session's private /run), which records what arrives and answers what the test chooses:
- the peer the kernel reports (SO_PEERCRED) is the caller, never root, for the setuid, the
  file-capabilities and the MODE=service installs; while the client waits for the answer,
  /proc/PID/status shows every uid and gid the caller's and no capability left;
- the helper id, the arguments, the target field and the descriptor passed with it, which the
  test identifies in its own fd table (a /proc directory, a netns, an O_PATH file), or the
  errno of the open the caller could not make (another user's netns, a missing process);
- the helper's stdout, stderr and exit status are the answer's, exactly; an answer that never
  comes or cannot be read ends it with one line and status 1;
- nothing listening (no directory, no socket, a socket nobody accepts on, one the caller may
  not use) or an argv that does not fit one packet: the in-process path, as before, with the
  map really written; under no_new_privs its refusal names the service.
"""

from __future__ import annotations

import array
import contextlib
import errno
import fcntl
import os
import re
import socket
import stat
import struct
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support import (
    ALICE,
    BOB,
    PATIENCE,
    PREFIX,
    SANDBOX,
    Target,
    as_user,
    proc_state,
    wait_for,
    wchan,
)
from tests.test_install import make_install

SOCKET = Path("/run/nsgate/io.socket")
HELPER_IDS = {"newuidmap": 0, "newgidmap": 1, "getsubids": 2, "lxc-user-nic": 3}
NO_ANSWER = (b"the nsgate service ended the request without an answer: what was done is what a "
             b"helper killed there leaves (nsgate-protocol(7))\n")
SERVICE_FIX = b"systemctl enable --now nsgate.socket (or run nsgated)"


# --- installs: the default (setuid) one, file capabilities, MODE=service ------------------------


@pytest.fixture(scope="module")
def installs() -> Iterator[dict[str, Path]]:
    made = {"setuid": PREFIX}
    yield made
    if len(made) > 1:
        make_install(PREFIX)  # leave build/ as `make test` made it


def _prefix(installs: dict[str, Path], mode: str) -> Path:
    if mode not in installs:
        installs[mode] = SANDBOX / f"client-{mode}"
        make_install(installs[mode], "CAPS=1" if mode == "caps" else "MODE=service")
    return installs[mode]


def tool(installs: dict[str, Path], mode: str, name: str) -> str:
    return str(_prefix(installs, mode) / "libexec/nsgate" / name)


# --- the test's service: records what arrives, answers what the test says -----------------------


@dataclass
class Arrival:
    """One connection as the service would see it."""

    conn: socket.socket
    pid: int
    uid: int
    gid: int
    packet: bytes
    fds: list[int] = field(default_factory=list)

    def header(self) -> tuple[bytes, int, int, int, int]:
        magic, version, helper, argc, target = struct.unpack_from("=6sHIIi", self.packet)
        return magic, version, helper, argc, target

    @property
    def target(self) -> int:
        return self.header()[4]

    def args(self) -> list[bytes]:
        """The arguments, checked to fill the packet exactly as argc says."""
        magic, version, _, argc, _ = self.header()
        assert (magic, version) == (b"nsgate", 1), self.packet[:8]
        rest = self.packet[20:]
        assert rest.endswith(b"\0") or argc == 0, rest[-20:]
        args = rest[:-1].split(b"\0") if argc else []
        assert len(args) == argc and len(rest) == sum(len(a) + 1 for a in args)
        return args

    def answer(self, status: int, out: bytes = b"", err: bytes = b"", version: int = 1) -> None:
        self.send(b"nsgate" + struct.pack("=HIII", version, status, len(out), len(err)) + out
                  + err)

    def send(self, packet: bytes) -> None:
        self.conn.send(packet)
        self.conn.close()


class Peer:
    """A listening SOCK_SEQPACKET socket at SOCKET, 0666 in a directory of root's (0755)."""

    def __init__(self, mode: int = 0o666) -> None:
        SOCKET.parent.mkdir(mode=0o755, exist_ok=True)
        os.chown(SOCKET.parent, 0, 0)
        os.chmod(SOCKET.parent, 0o755)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock.bind(str(SOCKET))
        os.chmod(SOCKET, mode)
        self.sock.listen(8)
        self.arrivals: list[Arrival] = []

    def accept(self) -> Arrival:
        self.sock.settimeout(PATIENCE)  # only a hang takes this long
        conn, _ = self.sock.accept()
        pid, uid, gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET,
                                                            socket.SO_PEERCRED, 12))
        conn.settimeout(PATIENCE)
        packet, ancillary, flags, _ = conn.recvmsg(65537, socket.CMSG_SPACE(4 * 4))
        assert not flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC), flags
        fds: list[int] = []
        for level, kind, data in ancillary:
            assert (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS)
            fds.extend(array.array("i", data))
        arrival = Arrival(conn, pid, uid, gid, packet, fds)
        self.arrivals.append(arrival)
        return arrival

    def pending(self) -> bool:
        """A connection waits to be accepted (checked once the client has exited)."""
        self.sock.setblocking(False)
        try:
            conn, _ = self.sock.accept()
        except BlockingIOError:
            return False
        conn.close()
        return True

    def close(self) -> None:
        for arrival in self.arrivals:
            arrival.conn.close()
            for fd in arrival.fds:
                os.close(fd)
        self.sock.close()
        SOCKET.unlink(missing_ok=True)


@contextlib.contextmanager
def socket_place() -> Iterator[None]:
    """SOCKET free for the test; a socket already there (a service another test runs) is put
    aside and back afterwards."""
    aside = Path("/run/nsgate-io.socket.aside")  # the same file system, outside the directory
    had = SOCKET.exists()
    if had:
        SOCKET.rename(aside)
    try:
        yield
    finally:
        SOCKET.unlink(missing_ok=True)
        if had:
            SOCKET.parent.mkdir(mode=0o755, exist_ok=True)
            aside.rename(SOCKET)


@pytest.fixture
def peer() -> Iterator[Peer]:
    with socket_place():
        service = Peer()
        try:
            yield service
        finally:
            service.close()


@pytest.fixture
def no_service() -> Iterator[None]:
    with socket_place():
        yield


def start(argv: list[str], *, extra: tuple[str, ...] = (),
          stdout: int = subprocess.PIPE) -> subprocess.Popen[bytes]:
    return subprocess.Popen(as_user(ALICE, argv, extra=extra), stdin=subprocess.DEVNULL,
                            stdout=stdout, stderr=subprocess.PIPE)


def finish(proc: subprocess.Popen[bytes]) -> tuple[int, bytes, bytes]:
    out, err = proc.communicate(timeout=PATIENCE)
    return proc.returncode, out or b"", err


def status_of(pid: int) -> dict[str, list[str]]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: rest.split() for key, _, rest in (line.partition(":") for line in lines)}


def fd_names(fd: int) -> tuple[str, int]:
    """What a received descriptor is (its /proc/self/fd link) and its open flags."""
    return os.readlink(f"/proc/self/fd/{fd}"), fcntl.fcntl(fd, fcntl.F_GETFL)


# --- who connects, with what left -------------------------------------------------------------

CASES = [("setuid", "newuidmap"), ("setuid", "newgidmap"), ("setuid", "lxc-user-nic"),
         ("setuid", "getsubids"), ("caps", "newuidmap"), ("caps", "newgidmap"),
         ("service", "newuidmap"), ("service", "lxc-user-nic")]


def _argv(name: str, target: Target) -> list[str]:
    if name == "lxc-user-nic":
        return ["create", "/var/lib/lxc", "ctr", str(target.pid), "veth", "nsgtbr0"]
    if name == "getsubids":
        return ["nsgt-alice"]
    return [str(target.pid), "0", "200000", "10"]


@pytest.mark.parametrize(("mode", "name"), CASES)
def test_the_request_comes_from_the_caller_with_no_privilege_left(installs, peer, targets,
                                                                    mode, name):
    target = targets(ALICE, net=name == "lxc-user-nic")
    argv = _argv(name, target)
    proc = start([tool(installs, mode, name), *argv])
    try:
        arrival = peer.accept()
        assert (arrival.pid, arrival.uid, arrival.gid) == (proc.pid, ALICE.uid, ALICE.gid)
        assert arrival.header()[2] == HELPER_IDS[name]
        assert arrival.args() == [a.encode() for a in argv]
        wait_for(lambda: proc_state(proc.pid) == "S" and wchan(proc.pid) != "0",
                 "the client to wait for its answer")
        status = status_of(proc.pid)
        assert status["Uid"] == [str(ALICE.uid)] * 4 and status["Gid"] == [str(ALICE.gid)] * 4
        assert {status[key][0] for key in ("CapEff", "CapPrm", "CapInh", "CapAmb")} == \
            {"0000000000000000"}, status
        arrival.answer(0, b"out\n", b"err\n")
    finally:
        result = finish(proc)
    assert result == (0, b"out\n", b"err\n")
    assert target.uid_map() == [] and target.gid_map() == []  # nothing ran in-process


def test_a_caller_under_no_new_privs_is_served(peer, target):
    proc = start([str(PREFIX / "libexec/nsgate/newuidmap"), str(target.pid), "0", "200000", "1"],
                 extra=("--no-new-privs",))
    arrival = peer.accept()
    assert (arrival.uid, arrival.gid) == (ALICE.uid, ALICE.gid)
    arrival.answer(0)
    assert finish(proc) == (0, b"", b"")


# --- the target: opened as the caller, passed as a descriptor ---------------------------------


def _run_for_target(peer: Peer, argv: list[str]) -> Arrival:
    proc = start(argv)
    try:
        arrival = peer.accept()
        arrival.answer(0)
    finally:
        finish(proc)
    return arrival


def test_map_target_pid_is_its_proc_directory(peer, target):
    arrival = _run_for_target(peer, [str(PREFIX / "libexec/nsgate/newuidmap"), str(target.pid),
                                     "0", "200000", "10"])
    assert arrival.target == 0 and len(arrival.fds) == 1
    link, flags = fd_names(arrival.fds[0])
    assert link == f"/proc/{target.pid}" and flags & os.O_DIRECTORY
    assert os.fstat(arrival.fds[0]).st_uid == ALICE.uid


@pytest.mark.parametrize("number", [3, 5])
def test_map_target_fd_is_the_callers_own_descriptor(peer, target, number):
    newgidmap = PREFIX / "libexec/nsgate/newgidmap"
    arrival = _run_for_target(peer, ["sh", "-c", f"exec {number}</proc/{target.pid} && exec "
                                                 f"{newgidmap} fd:{number} 0 23001 1"])
    assert arrival.target == 0 and len(arrival.fds) == 1
    assert fd_names(arrival.fds[0])[0] == f"/proc/{target.pid}"
    assert arrival.args()[0] == f"fd:{number}".encode()


@pytest.mark.parametrize("number", ["3", "9"])
def test_map_target_fd_not_open_is_ebadf(peer, number):
    """fd:3 not open: the client's own socket took number 3, and is not passed for it."""
    arrival = _run_for_target(peer, [str(PREFIX / "libexec/nsgate/newuidmap"), f"fd:{number}",
                                     "0", "200000", "10"])
    assert (arrival.target, arrival.fds) == (errno.EBADF, [])


@pytest.mark.parametrize("first", ["0123", "+5", "12345678901", "fd:2", "fd:05", "self", ""])
def test_map_target_text_of_no_form_the_client_opens(peer, first):
    arrival = _run_for_target(peer, [str(PREFIX / "libexec/nsgate/newuidmap"), first, "0",
                                     "200000", "10"])
    assert (arrival.target, arrival.fds) == (-1, [])
    assert arrival.args()[0] == first.encode()


def test_getsubids_passes_no_target(peer):
    arrival = _run_for_target(peer, [str(PREFIX / "libexec/nsgate/getsubids"), "-g",
                                     "nsgt-alice"])
    assert (arrival.header()[2], arrival.target, arrival.fds) == (2, -1, [])
    assert arrival.args() == [b"-g", b"nsgt-alice"]


def _nic(verb: str, where: str) -> list[str]:
    return [str(PREFIX / "libexec/nsgate/lxc-user-nic"), verb, "/var/lib/lxc", "ctr", where,
            "veth", "nsgtbr0", *(["eth0"] if verb == "delete" else [])]


def test_nic_create_target_is_the_netns_of_the_pid(peer, targets):
    ctr = targets(ALICE, net=True)
    arrival = _run_for_target(peer, _nic("create", str(ctr.pid)))
    assert arrival.target == 0 and len(arrival.fds) == 1
    link, flags = fd_names(arrival.fds[0])
    assert link == os.readlink(f"/proc/{ctr.pid}/ns/net") and not flags & os.O_PATH


def test_nic_delete_target_is_an_o_path_descriptor(peer, targets):
    ctr = targets(ALICE, net=True)
    arrival = _run_for_target(peer, _nic("delete", f"/proc/{ctr.pid}/ns/net"))
    assert arrival.target == 0 and len(arrival.fds) == 1
    link, flags = fd_names(arrival.fds[0])
    assert link == os.readlink(f"/proc/{ctr.pid}/ns/net") and flags & os.O_PATH


def test_another_users_netns_is_not_opened(peer, targets):
    """Bob's netns: alice may not open it, so the client passes EACCES and no descriptor (a
    client still holding root would have opened it)."""
    bobs = targets(BOB, net=True)
    arrival = _run_for_target(peer, _nic("create", str(bobs.pid)))
    assert (arrival.target, arrival.fds) == (errno.EACCES, [])


@pytest.mark.parametrize(("verb", "where", "expected"), [
    ("create", "999999999", errno.ENOENT),
    ("delete", "/nonexistent/netns", errno.ENOENT),
    ("create", "0", -1),
    ("create", "pid", -1),
    ("add", "1", -1),
])
def test_nic_target_missing_or_of_no_form(peer, verb, where, expected):
    arrival = _run_for_target(peer, _nic(verb, where))
    assert (arrival.target, arrival.fds) == (expected, [])


# --- the answer --------------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "out", "err", "expected"), [
    (0, b"", b"", 0),
    (1, b"", b"newuidmap: refused\n", 1),
    (0, b"o" * 60000, b"e" * 5000, 0),
    (7, b"out", b"err", 1),
    (0xFFFFFFFF, b"", b"", 1),
])
def test_the_answer_is_written_out_and_its_status_returned(peer, target, status, out, err,
                                                            expected):
    proc = start([str(PREFIX / "libexec/nsgate/newuidmap"), str(target.pid), "0", "200000",
                  "10"])
    peer.accept().answer(status, out, err)
    assert finish(proc) == (expected, out, err)


def test_a_closed_stdout_loses_the_text_not_the_status(peer, target):
    """SIGPIPE is ignored around the writes, as the interpreter does in-process."""
    read, write = os.pipe()
    os.close(read)
    try:
        proc = start([str(PREFIX / "libexec/nsgate/newuidmap"), str(target.pid), "0", "200000",
                      "10"], stdout=write)
    finally:
        os.close(write)
    peer.accept().answer(0, b"x" * 1000, b"said\n")
    assert finish(proc) == (0, b"", b"said\n")


MALFORMED = {
    "closed without an answer": None,
    "empty packet": b"",
    "short header": b"nsgate\x01\x00",
    "wrong magic": b"nsgatE" + struct.pack("=HIII", 1, 0, 0, 0),
    "text shorter than said": b"nsgate" + struct.pack("=HIII", 1, 0, 5, 0) + b"abc",
    "text longer than said": b"nsgate" + struct.pack("=HIII", 1, 0, 1, 1) + b"abc",
    "lengths overflowing": b"nsgate" + struct.pack("=HIII", 1, 0, 0xFFFFFFFF, 2) + b"a",
    "too long": b"nsgate" + struct.pack("=HIII", 1, 0, 65517, 0) + b"a" * 65517,
}


@pytest.mark.parametrize("case", MALFORMED)
def test_no_answer_or_a_malformed_one_is_one_line_and_status_1(peer, target, case):
    proc = start([str(PREFIX / "libexec/nsgate/newuidmap"), str(target.pid), "0", "200000",
                  "10"])
    arrival = peer.accept()
    packet = MALFORMED[case]
    if packet is None:
        arrival.conn.close()
    else:
        arrival.send(packet)
    assert finish(proc) == (1, b"", b"newuidmap: " + NO_ANSWER)
    assert target.uid_map() == []


def test_an_answer_in_another_version(peer, target):
    proc = start([str(PREFIX / "libexec/nsgate/newuidmap"), str(target.pid), "0", "200000",
                  "10"])
    peer.accept().answer(0, b"out", b"", version=2)
    assert finish(proc) == (1, b"", b"newuidmap: the nsgate service speaks another version of "
                                    b"its protocol: restart it\n")


def test_a_service_that_closes_before_reading(target):
    """The service drops the connection unread: the send or the receive fails; one line."""
    with socket_place():
        service = Peer()
        try:
            proc = start([str(PREFIX / "libexec/nsgate/newuidmap"), str(target.pid), "0",
                          "200000", "10"])
            service.sock.settimeout(PATIENCE)
            service.sock.accept()[0].close()
            assert finish(proc) == (1, b"", b"newuidmap: " + NO_ANSWER)
        finally:
            service.close()


# --- no service: the in-process path, as before ----------------------------------------------


def _map_in_process(target: Target, extra: tuple[str, ...] = ()) -> None:
    proc = start([str(PREFIX / "libexec/nsgate/newuidmap"), str(target.pid), "0", "200000",
                  "10"], extra=extra)
    assert finish(proc) == (0, b"", b"")
    assert target.uid_map() == [(0, 200000, 10)]


def test_no_socket_directory_maps_in_process(no_service, target):
    subprocess.run(["rm", "-rf", str(SOCKET.parent)], check=True)
    _map_in_process(target)


def test_no_socket_maps_in_process(no_service, target):
    SOCKET.parent.mkdir(mode=0o755, exist_ok=True)
    _map_in_process(target)


def test_fd_3_maps_in_process(no_service, target):
    """The launcher keeps fd:3 open (close_range of nothing below it is not asked for)."""
    newuidmap = PREFIX / "libexec/nsgate/newuidmap"
    proc = start(["sh", "-c", f"exec 3</proc/{target.pid} && exec {newuidmap} fd:3 0 200000 10"])
    assert finish(proc) == (0, b"", b"")
    assert target.uid_map() == [(0, 200000, 10)]


def test_a_socket_nobody_listens_on_maps_in_process(no_service, target):
    service = Peer()
    service.sock.close()  # the file stays: connection refused
    assert SOCKET.exists()
    _map_in_process(target)


def test_a_socket_the_caller_may_not_use_maps_in_process(no_service, target):
    """Permission denied is not a service for this caller: the in-process path, whose own checks
    decide (falling back never gives more than the setuid helper gives)."""
    service = Peer(mode=0o600)
    try:
        _map_in_process(target)
        assert not service.pending()
    finally:
        service.close()


def test_an_argv_too_long_for_a_packet_runs_in_process(peer, target):
    proc = start([str(PREFIX / "libexec/nsgate/newuidmap"), str(target.pid), "0", "200000",
                  "10", "1" * 70000])
    rc, out, err = finish(proc)
    assert (rc, out) == (1, b"") and err.startswith(b"newuidmap: "), err[:200]
    assert not peer.pending()
    assert target.uid_map() == []


def test_no_new_privs_without_the_service_names_it(no_service, target):
    proc = start([str(PREFIX / "libexec/nsgate/newuidmap"), str(target.pid), "0", "200000",
                  "10"], extra=("--no-new-privs",))
    rc, out, err = finish(proc)
    assert (rc, out) == (1, b"")
    assert err.startswith(b"newuidmap: cannot get CAP_SETUID: no_new_privs is set"), err
    assert b"newuidmap: or start nsgate's service, which serves callers under no_new_privs: " \
           + SERVICE_FIX + b"\n" in err, err
    assert target.uid_map() == []


# --- MODE=service -------------------------------------------------------------------------------


def test_service_mode_installs_helpers_without_privilege(installs):
    libexec = _prefix(installs, "service") / "libexec/nsgate"
    for name in ("newuidmap", "newgidmap", "getsubids", "lxc-user-nic", "nsgated"):
        st = (libexec / name).stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 0, 0o755), name
        caps = subprocess.run(["getcap", str(libexec / name)], capture_output=True, text=True)
        assert caps.stdout == "", caps
    text = (libexec / "nsgated").read_text()
    assert text.startswith("#!/usr/bin/python3 ") and not re.search(r"@[A-Z]+@", text), text


def test_service_mode_and_caps_together_are_refused():
    args = ["make", "-s", "-C", str(Path(__file__).resolve().parents[1]), "install",
            f"PREFIX={SANDBOX / 'client-both'}", "MODE=service", "CAPS=1"]
    result = subprocess.run(args, capture_output=True, text=True)
    assert result.returncode != 0
    assert "MODE=service installs the helpers without privilege: CAPS=1 does not apply" \
        in result.stderr
    assert not (SANDBOX / "client-both").exists()


def test_service_mode_without_the_service_names_it(installs, no_service, target):
    proc = start([tool(installs, "service", "newuidmap"), str(target.pid), "0", "200000", "10"])
    rc, out, err = finish(proc)
    assert (rc, out) == (1, b"")
    assert err.startswith(b"newuidmap: cannot get CAP_SETUID: the launcher is not setuid root "
                          b"and has no file capabilities\n"), err
    assert SERVICE_FIX + b"\n" in err and b"MODE=service" in err, err
    assert target.uid_map() == []
