"""nsgated's nic committer: the one process that decides and records the lxc-user-nic creates
of all the service's workers, in batches (group commit, system/nic_commit.py).

It runs as a child of the service (`CommitterProcess`), so a slow step of its own (a hung fsync,
a lock held elsewhere) never stops the service from accepting. Each worker has its own channel
to it (system/nic_channel.py): the parent makes the pair before it forks the worker and enrolls
the committer's end, with a pidfd of the worker, over the control socket.

Batching is natural: whenever the committer is idle it commits every intent that has arrived as
one batch, so a lone create waits for nothing and creates that arrive while a batch is out are
the next batch. For each batch it sends every member its outcome (with a reservation, the
database lock, which the member holds until its nic is made), collects every reserved member's
DONE or FAILED, and then finishes the batch: one more write, only if a member failed, dropping
the lines of failed members whose host end does not exist. A member that closes its channel has
failed; one silent for MEMBER_SECONDS is killed (through its pidfd) and, once the kernel reports
it gone, has failed too: no member can make a nic after the committer gave up on it.
"""

import _socket
import gc
import posix
import select
import signal
import time

from nsgate.errors import Refusal
from nsgate.policy import nic_batch
from nsgate.policy import nic_commit_wire as wire
from nsgate.system import (
    files,
    network_plan,
    nic_channel,
    nic_commit,
    port_security,
    procfs,
    programs,
    rtnl,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from nsgate.policy.networks_conf import Plan

MEMBER_SECONDS = nic_channel.MEMBER_SECONDS
ENROLL = b"E"
MAX_ENROLL = 64  # channels per control message: 128 descriptors, below SCM_MAX_FD
MAX_PENDING = 256  # channels waiting to be enrolled while the committer is busy
COMM = b"nsgated-commit"  # its name in ps and /proc/PID/comm
_IDLE, _QUEUED, _RESERVED = "idle", "queued", "reserved"
_READABLE = select.POLLIN | select.POLLHUP | select.POLLERR


class _Member:
    __slots__ = ("pidfd", "report", "sock", "state")

    def __init__(self, sock: "_socket.socket", pidfd: int) -> None:
        self.sock = sock
        self.pidfd = pidfd
        self.state = _IDLE
        self.report: bool | None = None  # a reserved member's DONE (True) or failure (False)


class Committer:
    """The committer's loop over its control socket and its members' channels."""

    def __init__(self, net: rtnl.Rtnl, member_seconds: float = MEMBER_SECONDS) -> None:
        self._net = net
        self._member_seconds = member_seconds
        self._members: dict[int, _Member] = {}
        self._queue: list[tuple[_Member, nic_batch.Intent]] = []
        self._poll = select.poll()
        self._control: _socket.socket | None = None

    def enroll(self, channel: int, pidfd: int) -> None:
        """A worker's channel (the committer's end) and a pidfd of the worker; both owned by
        the committer from now on."""
        sock = _socket.socket(fileno=channel)
        sock.setblocking(False)
        self._members[sock.fileno()] = _Member(sock, pidfd)
        self._poll.register(sock.fileno(), _READABLE)

    def serve(self, control: int) -> None:
        """Serve until the control socket has closed (the service is gone or restarted) and
        every worker enrolled has closed its channel: a request already handed to a worker of
        the old service is still served."""
        self._control = _socket.socket(fileno=control)
        self._poll.register(control, _READABLE)
        while self._control is not None or self._members:
            self._events(-1)
            self._events(0)  # whatever else is ready joins this batch
            while self._queue:
                self._run_batch()

    def _events(self, timeout_ms: int) -> None:
        for fd, _ in self._poll.poll(timeout_ms):
            if self._control is not None and fd == self._control.fileno():
                self._read_control()
            elif fd in self._members:
                self._read_member(self._members[fd])

    def _read_control(self) -> None:
        assert self._control is not None
        try:
            data, fds = nic_channel.receive(self._control, 2 * MAX_ENROLL)
        except BlockingIOError:
            return
        if not data:
            self._poll.unregister(self._control.fileno())
            self._control.close()
            self._control = None
            return
        if data != ENROLL or not fds or len(fds) % 2:
            for fd in fds:
                files.close_quietly(fd)
            return
        for position in range(0, len(fds), 2):
            self.enroll(fds[position], fds[position + 1])

    def _drop(self, member: _Member) -> None:
        fd = member.sock.fileno()
        self._poll.unregister(fd)
        del self._members[fd]
        member.sock.close()
        files.close_quietly(member.pidfd)
        self._queue = [(m, intent) for m, intent in self._queue if m is not member]

    def _read_member(self, member: _Member) -> None:
        try:
            data, fds = nic_channel.receive(member.sock)
        except BlockingIOError:
            return
        except OSError:
            data, fds = b"", []
        for fd in fds:  # workers send no descriptors
            files.close_quietly(fd)
        if member.state == _RESERVED:
            try:
                member.report = wire.decode_report(data)
            except wire.WireError:
                member.report = False
            if not data:
                self._drop(member)  # gone: failed, unless its nic exists (Batch.finish)
            return
        if not data or member.state == _QUEUED:
            self._drop(member)  # gone, or a second message before its outcome
            return
        try:
            intent = wire.decode_intent(data)
        except wire.WireError:
            self._answer(member, Refusal("nsgated's nic committer could not read the request "
                                         "of its worker"))
            return
        member.state = _QUEUED
        self._queue.append((member, intent))

    def _answer(self, member: _Member, packet_or_refusal: "bytes | Refusal",
                fds: "list[int] | None" = None) -> bool:
        packet = (wire.encode_refusal(packet_or_refusal)
                  if isinstance(packet_or_refusal, Refusal) else packet_or_refusal)
        try:
            nic_channel.send(member.sock, packet, fds)
        except OSError:
            return False
        return True

    def _commit(self, intents: list[nic_batch.Intent]) -> "nic_commit.Batch | Refusal":
        guard: port_security.Guard | Refusal | None = None
        network: Plan | Refusal | None = None
        if any(intent.private for intent in intents):
            try:
                network = network_plan.load()  # read for each batch: the file may change
            except Refusal as refusal:
                network = refusal
        if any(intent.guarded for intent in intents):
            try:  # before the lock: it may fork nft's runner
                guard = port_security.Guard(None if isinstance(network, Refusal) else network)
            except Refusal as refusal:
                guard = refusal
        try:
            return nic_commit.commit(intents, self._net, guard, network)
        except Refusal as refusal:
            return refusal
        except Exception as err:  # noqa: BLE001 - one batch's failure is not the committer's end
            return Refusal(f"internal error ({type(err).__name__}) in nsgated's nic committer; "
                           "nothing was recorded")
        finally:
            if isinstance(guard, port_security.Guard):
                guard.close()

    def _run_batch(self) -> None:
        members = [member for member, _ in self._queue]
        intents = [intent for _, intent in self._queue]
        self._queue = []
        batch = self._commit(intents)
        outcomes = batch.outcomes if isinstance(batch, nic_commit.Batch) else \
            [batch] * len(members)
        reserved: dict[int, _Member] = {}
        for position, (member, outcome) in enumerate(zip(members, outcomes, strict=True)):
            member.state = _IDLE
            if isinstance(outcome, Refusal):
                self._answer(member, outcome)
                continue
            assert isinstance(batch, nic_commit.Batch)
            bridge = outcome.attach
            packet = wire.encode_reserved(outcome.host, bridge.name.encode() if bridge else b"",
                                          bridge.index if bridge else 0)
            member.report = None
            if self._answer(member, packet, [batch.lock.fd]):
                member.state = _RESERVED
                reserved[position] = member
            else:
                self._drop(member)  # it never got its reservation: it makes nothing
                reserved[position] = member
                member.report = False
        if isinstance(batch, nic_commit.Batch):
            self._collect(reserved)
            self._finish(batch, reserved)

    def _collect(self, reserved: dict[int, _Member]) -> None:
        deadline = time.monotonic() + self._member_seconds
        while any(member.report is None for member in reserved.values()):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._events(max(1, int(remaining * 1000)))
        for member in reserved.values():
            if member.report is None:
                _kill_and_wait(member.pidfd)
                member.report = False
                if member.sock.fileno() in self._members:
                    self._drop(member)

    def _finish(self, batch: nic_commit.Batch, reserved: dict[int, _Member]) -> None:
        failed = {position for position, member in reserved.items() if not member.report}
        try:
            batch.finish(failed)
        except Exception:  # noqa: BLE001 - the lock is released; the lines stay as written
            pass
        for position in failed:
            member = reserved[position]
            member.state = _IDLE
            if member.sock.fileno() in self._members:
                self._answer(member, wire.FINISHED)
        for member in reserved.values():
            member.state = _IDLE
            member.report = None


def _kill_and_wait(pidfd: int) -> None:
    """SIGKILL the member and wait until the kernel reports it gone: then it can make nothing
    more, and its copy of the lock is closed. No bound: a member stuck in the kernel keeps the
    lock (and the batch) until it returns, as a stuck setuid helper would."""
    try:
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    except ProcessLookupError:
        return
    waiter = select.poll()
    waiter.register(pidfd, select.POLLIN)
    while not waiter.poll(-1):
        pass


def _close_pair(pair: tuple[int, int]) -> None:
    for fd in pair:
        files.close_quietly(fd)


class CommitterProcess:
    """The committer as a child of the service: `enroll` hands it workers' channels."""

    def __init__(self) -> None:
        parent, child = _socket.socketpair(_socket.AF_UNIX,
                                           _socket.SOCK_SEQPACKET | _socket.SOCK_CLOEXEC, 0)
        pid = posix.fork()
        if pid == 0:
            status = 1
            try:
                signal.set_wakeup_fd(-1)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # it reaps nft's runner itself
                for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                    signal.signal(signum, signal.SIG_IGN)  # it ends when the service does
                procfs.name_self(COMM)
                control = child.detach()
                gc.collect()  # no garbage of the service's may close a descriptor reused here
                programs.keep_only_fds(control)
                Committer(rtnl.Rtnl()).serve(control)
                status = 0
            finally:
                posix._exit(status)
        child.close()
        parent.setblocking(False)  # a stalled committer never blocks the service
        self.pid = pid
        self._control = parent
        self._pending: list[tuple[int, int]] = []

    def enroll(self, channels: "list[tuple[int, int]]") -> None:
        """Hand over (committer's end of a channel, pidfd of its worker) pairs; they are
        closed here once sent. What the committer cannot take now (it is busy, its control
        socket full) waits for `flush`; beyond MAX_PENDING the oldest are dropped: their
        workers find their committer gone, which they say."""
        self._pending += channels
        while len(self._pending) > MAX_PENDING:
            _close_pair(self._pending.pop(0))
        self.flush()

    def flush(self) -> None:
        """Send what `enroll` could not yet (call it from the service's loop)."""
        while self._pending:
            part = self._pending[:MAX_ENROLL]
            try:
                nic_channel.send(self._control, ENROLL, [fd for pair in part for fd in pair])
            except BlockingIOError:
                return
            except OSError:  # the committer is gone: the service replaces it when it reaps it
                part = list(self._pending)
            del self._pending[:len(part)]
            for pair in part:
                _close_pair(pair)

    def forget(self) -> None:
        """Let go of the control socket and what waits to be sent on it: in a process forked
        from the service (a worker), so the committer's end of the control socket and of other
        workers' channels close when the service's do; in the service, for a committer that
        died."""
        self._control.close()
        for pair in self._pending:
            _close_pair(pair)
        self._pending = []

    def reaped(self) -> None:
        """The service reaped it (while stopping): nothing left to wait for."""
        self.pid = 0

    def close(self, seconds: float) -> None:
        """Stop it: it exits once its workers' channels have closed, which it is given
        `seconds` for; then it is killed (the lock went with the reservations, so a batch it
        leaves is settled by its members). Reaped here."""
        self.forget()
        deadline = time.monotonic() + seconds
        while self.pid:
            try:
                pid, _ = posix.waitpid(self.pid, posix.WNOHANG)
            except ChildProcessError:
                return
            if pid:
                return
            if time.monotonic() > deadline:
                posix.kill(self.pid, signal.SIGKILL)
                posix.waitpid(self.pid, 0)
                return
            time.sleep(0.01)
