"""nsgated: nsgate's helpers served by a warm root service (nsgated(8), nsgate-protocol(7)).

The parent decides nothing about requests and reads none: it accepts, asks the kernel who
connected, counts requests in flight per user, and hands each connection to a worker it forked
in advance (cli/service_worker.py), which serves it with the helpers' own code and exits. The
parent forks replacements when it is idle, ends requests that run too long, restarts itself when
the installed code changes, and, when systemd started it for its socket, exits when idle.

Beside the workers run two more children, its companions: the nic janitor
(system/nic_janitor.py), which watches link deletions and removes the nic lines and private
bridges they leave behind, and the network keeper (system/network_keeper.py), which applies
/etc/nsgate/networks.conf and runs the private bridges' DHCP server. Each stops when the parent
closes its end of a pipe (on stop, on restart, or when the parent dies), and is started again
if it dies (at most COMPANION_RESTARTS times a minute).
"""

import collections
import errno
import posix
import selectors
import signal
import socket
import sys
import time

from nsgate.errors import Refusal
from nsgate.policy import service_wire
from nsgate.system import (
    integrity,
    network_plan,
    nic_channel,
    nic_commit,
    nic_committer,
    service_io,
)

USAGE = ("usage: nsgated [--socket PATH] [--workers N] [--idle-exit SECONDS]\n"
         "               [--request-seconds SECONDS]\n"
         "       (runs in the foreground until SIGTERM; see nsgated(8))\n"
         "  --request-seconds  end a request still running, or still waiting for its turn,\n"
         "                     after this long (default 60)\n")
DEFAULT_SOCKET = "/run/nsgate/io.socket"
PER_USER_IN_FLIGHT = 8
PER_USER_WAITING = 64
TOTAL_IN_FLIGHT = 64
TOTAL_WAITING = 1024  # each holds two descriptors (the connection, the caller's pidfd)
REQUEST_SECONDS = 60.0
STOP_SECONDS = 10.0
HAND_OVER_TRIES = 3
TICK_SECONDS = 1.0
CLEAN_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8"}
OWNED_MARK = "NSGATED_OWNS_SOCKET"
HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD, signal.SIGHUP)
COMPANION_RESTARTS = 5
COMPANIONS = ("nic_janitor", "network_keeper")  # modules of nsgate.system, each with run(stop_fd)


class Options:
    def __init__(self) -> None:
        self.socket = DEFAULT_SOCKET
        self.workers = 2
        self.idle_exit = 0.0
        self.request_seconds = REQUEST_SECONDS


def parse(argv: list[str], socket_path: str = DEFAULT_SOCKET) -> Options:
    options = Options()
    options.socket = socket_path
    rest = list(argv)
    while rest:
        flag = rest.pop(0)
        if flag in ("-h", "--help"):
            raise Refusal("help", usage=True)
        if flag not in ("--socket", "--workers", "--idle-exit", "--request-seconds") or not rest:
            raise Refusal(f"unknown or incomplete option {flag!r}", usage=True)
        value = rest.pop(0)
        if flag == "--socket":
            if not value.startswith("/"):
                raise Refusal("--socket needs an absolute path", usage=True)
            options.socket = value
        else:
            try:
                number = int(value)
            except ValueError:
                raise Refusal(f"{flag} needs a number, not {value!r}", usage=True) from None
            if number < 0 or (flag == "--workers" and not 1 <= number <= 32) or (
                    flag == "--request-seconds" and number < 1):
                raise Refusal(f"{flag} {number} is out of range", usage=True)
            if flag == "--workers":
                options.workers = number
            elif flag == "--request-seconds":
                options.request_seconds = float(number)
            else:
                options.idle_exit = float(number)
    return options


def main(argv: list[str], libdir: str, script: str, socket_path: str = DEFAULT_SOCKET) -> int:
    """`socket_path`: where the installed helpers look (make install SOCKET=)."""
    try:
        options = parse(argv, socket_path)
    except Refusal as refusal:
        if refusal.first == "help":
            sys.stdout.write(USAGE)
            return 0
        sys.stderr.write(refusal.text("nsgated", USAGE))
        return 2
    if posix.geteuid() != 0:
        sys.stderr.write("nsgated: must run as root\n")
        return 1
    try:
        _prepare(libdir)
        service = Service(options, libdir, script, argv)
    except Refusal as refusal:
        sys.stderr.write(refusal.text("nsgated"))
        return 1
    return service.run()


