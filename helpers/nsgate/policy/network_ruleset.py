"""The firewall of the per-user networks (networks.conf): one nftables table of nsgate's,
`inet nsgate`, as the text `nft -f -` loads. Pure: a plan in, text out.

Users' bridges are the links named nsgu* (nicnames.PRIVATE_BRIDGE_PREFIX); nothing is per user: the
kernel's connected routes (each bridge holds its subnet's gateway address) say which source
addresses belong to which bridge, so one fixed table serves every bridge, present and future.
- prerouting (priority raw, before conntrack): from a user's bridge, a packet whose source
  address is not routed back through that same bridge is dropped (strict reverse path: no
  spoofing, not even of another user's subnet); only the unspecified source of a DHCP discover,
  of IPv6 duplicate address detection and router solicitation passes;
- input: from a user's bridge the host answers replies, DHCP, DNS, ping and IPv6 neighbour
  discovery, and only on addresses of the bridge it came in on; every other packet is dropped;
- forward: nothing is routed from one user's bridge to another's (routed back out through the
  bridge it came from is that user's own traffic: with br_netfilter bridged frames pass here
  too); out of a bridge to anywhere else passes in `nat` and `routed`, not in `none`; into a
  bridge only replies pass, and new connections too in `routed`;
- postrouting (`nat`): the pools' source addresses leaving through any other link are masqueraded.
Hooks of other tables still apply (a drop anywhere wins): this table only adds.
"""

TYPE_CHECKING = False  # typing costs import time on the helper's path
if TYPE_CHECKING:
    from nsgate.policy.networks_conf import Plan

TABLE = "nsgate"  # family inet
FAMILY = "inet"
VERSION_PREFIX = "nsgate networks 1 "
BRIDGES = '"nsgu*"'


def ruleset(plan: "Plan | None") -> str:
    """The text for `nft -f -` that makes the table exactly what `plan` needs, in one
    transaction (an empty table is added first so that deleting it never fails); None: the
    table is removed."""
    head = f"add table {FAMILY} {TABLE}\ndelete table {FAMILY} {TABLE}\n"
    if plan is None:
        return head
    body = _body(plan)
    return (f"{head}table {FAMILY} {TABLE} {{\n\tcomment \"{_version(body)}\"\n{body}}}\n")


def version(plan: "Plan") -> str:
    """The comment of the table `ruleset(plan)` loads: it names the rules it holds."""
    return _version(_body(plan))


def _version(body: str) -> str:
    from _blake2 import blake2b  # not hashlib: it costs import time on the helper's path

    return VERSION_PREFIX + blake2b(body.encode(), digest_size=6).hexdigest()


def _body(plan: "Plan") -> str:
    pools = [("ip", str(plan.ipv4_pool))]
    if plan.ipv6_pool is not None:
        pools.append(("ip6", str(plan.ipv6_pool)))
    chains = [_prerouting(), _input(), _forward(plan.uplink)]
    if plan.uplink == "nat":
        chains.append(_postrouting(pools))
    return "".join(chains)


def _chain(name: str, hook: str, rules: list[str]) -> str:
    lines = "".join(f"\t\t{rule}\n" for rule in rules)
    return f"\tchain {name} {{\n\t\t{hook}\n{lines}\t}}\n"


def _prerouting() -> str:
    return _chain("prerouting", "type filter hook prerouting priority raw; policy accept;", [
        f"iifname != {BRIDGES} accept",
        "ip saddr 0.0.0.0 ip daddr 255.255.255.255 udp sport 68 udp dport 67 accept",
        "ip6 saddr :: icmpv6 type { nd-neighbor-solicit, nd-router-solicit, "
        "mld2-listener-report } accept",
        "fib saddr . iif oif missing drop",
    ])


def _input() -> str:
    return _chain("input", "type filter hook input priority filter; policy accept;", [
        f"iifname != {BRIDGES} accept",
        "ct state established,related accept",
        "fib daddr . iif type != { local, broadcast, multicast } drop",
        "meta nfproto ipv4 udp dport 67 accept",
        "meta nfproto ipv6 udp dport 547 accept",
        "udp dport 53 accept",
        "tcp dport 53 accept",
        "icmp type echo-request accept",
        "icmpv6 type { echo-request, nd-neighbor-solicit, nd-neighbor-advert, "
        "nd-router-solicit, mld2-listener-report } accept",
        "drop",
    ])


def _forward(uplink: str) -> str:
    outbound = "accept" if uplink in ("nat", "routed") else "drop"
    rules = [
        f"iifname {BRIDGES} oifname {BRIDGES} fib daddr . iif oif missing drop",
        f"iifname {BRIDGES} {outbound}",
        f"oifname {BRIDGES} ct state established,related accept",
    ]
    if uplink == "routed":
        rules.append(f"oifname {BRIDGES} ct state new accept")
    rules.append(f"oifname {BRIDGES} drop")
    return _chain("forward", "type filter hook forward priority filter; policy accept;", rules)


def _postrouting(pools: list[tuple[str, str]]) -> str:
    return _chain("postrouting", "type nat hook postrouting priority srcnat; policy accept;", [
        f"oifname != {BRIDGES} {family} saddr {pool} masquerade" for family, pool in pools])
