"""nsgate: the administrator's command (nsgate(8)). Not setuid: read-only verbs run as anyone,
`subid` and `nics gc` refuse unless run as root.

    nsgate check [--json]                         lint every file nsgate reads, and the install
    nsgate explain [USER] [--json]                what a user may do, and why
    nsgate subid add|remove USER START COUNT [-g] edit /etc/subuid (-g: /etc/subgid) safely
    nsgate subid allocate USER [--count N] [-g]   add the next free range of the pool
    nsgate nics list [--json] | nics gc           the nic database, and pruning it

Exit status: 0 success (check: no errors), 1 errors found or an operation refused or failed,
2 usage error. Every failure is a one-line `nsgate: …` message, then its cause and its fix;
never a traceback.
"""

import json
import os
import posix
import sys

from nsgate.errors import Refusal
from nsgate.policy import nicdb, subid, usernet
from nsgate.policy.accounts import Accounts
from nsgate.policy.findings import ERROR, WARNING, Finding, count, text
from nsgate.policy.numbers import parse_decimal

VERSION = "0.1.0"  # as pyproject.toml
USAGE = """usage: nsgate check [--json]
       nsgate explain [USER] [--json]
       nsgate subid add USER START COUNT [-g|--gid]
       nsgate subid remove USER START COUNT [-g|--gid]
       nsgate subid allocate USER [--count N] [-g|--gid]
       nsgate nics list [--json]
       nsgate nics gc
       nsgate help | --help | --version
"""
HELP = USAGE + """
  check      lint /etc/subuid, /etc/subgid, /etc/lxc/lxc-usernet, /run/lxc/nics, the
             ownership of the files nsgate trusts, and the install; exit 1 on errors
  explain    a user's subordinate ranges and nic grants with current use (yourself, or
             anyone as root)
  subid      add, remove or allocate a range in /etc/subuid (-g: /etc/subgid), as root,
             under the lock useradd and usermod use, with a backup (FILE-)
  nics       list the nic database with liveness; gc removes lines of vanished nics (root)

Exit status: 0 success, 1 errors found or the operation refused or failed, 2 usage error.
See nsgate(8).
"""
PATHS = {"uid": "/etc/subuid", "gid": "/etc/subgid"}
USERNET = "/etc/lxc/lxc-usernet"
LOGIN_DEFS = "/etc/login.defs"
NSSWITCH = "/etc/nsswitch.conf"
NICS = "/run/lxc/nics"
TRUSTED_FILES = (PATHS["uid"], PATHS["gid"], USERNET, LOGIN_DEFS, NSSWITCH)
FULL_CONTAINER = 65536


class Usage(Exception):
    """A command line nsgate does not accept (exit 2)."""


class Args:
    def __init__(self) -> None:
        self.words: list[str] = []
        self.json = False
        self.gid = False
        self.count: str | None = None


def _parse(argv: list[str], allowed: set[str]) -> Args:
    args = Args()
    items = iter(argv)
    for item in items:
        if item == "--":
            args.words += list(items)
            break
        if not item.startswith("-") or item == "-":
            args.words.append(item)
            continue
        option, _, value = item.partition("=")
        if option not in allowed:
            raise Usage(f"unknown option {item!r} for this command")
        if option == "--json":
            args.json = True
        elif option in ("-g", "--gid"):
            args.gid = True
        elif option == "--count":
            args.count = value if "=" in item else next(items, None)
            if args.count is None:
                raise Usage("--count needs a number")
        if option != "--count" and "=" in item:
            raise Usage(f"{option} takes no value")
    return args


def _words(args: Args, low: int, high: int, what: str) -> list[str]:
    if not low <= len(args.words) <= high:
        raise Usage(what)
    return args.words


def _number(text_: str, what: str) -> int:
    value = parse_decimal(text_.encode("utf-8", "surrogateescape"), subid.ID_SPACE_END - 1)
    if value is None:
        raise Usage(f"{what} must be a decimal number from 0 to 4294967295 (no sign, no "
                    f"leading zero, no hex), not {text_!r}")
    return value


