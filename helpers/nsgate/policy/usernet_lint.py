"""`nsgate check` for /etc/lxc/lxc-usernet and the nic database /run/lxc/nics: lines that do
not parse, grants that grant nothing, bridges that are missing or are not bridges, database
lines whose interface is gone or whose owner holds no grant. Bytes and facts in, findings out;
the parsers are the ones lxc-user-nic uses."""

from nsgate.policy import nicdb, nicnames, usernet
from nsgate.policy.accounts import Accounts
from nsgate.policy.findings import Finding, text
from nsgate.policy.subid_lint import is_blank_or_comment, numbered_lines

NO_BRIDGE = b"none"
PRIVATE_BRIDGE = b"nsgate-private"  # system/private_bridge.RESERVED_NAME
BRIDGE_KINDS = ("bridge", "openvswitch")


def grants(data: bytes) -> list[usernet.Grant]:
    """The grants lxc-user-nic honours, without the comment lines."""
    return [g for g in usernet.parse(data) if not g.token.startswith(b"#")]


def lint_usernet(path: str, data: bytes, accounts: Accounts,
                 links: dict[str, str | None] | None) -> list[Finding]:
    """`links`: every link of the host's network namespace and its kind (None if unknown)."""
    findings = []
    for lineno, raw in numbered_lines(data):
        if is_blank_or_comment(raw):
            continue
        grant = usernet.parse_line(raw, lineno)
        if grant is None:
            why = ("it starts with a blank, and lxc-user-nic skips such lines"
                   if raw[:1] in b" \t" else "it is not four fields")
            findings.append(Finding(
                path, lineno, "syntax",
                f"'{text(raw[:80])}' does not parse ({why}), so it grants nothing: write "
                "USER|@GROUP TYPE BRIDGE COUNT (e.g. alice veth br0 2) or remove the line"))
            continue
        findings += _grant_findings(path, grant, accounts, links)
    return findings


def _grant_findings(path: str, grant: usernet.Grant, accounts: Accounts,
                    links: dict[str, str | None] | None) -> list[Finding]:
    found = []
    token = text(grant.token)
    if grant.token.startswith(b"@"):
        if grant.token[1:] not in accounts.gid_of:
            found.append(Finding(path, grant.lineno, "grants-nothing",
                                 f"no group '{token[1:]}' in the group database, so this line "
                                 "grants nothing: create the group or remove the line"))
    elif grant.token not in accounts.uid_of:
        found.append(Finding(path, grant.lineno, "grants-nothing",
                             f"no user '{token}' in the passwd database, so this line grants "
                             "nothing: create the user or remove the line"))
    if grant.number <= 0:
        found.append(Finding(path, grant.lineno, "grants-nothing",
                             f"count {grant.number} grants no nic: give a count of 1 or more, "
                             "or remove the line"))
    found += _private_bridge_findings(path, grant, accounts)
    if links is not None and grant.bridge not in (NO_BRIDGE, PRIVATE_BRIDGE):
        bridge = grant.bridge.decode("utf-8", "surrogateescape")
        shown = text(grant.bridge)
        if bridge not in links:
            found.append(Finding(path, grant.lineno, "no-bridge",
                                 f"bridge {shown} does not exist, so lxc-user-nic refuses "
                                 f"{token}'s nics on it: create it (ip link add {shown} type "
                                 "bridge) or correct the name"))
        elif links[bridge] not in BRIDGE_KINDS:
            kind = links[bridge] or "plain"
            found.append(Finding(path, grant.lineno, "not-a-bridge",
                                 f"{shown} is a {kind} link, not a Linux or Open vSwitch "
                                 "bridge, so no nic can be attached to it: name a bridge "
                                 "(or 'none')"))
    return found


def _private_bridge_findings(path: str, grant: usernet.Grant,
                             accounts: Accounts) -> list[Finding]:
    """A grant of `nsgu<uid>` (uid's private bridge) to anyone but that uid: lxc-user-nic
    refuses it, and it would put the grantee's containers on a bridge that isolates nothing."""
    owner = nicnames.private_bridge_uid(grant.bridge)
    if owner is None or accounts.uid_of.get(grant.token) == owner:
        return []
    token, shown = text(grant.token), text(grant.bridge)
    whom = (f"every member of group {token[1:]}" if grant.token.startswith(b"@")
            else f"{token}")
    return [Finding(path, grant.lineno, "private-bridge",
                    f"{shown} is the private bridge of uid {owner}: its ports are not isolated "
                    f"from each other, so granting it to {whom} would put their containers "
                    f"beside uid {owner}'s, and lxc-user-nic refuses it: grant "
                    f"'{token} veth nsgate-private {grant.number}' (a bridge of their own) or a "
                    "shared bridge instead")]


def lint_nics(path: str, data: bytes, usernet_grants: list[usernet.Grant],
              live: set[str]) -> list[Finding]:
    """`live`: the names of the links of the host's network namespace."""
    granted = {(g.token, g.nic_type, g.bridge) for g in usernet_grants}
    findings = []
    for lineno, raw in numbered_lines(data):
        if is_blank_or_comment(raw):
            continue
        line = nicdb.NicLine(raw)
        if not line.valid:
            findings.append(Finding(
                path, lineno, "syntax",
                f"'{text(raw[:80])}' is not OWNER TYPE BRIDGE INTERFACE: lxc-user-nic keeps it "
                "but never counts it; remove it once no tool needs it"))
            continue
        dev = text(line.dev)
        if line.dev.decode("utf-8", "surrogateescape") not in live:
            findings.append(Finding(path, lineno, "stale-nic",
                                    f"interface {dev} no longer exists: remove its line with "
                                    "nsgate nics gc"))
        if (line.owner, line.nic_type, line.bridge) not in granted:
            findings.append(Finding(
                path, lineno, "foreign-nic",
                f"{text(line.owner)} holds {dev} ({text(line.nic_type)} on "
                f"{text(line.bridge)}) but /etc/lxc/lxc-usernet grants it no "
                f"{text(line.nic_type)} nic on {text(line.bridge)}: find out who made it, "
                "delete the interface if it is not wanted, then run nsgate nics gc"))
    return findings
