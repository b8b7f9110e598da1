"""nsgate network apply|show: make the host what /etc/nsgate/networks.conf asks (the firewall
table `inet nsgate`, forwarding, the private bridges' gateway addresses), and show the plan and
what the kernel has."""

from nsgate.cli.admin.common import Args, Out
from nsgate.errors import Refusal


def apply(out: Out) -> int:
    import posix

    if posix.geteuid() != 0:
        raise Refusal("nsgate network apply must run as root",
                      "it loads an nftables table, sets sysctls and bridge addresses: run it as "
                      "root (e.g. with sudo)")
    from nsgate.system import network_apply, network_plan

    plan = network_plan.load()
    changes = network_apply.apply(plan)
    if not changes:
        out.say("nothing to change: the host is as " + (
            f"{network_plan.PATH} asks" if plan is not None
            else f"it is without {network_plan.PATH} (no table, no bridge address)"))
    for change in changes:
        out.say(change)
    return 0


def show(out: Out, args: Args) -> int:
    from nsgate.policy import network_ruleset
    from nsgate.system import network_apply, network_plan, network_table

    plan = network_plan.load()
    wanted = None if plan is None else network_ruleset.version(plan)
    try:
        loaded: str | None = network_table.loaded_version()
        readable = True
    except Refusal:  # not root: nf_tables answers only CAP_NET_ADMIN
        loaded, readable = None, False
    state = _table_state(wanted, loaded) if readable else "unknown (run as root to read it)"
    forwarding = {path.removeprefix("/proc/sys/").replace("/", "."): _sysctl(path)
                  for path in (network_apply.IPV4_FORWARDING, network_apply.IPV6_FORWARDING)}
    plan_view = None if plan is None else {
        "ipv4_pool": str(plan.ipv4_pool), "ipv4_prefix": plan.ipv4_prefix,
        "ipv6_pool": None if plan.ipv6_pool is None else str(plan.ipv6_pool),
        "ipv6_prefix": plan.ipv6_prefix, "uplink": plan.uplink, "allocation": plan.allocation,
        "capacity": plan.capacity}
    if args.json:
        out.json({"file": network_plan.PATH, "plan": plan_view,
                  "table": {"name": network_table.NAME, "state": state, "loaded": loaded,
                            "wanted": wanted},
                  "forwarding": forwarding})
        return 0
    if plan_view is None:
        out.say(f"{network_plan.PATH}: none (private bridges get no address, no table)")
    else:
        out.say(f"{network_plan.PATH}:")
        out.table(["SETTING", "VALUE"], [[key.replace("_", "-"), str(value)]
                                         for key, value in plan_view.items()])
    out.say(f"table {network_table.NAME}: {state}")
    for name, value in forwarding.items():
        out.say(f"{name} = {value}")
    return 0


def _table_state(wanted: str | None, loaded: str | None) -> str:
    if wanted is None:
        return "not loaded (as wanted)" if loaded is None else \
            f"loaded ({loaded}) but no networks.conf: 'nsgate network apply' removes it"
    if loaded is None:
        return "missing: 'nsgate network apply' loads it"
    if loaded != wanted:
        return f"differs (loaded {loaded!r}, wanted {wanted!r}): 'nsgate network apply' " \
            "replaces it"
    return f"loaded, current ({wanted})"


def _sysctl(path: str) -> str:
    try:
        with open(path) as file:
            return file.read().strip()
    except OSError as err:
        return f"unknown ({err.strerror})"
