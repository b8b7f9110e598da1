"""Port security on Linux bridges, enforced by the kernel: one nftables table of nsgate's
(`bridge nsgate`, RULESET below), no daemon (issue 9 §1).

Every host end nsgate makes is in the interface group GROUP (ports.py). For frames entering a
bridge from such a port, before the bridge learns their source (prerouting, priority -300):
- a multicast or zero source MAC, or one the host or another non-nsgate port sent from in the
  last 10 minutes (`host_mac`), is dropped: a container never takes the host's or the uplink's;
- a MAC this port already uses (`port_mac`) passes, and its claim is refreshed;
- a MAC another nsgate port uses (`mac_in_use`) is dropped: no FDB entry ever moves from one
  container to another;
- any other MAC is a new claim, allowed within the port's budget (`new_mac_budget`: a burst of
  8, then 1 an hour), so no container floods the FDB; beyond it, or if a set is full, dropped.
A claim lapses 10 minutes after the port last sent from that MAC, so a container may change its
MAC at any time (liblxc applies `lxc.net.N.hwaddr` after the helper returns) and what it gave up
becomes free again. Only traffic the kernel sees decides: nothing is read from the caller.

The helper checks the table with one nfnetlink query, installs it with `nft -f -` only when it is
missing or of another version (through a child forked before the helper confines itself, as
ovs.Runner does), and under the database lock removes the claims of ports that no longer exist,
so a restarted container gets its MAC back at once and the sets only hold live ports' claims.
"""

import _struct
import errno
import posix

from nsgate.errors import Refusal
from nsgate.system import files, nf_tables, programs, rtnl
from nsgate.system.netlink import NetlinkError

TYPE_CHECKING = False  # typing costs import time on every helper run
if TYPE_CHECKING:
    from collections.abc import Iterable

    from nsgate.policy.networks_conf import Plan

GROUP = 0x6E73  # "ns": IFLA_GROUP of every host end nsgate makes
TABLE = "nsgate"
VERSION = "nsgate port security 1"

RULESET = f"""\
add table bridge {TABLE}
delete table bridge {TABLE}
table bridge {TABLE} {{
	comment "{VERSION}"
	set host_mac {{ type ether_addr; flags dynamic,timeout; timeout 10m; size 65536; }}
	set port_mac {{ type iface_index . ether_addr; flags dynamic,timeout; timeout 10m;
		size 65536; }}
	set mac_in_use {{ type ether_addr; flags dynamic,timeout; timeout 10m; size 65536; }}
	set new_mac_budget {{ type iface_index; flags dynamic; size 65536; }}
	chain host_out {{
		type filter hook output priority -300; policy accept;
		update @host_mac {{ ether saddr }}
	}}
	chain ports_in {{
		type filter hook prerouting priority -300; policy accept;
		meta iifgroup != {GROUP:#x} update @host_mac {{ ether saddr }}
		meta iifgroup != {GROUP:#x} accept
		ether saddr & 01:00:00:00:00:00 == 01:00:00:00:00:00 drop
		ether saddr 00:00:00:00:00:00 drop
		ether saddr @host_mac drop
		meta iif . ether saddr @port_mac update @port_mac {{ meta iif . ether saddr }} \
update @mac_in_use {{ ether saddr }} accept
		ether saddr @mac_in_use drop
		update @new_mac_budget {{ meta iif limit rate 1/hour burst 8 packets }} \
add @port_mac {{ meta iif . ether saddr }} add @mac_in_use {{ ether saddr }} accept
		drop
	}}
}}
"""

_U32 = _struct.Struct("=I")


class _Installer:
    """A child forked before the helper confines itself, which on request loads nsgate's
    tables and nothing else: b"1" RULESET (`bridge nsgate`), b"2" the network table of `plan`
    (`inet nsgate`, networks.conf) and the forwarding it needs. Each answer is one line, "0" or
    the first line of what failed; it ends on b"q" or when the helper closes the pipe."""

    def __init__(self, nft: str, plan: "Plan | None") -> None:
        def serve(requests: int, answers: int) -> None:
            while job := posix.read(requests, 1):
                if job == b"1":
                    answer = nf_tables.run_nft(nft, RULESET)
                elif job == b"2" and plan is not None:
                    answer = _load_network(plan)
                else:
                    return
                posix.write(answers, answer.replace(b"\n", b" ") + b"\n")

        self._pid, self._request, self._answer = programs.fork_server(serve)

    def run(self, job: bytes) -> str:
        """The first line of what failed; "" on success."""
        answer = b""
        try:
            posix.write(self._request, job)
            while not answer.endswith(b"\n"):
                chunk = posix.read(self._answer, 4096)
                if not chunk:
                    break
                answer += chunk
        except OSError as err:
            return f"the process that runs nft is gone ({err.strerror})"
        if answer == b"0\n":
            return ""
        return answer.strip().decode("utf-8", "backslashreplace") or \
            "the process that runs nft died"

    def close(self) -> None:
        if self._pid:
            try:  # it also ends at the end of the pipe, unless closing that fails
                posix.write(self._request, b"q")
            except OSError:
                pass
            files.close_quietly(self._request)
            files.close_quietly(self._answer)
            try:
                posix.waitpid(self._pid, 0)
            except OSError:
                pass  # not reaped: it ends with the pipe, and init reaps it after we exit
            self._pid = 0