def _prepare(libdir: str) -> None:
    """The process state every worker inherits, the code checked, and everything imported."""
    integrity.verify_startup(libdir)
    posix.umask(0o022)
    posix.chdir("/")
    for name in list(posix.environ):  # the C library's environment, for NSS and syslog too
        if name not in (b"LISTEN_PID", b"LISTEN_FDS", OWNED_MARK.encode()):
            posix.unsetenv(name)
            del posix.environ[name]
    for key, value in CLEAN_ENV.items():
        posix.putenv(key, value)
        posix.environ[key.encode()] = value.encode()
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 8192 if hard == resource.RLIM_INFINITY else min(hard, 8192)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    # Everything a request can run, imported before the first fork: no import on its path.
    import grp  # noqa: F401
    import pwd  # noqa: F401

    from nsgate.cli import getsubids, newidmap, service_worker, usernic  # noqa: F401
    from nsgate.system import (  # noqa: F401
        audit,
        confine,
        credentials,
        detach,
        handed,
        kernel,
        nic_channel,
        nic_commit,
        ovs,
        port_security,
        private_bridge,
        programs,
        subid_db,
    )

    integrity.verify_loaded_modules()
    confine.compile_filters()
    kernel.prepare_bindings()
    import gc

    gc.collect()
    gc.freeze()  # what every worker shares stays out of its collections (and off its pages)


class Companion:
    """A child kept beside the workers: `module`'s run(stop_fd), until the write end of the stop
    pipe, `stop`, is closed."""

    __slots__ = ("module", "pid", "starts", "stop")

    def __init__(self, module: str) -> None:
        self.module = module
        self.pid = 0
        self.stop = -1
        self.starts: collections.deque[float] = collections.deque(maxlen=COMPANION_RESTARTS + 1)

    def may_start(self) -> bool:
        """Not running, and not started COMPANION_RESTARTS times in the last minute."""
        if self.pid:
            return False
        starts = self.starts
        return len(starts) <= COMPANION_RESTARTS or time.monotonic() - starts[0] >= 60.0

    def ask_to_stop(self) -> None:
        if self.stop >= 0:
            posix.close(self.stop)  # it stops at the end of its step
            self.stop = -1


class Worker:
    __slots__ = ("ctl", "deadline", "pid", "ready", "uid")

    def __init__(self, pid: int, ctl: socket.socket | None) -> None:
        self.pid, self.ctl = pid, ctl
        self.uid = -1
        self.deadline = 0.0
        self.ready = False

    def is_ready(self) -> bool:
        """Whether it has said it is prepared (service_worker._prepare_while_idle)."""
        if not self.ready and self.ctl is not None:
            try:
                self.ready = self.ctl.recv(1, socket.MSG_DONTWAIT) == service_io.READY
            except OSError:
                pass
        return self.ready


