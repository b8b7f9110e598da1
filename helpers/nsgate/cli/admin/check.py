"""nsgate check: every finding about the files nsgate reads and about the install."""

from nsgate.cli.admin.common import (
    LOGIN_DEFS,
    NETWORKS_CONF,
    NICS,
    NSSWITCH,
    PATHS,
    SESSION_CONF,
    SYSTEM_READERS,
    TRUSTED_FILES,
    USERNET,
    Args,
    Out,
    link_kinds,
    load_accounts,
    print_note,
    read,
)
from nsgate.policy.accounts import Accounts
from nsgate.policy.findings import ERROR, WARNING, Finding, count


def run(out: Out, args: Args, libdir: str, libexecdir: str) -> int:
    from nsgate.policy import install_lint, nsswitch_lint, subid_lint, usernet_lint
    from nsgate.system import file_facts, subid_survey

    notes: list[str] = []
    accounts = load_accounts()
    findings: list[Finding] = []
    for path in TRUSTED_FILES:
        findings += install_lint.lint_trusted_file(file_facts.lstat(path),
                                                   file_facts.ancestors(path))
    for kind, path in PATHS.items():
        data = read(path, notes)
        if data is not None:
            findings += subid_lint.lint(path, data, kind, accounts, _lenient_readers(kind))
    nsswitch = read(NSSWITCH, notes)
    if nsswitch is not None:
        findings += nsswitch_lint.lint_subid_line(NSSWITCH, nsswitch, subid_survey.module_error)
    links = link_kinds(notes)
    usernet_data = read(USERNET, notes) or b""
    findings += usernet_lint.lint_usernet(USERNET, usernet_data, accounts, links)
    nics = read(NICS, notes)
    if nics is not None and links is not None:
        findings += usernet_lint.lint_nics(NICS, nics, usernet_lint.grants(usernet_data),
                                           set(links))
    findings += _session_conf(accounts, notes)
    plan_findings = _networks_conf(notes)
    findings += plan_findings or _network_table(notes, links)
    findings += _lock_leftovers()
    service_only = _service_only(libexecdir)
    findings += _install_findings(libdir, libexecdir, service_only)
    service, service_findings = _service(service_only)
    findings += service_findings
    errors, warnings = count(findings, ERROR), count(findings, WARNING)
    for note in notes:
        print_note(note)
    if args.json:
        out.json({"findings": [f.as_dict() for f in findings], "errors": errors,
                  "warnings": warnings, "service": service})
    else:
        for finding in findings:
            out.say(f"{finding.where}: {out.severity(finding.severity)}: {finding.message} "
                    f"[{finding.code}]")
        if not service_findings:
            out.say(f"{service['socket']}: info: {service['status']} [service]")
        out.say(f"nsgate check: {errors} error{'s' * (errors != 1)}, {warnings} "
                f"warning{'s' * (warnings != 1)}")
    return 1 if errors else 0


def _session_conf(accounts: Accounts, notes: list[str]) -> list[Finding]:
    """The session hook's policy (its ownership is among TRUSTED_FILES)."""
    from nsgate.policy import session_conf, session_conf_lint
    from nsgate.system import file_facts

    findings = session_conf_lint.lint_file_kind(file_facts.lstat(SESSION_CONF))
    data = read(SESSION_CONF, notes)
    if data is not None:
        findings += session_conf.lint(SESSION_CONF, data, accounts, read(LOGIN_DEFS, []) or b"")
    return findings


def _networks_conf(notes: list[str]) -> list[Finding]:
    """The private bridges' address plan: the trusted-file rule and whether it parses."""
    from nsgate.system import file_facts

    st = file_facts.lstat(NETWORKS_CONF)
    if not st.exists:
        return []
    from nsgate.policy import networks_conf_lint

    findings = networks_conf_lint.lint_file(st, file_facts.ancestors(NETWORKS_CONF))
    data = read(NETWORKS_CONF, notes)  # None for a link or a device: lint_file tells
    if data is not None:
        findings += networks_conf_lint.lint(NETWORKS_CONF, data, read(LOGIN_DEFS, []) or b"")
    return findings


def _network_table(notes: list[str], links: dict[str, str | None] | None) -> list[Finding]:
    """Whether the loaded table `inet nsgate` is the one networks.conf asks for (none without
    the file; called only when the file is safe and parses). A missing table matters once a
    private bridge exists: lxc-user-nic loads it before it makes the first one, so it is gone
    only if someone removed it (a firewall reload that flushes the ruleset)."""
    from nsgate.errors import Refusal
    from nsgate.policy import network_ruleset, nicnames
    from nsgate.system import file_facts, network_table

    exists = file_facts.lstat(NETWORKS_CONF).exists
    wanted = None
    if exists:
        from nsgate.policy import networks_conf

        data = read(NETWORKS_CONF, [])
        if data is None:
            return []
        try:
            wanted = network_ruleset.version(networks_conf.parse(
                data, read(LOGIN_DEFS, []) or b"", NETWORKS_CONF))
        except Refusal:
            return []
    try:
        loaded = network_table.loaded_version()
    except Refusal:
        if exists:
            notes.append(f"cannot read the nftables table {network_table.NAME} (nf_tables "
                         "answers root only): it was not checked; run as root to include it")
        return []
    fix = "'nsgate network apply' (as root) "
    if wanted is None and loaded is not None:
        message = f"no {NETWORKS_CONF}, but the table is loaded: {fix}removes it"
    elif wanted is not None and loaded is None:
        bridges = sorted(name for name in links or {}
                         if nicnames.private_bridge_uid(name.encode("utf-8", "surrogateescape"))
                         is not None)
        if not bridges:
            return []
        message = (f"not loaded, so the private bridges ({', '.join(bridges)}) have no NAT, "
                   f"isolation or spoofing filter: {fix}loads it")
    elif wanted is not None and loaded != wanted:
        message = f"loaded {loaded!r}, but {NETWORKS_CONF} asks for {wanted!r}: {fix}replaces it"
    else:
        return []
    return [Finding(f"nftables table {network_table.NAME}", None, "network-table", message)]


