"""Group commit of lxc-user-nic creates (issue 10 item 5): a batch of creates decided and
recorded in one locked section of /run/lxc/nics, with one write (one fsync) for all of them.

`commit(intents, net, guard)` takes the database lock and, under it: reads the database once,
prunes the stale lines of the batch's owners once (liveness from rtnetlink), decides each intent
in arrival order against the running counts (the second create of a user sees the first one's
reservation: quotas are exact), makes the private bridges (once per uid; with networks.conf's
plan, after the network table, with their gateway addresses) and readies the port security
(once), picks the host names, and writes every reservation in one replace. Each intent
gets a `Reserved` (its host name, and its private bridge) or the Refusal a lone create would get,
word for word. The lock stays held while the creators make their nics; `Batch.finish(failed)`
then drops, in one more write made only if one failed, the lines of the failed creates whose
host end does not exist, and releases the lock.

The invariants of the single create hold for the batch: every line is written before its nic is
created, so a live host end is never without its line; and a line whose nic does not exist yet
looks stale only once the lock is released, when no member of the batch can still create it
(nsgated's workers hold the very lock too: system/nic_committer.py).

The setuid helper commits a batch of one (`LocalSession`); nsgated's workers send their intent to
the service's committer, which commits whatever is pending whenever it is idle
(system/nic_committer.py, and system/nic_channel.py for the worker's side).
"""

import posix

from nsgate.errors import Refusal
from nsgate.policy import nic_batch, nicdb, nicnames
from nsgate.system import nicdb_store, port_security, ports, private_bridge, rtnl

TYPE_CHECKING = False  # typing costs import time on every helper run
if TYPE_CHECKING:
    from nsgate.policy.networks_conf import Plan

# The worker's end of nsgated's channel to its committer; None in the setuid helper.
CHANNEL: int | None = None


class Reserved:
    """A create's place in the database: its host end's name, and where it goes when that is
    the caller's private bridge (None otherwise: the creator knows its bridge)."""

    __slots__ = ("attach", "host")

    def __init__(self, host: bytes, attach: ports.Attachment | None) -> None:
        self.host = host
        self.attach = attach


class Batch:
    """The locked section of one batch, from `commit` until `finish`."""

    def __init__(self, lock: nicdb_store.Locked, net: rtnl.Rtnl, kept: list[bytes],
                 outcomes: "list[Reserved | Refusal]", new: dict[int, nicdb.NicLine]) -> None:
        self.lock = lock
        self.outcomes = outcomes
        self._net = net
        self._kept = kept
        self._new = new  # intent position -> its recorded line

    def finish(self, failed: "set[int] | tuple[int, ...]" = ()) -> None:
        """Drop the lines of the `failed` intents (positions) whose host end does not exist, in
        one write, then release the lock. A host end that exists keeps its line: a creator that
        died after making its nic leaves the nic recorded."""
        try:
            doomed = {position for position in failed if position in self._new
                      and not _exists(self._net, self._new[position].dev)}
            if doomed:
                nicdb_store.replace(nicdb.join_lines(
                    [*self._kept, *(line.raw for position, line in self._new.items()
                                    if position not in doomed)]))
        finally:
            self.lock.release()


def _exists(net: rtnl.Rtnl, dev: bytes) -> bool:
    return net.link(dev.decode("utf-8", "surrogateescape")) is not None


def commit(intents: list[nic_batch.Intent], net: rtnl.Rtnl,
           guard: "port_security.Guard | Refusal | None",
           network: "Plan | Refusal | None" = None) -> Batch:
    """Decide and record `intents` in one locked section, which the returned Batch holds.
    `guard`: the port security checker for the guarded intents (a Refusal: why there is none).
    `network`: networks.conf's plan for the private bridges (a Refusal: why it cannot be read;
    None: there is no such file). A Refusal raised here (the lock is busy, the database cannot
    be read) is every intent's."""
    lock = nicdb_store.Locked()
    try:
        return _decide(lock, intents, net, _Steps(net, guard, network))
    except BaseException:
        lock.release()
        raise


