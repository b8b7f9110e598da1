"""The two ends of the channel between nsgated's workers and its nic committer: one
SOCK_SEQPACKET socketpair per worker, carrying the messages of policy/nic_commit_wire.py.

The worker's side is `RemoteSession`, the same two steps as the setuid helper's LocalSession
(system/nic_commit.py): `reserve` sends the intent and waits, bounded, for the committer's
answer; with a reservation comes the database lock itself (the committer's open file of
nics.lock, passed as a descriptor), which the worker holds until its nic is made or rolled back.
So the lock stays held while any member of a batch may still create its nic, even should the
committer die meanwhile. `finish` lets go of the lock, then reports DONE or FAILED; after a
failure it waits for the committer to have dropped its line, so its answer follows the rollback
as a lone create's does.
"""

import _socket
import _struct

from nsgate.errors import Refusal
from nsgate.policy import nic_batch
from nsgate.policy import nic_commit_wire as wire
from nsgate.system import files, nicdb_store, ports
from nsgate.system.nic_commit import Reserved

MEMBER_SECONDS = 30.0  # how long the committer waits for a reserved member's report: longer than
# a create that rolls back on a hung Open vSwitch (two ovs-vsctl calls of --timeout=5 each)
# The committer may first finish a batch (its members' bound) and wait for the lock (its bound).
OUTCOME_SECONDS = nicdb_store.LOCK_WAIT_SECONDS + MEMBER_SECONDS + 5.0
_MSG_CMSG_CLOEXEC = 0x40000000
_TIMEVAL = _struct.Struct("@ll")
_FD = _struct.Struct("@i")


def pair() -> tuple[int, int]:
    """A new channel: (the worker's end, the committer's end), both close-on-exec."""
    left, right = _socket.socketpair(_socket.AF_UNIX,
                                     _socket.SOCK_SEQPACKET | _socket.SOCK_CLOEXEC, 0)
    return left.detach(), right.detach()


def receive(sock: "_socket.socket", max_fds: int = 1) -> tuple[bytes, list[int]]:
    """One packet and the descriptors that came with it (close-on-exec); b"" at the end of
    the stream. OSError as the socket raises it (EAGAIN when a receive timeout ran out)."""
    size = _socket.CMSG_SPACE(max_fds * _FD.size)
    data, ancillary, flags, _ = sock.recvmsg(wire.MAX_PACKET + 1, size, _MSG_CMSG_CLOEXEC)
    fds = []
    for level, kind, payload in ancillary:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            usable = len(payload) - len(payload) % _FD.size
            fds += [_FD.unpack_from(payload, at)[0] for at in range(0, usable, _FD.size)]
    if flags & (_socket.MSG_TRUNC | _socket.MSG_CTRUNC) or len(data) > wire.MAX_PACKET:
        for fd in fds:
            files.close_quietly(fd)
        return b"\0", []  # not a message of the protocol (empty kind)
    return data, fds


def send(sock: "_socket.socket", packet: bytes, fds: "list[int] | None" = None) -> None:
    ancillary = [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS,
                  b"".join(_FD.pack(fd) for fd in fds))] if fds else []
    sock.sendmsg([packet], ancillary, _socket.MSG_NOSIGNAL)


def _busy(why: str) -> Refusal:
    return Refusal(f"{nicdb_store.DB_PATH} is busy: nsgated's nic committer {why}; try again")


class RemoteSession:
    """A worker's create through the committer at the other end of `fd` (its own end)."""

    def __init__(self, fd: int) -> None:
        self._sock = _socket.socket(fileno=fd)
        self._lock = -1

    def _wait(self, seconds: float) -> tuple[bytes, list[int]]:
        whole = int(seconds)
        self._sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_RCVTIMEO,
                              _TIMEVAL.pack(whole, int((seconds - whole) * 1e6)))
        return receive(self._sock)

    def reserve(self, intent: nic_batch.Intent) -> Reserved:
        try:
            packet = wire.encode_intent(intent)
        except wire.WireError:
            raise Refusal(f"{len(intent.grants)} lines of /etc/lxc/lxc-usernet apply to this "
                          f"request: nsgated passes at most {wire.MAX_GRANTS} on",
                          "merge them into fewer lines, or use the setuid helper") from None
        try:
            send(self._sock, packet)
            answer, fds = self._wait(OUTCOME_SECONDS)
        except BlockingIOError:
            self.close()  # the committer sees it gone: this worker never creates
            raise _busy(f"did not answer within {OUTCOME_SECONDS:.0f} s") from None
        except OSError:
            self.close()
            raise _busy("is gone") from None
        try:
            if answer[:1] == wire.RESERVED and len(fds) == 1:
                host, bridge, index = wire.decode_reserved(answer)
                self._lock = fds.pop()
                attach = ports.Attachment(bridge.decode(), index, shared=False) if bridge \
                    else None
                return Reserved(host, attach)
            if answer[:1] == wire.REFUSED and not fds:
                raise wire.decode_refusal(answer)
            if not answer:
                raise _busy("is gone")
            raise wire.WireError("unexpected answer")
        except wire.WireError:
            self.close()
            raise _busy("answered what this worker cannot read") from None
        finally:
            for fd in fds:
                files.close_quietly(fd)

    def finish(self, ok: bool) -> None:
        """Report the create's end; the lock is let go first (it is the batch's)."""
        if self._lock >= 0:
            files.close_quietly(self._lock)
            self._lock = -1
        try:
            send(self._sock, wire.DONE if ok else wire.FAILED)
            if not ok:
                _, fds = self._wait(MEMBER_SECONDS + 5.0)  # FINISHED, or the end of the channel
                for fd in fds:
                    files.close_quietly(fd)
        except OSError:
            pass  # the committer is gone: the lock and the line are settled without it
        self.close()

    def close(self) -> None:
        if self._lock >= 0:
            files.close_quietly(self._lock)
            self._lock = -1
        self._sock.close()
