"""The configuration of the one dnsmasq the service runs for every private bridge (DHCPv4,
IPv6 router advertisements, a DNS forwarder on each gateway), and the pruning of its lease file.
Bytes in, bytes out.

Each bridge is named (`interface=`), so dnsmasq answers on nothing else: not on the loopback
(`except-interface=lo`, which `interface=` would otherwise add), not on the uplink. With
`bind-dynamic` it binds each gateway address as it appears, so a bridge whose address comes
after the start is served, and a resolver of the host on other addresses is left alone.
Which range serves a request is decided by dnsmasq from the address of the bridge it came in on:
a user's container can only get an address of that user's subnet. Leases are tied to the MAC
(`dhcp-ignore-clid`), which nsgate makes stable per container; names sent by clients are
ignored (`dhcp-ignore-names`): the DNS of one user's containers must not tell the names and
addresses of another user's.
"""

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from nsgate.policy.networks_conf import Plan, Subnet

LEASE_TIME = "1h"
RESOLV_CONF = "/etc/resolv.conf"
CONF_NAME = "dnsmasq.conf"
LEASES_NAME = "leases"


def config(plan: Plan, bridges: list[tuple[str, Subnet]], run_dir: str, *,
           user: str = "nobody") -> bytes:
    """dnsmasq's configuration serving `bridges` (name, subnet; at least one: with no
    `interface=` line dnsmasq would serve every interface), running as `user` once started,
    its lease file in `run_dir`."""
    if not bridges:
        raise ValueError("a dnsmasq configuration needs at least one bridge")
    lines = [
        "# written by nsgated (nsgated(8)) from /etc/nsgate/networks.conf: do not edit",
        "bind-dynamic",
        "except-interface=lo",
        f"user={user}",
        "log-facility=-",
        "pid-file=",
        "no-hosts",
        f"resolv-file={RESOLV_CONF}",
        "domain-needed",
        "bogus-priv",
        "dhcp-authoritative",
        "dhcp-ignore-clid",
        "dhcp-ignore-names",
        # no ping of an address before it is offered: with it, dnsmasq 2.90 leaves clients
        # asking at the same moment on one bridge without their DHCPACK (containers starting
        # together); a user's subnet holds only that user's containers
        "no-ping",
        f"dhcp-leasefile={run_dir}/{LEASES_NAME}",
        # one user's containers cannot use up the leases another user's need
        f"dhcp-lease-max={sum(_range_size(subnet) for _, subnet in bridges)}",
    ]
    if plan.ipv6_pool is not None:
        lines.append("enable-ra")
    for name, subnet in sorted(bridges, key=lambda bridge: bridge[1].index):
        lines.append(f"interface={name}")
        lines.append(f"dhcp-range={subnet.dhcp_first},{subnet.dhcp_last},"
                     f"{subnet.ipv4.netmask},{LEASE_TIME}")
        if plan.ipv6_pool is not None and subnet.ipv6 is not None:
            lines.append(f"dhcp-range={subnet.ipv6.network_address},ra-stateless,"
                         f"{subnet.ipv6.prefixlen},{LEASE_TIME}")
    return "".join(line + "\n" for line in lines).encode()


def _range_size(subnet: Subnet) -> int:
    return int(subnet.dhcp_last) - int(subnet.dhcp_first) + 1


def prune_leases(data: bytes, keep: "list[IPv4Network | IPv6Network]") -> bytes:
    """dnsmasq's lease file `data` with only the leases of an address in one of `keep`: an
    IPv4 lease is `EXPIRY MAC ADDRESS NAME CLIENT-ID`, an IPv6 one `EXPIRY IAID ADDRESS NAME
    DUID`; the server's own `duid` line stays; a line that is neither goes."""
    kept = []
    for raw in data.split(b"\n"):
        fields = raw.split()
        if len(fields) == 2 and fields[0] == b"duid":
            kept.append(raw)
            continue
        address = _address(fields[2]) if len(fields) >= 4 else None
        if address is not None and any(address.version == network.version
                                       and address in network for network in keep):
            kept.append(raw)
    return b"".join(raw + b"\n" for raw in kept)


def _address(raw: bytes) -> IPv4Address | IPv6Address | None:
    text = raw.decode("ascii", "replace")
    try:
        if ":" in text:
            return IPv6Address(text)
        return IPv4Address(text)
    except ValueError:
        return None