# --- output ----------------------------------------------------------------------------------


class Out:
    def __init__(self) -> None:
        colour_wanted = not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"
        self.colour = colour_wanted and sys.stdout.isatty()
        self.lines: list[str] = []

    def paint(self, word: str, code: str) -> str:
        return f"\033[{code}m{word}\033[0m" if self.colour else word

    def severity(self, severity: str) -> str:
        return self.paint(severity, "1;31" if severity == ERROR else "1;33")

    def say(self, line: str = "") -> None:
        self.lines.append(line)

    def json(self, value: object) -> None:
        self.lines.append(json.dumps(value, indent=2, ensure_ascii=False))

    def table(self, header: list[str], rows: list[list[str]], indent: str = "  ",
              highlight: dict[str, str] | None = None) -> None:
        """Aligned columns; cells equal to a key of `highlight` get that colour (after the
        alignment, so escapes never shift a column)."""
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
        for number, row in enumerate([header, *rows]):
            cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
            if number and highlight:
                cells = [self.paint(c, highlight[r]) if r in highlight else c
                         for c, r in zip(cells, row, strict=True)]
            line = indent + "  ".join(cells).rstrip()
            self.say(self.paint(line, "1") if number == 0 else line)


def _note(message: str) -> None:
    sys.stderr.write(f"nsgate: note: {message}\n")


# --- entry -----------------------------------------------------------------------------------


