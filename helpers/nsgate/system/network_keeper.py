"""The service's network keeper, its second child beside the nic janitor: it makes the host what
/etc/nsgate/networks.conf asks (nsgate-networks.conf(5)) and keeps it so while the service runs.

- networks.conf (and login.defs, whose uid range a derived plan uses) is looked at every
  TICK_SECONDS; when it changed, it is read and the plan applied (system/network_apply.py: the
  firewall table, forwarding, the gateway addresses of the private bridges). A file that does
  not parse, or cannot be trusted, or a plan the host refuses: logged, and the last plan that
  was applied stays in force, for the table and for DHCP. A failed apply is tried again,
  RETRY_SECONDS doubled up to RETRY_MAX_SECONDS while it keeps failing.
- The DHCP server (system/dhcp_server.py, one dnsmasq) runs while a plan is in force and
  serves every private bridge, those to come too; it is told the bridges there (existing and
  recorded) when one comes or goes (link notifications, system/link_events.py), when a record
  changes, and when the plan does, and restarts only for a plan that changed or a bridge that
  went (whose leases are pruned). No networks.conf: no dnsmasq.
- It stops dnsmasq when it stops: when `stop_fd` becomes readable (the service closes its end
  of the pipe on stop, on restart, or by dying).
- Everything it does, and every failure, goes to syslog (authpriv, tagged nsgated); so does
  what dnsmasq prints.

`run(stop_fd)` is the service's entry; it acts in the network namespace it was started in.
"""

import posix
import selectors
import time
from collections.abc import Callable

from nsgate.errors import Refusal
from nsgate.policy import networks_conf, nicdb, nicnames, private_bridges
from nsgate.policy.networks_conf import Plan, Subnet
from nsgate.system import (
    audit,
    dhcp_server,
    link_events,
    network_plan,
    nicdb_store,
    private_bridge,
    procfs,
    rtnl,
)

PROG = "nsgated"
COMM = b"nsgated-net"  # its name in ps and /proc/PID/comm
TICK_SECONDS = 1.0
RETRY_SECONDS = 1.0
RETRY_MAX_SECONDS = 60.0
WATCHED = (network_plan.PATH, network_plan.LOGIN_DEFS)
RECORDS = (private_bridge.RECORD_PATH, networks_conf.SUBNET_RECORD)

Apply = Callable[[Plan | None], list[str]]


def log(text: str, failed: bool = False) -> None:
    audit.record_action(PROG, text, failed=failed)


def identity(path: str) -> tuple[int, ...] | None:
    """What tells a new version of the file at `path` (None: there is none)."""
    try:
        st = posix.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_mode,
            st.st_uid)


def served_bridges(net: rtnl.Rtnl, plan: Plan) -> list[tuple[str, Subnet]]:
    """The private bridges nsgate made that exist now, each with its user's subnet (a bridge
    whose user has none in `plan` is left out)."""
    recorded = set(private_bridges.recorded_bridges(
        nicdb.split_lines(nicdb_store.read(private_bridge.RECORD_PATH))))
    record = {}
    if plan.allocation == "recorded":
        record = networks_conf.parse_record(nicdb_store.read(networks_conf.SUBNET_RECORD))
    found = []
    for link in net.links():
        name = link.name.encode("utf-8", "surrogateescape")
        uid = nicnames.private_bridge_uid(name)
        if uid is None or link.kind != "bridge" or name not in recorded:
            continue
        index = networks_conf.lookup(plan, uid, record)
        if index is not None:
            found.append((link.name, networks_conf.subnet(plan, index)))
    return found


def apply_network(plan: Plan | None) -> list[str]:
    """The host made what `plan` asks (system/network_apply.py, which does nothing without a
    plan on a host that never had one); what changed, as text."""
    from nsgate.system import network_apply

    return network_apply.apply(plan)


def _reason(err: Exception) -> str:
    return err.first if isinstance(err, Refusal) else str(err)


