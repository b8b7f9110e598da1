"""nsgate subid add|remove|allocate: edits of /etc/subuid and /etc/subgid, as root, under
shadow's locks."""

from nsgate.cli.admin.common import (
    LOGIN_DEFS,
    PATHS,
    Out,
    Usage,
    load_accounts,
    number,
    parse,
    print_note,
    read,
    require_root,
    words,
)
from nsgate.errors import Refusal
from nsgate.policy import subid
from nsgate.policy.numbers import UINT32_MAX, parse_decimal

SUBID_USAGE = ("usage: nsgate subid add|remove USER START COUNT [-g|--gid] | "
               "nsgate subid allocate USER [--count N | --if-missing] [-g|--gid]")


def run(out: Out, argv: list[str]) -> int:
    from nsgate.policy import subid_edit

    if not argv or argv[0] not in ("add", "remove", "allocate"):
        raise Usage(SUBID_USAGE)
    action = argv[0]
    allowed = {"-g", "--gid"} | ({"--count", "--if-missing"} if action == "allocate" else set())
    args = parse(argv[1:], allowed)
    given = words(args, 1 if action == "allocate" else 3, 1 if action == "allocate" else 3,
                   SUBID_USAGE)
    owner = given[0].encode("utf-8", "surrogateescape")
    if not subid_edit.valid_owner(owner):
        raise Usage(f"{given[0]!r} cannot be an owner in the file: a user name or a decimal uid "
                    "without ':', white space or a leading '+', '-' or '#'")
    kind = "gid" if args.gid else "uid"
    path = PATHS[kind]
    start = size = 0
    if action == "allocate":
        size_arg = None if args.count is None else number(args.count, "--count")
        if size_arg == 0:
            raise Usage("--count must be at least 1")
        if size_arg is not None and args.if_missing:
            raise Usage("--if-missing allocates what /etc/login.defs asks for: no --count")
    else:
        start, size = number(given[1], "START"), number(given[2], "COUNT")
        if size == 0:
            raise Usage("COUNT must be at least 1: a range of 0 ids grants nothing")
        if start + size > subid.ID_SPACE_END:
            raise Usage(f"the range {start}-{start + size - 1} goes past the last id "
                        "4294967295")
    require_root(f"nsgate subid {action}")
    accounts = load_accounts()
    if action == "add" and accounts.owner_uid(owner) is None:
        raise Refusal(f"no user {given[0]!r} in the passwd database",
                      "create the user first, or give its numeric uid; nothing was changed")
    from nsgate.system import subid_writer

    if action == "allocate":
        name, uid = _user(owner, given[0])
        login_defs = read(LOGIN_DEFS, []) or b""
        if args.if_missing:
            found = subid_writer.ensure(kind, name, uid, accounts, login_defs)
            out.say(found or f"{given[0]} already holds a range in {path}; nothing was changed")
            return 0

    if action == "add":
        report, notes = subid_writer.edit(path, lambda data: subid_edit.add(
            data, path, kind, owner, start, size, accounts))
    elif action == "remove":
        report, notes = subid_writer.edit(path, lambda data: subid_edit.remove(
            data, path, owner, start, size, accounts))
    else:
        report, notes = subid_writer.edit(path, lambda data: subid_edit.allocate(
            data, path, kind, owner, uid, login_defs, size_arg, accounts))
    for note in notes:
        print_note(note)
    out.say(report)
    return 0


def _user(owner: bytes, given: str) -> tuple[bytes, int]:
    """(name, uid) of a user name or decimal uid; a decimal uid without a passwd entry stands
    for itself."""
    from nsgate.system import accounts

    found = accounts.user(owner)
    if found is not None:
        return found[0], found[1]
    uid = parse_decimal(owner, UINT32_MAX)
    if uid is None:
        raise Refusal(f"no user {given!r} in the passwd database",
                      "create the user first, or give its numeric uid; nothing was changed")
    return owner, uid
