"""nsgate explain: what a user may do, and why (subordinate ranges, nic grants and their use,
what a login gets from session.conf)."""

import posix

from nsgate.cli.admin.common import (
    FULL_CONTAINER,
    LOGIN_DEFS,
    NICS,
    NSSWITCH,
    PATHS,
    USERNET,
    Args,
    Out,
    link_kinds,
    load_accounts,
    read,
)
from nsgate.errors import Refusal
from nsgate.policy import nicdb, subid, usernet
from nsgate.policy.accounts import Accounts
from nsgate.policy.findings import text

PRIVATE_BRIDGE = "nsgate-private"  # system/private_bridge.RESERVED_NAME


def run(out: Out, args: Args, who: str | None) -> int:
    from nsgate.system import accounts as nss

    caller = posix.getuid()
    if who is None:
        found = nss.user(str(caller).encode())
        if found is None:
            raise Refusal(f"your uid {caller} has no passwd entry",
                          "nsgate explain needs a user name to look the files up")
    else:
        found = nss.user(who.encode("utf-8", "surrogateescape"))
        if found is None:
            raise Refusal(f"no user {who!r} in the passwd database",
                          "give a user name or uid that getent passwd knows")
    name, uid, gid = found
    if caller != 0 and uid != caller:
        raise Refusal(f"only root may explain another user than yourself (you are uid "
                      f"{caller}, {who!r} is uid {uid})",
                      "run 'nsgate explain' without a user to see your own, or run it as root")
    notes: list[str] = []
    accounts = load_accounts()
    report: dict[str, object] = {"user": text(name), "uid": uid}
    for kind, path in PATHS.items():
        report["sub" + kind] = _explain_ranges(path, kind, name, uid, accounts, notes)
    report["sources"] = _explain_sources(name, uid, read(LOGIN_DEFS, notes) or b"",
                                         read(NSSWITCH, notes) or b"", notes)
    report["nics"] = nics = _explain_nics(name, gid, notes)
    if any(nic["bridge"] == PRIVATE_BRIDGE for nic in nics):
        from nsgate.cli.admin import explain_network

        report["network"] = explain_network.explain(uid, notes)
    from nsgate.cli.admin import explain_session

    report["session"] = explain_session.explain(name, uid, gid, notes)
    report["notes"] = notes
    if args.json:
        out.json(report)
    else:
        _render_explain(out, report)
    return 0


def _explain_ranges(path: str, kind: str, name: bytes, uid: int, accounts: Accounts,
                    notes: list[str]) -> dict[str, object]:
    from nsgate.policy.subid_lint import is_blank_or_comment, numbered_lines

    data = read(path, notes)
    ranges: list[dict[str, object]] = []
    ignored: list[dict[str, object]] = []
    uid_text = str(uid).encode()
    for lineno, raw in numbered_lines(data or b""):
        if is_blank_or_comment(raw):
            continue
        parsed = subid.parse_line(raw, lineno)
        owner = raw.split(b":", 1)[0]
        if isinstance(parsed, subid.IgnoredLine):
            if owner in (name, uid_text):
                ignored.append({"line": lineno, "reason": parsed.reason})
            continue
        if owner == name:
            via = "name"
        elif owner == uid_text:
            via = "uid"
        elif accounts.owner_uid(owner) == uid:
            via = "alias " + owner.decode("utf-8", "backslashreplace")
        else:
            continue
        usable = parsed.count >= FULL_CONTAINER
        ranges.append({
            "start": parsed.start, "count": parsed.count, "last": parsed.end - 1,
            "line": lineno, "via": via, "usable": usable,
            "note": "full container" if usable else
            f"only {parsed.count} ids: rootless runtimes need {FULL_CONTAINER} for a full "
            "container"})
    return {"file": path, "ranges": ranges, "ignored": ignored}


def _explain_sources(name: bytes, uid: int, login_defs: bytes, nsswitch: bytes,
                     notes: list[str]) -> dict[str, object]:
    """The sources of the `subid:` line in order, asked about the user as the helpers ask them:
    which answers (what subid_db.holding_source says), which pass, fail or are not reached."""
    from nsgate.policy.config import subid_line
    from nsgate.system import subid_survey

    found = subid_line(nsswitch)
    result: dict[str, object] = {
        "file": NSSWITCH, "line": found[0] if found else None,
        "order": [text(token) for token in found[1]] if found else ["files"]}
    for kind, path in PATHS.items():
        try:
            reports = subid_survey.survey(kind, name, uid, login_defs, nsswitch)
        except Refusal as refusal:
            result[kind] = {"answering": None, "refused": refusal.first, "sources": []}
            notes.append(f"the helpers refuse every {kind} request: {refusal.first}")
            continue
        answering = next((r.description for r in reports if r.role == "answers"), None)
        failing = next((r for r in reports if r.role == "fails"), None)
        result[kind] = {
            "answering": answering, "refused": failing.error if failing else None,
            "sources": [{"source": text(r.source), "where": r.description, "role": r.role,
                         "ranges": [{"start": start, "count": count, "last": start + count - 1}
                                    for start, count in r.ranges],
                         "error": r.error} for r in reports]}
        if failing is not None:
            notes.append(f"the helpers refuse the {kind} requests of this user: "
                         f"{failing.error}")
        elif answering is not None and answering != path:
            notes.append(f"the helpers take this user's {kind} ranges from {answering}, not "
                         f"from {path} shown above")
    return result