class Service:
    def __init__(self, options: Options, libdir: str, script: str, argv: list[str]) -> None:
        self.options, self.libdir, self.script, self.argv = options, libdir, script, argv
        listener = service_io.activated_socket()
        self.activated = listener is not None and posix.environ.get(OWNED_MARK.encode()) is None
        self.owned = listener is None or not self.activated
        if listener is None:
            listener = service_io.own_socket(options.socket)
        posix.environ.pop(b"LISTEN_PID", None)
        posix.environ.pop(b"LISTEN_FDS", None)
        posix.environ.pop(b"LISTEN_FDNAMES", None)
        posix.environ.pop(OWNED_MARK.encode(), None)
        listener.setblocking(False)
        self.listener = listener
        self.idle: list[Worker] = []
        self.busy: dict[int, Worker] = {}
        self.in_flight: collections.Counter[int] = collections.Counter()
        self.waiting: dict[int, collections.deque[tuple[socket.socket, service_io.Peer,
                                                        float]]] = {}
        self.stopping = False
        self.last_activity = time.monotonic()
        self.fingerprint = self._code_fingerprint()
        self.code_changed_at = 0.0
        self.deaths: collections.deque[float] = collections.deque(maxlen=10)
        self.companions = [Companion(module) for module in COMPANIONS]
        self.wake_r, self.wake_w = socket.socketpair()
        self.wake_r.setblocking(False)
        self.wake_w.setblocking(False)
        signal.set_wakeup_fd(self.wake_w.fileno(), warn_on_full_buffer=False)
        for sig in HANDLED_SIGNALS:
            signal.signal(sig, _note_signal)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        # what came while the previous program exec'd this one, blocked (_restart): now handled
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)
        # lxc-user-nic creates are decided and recorded by one committer, in batches: a child
        # of its own, so that no step of it (a hung fsync, a lock held elsewhere) stops accepts
        self.committer = nic_committer.CommitterProcess()

    # --- the loop -------------------------------------------------------------------------
    def run(self) -> int:
        selector = selectors.DefaultSelector()
        selector.register(self.listener, selectors.EVENT_READ, "accept")
        selector.register(self.wake_r, selectors.EVENT_READ, "signal")
        self._fill_pool()
        self._keep_companions()
        while True:
            for key, _ in selector.select(self._timeout()):
                if key.data == "signal":
                    if self._signals():
                        return self._stop(selector)
                elif not self.stopping:
                    self._accept_all()
            self._reap()
            self._keep_companions()
            self._expire()
            self._dispatch_waiting()
            if not self.busy or not self.idle:
                self._fill_pool()  # forks wait until no request is in flight (or none is left)
            self.committer.flush()  # channels the busy committer could not take yet
            if self._code_upgraded():
                return self._restart()
            if self._idle_long_enough():
                return self._stop(selector)

    def _timeout(self) -> float:
        return TICK_SECONDS

    def _signals(self) -> bool:
        """True when asked to stop."""
        try:
            data = self.wake_r.recv(256)
        except BlockingIOError:
            return False
        return any(sig in (signal.SIGTERM, signal.SIGINT) for sig in data)

    # --- accepting and handing over ----------------------------------------------------------
    def _accept_all(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except BlockingIOError:
                return
            except OSError as err:
                if err.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    return  # the connections wait in the backlog until workers finish
                raise
            self.last_activity = time.monotonic()
            self._admit(conn)

    def _admit(self, conn: socket.socket) -> None:
        try:
            peer = service_io.peer_of(conn)
        except Refusal as refusal:
            _answer_and_close(conn, refusal.text("nsgated"))
            return
        try:
            # Before it is counted: the ids of a user namespace (65,536 of them for one user
            # with subordinate ids) are no users' of ours, and take no user's turn.
            service_io.verify_peer(peer)
            if len(self.waiting.get(peer.uid, ())) >= PER_USER_WAITING:
                raise Refusal(f"uid {peer.uid} has {PER_USER_IN_FLIGHT + PER_USER_WAITING} "
                              "requests in flight already: try again when they are done")
            if sum(map(len, self.waiting.values())) >= TOTAL_WAITING:
                raise Refusal(f"the service has {TOTAL_WAITING} requests waiting already: try "
                              "again when they are done")
        except Refusal as refusal:
            posix.close(peer.pidfd)
            _answer_and_close(conn, refusal.text("nsgated"))
            return
        queue = self.waiting.setdefault(peer.uid, collections.deque())
        queue.append((conn, peer, time.monotonic()))
        self._dispatch_waiting()

    def _dispatch_waiting(self) -> None:
        for uid in list(self.waiting):
            queue = self.waiting[uid]
            while queue and self.in_flight[uid] < PER_USER_IN_FLIGHT and (
                    len(self.busy) < TOTAL_IN_FLIGHT):
                if not self.idle and not self._spawn():
                    return  # they wait for a worker to end, or the next tick
                conn, peer, _ = queue.popleft()
                self._hand_over(conn, peer)
            if not queue:
                del self.waiting[uid]

    def _hand_over(self, conn: socket.socket, peer: service_io.Peer) -> None:
        """To an idle worker, one that said it is prepared first; one that died unnoticed
        (killed while idle, not reaped yet) is passed over for the next, or a new one."""
        try:
            for _ in range(HAND_OVER_TRIES):
                worker = self._take_idle()
                if worker is None:
                    break
                if self._give(worker, conn, peer):
                    self.in_flight[peer.uid] += 1
                    conn.close()
                    return
            _answer_and_close(conn, "nsgated: no worker could take the request; nothing was "
                              "done: try again\n")
        finally:
            posix.close(peer.pidfd)

    def _take_idle(self) -> Worker | None:
        if not self.idle and not self._spawn():
            return None
        ready = [worker for worker in self.idle if worker.is_ready()]
        worker = ready[0] if ready else self.idle[0]  # else: it stops preparing and serves
        self.idle.remove(worker)
        return worker

    def _give(self, worker: Worker, conn: socket.socket, peer: service_io.Peer) -> bool:
        assert worker.ctl is not None
        try:
            service_io.hand_over(worker.ctl, conn, peer)
        except OSError:
            posix.kill(worker.pid, signal.SIGKILL)
            worker.uid = -1
            return False
        else:
            if not worker.ready:
                _hurry(worker.pid)
            worker.uid = peer.uid
            worker.deadline = time.monotonic() + self.options.request_seconds
            return True
        finally:
            self.busy[worker.pid] = worker  # until reaped
            worker.ctl.close()
            worker.ctl = None

    # --- workers -----------------------------------------------------------------------------
    def _fill_pool(self) -> None:
        """Idle workers back to --workers: off the request path, since the loop calls it when
        nothing is in flight (or when no idle worker is left)."""
        if self.stopping:
            return
        while len(self.idle) < self.options.workers:
            if len(self.deaths) == self.deaths.maxlen and (
                    time.monotonic() - self.deaths[0] < 10.0):
                return  # workers die as they start: do not fork in a loop; retried next tick
            if not self._spawn():
                return

    def _spawn(self) -> bool:
        """One more idle worker; False when the system has none to give (no pid left to the
        service, no memory, no descriptor): retried as workers end and at the next tick."""
        try:
            parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        except OSError:
            return False
        try:
            nic_end, committer_end = nic_channel.pair()
        except OSError:
            parent_end.close()
            child_end.close()
            return False
        try:
            pid = posix.fork()
        except OSError:
            parent_end.close()
            child_end.close()
            posix.close(nic_end)
            posix.close(committer_end)
            return False
        if pid == 0:
            try:
                posix.close(committer_end)
                self._become_worker(parent_end)
                nic_commit.CHANNEL = nic_end
                from nsgate.cli import service_worker

                service_worker.run(child_end)
            finally:
                posix._exit(1)
        child_end.close()
        posix.close(nic_end)
        try:
            pidfd = posix.pidfd_open(pid)
        except OSError:
            posix.close(committer_end)  # it died already: reaped as an idle worker's death
        else:
            self.committer.enroll([(committer_end, pidfd)])
        self.idle.append(Worker(pid, parent_end))
        return True

    def _become_worker(self, parent_end: socket.socket) -> None:
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGTERM, signal.SIGCHLD, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_DFL)
        # The caller's terminal signals mean nothing to a request (the launcher ignores them).
        for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGTSTP, signal.SIGTTIN,
                    signal.SIGTTOU, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        parent_end.close()
        self._let_go_of_the_parents_state()
        import resource

        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, resource.getrlimit(
            resource.RLIMIT_NOFILE)[1]))

    def _drop_waiting(self) -> None:
        """In a fork (a worker, a companion): the requests waiting for their turn are not its
        to hold, neither their connections nor their callers' pidfds."""
        for queue in self.waiting.values():
            for conn, peer, _ in queue:
                conn.close()
                posix.close(peer.pidfd)

    def _reap(self) -> None:
        while True:
            try:
                pid, _ = posix.waitpid(-1, posix.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            companion = next((c for c in self.companions if c.pid == pid), None)
            if companion is not None:
                companion.pid = 0
                companion.ask_to_stop()  # (closed already when stopping)
                continue
            if pid == self.committer.pid:
                if self.stopping:
                    self.committer.reaped()
                else:
                    self._replace_committer()
                continue
            worker = self.busy.pop(pid, None)
            if worker is not None:
                if worker.uid >= 0:
                    self.in_flight[worker.uid] -= 1
                    if self.in_flight[worker.uid] <= 0:
                        del self.in_flight[worker.uid]
                continue
            for idle in self.idle:
                if idle.pid == pid:  # an idle worker died: replaced, within bounds
                    self.idle.remove(idle)
                    if idle.ctl is not None:
                        idle.ctl.close()
                    self.deaths.append(time.monotonic())
                    break

    def _replace_committer(self) -> None:
        """The committer died (it never should): a new one, and new idle workers, whose
        channels lead to it; requests in flight through the old one are refused by it being
        gone, and its batch is settled by its members (system/nic_committer.py)."""
        self.committer.forget()
        self.committer = nic_committer.CommitterProcess()
        for worker in self.idle:
            if worker.ctl is not None:
                worker.ctl.close()  # it exits; not counted as a death
                worker.ctl = None
            self.busy[worker.pid] = worker
        self.idle = []

    def _expire(self) -> None:
        now = time.monotonic()
        for worker in self.busy.values():
            if worker.deadline and now > worker.deadline:
                try:
                    posix.kill(worker.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                worker.deadline = 0.0
        for queue in self.waiting.values():
            while queue and now - queue[0][2] > self.options.request_seconds:
                conn, peer, _ = queue.popleft()
                posix.close(peer.pidfd)
                _answer_and_close(conn, "nsgated: the request waited too long for its turn; "
                                  "nothing was done: try again\n")

    # --- the companions: the nic janitor, the network keeper --------------------------------
    def _keep_companions(self) -> None:
        """Start each companion, or start it again if it died (not more than
        COMPANION_RESTARTS times in a minute: then it waits for the minute to pass, tried
        again each tick)."""
        if self.stopping:
            return
        for companion in self.companions:
            if companion.may_start():
                self._start_companion(companion)

    def _start_companion(self, companion: Companion) -> None:
        companion.starts.append(time.monotonic())
        stop_read, stop_write = posix.pipe2(posix.O_CLOEXEC)
        pid = posix.fork()
        if pid == 0:
            status = 1
            try:
                posix.close(stop_write)
                self._become_companion()
                import importlib

                module = importlib.import_module(f"nsgate.system.{companion.module}")
                integrity.verify_loaded_modules()  # what the companion imported too
                module.run(stop_read)
                status = 0
            except Refusal as refusal:
                sys.stderr.write(refusal.text("nsgated"))
            except BaseException:  # noqa: BLE001 - a fork of the parent must never return
                import traceback

                traceback.print_exc()
            finally:
                posix._exit(status)
        posix.close(stop_read)
        companion.pid, companion.stop = pid, stop_write

    def _become_companion(self) -> None:
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_DFL)  # killed, it leaves the files whole
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        self._let_go_of_the_parents_state()

    def _let_go_of_the_parents_state(self) -> None:
        """In a child just forked: none of the parent's sockets, of its channels to the
        committer and the idle workers, of the companions' stop pipes (a companion stops when
        the parent's end closes, not when all the children's do), or of the connections
        waiting for their turn."""
        for sock in (self.listener, self.wake_r, self.wake_w):
            sock.close()
        for companion in self.companions:
            if companion.stop >= 0:
                posix.close(companion.stop)
        self.committer.forget()
        for worker in self.idle:
            if worker.ctl is not None:
                worker.ctl.close()
        self._drop_waiting()

    # --- lifetime ----------------------------------------------------------------------------
    def _companions_running(self) -> bool:
        return any(companion.pid for companion in self.companions)

    def _idle_long_enough(self) -> bool:
        """Activated with --idle-exit, nothing to do for that long, and no networks.conf: its
        DHCP server (the network keeper's) must be there for the leases to be renewed."""
        return (self.activated and self.options.idle_exit > 0 and not self.busy
                and not self.waiting
                and time.monotonic() - self.last_activity > self.options.idle_exit
                and not _exists(network_plan.PATH))

    def _code_fingerprint(self) -> tuple[tuple[int, int], ...]:
        paths = [self.libdir, self.script]
        paths += [f"{self.libdir}/nsgate{sub}" for sub in ("", "/cli", "/cli/admin", "/policy",
                                                             "/system")]
        marks = []
        for path in paths:
            try:
                st = posix.stat(path)
                marks.append((st.st_ino, st.st_mtime_ns))
            except OSError:
                marks.append((0, 0))
        return tuple(marks)

    def _code_upgraded(self) -> bool:
        """True once the installed code changed and has then stayed the same for a tick (an
        install in progress is not restarted into)."""
        now = self._code_fingerprint()
        if now != self.fingerprint:
            self.fingerprint = now
            self.code_changed_at = time.monotonic()
            return False
        return bool(self.code_changed_at) and (
            time.monotonic() - self.code_changed_at >= TICK_SECONDS)

    def _restart(self) -> int:
        """Exec the installed nsgated anew on the same socket: no connection is lost, requests
        in flight finish in their workers, idle workers (old code) exit as their channel
        closes. Returns only if the exec failed (the code was removed): then it stops, 1."""
        for worker in self.idle:
            if worker.ctl is not None:
                worker.ctl.close()
        for queue in self.waiting.values():
            for conn, peer, _ in queue:
                posix.close(peer.pidfd)
                _answer_and_close(conn, "nsgated: the service restarted for an upgrade; "
                                  "nothing was done: try again\n")
        self.waiting.clear()
        # A signal from here on waits, blocked across the exec, for the new program's handlers:
        # not lost with the wakeup fd, and not acted on by the default action before them.
        signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
        signal.set_wakeup_fd(-1)
        fd = self.listener.fileno()
        if fd != service_io.SD_LISTEN_FDS_START:
            posix.dup2(fd, service_io.SD_LISTEN_FDS_START)
        posix.set_inheritable(service_io.SD_LISTEN_FDS_START, True)
        posix.set_blocking(service_io.SD_LISTEN_FDS_START, True)
        environ = {key.encode(): value.encode() for key, value in CLEAN_ENV.items()}
        environ[b"LISTEN_FDS"] = b"1"
        environ[b"LISTEN_PID"] = str(posix.getpid()).encode()
        if self.owned:
            environ[OWNED_MARK.encode()] = b"1"
        try:
            posix.execve(self.script, [self.script, *self.argv], environ)
        except OSError as err:
            sys.stderr.write(f"nsgated: cannot restart: {self.script}: {err.strerror}; the "
                             "requests in flight finish, the service stops\n")
        if self.owned:
            try:
                posix.unlink(self.options.socket)
            except OSError:
                pass
        return 1

    def _stop(self, selector: selectors.BaseSelector) -> int:
        """SIGTERM: no new connections; requests in flight finish (bounded); the socket goes
        if it is ours."""
        self.stopping = True
        selector.unregister(self.listener)
        if self.owned:
            try:
                posix.unlink(self.options.socket)
            except OSError:
                pass
        self.listener.close()
        for worker in self.idle:
            if worker.ctl is not None:
                worker.ctl.close()
        self.committer.forget()  # it ends once the requests in flight are done with it
        for queue in self.waiting.values():
            for conn, peer, _ in queue:
                posix.close(peer.pidfd)
                _answer_and_close(conn, "nsgated: the service is stopping; nothing was done\n")
        self.waiting.clear()
        for companion in self.companions:
            companion.ask_to_stop()
        deadline = time.monotonic() + STOP_SECONDS
        while (self.busy or self._companions_running()) and time.monotonic() < deadline:
            selector.select(0.05)
            self._reap()
            try:
                self.wake_r.recv(256)
            except BlockingIOError:
                pass
        for pid in [*self.busy, *(companion.pid for companion in self.companions)]:
            try:
                if pid:
                    posix.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.committer.close(STOP_SECONDS)
        # the workers' last SIGCHLDs must not find the wakeup fd closed as the interpreter exits
        signal.set_wakeup_fd(-1)
        return 0


def _exists(path: str) -> bool:
    try:
        posix.stat(path)
    except FileNotFoundError:
        return False
    return True


def _hurry(pid: int) -> None:
    """A worker handed a request before it said READY may still be preparing at SCHED_IDLE,
    where a busy machine would leave it (and the request) waiting: it runs at the service's
    own policy from now on, sees the request between two steps and serves it."""
    try:
        posix.sched_setscheduler(pid, posix.SCHED_OTHER, posix.sched_param(0))
    except OSError:
        pass  # gone already, or not ours to change: it serves once it gets the CPU


def _note_signal(_signum: int, _frame: object) -> None:
    """The signal itself reaches the loop through the wakeup fd."""


def _answer_and_close(conn: socket.socket, text: str) -> None:
    """A refusal from the service itself, for a request no worker read."""
    service_io.send_answer(conn, service_wire.encode_answer(1, b"", text.encode()))
    service_io.discard_unread(conn)
    conn.close()