def main(argv: list[str], *, libdir: str, libexecdir: str) -> int:
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):  # any locale: a name it cannot show is escaped
            stream.reconfigure(errors="backslashreplace")
    out = Out()
    try:
        status = _dispatch(argv, out, libdir, libexecdir)
    except Usage as err:
        sys.stderr.write(f"nsgate: {err}\nTry 'nsgate help'.\n")
        return 2
    except Refusal as refusal:
        if refusal.usage:
            sys.stderr.write(f"nsgate: {refusal.first}\nTry 'nsgate help'.\n")
            return 2
        sys.stderr.write("".join(f"nsgate: {line}\n" for line in (refusal.first,
                                                                  *refusal.details)))
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("nsgate: interrupted\n")
        return 130
    except OSError as err:
        where = f" {err.filename}" if err.filename else ""
        sys.stderr.write(f"nsgate: cannot go on:{where}: {err.strerror or err}\n"
                         "nsgate: nothing more was done\n")
        return 1
    except Exception as err:  # noqa: BLE001 - the last line of defence: never a traceback
        sys.stderr.write(f"nsgate: internal error ({type(err).__name__}: {err}); nothing more "
                         "was done\n")
        return 1
    try:
        if out.lines:
            sys.stdout.write("\n".join(out.lines) + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        posix.dup2(posix.open("/dev/null", posix.O_WRONLY), 1)
    return status


def _dispatch(argv: list[str], out: Out, libdir: str, libexecdir: str) -> int:
    if not argv:
        raise Usage("a command is needed")
    verb, rest = argv[0], argv[1:]
    options = argv[:argv.index("--")] if "--" in argv else argv
    if verb in ("help", "-h") or "--help" in options:
        out.say(HELP.rstrip("\n"))
        return 0
    if verb == "--version":
        out.say(f"nsgate {VERSION}")
        return 0
    if verb == "check":
        args = _parse(rest, {"--json"})
        _words(args, 0, 0, "check takes no arguments")
        return _check(out, args, libdir, libexecdir)
    if verb == "explain":
        args = _parse(rest, {"--json"})
        words = _words(args, 0, 1, "usage: nsgate explain [USER] [--json]")
        return _explain(out, args, words[0] if words else None)
    if verb == "subid":
        return _subid(out, rest)
    if verb == "nics":
        if not rest or rest[0] not in ("list", "gc"):
            raise Usage("usage: nsgate nics list [--json] | nsgate nics gc")
        args = _parse(rest[1:], {"--json"} if rest[0] == "list" else set())
        _words(args, 0, 0, f"nics {rest[0]} takes no arguments")
        return _nics_list(out, args) if rest[0] == "list" else _nics_gc(out)
    raise Usage(f"unknown command {verb!r}")


def _require_root(what: str) -> None:
    if posix.geteuid() != 0:
        raise Refusal(f"{what} must run as root",
                      "it rewrites a file only root may change: run it as root (e.g. with sudo)")


def _accounts() -> Accounts:
    from nsgate.system import accounts

    return accounts.load()


def _read(path: str, notes: list[str]) -> bytes | None:
    """A file's content for reading only; None (and a note) if it cannot be read."""
    from nsgate.system import file_facts

    try:
        return file_facts.read(path)
    except PermissionError:
        notes.append(f"cannot read {path} (permission denied): it was not checked; run as "
                     "root to include it")
        return None


def _links(notes: list[str]) -> dict[str, str | None] | None:
    """Every link of this network namespace and its kind; None if netlink cannot say."""
    from nsgate.system import rtnl

    try:
        with rtnl.Rtnl() as net:
            return {link.name: link.kind for link in net.links()}
    except OSError as err:
        notes.append(f"cannot list network links ({err.strerror}): bridges and nics were not "
                     "checked")
        return None


# --- check -----------------------------------------------------------------------------------


def _check(out: Out, args: Args, libdir: str, libexecdir: str) -> int:
    from nsgate.policy import install_lint, subid_lint, usernet_lint
    from nsgate.system import file_facts

    notes: list[str] = []
    accounts = _accounts()
    findings: list[Finding] = []
    for path in TRUSTED_FILES:
        findings += install_lint.lint_trusted_file(file_facts.lstat(path),
                                                   file_facts.ancestors(path))
    for kind, path in PATHS.items():
        data = _read(path, notes)
        if data is not None:
            findings += subid_lint.lint(path, data, kind, accounts)
    links = _links(notes)
    usernet_data = _read(USERNET, notes) or b""
    findings += usernet_lint.lint_usernet(USERNET, usernet_data, accounts, links)
    nics = _read(NICS, notes)
    if nics is not None and links is not None:
        findings += usernet_lint.lint_nics(NICS, nics, usernet_lint.grants(usernet_data),
                                           set(links))
    findings += _install_findings(libdir, libexecdir)
    errors, warnings = count(findings, ERROR), count(findings, WARNING)
    for note in notes:
        _note(note)
    if args.json:
        out.json({"findings": [f.as_dict() for f in findings], "errors": errors,
                  "warnings": warnings})
    else:
        for finding in findings:
            out.say(f"{finding.where}: {out.severity(finding.severity)}: {finding.message} "
                    f"[{finding.code}]")
        out.say(f"nsgate check: {errors} error{'s' * (errors != 1)}, {warnings} "
                f"warning{'s' * (warnings != 1)}")
    return 1 if errors else 0


def _install_findings(libdir: str, libexecdir: str) -> list[Finding]:
    from nsgate.policy import install_lint
    from nsgate.system import file_facts

    findings = []
    for name in install_lint.HELPERS:
        path = f"{libexecdir}/{name}"
        caps = install_lint.effective_capabilities(file_facts.capability_xattr(path))
        findings += install_lint.lint_helper(name, file_facts.lstat(path), caps)
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
            if target.mode is None or target.mode & 0o170000 != 0o100000:
                findings.append(Finding(st.path, None, "install", f"the library path {st.path} "
                                        f"links to {target.path}, which is not a regular file"))
            elif target.path != file_facts.lexical_target(st.path):
                findings.append(Finding(st.path, None, "install", f"the library path {st.path} "
                                        f"reaches {target.path} through another symbolic link, "
                                        "which its owner could point elsewhere: link straight "
                                        "to the file"))
            for linked in (target, *file_facts.ancestors(target.path)):
                findings += install_lint.lint_code_path(linked, "the library path")
            continue
        findings += install_lint.lint_code_path(st, "the library path")
    return findings


# --- explain ---------------------------------------------------------------------------------


def _explain(out: Out, args: Args, who: str | None) -> int:
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
    accounts = _accounts()
    report: dict[str, object] = {"user": text(name), "uid": uid}
    for kind, path in PATHS.items():
        report["sub" + kind] = _explain_ranges(path, kind, name, uid, accounts, notes)
    nsswitch = _read(NSSWITCH, notes) or b""
    from nsgate.policy.config import InvalidSubidSource, subid_source

    try:
        module = subid_source(nsswitch)
    except InvalidSubidSource:
        module = b"(invalid)"
    if module is not None:
        notes.append(f"{NSSWITCH} names the subid NSS module "
                     f"{module.decode('utf-8', 'backslashreplace')}: the helpers ask it, not "
                     "the files shown here")
    report["nics"] = _explain_nics(name, gid, notes)
    report["notes"] = notes
    if args.json:
        out.json(report)
    else:
        _render_explain(out, report)
    return 0


def _explain_ranges(path: str, kind: str, name: bytes, uid: int, accounts: Accounts,
                    notes: list[str]) -> dict[str, object]:
    from nsgate.policy.subid_lint import is_blank_or_comment, numbered_lines

    data = _read(path, notes)
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


def _explain_nics(name: bytes, gid: int, notes: list[str]) -> list[dict[str, object]]:
    from nsgate.policy import usernet_lint
    from nsgate.system import accounts as nss

    tokens = usernet.tokens_of(name, nss.group_names_of(name, gid))
    grants = [g for g in usernet_lint.grants(_read(USERNET, notes) or b"")
              if g.token in tokens and usernet.recordable(g.token)]
    kinds: dict[tuple[bytes, bytes], list[usernet.Grant]] = {}
    for grant in grants:
        kinds.setdefault((grant.nic_type, grant.bridge), []).append(grant)
    db = _read_nics_for_explain(notes) if kinds else b""
    live = set(_links(notes) or {}) if kinds else set()
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
    notes = report["notes"]
    assert isinstance(notes, list)
    for note in notes:
        out.say(f"note: {note}")


# --- subid -----------------------------------------------------------------------------------


SUBID_USAGE = ("usage: nsgate subid add|remove USER START COUNT [-g|--gid] | "
               "nsgate subid allocate USER [--count N] [-g|--gid]")


def _subid(out: Out, argv: list[str]) -> int:
    from nsgate.policy import subid_edit

    if not argv or argv[0] not in ("add", "remove", "allocate"):
        raise Usage(SUBID_USAGE)
    action = argv[0]
    allowed = {"-g", "--gid"} | ({"--count"} if action == "allocate" else set())
    args = _parse(argv[1:], allowed)
    words = _words(args, 1 if action == "allocate" else 3, 1 if action == "allocate" else 3,
                   SUBID_USAGE)
    owner = words[0].encode("utf-8", "surrogateescape")
    if not subid_edit.valid_owner(owner):
        raise Usage(f"{words[0]!r} cannot be an owner in the file: a user name or a decimal uid "
                    "without ':', white space or a leading '+', '-' or '#'")
    kind = "gid" if args.gid else "uid"
    path = PATHS[kind]
    start = size = 0
    if action == "allocate":
        size_arg = None if args.count is None else _number(args.count, "--count")
        if size_arg == 0:
            raise Usage("--count must be at least 1")
    else:
        start, size = _number(words[1], "START"), _number(words[2], "COUNT")
        if size == 0:
            raise Usage("COUNT must be at least 1: a range of 0 ids grants nothing")
        if start + size > subid.ID_SPACE_END:
            raise Usage(f"the range {start}-{start + size - 1} goes past the last id "
                        "4294967295")
    _require_root(f"nsgate subid {action}")
    accounts = _accounts()
    if action != "remove" and accounts.owner_uid(owner) is None:
        raise Refusal(f"no user {words[0]!r} in the passwd database",
                      "create the user first, or give its numeric uid; nothing was changed")
    from nsgate.system import subid_writer

    if action == "add":
        report = subid_writer.edit(path, lambda data: subid_edit.add(
            data, path, kind, owner, start, size, accounts))
    elif action == "remove":
        report = subid_writer.edit(path, lambda data: subid_edit.remove(
            data, path, owner, start, size, accounts))
    else:
        login_defs = _read(LOGIN_DEFS, []) or b""
        report = subid_writer.edit(path, lambda data: subid_edit.allocate(
            data, path, kind, owner, login_defs, size_arg, accounts))
    out.say(report)
    return 0


# --- nics ------------------------------------------------------------------------------------


def _read_nics() -> bytes:
    from nsgate.system import file_facts

    try:
        return file_facts.read(NICS) or b""
    except PermissionError:
        raise Refusal(f"cannot read {NICS}: permission denied",
                      "lxc-user-nic keeps the database readable by root only: run "
                      "'nsgate nics list' as root") from None


def _nics_list(out: Out, args: Args) -> int:
    raw_lines = nicdb.split_lines(_read_nics())
    live = set(_links([]) or {})
    nics: list[dict[str, object]] = []
    unparsed: list[dict[str, object]] = []
    for lineno, raw in enumerate(raw_lines, 1):
        if not raw.strip():
            continue
        line = nicdb.NicLine(raw)
        if not line.valid:
            unparsed.append({"line": lineno, "text": text(raw)})
            continue
        dev = line.dev.decode("utf-8", "surrogateescape")
        nics.append({"line": lineno, "owner": text(line.owner), "type": text(line.nic_type),
                     "bridge": text(line.bridge), "interface": text(line.dev),
                     "live": dev in live})
    if args.json:
        out.json({"file": NICS, "nics": nics, "unparsed": unparsed})
        return 0
    if not nics and not unparsed:
        out.say(f"{NICS}: no nics recorded")
        return 0
    rows = [[str(n["line"]), str(n["owner"]), str(n["type"]), str(n["bridge"]),
             str(n["interface"]), "live" if n["live"] else "stale"]
            for n in nics]
    rows += [[str(u["line"]), "?", "", "", "", f"unreadable: {u['text']}"] for u in unparsed]
    out.table(["LINE", "OWNER", "TYPE", "BRIDGE", "INTERFACE", "STATE"],
              sorted(rows, key=lambda r: int(r[0])), indent="", highlight={"stale": "33"})
    stale = sum(1 for n in nics if not n["live"])
    if stale:
        out.say(f"{stale} stale line{'s' * (stale != 1)}: 'nsgate nics gc' (as root) removes "
                f"{'them' if stale != 1 else 'it'}")
    return 0


def _nics_gc(out: Out) -> int:
    _require_root("nsgate nics gc")
    from nsgate.system import nicdb_store, rtnl

    lock = nicdb_store.Locked()
    try:
        raw_lines = nicdb.split_lines(nicdb_store.read())
        with rtnl.Rtnl() as net:
            live = net.link_names()
        kept: list[bytes] = []
        removed: list[bytes] = []
        for raw in raw_lines:
            line = nicdb.NicLine(raw)
            stale = line.valid and line.dev.decode("utf-8", "surrogateescape") not in live
            (removed if stale else kept).append(raw)
        if removed:
            nicdb_store.replace(nicdb.join_lines(kept))
    finally:
        lock.release()
    if not removed:
        out.say(f"{NICS}: no stale lines")
        return 0
    out.say(f"removed {len(removed)} stale line{'s' * (len(removed) != 1)} from {NICS}:")
    for raw in removed:
        out.say(f"  {text(raw)}")
    return 0