def _explain_nics(name: bytes, gid: int, notes: list[str]) -> list[dict[str, object]]:
    from nsgate.policy import usernet_lint
    from nsgate.system import accounts as nss

    tokens = usernet.tokens_of(name, nss.group_names_of(name, gid))
    grants = [g for g in usernet_lint.grants(read(USERNET, notes) or b"")
              if g.token in tokens and usernet.recordable(g.token)]
    kinds: dict[tuple[bytes, bytes], list[usernet.Grant]] = {}
    for grant in grants:
        kinds.setdefault((grant.nic_type, grant.bridge), []).append(grant)
    db = _read_nics_for_explain(notes) if kinds else b""
    live = set(link_kinds(notes) or {}) if kinds else set()
    lines = nicdb.parse(db) if db is not None else []
    result = []
    for (nic_type, bridge), applicable in kinds.items():
        alive = [line for line in lines if line.valid
                 and line.dev.decode("utf-8", "surrogateescape") in live]
        by_owner = nicdb.nics_by_owner(alive, nic_type, bridge)
        decision = usernet.decide(applicable, by_owner)
        devs = sorted({dev.decode() for devs in decision.used.values() for dev in devs})
        result.append({
            "type": nic_type.decode("utf-8", "backslashreplace"),
            "bridge": bridge.decode("utf-8", "backslashreplace"),
            "quota": decision.capacity,
            "used": len(devs) if db is not None else None,
            "room": (decision.owner is not None) if db is not None else None,
            "interfaces": devs,
            "grants": [{"token": g.token.decode("utf-8", "backslashreplace"),
                        "count": g.number, "line": g.lineno,
                        "via": "group" if g.token.startswith(b"@") else "user"}
                       for g in applicable]})
    return result


def _read_nics_for_explain(notes: list[str]) -> bytes | None:
    from nsgate.system import file_facts

    try:
        return file_facts.read(NICS) or b""
    except PermissionError:
        notes.append(f"{NICS} is readable by root only: current use is unknown (run as root "
                     "to see it)")
        return None


def _render_explain(out: Out, report: dict[str, object]) -> None:
    out.say(f"{report['user']} (uid {report['uid']})")
    for kind in ("uid", "gid"):
        section = report["sub" + kind]
        assert isinstance(section, dict)
        out.say("")
        out.say(f"subordinate {kind}s ({section['file']}):")
        rows = [[f"{r['start']}-{r['last']}", str(r["count"]), str(r["line"]), str(r["via"]),
                 str(r["note"])] for r in section["ranges"]]
        if rows:
            out.table(["RANGE", "COUNT", "LINE", "VIA", "USABLE"], rows)
        else:
            out.say(f"  none: user namespaces of this user can map only its own {kind}")
        for item in section["ignored"]:
            out.say(f"  line {item['line']} is ignored: {item['reason']}")
    _render_sources(out, report["sources"])
    nics = report["nics"]
    assert isinstance(nics, list)
    out.say("")
    out.say(f"nics ({USERNET}):")
    if not nics:
        out.say("  none: no lxc-usernet line names this user or one of its groups")
    else:
        rows = []
        for nic in nics:
            grants = ", ".join(f"{g['token']} {g['count']} (line {g['line']})"
                               for g in nic["grants"])
            used = "?" if nic["used"] is None else str(nic["used"])
            rows.append([nic["type"], nic["bridge"], str(nic["quota"]), used, grants,
                         ", ".join(nic["interfaces"]) or "-"])
        out.table(["TYPE", "BRIDGE", "QUOTA", "USED", "GRANTS", "NICS"], rows)
    if "network" in report:
        from nsgate.cli.admin import explain_network

        network = report["network"]
        assert isinstance(network, dict)
        explain_network.render(out, network)
    from nsgate.cli.admin import explain_session

    session = report["session"]
    assert isinstance(session, dict)
    explain_session.render(out, session)
    notes = report["notes"]
    assert isinstance(notes, list)
    for note in notes:
        out.say(f"note: {note}")


def _render_sources(out: Out, sources: object) -> None:
    """The table of the `subid:` sources, when the line names more than the files."""
    assert isinstance(sources, dict)
    if sources["order"] == ["files"]:
        return
    out.say("")
    out.say(f"subid sources ({sources['file']} line {sources['line']}: "
            f"{' '.join(sources['order'])}):")
    rows = []
    for kind in ("uid", "gid"):
        for item in sources[kind]["sources"]:
            held = ", ".join(f"{r['start']}-{r['last']}" for r in item["ranges"]) or "-"
            rows.append([kind, item["where"], item["role"],
                         f"error: {item['error']}" if item["error"] else held])
    if rows:
        out.table(["KIND", "SOURCE", "ROLE", "RANGES"], rows)
