"""Removing what outlived its nics, under the database lock: the lines of /run/lxc/nics whose
host end is gone, and the private bridges with no port left (with their record). One function
for `nsgate nics gc` (everything, once) and the service's janitor (everything at its start and
after lost notifications; otherwise what the kernel said was deleted). `nsgate nics gc` also
prunes the DHCP leases of bridges that went (`prune_leases`), when the service does not run:
its network keeper prunes them itself.

The lock is held only for the checks and the writes; a line goes only if its interface, looked
up again under the lock, does not exist, so a name reused meanwhile keeps its line. Each file
is replaced whole, atomically (nicdb_store.replace): a reader or a crash sees the old or the
exact new content.
"""

from nsgate.policy import nicdb
from nsgate.system import nicdb_store, private_bridge, rtnl


class Collected:
    """What one pass removed: nic lines (as they were written), private bridges (deleted with
    their record lines) and record lines of bridges that were already gone."""

    __slots__ = ("bridges", "forgotten", "lines")

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.bridges: list[bytes] = []
        self.forgotten: list[bytes] = []

    def __bool__(self) -> bool:
        return bool(self.lines or self.bridges or self.forgotten)


def collect(net: rtnl.Rtnl, devs: set[bytes] | None = None, bridges: set[bytes] | None = None,
            *, lock_seconds: float = nicdb_store.LOCK_WAIT_SECONDS,
            into: Collected | None = None) -> Collected:
    """Prune the lines naming `devs` (None: every line) whose interface is gone, then remove
    the recorded private bridges among `bridges` (None: all) that have no port; the lock is
    waited for at most `lock_seconds` (a Refusal then, and nothing changed). What is done is
    added to `into` as it is done, so a failure midway still tells what was removed."""
    collected = Collected() if into is None else into
    lock = nicdb_store.Locked(lock_seconds)
    try:
        collected.lines += _prune_lines(net, devs)
        removed, forgotten = private_bridge.remove_unused(net, bridges)
        collected.bridges += removed
        collected.forgotten += forgotten
    finally:
        lock.release()
    return collected


def _prune_lines(net: rtnl.Rtnl, devs: set[bytes] | None) -> list[bytes]:
    raw_lines = nicdb.split_lines(nicdb_store.read())
    if devs is None:
        candidates = nicdb.numbered(raw_lines)
        live = {name.encode("utf-8", "surrogateescape") for name in net.link_names()}
    else:
        candidates = nicdb.lines_naming(raw_lines, devs)
        live = {line.dev for line in candidates.values()
                if net.link(line.dev.decode("utf-8", "surrogateescape")) is not None}
    kept, stale = nicdb.prune(raw_lines, candidates, live)
    if stale:
        nicdb_store.replace(nicdb.join_lines(kept))
    return [line.raw for line in stale.values()]


def prune_leases(net: rtnl.Rtnl) -> list[bytes] | None:
    """The DHCP leases (system/dhcp_server.py) of subnets no private bridge has now, removed;
    with no networks.conf, every lease. None when the service's network keeper runs (it
    prunes them as bridges go). A Refusal if networks.conf is malformed (nothing removed)."""
    from nsgate.system import dhcp_server, network_keeper, network_plan

    plan = network_plan.load()
    bridges = [] if plan is None else network_keeper.served_bridges(net, plan)
    return dhcp_server.prune_if_idle(dhcp_server.served_networks(bridges))
