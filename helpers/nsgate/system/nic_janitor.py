"""The service's nic janitor: a nic's line leaves /run/lxc/nics when its host end goes, and a
private bridge with no port left goes with its record (/run/lxc/nsgate-bridges), as the kernel
announces link deletions, instead of on some user's next create or `nsgate nics gc`.

- At start, and whenever notifications were lost (overrun), one full pass (nic_gc.collect of
  everything: what `nsgate nics gc` does), unless nothing is recorded at all. The subscription
  is opened first, so no deletion falls between that pass and the first notification.
- Otherwise a deletion is a hint. It is acted on only if it concerns a recorded line (the
  database as last read without the lock: each update renames a whole new file, so a plain read
  sees one version) or a recorded private bridge (a port left it, or it went); only then is the
  lock taken, so creates never wait for the janitor on account of other links. Under the lock
  every candidate is looked up again (nic_gc): a line whose name a new link took stays.
- The lock is waited for at most LOCK_SECONDS; busy, or any other failure, the work is kept
  and tried again later (RETRY_SECONDS, doubled up to RETRY_MAX_SECONDS while it keeps
  failing). Nothing blocks for long, so the stop fd is always seen soon.
- Every removal, and every failure, goes to syslog (authpriv, tagged nsgated).

`run(stop_fd)` returns once `stop_fd` is readable; `main()` runs it standalone until SIGTERM.
The janitor acts in the network namespace it was started in.
"""

import posix
import selectors
import signal
import time

from nsgate.errors import Refusal
from nsgate.policy import nicdb, nicnames, private_bridges
from nsgate.system import audit, link_events, nic_gc, nicdb_store, private_bridge, rtnl

PROG = "nsgated"
LOCK_SECONDS = 2.0
RETRY_SECONDS = 1.0
RETRY_MAX_SECONDS = 60.0


class Work:
    """What is left to clean: everything, or the lines of some interfaces and some bridges."""

    __slots__ = ("bridges", "devs", "everything")

    def __init__(self, *, everything: bool = False) -> None:
        self.everything = everything
        self.devs: set[bytes] = set()
        self.bridges: set[bytes] = set()

    def __bool__(self) -> bool:
        return self.everything or bool(self.devs or self.bridges)