def _lock_leftovers() -> list[Finding]:
    """The lock protocol's link files in /etc that killed writers left (policy.lock_lint)."""
    from nsgate.policy import lock_lint
    from nsgate.system import file_facts, shadow_lock

    findings = []
    for name in sorted(file_facts.names_in("/etc")):
        pid = lock_lint.link_file_pid(name)
        if pid is not None:
            path = f"/etc/{name}"
            findings += lock_lint.lint_link_file(path, pid, file_facts.head(path),
                                                 shadow_lock.process_runs(pid))
    return findings


def _lenient_readers(kind: str) -> list[str]:
    """The privileged map helpers other than nsgate's that read the file of `kind`."""
    from nsgate.policy import install_lint
    from nsgate.system import file_facts

    found = []
    seen: set[str] = set()
    for path in SYSTEM_READERS[kind]:
        st = file_facts.resolved(path)
        if st.mode is None or st.path in seen:
            continue
        seen.add(st.path)
        name = "newuidmap" if kind == "uid" else "newgidmap"
        code = install_lint.LAUNCHER_CODE.format(name).encode()
        reader = install_lint.lenient_reader(
            path, st, install_lint.effective_capabilities(file_facts.capability_xattr(st.path)),
            kind, file_facts.holds(st.path, code))
        if reader is not None:
            found.append(reader)
    return found


def _service_only(libexecdir: str) -> bool:
    """Whether the helpers are installed for the service only (none of them privileged)."""
    from nsgate.policy import install_lint, service_lint
    from nsgate.system import file_facts

    helpers = []
    for name, need in install_lint.HELPERS.items():
        if need == "":
            continue
        path = f"{libexecdir}/{name}"
        st = file_facts.lstat(path)
        caps = install_lint.effective_capabilities(file_facts.capability_xattr(path))
        helpers.append((st, service_lint.privileged(st, caps,
                                                    need if isinstance(need, int) else None)))
    return service_lint.service_only(helpers)


def _service(service_only: bool) -> tuple[dict[str, object], list[Finding]]:
    """The service's socket: its findings, and its state for the report."""
    from nsgate.policy import service_lint
    from nsgate.system import file_facts, socket_probe

    path = service_lint.SOCKET
    findings = service_lint.lint_socket(file_facts.lstat(service_lint.SOCKET_DIR),
                                        file_facts.lstat(path))
    state = socket_probe.state(path)
    findings += service_lint.lint_reachable(state, service_only)
    return {"socket": path, "state": state, "helpers_need_service": service_only,
            "status": service_lint.status(state, service_only)}, findings


def _install_findings(libdir: str, libexecdir: str, service_only: bool) -> list[Finding]:
    from nsgate.policy import install_lint
    from nsgate.system import file_facts, integrity

    findings = []
    for name in install_lint.HELPERS:
        path = f"{libexecdir}/{name}"
        caps = install_lint.effective_capabilities(file_facts.capability_xattr(path))
        findings += install_lint.lint_helper(name, file_facts.lstat(path), caps, service_only)
    seen: set[str] = set()
    for directory in (libdir, libexecdir):
        for st in file_facts.ancestors(directory):
            if st.path not in seen:
                seen.add(st.path)
                findings += install_lint.lint_code_path(st, "the directory")
    findings += install_lint.lint_code_path(file_facts.lstat(libexecdir), "the directory")
    for st in file_facts.tree(libdir):
        if st.uid == 0 and st.mode is not None and st.mode & 0o170000 == 0o120000 \
                and st.path.rsplit("/", 1)[0] == libdir:
            # A package's link to the distribution's _cffi_backend: the helpers follow it
            # (integrity._check_link), so the file it resolves to and its directories are linted.
            target = file_facts.resolved(st.path)
            if target.mode is None:
                findings.append(Finding(st.path, None, "install", f"the library path {st.path} "
                                        "is a link to nothing: reinstall nsgate"))
            elif target.mode & 0o170000 != 0o100000:
                findings.append(Finding(st.path, None, "install", f"the library path {st.path} "
                                        f"links to {target.path}, which is not a regular file"))
            elif target.path != integrity.lexical_target(st.path):
                findings.append(Finding(st.path, None, "install", f"the library path {st.path} "
                                        f"reaches {target.path} through another symbolic link, "
                                        "which its owner could point elsewhere: link straight "
                                        "to the file"))
            for linked in (target, *file_facts.ancestors(target.path)):
                findings += install_lint.lint_code_path(linked, "the library path")
            continue
        findings += install_lint.lint_code_path(st, "the library path")
    return findings
