"""The private network part of `nsgate explain`, for a user with an nsgate-private grant: the
subnet and gateways /etc/nsgate/networks.conf gives the user's bridge (nsgu<uid>), from the
plan alone (derived allocation) or from the record (recorded allocation)."""

from nsgate.cli.admin.common import LOGIN_DEFS, NETWORKS_CONF, Out, read
from nsgate.errors import Refusal


def explain(uid: int, notes: list[str]) -> dict[str, object]:
    from nsgate.policy import networks_conf_lint, nicnames
    from nsgate.system import file_facts

    report: dict[str, object] = {"file": NETWORKS_CONF,
                                 "bridge": nicnames.private_bridge_name(uid).decode(),
                                 "error": None}
    st = file_facts.lstat(NETWORKS_CONF)
    if not st.exists:
        report["state"] = "absent"
        return report
    unsafe = networks_conf_lint.lint_file(st, file_facts.ancestors(NETWORKS_CONF))
    if unsafe:
        report.update(state="refused", error=unsafe[0].message)
        return report
    data = read(NETWORKS_CONF, notes)
    if data is None:
        report["state"] = "unreadable"
        return report
    from nsgate.policy import networks_conf

    try:
        plan = networks_conf.parse(data, read(LOGIN_DEFS, []) or b"")
    except Refusal as refusal:
        report.update(state="refused", error=refusal.first)
        return report
    report.update(allocation=plan.allocation, uplink=plan.uplink)
    record = {}
    if plan.allocation == "recorded":
        record = networks_conf.parse_record(read(networks_conf.SUBNET_RECORD, notes) or b"")
    index = networks_conf.lookup(plan, uid, record)
    if index is None:
        report["state"] = "none yet" if plan.allocation == "recorded" else "outside"
        report["uid_range"] = [plan.uid_min, plan.uid_max]
        return report
    subnet = networks_conf.subnet(plan, index)
    report.update(state="assigned", index=index, ipv4=str(subnet.ipv4),
                  ipv4_gateway=str(subnet.ipv4_gateway),
                  dhcp=[str(subnet.dhcp_first), str(subnet.dhcp_last)],
                  ipv6=None if subnet.ipv6 is None else str(subnet.ipv6),
                  ipv6_gateway=None if subnet.ipv6_gateway is None
                  else str(subnet.ipv6_gateway))
    return report


def render(out: Out, report: dict[str, object]) -> None:
    out.say("")
    out.say(f"private network ({report['file']}):")
    state = report["state"]
    if state == "absent":
        out.say(f"  no networks.conf: no address; {report['bridge']} is a plain bridge (no "
                "gateway, no DHCP, no firewall)")
    elif state == "unreadable":
        out.say("  unknown: the file is not readable (run as root to see it)")
    elif state == "refused":
        out.say(f"  none: the file is refused, so lxc-user-nic makes no private bridge: "
                f"{report['error']}")
    elif state == "none yet":
        out.say(f"  none yet: {report['bridge']} gets the lowest free subnet when the user's "
                "first container starts on nsgate-private (allocation recorded)")
    elif state == "outside":
        uids = report["uid_range"]
        assert isinstance(uids, list)
        out.say(f"  none: the uid is outside UID_MIN..UID_MAX ({uids[0]}..{uids[1]}), so "
                "allocation derived gives it no subnet and lxc-user-nic refuses nsgate-private")
    else:
        out.say(f"  {report['bridge']}: subnet {report['index']} (allocation "
                f"{report['allocation']}, uplink {report['uplink']})")
        dhcp = report["dhcp"]
        assert isinstance(dhcp, list)
        out.say(f"  IPv4 {report['ipv4']}, gateway {report['ipv4_gateway']}, DHCP "
                f"{dhcp[0]}-{dhcp[1]}")
        if report["ipv6"] is not None:
            out.say(f"  IPv6 {report['ipv6']}, gateway {report['ipv6_gateway']} (SLAAC)")