class _Snapshot:
    """A file of /run/lxc as last read without the lock, read again only when it changed (a
    new inode, size or time: every update renames a new file or appends)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._identity: tuple[int, ...] | None = None
        self.lines: list[bytes] = []

    def current(self) -> list[bytes]:
        try:
            st = posix.stat(self.path)
        except FileNotFoundError:
            self._identity, self.lines = None, []
            return self.lines
        identity = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if identity != self._identity:
            # Read after the stat: the content is at least as new as the identity kept.
            self.lines = nicdb.split_lines(nicdb_store.read(self.path))
            self._identity = identity
        return self.lines


class _Recorded:
    """The interfaces and private bridges the database and the record name."""

    def __init__(self) -> None:
        self._nics = _Snapshot(nicdb_store.DB_PATH)
        self._bridges = _Snapshot(private_bridge.RECORD_PATH)
        self._nics_lines: list[bytes] = []
        self._devs: set[bytes] = set()

    def devs(self) -> set[bytes]:
        lines = self._nics.current()
        if lines is not self._nics_lines:
            self._devs = {nicdb.NicLine(raw).dev for raw in lines} - {b""}
            self._nics_lines = lines
        return self._devs

    def bridges(self) -> set[bytes]:
        return set(private_bridges.recorded_bridges(self._bridges.current()))


def _wanted(deletions: link_events.Deletions, recorded: _Recorded, net: rtnl.Rtnl) -> Work:
    """The part of the announced deletions that concerns what the files record."""
    if deletions.overrun:
        return Work(everything=True)
    work = Work()
    names = {name.encode("utf-8", "surrogateescape") for name in deletions.links.values()}
    if names:
        work.devs = names & recorded.devs()
    bridges = set(names)  # a private bridge deleted: its record line goes
    for index in deletions.bridges - set(deletions.links):
        link = net.link_by_index(index)  # the bridge a port left (if gone: among the names)
        if link is not None:
            bridges.add(link.name.encode("utf-8", "surrogateescape"))
    private = {name for name in bridges if nicnames.private_bridge_uid(name) is not None}
    if private:
        work.bridges = private & recorded.bridges()
    return work


def _anything_recorded(recorded: _Recorded) -> bool:
    """Whether the database or the record names anything; a file that cannot be read counts
    as something (the pass then fails and says why)."""
    try:
        return bool(recorded.devs() or recorded.bridges())
    except Refusal:
        return True


def _merge(work: Work, more: Work) -> Work:
    if work.everything or more.everything:
        return Work(everything=True)
    work.devs |= more.devs
    work.bridges |= more.bridges
    return work


def _shown(raw: bytes) -> str:
    return raw.decode("utf-8", "backslashreplace")


def _report(collected: nic_gc.Collected) -> None:
    for raw in collected.lines:
        dev = nicdb.NicLine(raw).dev
        audit.record_action(PROG, f"removed the line '{_shown(raw)}' from {nicdb_store.DB_PATH}:"
                                  f" its interface {_shown(dev)} is gone")
    for name in collected.bridges:
        audit.record_action(PROG, f"removed the private bridge {_shown(name)} and its line in "
                                  f"{private_bridge.RECORD_PATH}: no port left")
    for name in collected.forgotten:
        audit.record_action(PROG, f"removed the line of {_shown(name)} from "
                                  f"{private_bridge.RECORD_PATH}: the bridge is gone")


def clean(net: rtnl.Rtnl, work: Work) -> None:
    """One pass over `work` under the lock; what it removed goes to syslog once the lock is
    released, also when it failed midway: Refusal (lock busy, untrusted files) or OSError
    (netlink)."""
    collected = nic_gc.Collected()
    try:
        if work.everything:
            nic_gc.collect(net, lock_seconds=LOCK_SECONDS, into=collected)
        else:
            nic_gc.collect(net, work.devs, work.bridges, lock_seconds=LOCK_SECONDS,
                           into=collected)
    finally:
        _report(collected)


def run(stop_fd: int) -> None:
    """Watch link deletions and clean up after them until `stop_fd` is readable."""
    with link_events.LinkEvents() as events, rtnl.Rtnl() as net, \
            selectors.DefaultSelector() as selector:
        selector.register(stop_fd, selectors.EVENT_READ)
        selector.register(events, selectors.EVENT_READ)
        recorded = _Recorded()
        work = Work(everything=True)
        due = 0.0  # when to try the pending work (monotonic clock)
        delay = RETRY_SECONDS
        while True:
            timeout = max(0.0, due - time.monotonic()) if work else None
            ready = selector.select(timeout)
            if any(key.fileobj == stop_fd for key, _ in ready):
                return
            try:
                work = _merge(work, _wanted(events.drain(), recorded, net))
            except (Refusal, OSError) as err:
                work = Work(everything=True)  # what the deletions meant is unknown
                audit.record_action(PROG, f"reading link deletions: {_reason(err)}", failed=True)
            if work.everything and not _anything_recorded(recorded):
                work = Work()  # no lxc-user-nic ever ran: no lock taken, no file made
            if not work or time.monotonic() < due:
                continue
            try:
                clean(net, work)
            except (Refusal, OSError) as err:
                audit.record_action(PROG, f"cleaning up after deleted links: {_reason(err)}; "
                                          f"trying again in {delay:g} s", failed=True)
                due = time.monotonic() + delay
                delay = min(delay * 2, RETRY_MAX_SECONDS)
                continue
            work = Work()
            delay = RETRY_SECONDS


def _reason(err: Exception) -> str:
    if isinstance(err, Refusal):
        return err.first
    return str(err)


def main() -> None:
    """Run standalone until SIGTERM (or SIGINT), then exit 0."""
    read_end, write_end = posix.pipe2(posix.O_CLOEXEC | posix.O_NONBLOCK)

    def stop(signum: int, frame: object) -> None:
        try:
            posix.write(write_end, b"x")
        except BlockingIOError:
            pass  # a stop is already pending

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    run(read_end)
