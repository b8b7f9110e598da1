"""The addresses of a private bridge: exactly its subnet's gateways (networks.conf), the IPv4
one with the subnet's prefix, the IPv6 one as a /64; its IPv6 link-local address stays, every
other address goes. Imported only when networks.conf exists (ipaddress costs import time)."""

from ipaddress import ip_address

from nsgate.system import rtnl

TYPE_CHECKING = False
if TYPE_CHECKING:
    from nsgate.policy.networks_conf import Subnet

Entry = tuple[int, bytes, int]  # family, address, prefix length, as rtnl.addresses lists them


def wanted(subnet: "Subnet | None") -> list[Entry]:
    """The addresses a bridge of `subnet` holds (none but link-local without a subnet)."""
    if subnet is None:
        return []
    found = [(rtnl.AF_INET, subnet.ipv4_gateway.packed, subnet.ipv4.prefixlen)]
    if subnet.ipv6 is not None and subnet.ipv6_gateway is not None:
        found.append((rtnl.AF_INET6, subnet.ipv6_gateway.packed, subnet.ipv6.prefixlen))
    return found


def is_link_local(entry: Entry) -> bool:
    family, address, _ = entry
    return family == rtnl.AF_INET6 and address[0] == 0xFE and address[1] & 0xC0 == 0x80


def shown(entry: Entry) -> str:
    return f"{ip_address(entry[1])}/{entry[2]}"


def assign(net: "rtnl.Rtnl", index: int, subnet: "Subnet | None") -> list[str]:
    """Make the addresses of link `index` exactly the gateways of `subnet` (None: no address
    but link-local); what changed, as text ("added 10.210.0.1/24", "removed ..."). The stale
    addresses go first (deleting a primary IPv4 address takes its secondaries with it). On a
    failure what was changed is undone, as far as the kernel lets it, and the error raised."""
    want = wanted(subnet)
    have = net.addresses(index)
    doomed = [entry for entry in have if entry not in want and not is_link_local(entry)]
    missing = [entry for entry in want if entry not in have]
    removed: list[Entry] = []
    added: list[Entry] = []
    try:
        for entry in doomed:
            try:
                net.delete_address(index, *entry)
            except rtnl.NetlinkError as err:
                if err.errno != 99:  # EADDRNOTAVAIL: gone already (a removed primary's secondary)
                    raise
            removed.append(entry)
        for entry in missing:
            net.add_address(index, *entry)
            added.append(entry)
    except BaseException:
        _undo(net, index, removed, added)
        raise
    return ([f"removed {shown(entry)}" for entry in removed]
            + [f"added {shown(entry)}" for entry in added])


def _undo(net: "rtnl.Rtnl", index: int, removed: list[Entry], added: list[Entry]) -> None:
    for entry in added:
        try:
            net.delete_address(index, *entry)
        except OSError:
            pass  # best effort: the error that stopped the change is the one reported
    for entry in removed:
        try:
            net.add_address(index, *entry)
        except OSError:
            pass
