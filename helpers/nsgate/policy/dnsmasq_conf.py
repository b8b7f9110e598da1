"""The configuration of the one dnsmasq the service runs for every private bridge (DHCPv4,
IPv6 router advertisements, a DNS forwarder on each gateway), and the pruning of its lease file.
Bytes in, bytes out.

dnsmasq answers only on links named nsgu* (`interface=nsgu*`): not on the loopback
(`except-interface=lo`, which `interface=` would otherwise add), not on the uplink. With
`bind-dynamic` it binds each gateway address as it appears, so a bridge made after the start is
served at once, and a resolver of the host on other addresses is left alone.
Which range serves a request is decided by dnsmasq from the address of the bridge it came in on:
a user's container can only get an address of that user's subnet. Leases are tied to the MAC
(`dhcp-ignore-clid`), which nsgate makes stable per container; names sent by clients are
ignored (`dhcp-ignore-names`): the DNS of one user's containers must not tell the names and
addresses of another user's.
"""

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from nsgate.policy import nicnames
from nsgate.policy.networks_conf import Plan, Subnet

LEASE_TIME = "1h"
RESOLV_CONF = "/etc/resolv.conf"
CONF_NAME = "dnsmasq.conf"
LEASES_NAME = "leases"
PRIVATE_BRIDGES = nicnames.PRIVATE_BRIDGE_PREFIX.decode() + "*"
RANGE_LIMIT = 65536  # ranges written for a pool's first subnets; beyond, only those in use
# DUID-EN: nsgate has no enterprise number of its own; RFC 5612's (32473) is one nobody owns,
# and the DUID need only tell servers of one link apart.
DUID = "32473,6e736761746564"  # "nsgated"


def config(plan: Plan, bridges: list[tuple[str, Subnet]], run_dir: str, *,
           user: str = "nobody") -> bytes:
    """dnsmasq's configuration serving every private bridge of `plan`, those of `bridges`
    (name, subnet) and those still to come, running as `user` once started, its lease file in
    `run_dir`.

    A bridge made after dnsmasq started is served at once, with no restart: dnsmasq answers on
    the links named nsgu* (`interface=` with a wildcard; only root names links in the host's
    namespace) and picks the range by the address of the link a request came in on, so every
    subnet of the pool has its range (the first RANGE_LIMIT, and any bridge's beyond). A client
    such as rootlesskit's asks once, right after lxc-user-nic returns, and never again: a
    restart for its new bridge would lose that question. The server DUID is fixed
    (`dhcp-duid`): dnsmasq would otherwise take it from a link's MAC and refuse to start with
    no bridge yet."""
    usable = plan.capacity
    if plan.allocation == "derived":
        usable = min(usable, plan.uid_max - plan.uid_min + 1)
    indexes = sorted({*range(min(usable, RANGE_LIMIT)), *(subnet.index for _, subnet in bridges)})
    lines = [
        "# written by nsgated (nsgated(8)) from /etc/nsgate/networks.conf: do not edit",
        f"interface={PRIVATE_BRIDGES}",
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
        # no ping before an offer: with it, clients asking at once on one bridge got no ack
        "no-ping",
        # the routine exchanges unlogged: containers asking in a loop would fill the keeper's
        # syslog, and a full /dev/log holds the keeper and then dnsmasq's output pipe
        "quiet-dhcp", "quiet-dhcp6", "quiet-ra",
        f"dhcp-leasefile={run_dir}/{LEASES_NAME}",
        # one user's containers cannot use up the leases another user's need
        f"dhcp-lease-max={len(indexes) * _range_size(plan)}",
    ]
    lines += _ranges(plan, indexes)
    if plan.ipv6_pool is not None:
        lines += ["enable-ra", f"dhcp-duid={DUID}",
                  f"dhcp-range=::,constructor:{PRIVATE_BRIDGES},ra-stateless,"
                  f"{plan.ipv6_prefix},{LEASE_TIME}"]
    return "".join(line + "\n" for line in lines).encode()


def _range_size(plan: Plan) -> int:
    """Addresses DHCP hands out in a subnet: all but the network, the gateway, the broadcast."""
    return (1 << (32 - plan.ipv4_prefix)) - 3


def _ranges(plan: Plan, indexes: list[int]) -> list[str]:
    """The `dhcp-range` lines of subnets `indexes` (as networks_conf.subnet gives them: the
    gateway first, DHCP the rest but the broadcast), in integers: tens of thousands of
    ipaddress objects would take a second on every refresh."""
    size = 1 << (32 - plan.ipv4_prefix)
    base = int(plan.ipv4_pool.network_address)
    netmask = plan.ipv4_pool.__class__(f"0.0.0.0/{plan.ipv4_prefix}").netmask
    return [f"dhcp-range={_dotted(base + index * size + 2)},"
            f"{_dotted(base + index * size + size - 2)},{netmask},{LEASE_TIME}"
            for index in indexes]


def _dotted(address: int) -> str:
    return f"{address >> 24}.{address >> 16 & 255}.{address >> 8 & 255}.{address & 255}"


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
