"""The service's DHCP and DNS server for the private bridges: one dnsmasq, a child of the
network keeper (system/network_keeper.py), configured by policy/dnsmasq_conf.py.

- Its files are in RUN_DIR (root's, 0700): the configuration, the lease file (dnsmasq opens it
  as root, before it drops to its user, and keeps it open) and `dnsmasq.pid`, written here so
  that a keeper started after one that was killed stops the dnsmasq it left (a dnsmasq that has
  changed its user keeps no parent-death signal).
- dnsmasq runs while networks.conf gives a plan, bridges or none; a bridge that comes is served
  by it as it is (policy/dnsmasq_conf.py). It is restarted only when its configuration changes
  (the plan changed) or a bridge went: between the stop and the start the leases of subnets no
  longer there are pruned from the lease file, so an address of a bridge that went is not kept
  for a MAC forever.
- It runs in the foreground, in a session of its own; what it prints (`log-facility=-`) comes
  through a pipe and is passed to the keeper's log line by line. If it dies, it is started
  again, at most RESTARTS times a minute.
- `prune_if_idle` is `nsgate nics gc`'s: the leases of bridges that went, when no keeper runs.
"""

import collections
import fcntl
import posix
import pwd
import signal
import time
from collections.abc import Callable
from ipaddress import IPv4Network, IPv6Network

from nsgate.errors import Refusal
from nsgate.policy import dnsmasq_conf
from nsgate.policy.networks_conf import Plan, Subnet
from nsgate.system import files
from nsgate.system.integrity import S_IFDIR, root_only

RUN_DIR = "/run/nsgate/dhcp"
DNSMASQ = "/usr/sbin/dnsmasq"
STOP_SECONDS = 5.0
LOCK_SECONDS = 3 * STOP_SECONDS
RESTARTS = 5  # starts in a minute, at most
LOG_LINE_LIMIT = 4096
ENVIRONMENT = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8"}
KEEPER_LOCK = "keeper.lock"
PID_FILE = "dnsmasq.pid"

Log = Callable[[str, bool], None]  # text, failed


def dnsmasq_user() -> str:
    """The user dnsmasq drops to: its own if the system has one, else nobody."""
    try:
        pwd.getpwnam("dnsmasq")
    except KeyError:
        return "nobody"
    return "dnsmasq"


def served_networks(bridges: list[tuple[str, Subnet]]) -> "list[IPv4Network | IPv6Network]":
    networks: list[IPv4Network | IPv6Network] = []
    for _, subnet in bridges:
        networks.append(subnet.ipv4)
        if subnet.ipv6 is not None:
            networks.append(subnet.ipv6)
    return networks


def _ensure_dir(path: str, mode: int) -> None:
    try:
        posix.mkdir(path, mode)
    except FileExistsError:
        pass
    st = posix.lstat(path)
    if not root_only(st, S_IFDIR) or (mode == 0o700 and st.st_mode & 0o077):
        raise Refusal(f"refusing to use {path}: owner uid {st.st_uid}, mode "
                      f"{st.st_mode & 0o7777:04o}",
                      f"{path} must be a directory of root's, mode {mode:04o}: remove it, the "
                      "service makes it again")


def ensure_run_dir(run_dir: str = RUN_DIR) -> None:
    _ensure_dir(run_dir.rsplit("/", 1)[0], 0o755)
    _ensure_dir(run_dir, 0o700)


def _replace(path: str, content: bytes) -> None:
    temp = f"{path}.new"
    files.write_new(temp, content, mode=0o644)
    posix.rename(temp, path)


def _read(path: str) -> bytes:
    try:
        fd = posix.open(path, posix.O_RDONLY | posix.O_CLOEXEC | posix.O_NOFOLLOW)
    except FileNotFoundError:
        return b""
    try:
        return files.read_all(fd)
    finally:
        posix.close(fd)


def prune(run_dir: str, keep: "list[IPv4Network | IPv6Network]") -> list[bytes]:
    """Remove from the lease file (no dnsmasq running) every lease outside `keep`; the lines
    removed."""
    path = f"{run_dir}/{dnsmasq_conf.LEASES_NAME}"
    data = _read(path)
    if not data:
        return []
    kept = dnsmasq_conf.prune_leases(data, keep)
    if kept == data:
        return []
    removed = set(data.split(b"\n")) - set(kept.split(b"\n")) - {b""}
    _replace(path, kept)
    return [line for line in data.split(b"\n") if line in removed]


