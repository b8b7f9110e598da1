"""What every verb of the admin command shares: its files, the command line, output for people
(aligned, colour only on a terminal) or for tools (JSON), and reading without trusting."""

import json
import os
import posix
import sys

from nsgate.errors import Refusal
from nsgate.policy import subid
from nsgate.policy.accounts import Accounts
from nsgate.policy.findings import ERROR
from nsgate.policy.numbers import parse_decimal

PATHS = {"uid": "/etc/subuid", "gid": "/etc/subgid"}
USERNET = "/etc/lxc/lxc-usernet"
LOGIN_DEFS = "/etc/login.defs"
NSSWITCH = "/etc/nsswitch.conf"
SESSION_CONF = "/etc/nsgate/session.conf"  # policy.session_conf.PATH
NETWORKS_CONF = "/etc/nsgate/networks.conf"  # policy.networks_conf.PATH
NICS = "/run/lxc/nics"
# The system's map helpers, and where nsgate-divert keeps the originals: privileged programs that
# read /etc/subuid and /etc/subgid besides nsgate's own helpers (unless they are nsgate's).
SYSTEM_READERS = {"uid": ("/usr/bin/newuidmap", "/usr/bin/newuidmap.distrib"),
                  "gid": ("/usr/bin/newgidmap", "/usr/bin/newgidmap.distrib")}
TRUSTED_FILES = (PATHS["uid"], PATHS["gid"], USERNET, LOGIN_DEFS, NSSWITCH, SESSION_CONF)
FULL_CONTAINER = 65536


class Usage(Exception):
    """A command line nsgate does not accept (exit 2)."""


class Args:
    def __init__(self) -> None:
        self.words: list[str] = []
        self.json = False
        self.gid = False
        self.count: str | None = None
        self.if_missing = False


def parse(argv: list[str], allowed: set[str]) -> Args:
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
        elif option == "--if-missing":
            args.if_missing = True
        elif option == "--count":
            args.count = value if "=" in item else next(items, None)
            if args.count is None:
                raise Usage("--count needs a number")
        if option != "--count" and "=" in item:
            raise Usage(f"{option} takes no value")
    return args


def words(args: Args, low: int, high: int, what: str) -> list[str]:
    if not low <= len(args.words) <= high:
        raise Usage(what)
    return args.words


def number(text_: str, what: str) -> int:
    value = parse_decimal(text_.encode("utf-8", "surrogateescape"), subid.ID_SPACE_END - 1)
    if value is None:
        raise Usage(f"{what} must be a decimal number from 0 to 4294967295 (no sign, no "
                    f"leading zero, no hex), not {text_!r}")
    return value


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


def print_note(message: str) -> None:
    sys.stderr.write(f"nsgate: note: {message}\n")


def require_root(what: str) -> None:
    if posix.geteuid() != 0:
        raise Refusal(f"{what} must run as root",
                      "it rewrites a file only root may change: run it as root (e.g. with sudo)")


def load_accounts() -> Accounts:
    from nsgate.system import accounts

    return accounts.load()


def read(path: str, notes: list[str]) -> bytes | None:
    """A file's content for reading only; None (and a note) if it cannot be read."""
    from nsgate.system import file_facts

    try:
        return file_facts.read(path)
    except PermissionError:
        notes.append(f"cannot read {path} (permission denied): it was not checked; run as "
                     "root to include it")
        return None


def link_kinds(notes: list[str]) -> dict[str, str | None] | None:
    """Every link of this network namespace and its kind, `openvswitch` for the links Open
    vSwitch says are its bridges (on its userspace datapath a bridge is a tap); None if netlink
    cannot say."""
    from nsgate.system import ovs, rtnl

    try:
        with rtnl.Rtnl() as net:
            links = {link.name: link.kind for link in net.links()}
    except OSError as err:
        notes.append(f"cannot list network links ({err.strerror}): bridges and nics were not "
                     "checked")
        return None
    for name in ovs.bridges() & set(links):
        links[name] = "openvswitch"
    return links
