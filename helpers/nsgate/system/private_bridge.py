"""Per-user bridges, an nsgate extension of lxc-usernet that old files and old tools ignore.

A grant whose bridge is the reserved name `nsgate-private` (a name no real bridge has) gives the
user nics on a bridge of its own, `nsgu<uid>` (within IFNAMSIZ for every uid), which nsgate
creates on first use and records in /run/lxc/nsgate-bridges (`<uid> <bridge>` per line) so that
it never adopts a bridge it did not make. Without /etc/nsgate/networks.conf the bridge has no
address (containers do not reach the host through it); with it, the bridge has its user's
subnet's gateway addresses, a stable MAC, and the firewall table `inet nsgate` is loaded first
(system/bridge_address.py, subnet_record.py, port_security.Guard). It accepts no router
advertisements. It goes, with its record, when it has no port left (`remove_unused`: `nsgate
nics gc`, the service's janitor); its user's recorded subnet stays. Call with the database lock
held.
"""

import errno
import posix

from nsgate.errors import Refusal
from nsgate.policy import nicdb, nicnames, private_bridges
from nsgate.system import files, nicdb_store, ports, rtnl

TYPE_CHECKING = False  # typing costs import time on every helper run
if TYPE_CHECKING:
    from nsgate.policy.networks_conf import Plan, Subnet
    from nsgate.system import port_security

RESERVED_NAME = b"nsgate-private"
RECORD_PATH = nicdb_store.DB_DIR + "/nsgate-bridges"


def bridge_name(uid: int) -> str:
    return nicnames.private_bridge_name(uid).decode()


def _recorded() -> set[bytes]:
    return set(nicdb_store.read(RECORD_PATH).split(b"\n"))


def _record(line: bytes) -> None:
    fd = posix.open(RECORD_PATH, posix.O_WRONLY | posix.O_APPEND | posix.O_CREAT
                    | posix.O_CLOEXEC | posix.O_NOFOLLOW, 0o644)
    try:
        files.write_all(fd, line + b"\n")
    finally:
        posix.close(fd)


def load_network_modules() -> None:
    """Import, before the helper confines itself (confine checks every module loaded by then),
    what ensure() uses when networks.conf exists."""
    from nsgate.policy import nic_macs  # noqa: F401
    from nsgate.system import bridge_address, subnet_record  # noqa: F401


def ensure(net: "rtnl.Rtnl", uid: int, plan: "Plan | None" = None,
           guard: "port_security.Guard | None" = None) -> ports.Attachment:
    """The caller's private bridge, created and recorded on first use. With networks.conf's
    `plan` (and the create's `guard`, which loads the network table): the firewall is in place,
    the bridge has the MAC `nic_macs.bridge_mac(uid)` and exactly its subnet's gateway
    addresses, before any port is attached; what a failure changed is undone."""
    name = bridge_name(uid)
    record = private_bridges.record_line(uid)
    link = net.link(name)
    if link is not None:
        if link.kind != "bridge" or record not in _recorded():
            raise Refusal(f"{name} exists but is not a private bridge nsgate made for uid {uid}",
                          "refusing to attach containers to it: remove it, or grant it by name")
        if plan is not None:
            _network(net, link, uid, plan, guard)
        return ports.Attachment(name, link.index, shared=False)
    subnet = None
    if plan is not None:
        subnet = _subnet(net, uid, plan, guard)  # before any change: a refusal touches nothing
    if record not in _recorded():
        _record(record)  # first: a helper killed right after creating it still owns it
    index = net.create_bridge(name, None if plan is None else _bridge_mac(uid))
    try:
        ports.no_router_advertisements(name)
        if subnet is not None:
            _assign(net, name, index, subnet)
        net.set_link(index, up=True)
    except BaseException:
        net.delete_link(index)
        raise
    return ports.Attachment(name, index, shared=False)


def _bridge_mac(uid: int) -> bytes:
    from nsgate.policy import nic_macs

    return nic_macs.bridge_mac(uid)


def _subnet(net: "rtnl.Rtnl", uid: int, plan: "Plan",
            guard: "port_security.Guard | None") -> "Subnet":
    """`uid`'s subnet (allocated if need be; a refusal first, before the table is touched),
    once the network table is in place."""
    from nsgate.policy import networks_conf
    from nsgate.system import subnet_record

    if guard is None:
        raise Refusal("internal error: no nftables guard for a private bridge with networks.conf")
    index = subnet_record.index_for(plan, uid, net)
    guard.ready_network()
    return networks_conf.subnet(plan, index)


def _assign(net: "rtnl.Rtnl", name: str, index: int, subnet: "Subnet") -> None:
    from nsgate.system import bridge_address

    try:
        bridge_address.assign(net, index, subnet)
    except rtnl.NetlinkError as err:
        raise Refusal(f"could not give {name} the gateway addresses of {subnet.ipv4}",
                      str(err), "nothing was attached; nsgate network apply says more") from None


def _network(net: "rtnl.Rtnl", link: "rtnl.Link", uid: int, plan: "Plan",
             guard: "port_security.Guard | None") -> None:
    """An existing private bridge made right for `plan`: the firewall, its MAC, its gateway
    addresses (changed only where they differ; undone on failure)."""
    subnet = _subnet(net, uid, plan, guard)
    mac = _bridge_mac(uid)
    if link.address != mac:
        try:
            net.set_link(link.index, address=mac)
        except rtnl.NetlinkError as err:
            raise Refusal(f"could not give {link.name} its MAC address", str(err)) from None
    try:
        _assign(net, link.name, link.index, subnet)
    except BaseException:
        if link.address != mac and len(link.address) == len(mac):
            net.set_link(link.index, address=link.address)
        raise


def _state(net: "rtnl.Rtnl", name: bytes) -> tuple[str, int]:
    """What the link of a recorded bridge is (private_bridges.GONE...), and its ifindex."""
    link = net.link(name.decode())
    if link is None:
        return private_bridges.GONE, 0
    if link.kind != "bridge":
        return private_bridges.FOREIGN, link.index
    in_use = bool(net.links(master=link.index))
    return (private_bridges.IN_USE if in_use else private_bridges.UNUSED), link.index


def remove_unused(net: "rtnl.Rtnl",
                  names: "set[bytes] | None" = None) -> tuple[list[bytes], list[bytes]]:
    """(removed, forgotten): delete the recorded private bridges (of `names`, or all) that have
    no port left, then drop their lines, and those of bridges already gone, from the record in
    one atomic write. The bridges are deleted before their lines go: killed in between, a line
    stays that names a bridge that is gone (ensure() makes it again; the next pass forgets it)."""
    raw_lines = nicdb.split_lines(nicdb_store.read(RECORD_PATH))
    found = {name: _state(net, name) for name in private_bridges.recorded_bridges(raw_lines)
             if names is None or name in names}
    kept, removed, forgotten = private_bridges.reap(
        raw_lines, {name: state for name, (state, _) in found.items()})
    for name in removed:
        try:
            net.delete_link(found[name][1])
        except rtnl.NetlinkError as err:
            if err.errno != errno.ENODEV:  # gone already: as good as deleted
                raise
    if removed or forgotten:
        nicdb_store.replace(nicdb.join_lines(kept), RECORD_PATH, 0o644)
    return removed, forgotten