def _load_network(plan: "Plan") -> bytes:
    """In the installer: the network table of `plan` loaded unless it is already, then the
    forwarding on; b"0", or the refusal's lines in one."""
    from nsgate.policy import network_ruleset
    from nsgate.system import network_apply, network_table

    try:
        if network_table.loaded_version() != network_ruleset.version(plan):
            network_table.load(network_ruleset.ruleset(plan))
        network_apply.set_forwarding(plan)
    except Refusal as refusal:
        return "; ".join((refusal.first, *refusal.details)).encode()[:600]
    except OSError as err:
        return f"cannot turn forwarding on: {err}".encode()[:600]
    return b"0"


def _forwarding_on(plan: "Plan") -> bool:
    from nsgate.system import network_apply

    for path in network_apply.forwarding_wanted(plan):
        try:
            fd = posix.open(path, posix.O_RDONLY | posix.O_CLOEXEC)
        except OSError:
            return False  # IPv6 disabled...: the runner's attempt says why
        try:
            if posix.read(fd, 16).strip() != b"1":
                return False
        finally:
            posix.close(fd)
    return True


class Guard:
    """nsgate's tables for one create (or one batch): checked now, before the helper confines
    itself; installed if needed later, under the database lock: `ready` the port security,
    cleaned of vanished ports' claims; `ready_network` (a private bridge, with networks.conf's
    `plan`) the network table and forwarding."""

    def __init__(self, plan: "Plan | None" = None) -> None:
        try:
            self._nfnl = nf_tables.Nfnl(nf_tables.NFPROTO_BRIDGE, TABLE)
        except OSError as err:
            raise _no_nf_tables(err) from None
        try:
            version = self._nfnl.table_version()
        except OSError as err:
            self._nfnl.close()
            raise _no_nf_tables(err) from None
        self._installer: _Installer | None = None
        self._plan = plan
        self._network_version = ""
        self._network_ready = plan is None
        try:
            network_needed = False
            if plan is not None:
                from nsgate.policy import network_ruleset
                from nsgate.system import network_table

                self._network_version = network_ruleset.version(plan)
                network_needed = (network_table.loaded_version() != self._network_version
                                  or not _forwarding_on(plan))
            if version != VERSION.encode() or network_needed:
                nft = programs.find("nft")
                if nft is None:
                    raise Refusal("nftables is needed to attach a nic to a Linux bridge",
                                  "nsgate's port security (and the firewall of the per-user "
                                  "networks) are tables of nftables, and nft was not found in "
                                  + ", ".join(programs.SEARCH_PATH) + ": install nftables")
                self._installer = _Installer(nft, plan)
        except BaseException:
            self.close()
            raise

    def ready(self, net: "rtnl.Rtnl") -> None:
        """The current table is in place and holds no claim of a port that is gone."""
        try:
            if self._nfnl.table_version() != VERSION.encode():
                failure = self._installer.run(b"1") if self._installer else "it vanished"
                if failure or self._nfnl.table_version() != VERSION.encode():
                    raise Refusal(f"could not set up nftables table bridge {TABLE} (port "
                                  "security)", failure or "nft exited 0 but no table is there",
                                  "the kernel needs nf_tables with the bridge family")
            for attempt in range(3):
                try:
                    self._forget_vanished_ports(net)
                    return
                except NetlinkError as err:  # ENOENT: an element timed out meanwhile
                    if err.errno != errno.ENOENT or attempt == 2:
                        raise
        except NetlinkError as err:
            raise _no_nf_tables(err) from None

    def ready_network(self) -> None:
        """The network table of the plan is loaded, and forwarding on (once per Guard); a
        Refusal if it cannot be."""
        if self._network_ready or self._plan is None:
            return
        from nsgate.system import network_table

        if (network_table.loaded_version() != self._network_version
                or not _forwarding_on(self._plan)):
            failure = self._installer.run(b"2") if self._installer else "it changed meanwhile"
            if failure or network_table.loaded_version() != self._network_version:
                raise Refusal(f"could not set up nftables table {network_table.NAME} (the "
                              "firewall of the per-user networks of /etc/nsgate/networks.conf)",
                              failure or "nft exited 0 but the table is not there",
                              "nothing was attached; nsgate network apply says more")
        self._network_ready = True

    def _forget_vanished_ports(self, net: "rtnl.Rtnl") -> None:
        claims = self._nfnl.keys("port_mac")
        budgets = self._nfnl.keys("new_mac_budget")
        indexes = {_U32.unpack_from(key)[0] for key in (*claims, *budgets) if len(key) >= 4}
        gone = _vanished(net, indexes)
        if gone:
            self._nfnl.delete_keys({
                "port_mac": [key for key in claims if _U32.unpack_from(key)[0] in gone],
                "mac_in_use": [key[4:10] for key in claims if _U32.unpack_from(key)[0] in gone],
                "new_mac_budget": [key for key in budgets if _U32.unpack_from(key)[0] in gone]})

    def close(self) -> None:
        if self._installer is not None:
            self._installer.close()
        self._nfnl.close()


def _no_nf_tables(err: OSError) -> Refusal:
    return Refusal(f"could not use nftables table bridge {TABLE} (port security)",
                   f"the kernel's nf_tables answered: {err}",
                   "a nic is attached to a Linux bridge only with nsgate's port security: the "
                   "kernel needs nf_tables with the bridge family")


def _vanished(net: "rtnl.Rtnl", indexes: "Iterable[int]") -> set[int]:
    wanted = set(indexes)
    if len(wanted) > 8:
        live = {link.index for link in net.links()}
        return wanted - live
    return {index for index in wanted if net.link_by_index(index) is None}