class _Steps:
    """The batch's side steps, each made once: a uid's private bridge, the port security."""

    def __init__(self, net: rtnl.Rtnl, guard: "port_security.Guard | Refusal | None",
                 network: "Plan | Refusal | None" = None) -> None:
        self._net = net
        self._guard = guard
        self._network = network
        self._guard_ready = False
        self._bridges: dict[int, ports.Attachment | Refusal] = {}
        self.taken: set[bytes] = set()

    def private_bridge(self, uid: int) -> ports.Attachment:
        if uid not in self._bridges:
            try:
                if isinstance(self._network, Refusal):
                    raise self._network
                guard = self.ready_guard() if self._network is not None else None
                self._bridges[uid] = private_bridge.ensure(self._net, uid, self._network, guard)
            except Refusal as refusal:
                self._bridges[uid] = refusal
        found = self._bridges[uid]
        if isinstance(found, Refusal):
            raise found
        return found

    def ready_guard(self) -> "port_security.Guard":
        if isinstance(self._guard, Refusal):
            raise self._guard
        if self._guard is None:
            raise Refusal("internal error: no port security checker for a Linux bridge")
        if not self._guard_ready:
            try:
                self._guard.ready(self._net)
            except Refusal as refusal:
                self._guard = refusal
                raise
            self._guard_ready = True
        return self._guard

    def host_name(self, uid: int) -> bytes:
        for _ in range(100):
            name = nicnames.host_veth_name(uid, posix.urandom(8))
            if name not in self.taken and not _exists(self._net, name):
                self.taken.add(name)
                return name
        raise Refusal("could not find a free host interface name")


def _decide(lock: nicdb_store.Locked, intents: list[nic_batch.Intent], net: rtnl.Rtnl,
            steps: "_Steps") -> Batch:
    raw_lines = nicdb.split_lines(nicdb_store.read())
    counted = nic_batch.candidates(raw_lines, intents)
    devs = {line.dev for line in counted.values()}
    live = {dev for dev in devs if _exists(net, dev)}
    kept, _stale = nicdb.prune(raw_lines, counted, live)
    tally = nic_batch.Tally([line for line in counted.values() if line.dev in live])
    outcomes: list[Reserved | Refusal] = []
    new: dict[int, nicdb.NicLine] = {}
    for position, intent in enumerate(intents):
        try:
            decision = tally.decide(intent)
            if decision.owner is None:
                raise nic_batch.quota_refusal(decision, intent.bridge)
            attach = steps.private_bridge(intent.uid) if intent.private else None
            if intent.guarded:
                steps.ready_guard()
            host = steps.host_name(intent.uid)
        except Refusal as refusal:
            outcomes.append(refusal)
            continue
        line = nicdb.entry(decision.owner, intent.nic_type, intent.bridge, host)
        tally.add(line)
        new[position] = line
        outcomes.append(Reserved(host, attach))
    if new:
        # Recorded before they are created: a creator that dies in between leaves a line that is
        # merely stale (pruned by the next create once the lock is free).
        try:
            nicdb_store.replace(nicdb.join_lines([*kept, *(line.raw for line in new.values())]))
        except Refusal as refusal:
            outcomes = [refusal if isinstance(o, Reserved) else o for o in outcomes]
            new = {}
    return Batch(lock, net, kept, outcomes, new)


class LocalSession:
    """The setuid helper's create: a batch of one, committed and finished in this process."""

    def __init__(self, net: rtnl.Rtnl, guard: "port_security.Guard | None",
                 network: "Plan | None" = None) -> None:
        self._net = net
        self._guard = guard
        self._network = network
        self._batch: Batch | None = None

    def reserve(self, intent: nic_batch.Intent) -> Reserved:
        batch = commit([intent], self._net, self._guard, self._network)
        outcome = batch.outcomes[0]
        if isinstance(outcome, Refusal):
            batch.finish()
            raise outcome
        self._batch = batch
        return outcome

    def finish(self, ok: bool) -> None:
        if self._batch is not None:
            batch, self._batch = self._batch, None
            batch.finish(() if ok else (0,))
