"""Which subnet of networks.conf each user has: derived from the uid, or kept in the record
/run/lxc/nsgate-subnets (`<uid> <index>` per line, policy/networks_conf.py decides), which
lives beside the nic database and is written under its lock, atomically (nicdb_store.replace).
A user keeps their index while the record lives, bridge or not; a new user takes a free index,
or the lowest one whose owner has no private bridge now. Imported only when networks.conf
exists."""

from nsgate.policy import networks_conf, nicnames
from nsgate.system import nicdb_store, rtnl

TYPE_CHECKING = False
if TYPE_CHECKING:
    from nsgate.policy.networks_conf import Plan

PATH = networks_conf.SUBNET_RECORD


def live_uids(net: "rtnl.Rtnl") -> set[int]:
    """The owners of the private bridges that exist now (one link dump)."""
    owners = set()
    for name in net.link_names():
        uid = nicnames.private_bridge_uid(name.encode("utf-8", "surrogateescape"))
        if uid is not None:
            owners.add(uid)
    return owners


def index_for(plan: "Plan", uid: int, net: "rtnl.Rtnl") -> int:
    """`uid`'s subnet index, allocated and recorded if it has none (call with the nic database
    lock held); a Refusal when it can have none (pool full, uid outside a derived range)."""
    if plan.allocation == "derived":
        return networks_conf.index_for(plan, uid, {}, set())[0]
    data = nicdb_store.read(PATH)
    record = networks_conf.parse_record(data)
    index = networks_conf.lookup(plan, uid, record)
    if index is not None:
        return index
    index, write = networks_conf.index_for(plan, uid, record, live_uids(net))
    if write:
        nicdb_store.replace(networks_conf.record_text(data, uid, index), PATH)  # 0600
    return index


def lookup(plan: "Plan", uid: int) -> int | None:
    """`uid`'s subnet index now, without allocating one (None: it has none)."""
    if plan.allocation == "derived":
        return networks_conf.lookup(plan, uid, {})
    return networks_conf.lookup(plan, uid, networks_conf.parse_record(nicdb_store.read(PATH)))
