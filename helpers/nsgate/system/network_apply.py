"""Making the host what networks.conf asks (`nsgate network apply`, the service's keeper, the
helper's create): forwarding on, the firewall table loaded, the gateway addresses of the private
bridges that exist. On the helper's path (set_forwarding): imports stay few."""

TYPE_CHECKING = False  # typing costs import time on the helper's path
if TYPE_CHECKING:
    from nsgate.policy.networks_conf import Plan

IPV4_FORWARDING = "/proc/sys/net/ipv4/ip_forward"
IPV6_FORWARDING = "/proc/sys/net/ipv6/conf/all/forwarding"


def forwarding_wanted(plan: "Plan") -> list[str]:
    """The forwarding sysctls (their /proc/sys paths) `plan` needs on: none when nothing leaves
    the users' bridges (`uplink none`)."""
    if plan.uplink == "none":
        return []
    return [IPV4_FORWARDING] + ([IPV6_FORWARDING] if plan.ipv6_pool is not None else [])


def set_forwarding(plan: "Plan") -> list[str]:
    """Turn on the forwarding `plan` needs (never off: other things may route too); what was
    changed, as text."""
    import posix

    changed = []
    for path in forwarding_wanted(plan):
        fd = posix.open(path, posix.O_RDWR | posix.O_CLOEXEC)
        try:
            if posix.read(fd, 16).strip() != b"1":
                posix.lseek(fd, 0, 0)
                posix.write(fd, b"1\n")
                changed.append(f"{path[len('/proc/sys/'):].replace('/', '.')} = 1")
        finally:
            posix.close(fd)
    return changed


def check_host(plan: "Plan") -> None:
    """A Refusal naming the first address or route of the host, outside the users' bridges,
    that a pool of `plan` overlaps: the users' subnets would shadow it or be shadowed by it."""
    from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network

    from nsgate.errors import Refusal
    from nsgate.policy import nicnames
    from nsgate.system import host_networks, rtnl

    with rtnl.Rtnl() as net:
        names = {link.index: link.name for link in net.links()}
    pools: list[tuple[int, IPv4Network | IPv6Network]] = [(host_networks.AF_INET,
                                                          plan.ipv4_pool)]
    if plan.ipv6_pool is not None:
        pools.append((host_networks.AF_INET6, plan.ipv6_pool))
    for family, pool in pools:
        for index, kind, address, prefixlen in host_networks.used(family):
            name = names.get(index, "")
            if nicnames.private_bridge_uid(name.encode("utf-8", "surrogateescape")) is not None:
                continue
            network = ip_network(f"{ip_address(address)}/{prefixlen}", strict=False)
            if network.overlaps(pool):
                where = f"on {name}" if name else "through several links"
                shown = f"{ip_address(address)}/{prefixlen}"
                raise Refusal(f"the pool {pool} of networks.conf overlaps the {kind} {shown} "
                              f"{where}", "the users' subnets must be addresses this host uses "
                              "nowhere else: choose another pool in /etc/nsgate/networks.conf",
                              "nothing was changed")


def apply(plan: "Plan | None") -> list[str]:
    """Make the host what `plan` asks, idempotently: the pools checked against the host first
    (a Refusal, nothing touched), then, under the nic database's lock (taken before anything
    changes, so that no helper makes a bridge meanwhile), the table `inet nsgate` loaded (or
    removed: no plan), the forwarding turned on, and the gateway addresses of every private
    bridge nsgate recorded set (removed: no plan). What changed, as text."""
    from nsgate.policy import network_ruleset
    from nsgate.system import network_table, nicdb_store

    changes = []
    if plan is not None:
        check_host(plan)
    elif not _anything_to_undo():
        return []  # a host that never had networks.conf: not even the lock file is made
    lock = nicdb_store.Locked()
    try:
        loaded = _loaded_version(plan)
        if plan is None and loaded is not None:
            network_table.load(network_ruleset.ruleset(None))
            changes.append(f"removed nftables table {network_table.NAME}")
        elif plan is not None and loaded != network_ruleset.version(plan):
            network_table.load(network_ruleset.ruleset(plan))
            changes.append(f"loaded nftables table {network_table.NAME} "
                           f"({network_ruleset.version(plan)})")
        if plan is not None:
            changes += set_forwarding(plan)
        changes += _bridge_addresses(plan)
    finally:
        lock.release()
    return changes


def _loaded_version(plan: "Plan | None") -> str | None:
    """The loaded table's version; without a plan, a kernel with no nf_tables has none."""
    from nsgate.errors import Refusal
    from nsgate.system import network_table

    try:
        return network_table.loaded_version()
    except Refusal:
        if plan is not None:
            raise
        return None


def _anything_to_undo() -> bool:
    """Without networks.conf: whether a table is loaded or a private bridge recorded (whose
    addresses may be left from a plan). No nf_tables in the kernel: no table to remove."""
    import posix

    from nsgate.system import private_bridge

    if _loaded_version(None) is not None:
        return True
    try:
        posix.stat(private_bridge.RECORD_PATH)
    except FileNotFoundError:
        return False
    return True


def _bridge_addresses(plan: "Plan | None") -> list[str]:
    """The gateway addresses of the private bridges nsgate recorded (private_bridge.py; call
    with the nic database's lock held): links nsgate did not make are left alone."""
    from nsgate.policy import nicdb, nicnames, private_bridges
    from nsgate.system import bridge_address, nicdb_store, private_bridge, rtnl, subnet_record

    changes = []
    record = nicdb.split_lines(nicdb_store.read(private_bridge.RECORD_PATH))
    with rtnl.Rtnl() as net:
        for name in private_bridges.recorded_bridges(record):
            link = net.link(name.decode())
            uid = nicnames.private_bridge_uid(name)
            if link is None or link.kind != "bridge" or uid is None:
                continue
            subnet = None
            if plan is not None:
                from nsgate.policy import networks_conf

                index = subnet_record.lookup(plan, uid)
                subnet = None if index is None else networks_conf.subnet(plan, index)
            changes += [f"{link.name}: {change}"
                        for change in bridge_address.assign(net, link.index, subnet)]
    return changes
