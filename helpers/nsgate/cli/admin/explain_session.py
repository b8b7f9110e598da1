"""The session part of `nsgate explain`: what a login of the user gets from
/etc/nsgate/session.conf (subordinate ids, a delegated cgroup, its limits), and which line, or
the default, decided each; and the user's cgroup as it is now."""

from nsgate.cli.admin.common import LOGIN_DEFS, SESSION_CONF, Out, read
from nsgate.errors import Refusal


def explain(name: bytes, uid: int, gid: int, notes: list[str]) -> dict[str, object]:
    from nsgate.policy import cgroup_limits, install_lint, session_conf, session_conf_lint
    from nsgate.policy.findings import text
    from nsgate.system import accounts as nss
    from nsgate.system import file_facts

    groups = nss.group_names_of(name, gid)
    report: dict[str, object] = {"file": SESSION_CONF, "groups": [text(g) for g in groups],
                                 "error": None}
    st = file_facts.lstat(SESSION_CONF)
    unsafe = (session_conf_lint.lint_file_kind(st)
              + install_lint.lint_trusted_file(st, file_facts.ancestors(SESSION_CONF)))
    data = read(SESSION_CONF, notes)
    if data is None and not unsafe and file_facts.lstat(SESSION_CONF).exists:
        report.update(state="unreadable", subids=None, cgroup=None, limits=[], cgroup_now=None)
        return report
    try:
        if unsafe:
            raise Refusal(unsafe[0].message)
        try:
            conf = session_conf.parse(data or b"")
        except Refusal as refusal:
            raise Refusal(f"{SESSION_CONF}: {refusal.first}", *refusal.details) from None
        login_defs = read(LOGIN_DEFS, []) or b""
        settings = conf.settings_for(name, uid, groups, login_defs)
    except Refusal as refusal:
        report.update(state="refused", error=refusal.first, subids=None, cgroup=None,
                      limits=[], cgroup_now=None)
        return report
    report["state"] = "applied" if data is not None else "absent"
    try:
        report["default_uids"] = list(session_conf.login_uid_range(login_defs))
    except Refusal:
        report["default_uids"] = None  # no key needs the default
    report["uid"] = uid
    report["subids"] = {"value": settings.subids, "origin": settings.origin["subids"]}
    report["cgroup"] = {"value": settings.cgroup, "origin": settings.origin["cgroup"]}
    limits = []
    for key in cgroup_limits.KEYS:
        value = settings.limits.get(key, settings.unapplied.get(key))
        limits.append({"key": key, "value": value, "origin": settings.origin[key],
                       "applied": key in settings.limits})
    report["limits"] = limits
    report["cgroup_now"] = live_cgroup(uid)
    return report


def live_cgroup(uid: int) -> list[dict[str, object]] | None:
    """The user's cgroup as it is now, per hierarchy (`system.cgroups.describe`: [] if the
    user has none); None if it cannot be looked at here."""
    from nsgate.system import cgroups

    try:
        return cgroups.describe(uid)
    except (Refusal, OSError):
        return None


def render(out: Out, report: dict[str, object]) -> None:
    out.say("")
    out.say(f"session ({report['file']}):")
    if report["state"] == "refused":
        out.say(f"  refused: {report['error']}")
        out.say("  so the session hook sets up nothing at login, for anyone")
        return
    if report["state"] == "unreadable":
        out.say("  not known: the file cannot be read here (run as root)")
        return
    if report["state"] == "absent":
        out.say("  no file: the defaults apply (subids and a cgroup for UID_MIN..UID_MAX of "
                "/etc/login.defs, no limits)")
    rows = []
    for key in ("subids", "cgroup"):
        setting = report[key]
        assert isinstance(setting, dict)
        origin = str(setting["origin"])
        bounds = report["default_uids"]
        if origin == "default" and isinstance(bounds, list):
            inside = "inside" if setting["value"] else "outside"
            origin += (f" (uid {report['uid']} is {inside} UID_MIN..UID_MAX, "
                       f"{bounds[0]}..{bounds[1]})")
        rows.append([key, "yes" if setting["value"] else "no", origin])
    limits = report["limits"]
    assert isinstance(limits, list)
    for limit in limits:
        value = "-" if limit["value"] is None else str(limit["value"])
        if limit["value"] is not None and not limit["applied"]:
            value += " (not applied: no cgroup)"
        origin = "default (no limit)" if limit["value"] is None else str(limit["origin"])
        rows.append([str(limit["key"]), value, origin])
    out.table(["SETTING", "VALUE", "FROM"], rows)
    now = report["cgroup_now"]
    if isinstance(now, list):
        if not now:
            out.say("  cgroup now: none (made at a login, removed once the last session has "
                    "closed and it is empty)")
            return
        out.say("  cgroup now:")
        rows = []
        for place in now:
            limits = place["limits"]
            assert isinstance(limits, dict)
            shown = " ".join(f"{k}={v}" for k, v in limits.items())
            owner, processes = place["owner"], place["processes"]
            rows.append([str(place["hierarchy"]), str(place["path"]),
                         "-" if owner is None else f"uid {owner}",
                         "?" if processes is None else str(processes), shown or "-"])
        out.table(["HIERARCHY", "CGROUP", "DELEGATE", "PROCESSES", "LIMITS"], rows,
                  indent="    ")