class _Backoff:
    """When to try a failed step again: RETRY_SECONDS after the first failure, doubled up to
    RETRY_MAX_SECONDS while it keeps failing; `at` is 0 while no retry is pending."""

    def __init__(self) -> None:
        self.at = 0.0  # monotonic clock
        self.delay = RETRY_SECONDS

    def due(self) -> bool:
        return time.monotonic() >= self.at

    def failed(self) -> float:
        """Schedule the retry; the seconds until it."""
        delay = self.delay
        self.at = time.monotonic() + delay
        self.delay = min(delay * 2, RETRY_MAX_SECONDS)
        return delay

    def succeeded(self) -> None:
        self.at, self.delay = 0.0, RETRY_SECONDS


class Keeper:
    """The keeper's state: the plan in force and what must be done next."""

    def __init__(self, net: rtnl.Rtnl, server: dhcp_server.DhcpServer,
                 apply: Apply = apply_network) -> None:
        self.net, self.server, self.apply = net, server, apply
        self.plan: Plan | None = None  # the last plan applied
        self.seen: object = ()  # the identities of WATCHED last acted on
        self.records: object = ()  # the identities of RECORDS last read
        self.applying = _Backoff()  # an apply that failed, to try again
        self.stale = True  # the bridges must be looked at again
        self.refreshing = _Backoff()  # a refresh that failed: not before its time

    def check_plan(self) -> None:
        """Read and apply networks.conf if it changed (or an apply is due again)."""
        now = tuple(identity(path) for path in WATCHED)
        if now == self.seen and not (self.applying.at and self.applying.due()):
            return
        self.seen = now
        self.applying.at = 0.0
        try:
            plan = network_plan.load()
        except Refusal as refusal:
            log(f"{refusal.first}; the networks stay as they were", True)
            return
        try:
            changes = self.apply(plan)
        except (Refusal, OSError) as err:
            log(f"applying {networks_conf.PATH}: {_reason(err)}; the networks stay as they "
                f"were; trying again in {self.applying.failed():g} s", True)
            return
        self.applying.succeeded()
        for change in changes:
            log(f"applied {networks_conf.PATH}: {change}")
        if plan != self.plan:
            self.plan = plan
            self.stale = True

    def check_records(self) -> None:
        now = tuple(identity(path) for path in RECORDS)
        if now != self.records:
            self.records = now
            self.stale = True

    def links_changed(self, events: link_events.Deletions) -> None:
        names = [*events.changed.values(), *events.links.values()]
        if events.overrun or any(nicnames.private_bridge_uid(
                name.encode("utf-8", "surrogateescape")) is not None for name in names):
            self.stale = True

    def refresh(self) -> None:
        """dnsmasq serving the private bridges of now (none without a plan). A failure is
        logged and tried again, RETRY_SECONDS doubled up to RETRY_MAX_SECONDS."""
        if not self.stale or not self.refreshing.due():
            return
        try:
            bridges = [] if self.plan is None else served_bridges(self.net, self.plan)
            self.server.serve(self.plan, bridges)
        except (Refusal, OSError) as err:
            log(f"serving DHCP on the private bridges: {_reason(err)}; trying again in "
                f"{self.refreshing.failed():g} s", True)
            return
        self.stale = False
        self.refreshing.succeeded()


def run(stop_fd: int, apply: Apply = apply_network) -> None:
    """Keep the networks until `stop_fd` is readable; then stop dnsmasq."""
    procfs.name_self(COMM)
    server = dhcp_server.DhcpServer(log)
    try:
        with link_events.LinkEvents(changes=True) as events, rtnl.Rtnl() as net, \
                selectors.DefaultSelector() as selector:
            selector.register(stop_fd, selectors.EVENT_READ, "stop")
            selector.register(events, selectors.EVENT_READ, "links")
            keeper = Keeper(net, server, apply)
            watched: set[int] = set()
            while True:
                keeper.check_plan()
                keeper.check_records()
                keeper.refresh()
                server.keep_running()
                # all again each time: a descriptor closed and its number reused meanwhile
                # would be left out of epoll's set, not of the selector's
                for fd in watched:
                    selector.unregister(fd)
                watched = set(server.fds())
                for fd in watched:
                    selector.register(fd, selectors.EVENT_READ, "dhcp")
                for key, _ in selector.select(TICK_SECONDS):
                    if key.data == "stop":
                        return
                    if key.data == "links":
                        try:
                            keeper.links_changed(events.drain())
                        except OSError as err:
                            keeper.stale = True
                            log(f"reading link notifications: {err}", True)
                    else:
                        server.handle()
    finally:
        server.stop()