class DhcpServer:
    """dnsmasq as a child of the caller. `serve(plan, bridges)` says what it must serve;
    `fds()` are to be watched (readable: call `handle()`); `keep_running()` restarts a dnsmasq
    that died, within bounds; `stop()` ends it."""

    def __init__(self, log: Log, run_dir: str = RUN_DIR, program: str = DNSMASQ) -> None:
        self.log, self.run_dir, self.program = log, run_dir, program
        self.conf_path = f"{run_dir}/{dnsmasq_conf.CONF_NAME}"
        self.argv = [program, "--keep-in-foreground", f"--conf-file={self.conf_path}"]
        self.wanted: bytes | None = None  # the configuration it must run with
        self.running: bytes | None = None  # the one it was started with
        self.keep: list[IPv4Network | IPv6Network] = []
        self.names: set[str] = set()  # the bridges there when it was last told
        self.pid = 0
        self.pidfd = -1
        self.output = -1
        self._partial = b""
        self.starts: collections.deque[float] = collections.deque(maxlen=RESTARTS)
        self._lock = -1
        try:
            posix.lstat(run_dir)
        except FileNotFoundError:
            return  # made when first needed: a host that never serves DHCP gets no directory
        self._open()

    def _open(self) -> None:
        """RUN_DIR made (or checked), its lock taken for as long as this server lives (`nsgate
        nics gc` leaves the leases alone meanwhile), and a dnsmasq left behind stopped."""
        if self._lock >= 0:
            return
        ensure_run_dir(self.run_dir)
        lock = posix.open(f"{self.run_dir}/{KEEPER_LOCK}",
                          posix.O_RDWR | posix.O_CREAT | posix.O_CLOEXEC | posix.O_NOFOLLOW, 0o600)
        # a keeper that is stopping (the service restarting into new code) holds it until
        # its dnsmasq is gone
        if not files.wait_for_lock(lambda: fcntl.flock(lock, fcntl.LOCK_EX), LOCK_SECONDS):
            posix.close(lock)
            raise Refusal(f"another network keeper holds {self.run_dir}/{KEEPER_LOCK}",
                          "one nsgated per host: stop the other one")
        self._lock = lock
        stop_left_over(self.run_dir, self.argv, self.log)

    # --- what to serve ------------------------------------------------------------------------
    def serve(self, plan: Plan | None, bridges: list[tuple[str, Subnet]]) -> None:
        """dnsmasq serving the private bridges of `plan` (`bridges` are those there now; no
        plan: no dnsmasq). A bridge that comes is served by the running dnsmasq; dnsmasq is
        restarted only when its configuration changes or a bridge it served went, and then the
        leases of the networks no longer there are pruned before it starts again."""
        wanted = None
        if plan is not None:
            wanted = dnsmasq_conf.config(plan, bridges, self.run_dir, user=dnsmasq_user())
        if wanted != self.wanted:
            self.starts.clear()  # a new configuration gets a fresh budget of restarts
        names = {name for name, _ in bridges}
        gone = bool(self.names - names)
        self.wanted, self.names = wanted, names
        self.keep = served_networks(bridges) if wanted is not None else []
        if self.pid and wanted == self.running and not gone:
            return
        if self.pid:
            self._stop_child()
        if wanted is not None:
            self._open()
        if self._lock >= 0:
            self._prune()
        if wanted is not None:
            self._start()

    def _prune(self) -> None:
        try:
            removed = prune(self.run_dir, self.keep)
        except (OSError, Refusal) as err:
            self.log(f"pruning {self.run_dir}/{dnsmasq_conf.LEASES_NAME}: {_reason(err)}", True)
            return
        for line in removed:
            self.log(f"removed the lease '{_shown(line)}': its bridge is gone", False)

    # --- the child --------------------------------------------------------------------------
    def _start(self) -> None:
        assert self.wanted is not None and not self.pid
        if len(self.starts) == self.starts.maxlen and time.monotonic() - self.starts[0] < 60.0:
            return  # keep_running tries again once the minute has passed
        self.starts.append(time.monotonic())
        try:
            _replace(self.conf_path, self.wanted)
            read_end, write_end = posix.pipe2(posix.O_CLOEXEC)
        except OSError as err:
            self.log(f"writing {self.conf_path}: {err.strerror}", True)
            return
        try:
            pid = posix.posix_spawn(
                self.program, self.argv, ENVIRONMENT,
                file_actions=[(posix.POSIX_SPAWN_OPEN, 0, "/dev/null", posix.O_RDONLY, 0),
                              (posix.POSIX_SPAWN_DUP2, write_end, 1),
                              (posix.POSIX_SPAWN_DUP2, write_end, 2)],
                setsid=True, setsigmask=(),
                setsigdef=(signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGPIPE))
        except OSError as err:
            posix.close(read_end)
            self.log(f"cannot start {self.program}: {err.strerror}", True)
            return
        finally:
            posix.close(write_end)
        posix.set_blocking(read_end, False)
        self.pid, self.output, self.running = pid, read_end, self.wanted
        self.pidfd = posix.pidfd_open(pid)
        try:
            _replace(f"{self.run_dir}/{PID_FILE}", b"%d\n" % pid)
        except OSError as err:
            self.log(f"writing {self.run_dir}/{PID_FILE}: {err.strerror}", True)
        bridges = ", ".join(sorted(self.names)) or "none yet"
        self.log(f"started dnsmasq (pid {pid}) for the private bridges (now: {bridges})", False)

    def fds(self) -> list[int]:
        return [fd for fd in (self.pidfd, self.output) if fd >= 0]

    def handle(self) -> None:
        """What dnsmasq printed, to the log; its exit, reaped and logged."""
        self._read_output()
        if self.pid:
            pid, status = posix.waitpid(self.pid, posix.WNOHANG)
            if pid == self.pid:
                self._reaped(status)

    def keep_running(self) -> None:
        if self.wanted is not None and not self.pid:
            self._start()

    def _read_output(self, final: bool = False) -> None:
        if self.output < 0:
            return
        while True:
            try:
                chunk = posix.read(self.output, 65536)
            except BlockingIOError:
                break
            if not chunk:
                final = True
                break
            self._partial += chunk
            *lines, self._partial = self._partial.split(b"\n")
            for line in lines:
                self._log_output(line)
            if len(self._partial) > LOG_LINE_LIMIT:
                self._log_output(self._partial)
                self._partial = b""
        if final:
            if self._partial:
                self._log_output(self._partial)
                self._partial = b""
            posix.close(self.output)  # (at its end: never readable again)
            self.output = -1

    def _log_output(self, line: bytes) -> None:
        self.log(f"dnsmasq: {_shown(line[:LOG_LINE_LIMIT])}", False)

    def _reaped(self, status: int | None = None) -> None:
        """`status`: of an exit nobody asked for (None: stopped here)."""
        self._read_output(final=True)
        posix.close(self.pidfd)
        pid = self.pid
        self.pid, self.pidfd, self.output, self.running = 0, -1, -1, None
        files.remove_quietly(f"{self.run_dir}/{PID_FILE}")
        if status is not None:
            code = posix.waitstatus_to_exitcode(status)
            how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
            self.log(f"dnsmasq (pid {pid}) {how}: starting it again", True)

    def _stop_child(self) -> None:
        _terminate(self.pidfd, self.pid)
        posix.waitpid(self.pid, 0)
        self._reaped()

    def stop(self) -> None:
        """dnsmasq stopped (its leases stay), the keeper's lock released."""
        self.wanted = None
        if self.pid:
            self._stop_child()
            self.log("stopped dnsmasq", False)
        if self._lock >= 0:
            files.close_quietly(self._lock)
            self._lock = -1


def _terminate(pidfd: int, pid: int) -> None:
    """SIGTERM, and SIGKILL if it is not gone after STOP_SECONDS; returns once it exited."""
    import select

    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            signal.pidfd_send_signal(pidfd, sig)
        except ProcessLookupError:
            return
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        if poller.poll(STOP_SECONDS * 1000):
            return


def stop_left_over(run_dir: str, argv: list[str], log: Log | None = None) -> None:
    """Stop the dnsmasq of a keeper that was killed: the process its pid file names, if it
    runs exactly `argv` (a pid reused since by anything else is left alone)."""
    try:
        pid = int(_read(f"{run_dir}/{PID_FILE}") or b"0")
    except ValueError:
        return
    if pid <= 0:
        return
    try:
        pidfd = posix.pidfd_open(pid)  # the process checked below is the one signalled
    except OSError:
        return
    try:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                if cmdline.read() != b"".join(arg.encode() + b"\0" for arg in argv):
                    return
        except OSError:
            return
        _terminate(pidfd, pid)
        if log is not None:
            log(f"stopped dnsmasq (pid {pid}), left by a network keeper that ended", False)
    finally:
        posix.close(pidfd)


def prune_if_idle(keep: "list[IPv4Network | IPv6Network]",
                  run_dir: str = RUN_DIR) -> list[bytes] | None:
    """`nsgate nics gc`: the leases outside `keep` removed, unless a network keeper (the
    service) runs, which prunes its own: then None."""
    try:
        st = posix.lstat(run_dir)
    except FileNotFoundError:
        return []
    if not root_only(st, S_IFDIR):
        raise Refusal(f"refusing to use {run_dir}: owner uid {st.st_uid}, mode "
                      f"{st.st_mode & 0o7777:04o}", f"{run_dir} must be root's")
    lock = posix.open(f"{run_dir}/{KEEPER_LOCK}", posix.O_RDWR | posix.O_CREAT | posix.O_CLOEXEC
                      | posix.O_NOFOLLOW, 0o600)
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return None
        argv = [DNSMASQ, "--keep-in-foreground",
                f"--conf-file={run_dir}/{dnsmasq_conf.CONF_NAME}"]
        stop_left_over(run_dir, argv)
        return prune(run_dir, keep)
    finally:
        posix.close(lock)


def _shown(raw: bytes) -> str:
    return raw.decode("utf-8", "backslashreplace")


def _reason(err: Exception) -> str:
    return err.first if isinstance(err, Refusal) else str(err)
