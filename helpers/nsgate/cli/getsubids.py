"""getsubids [-g] USER: list the subordinate ranges the map helpers would honour for USER, in
shadow's format `<index>: <user as given> <start> <count>` (newuidmap.md §9). Unprivileged.
Every answer goes to syslog (authpriv), as the map helpers' decisions do."""

import posix
import pwd

from nsgate.errors import Refusal
from nsgate.policy.numbers import UINT32_MAX, parse_decimal
from nsgate.system import audit, confine, files, subid_db

USAGE = ("Usage: getsubids [-g] user\n"
         "    list subuid ranges for user\n"
         "    pass -g to list subgid ranges\n")


def main(argv: list[str]) -> tuple[int, str, str]:
    """The exit status, the text for stdout and the text for stderr."""
    what = f"caller uid {posix.getuid()}, getsubids " + " ".join(
        repr(arg.encode("utf-8", "surrogateescape")[:40])[2:-1] for arg in argv[:3])
    status, out, err = _answer(argv)
    audit.record("getsubids", status == 0,
                 f"{what}: " + (f"ranges listed: {out.count(chr(10))}" if status == 0
                                else err.split("\n", 1)[0].removeprefix("getsubids: ")))
    return status, out, err


def _answer(argv: list[str]) -> tuple[int, str, str]:
    if not argv or (len(argv) == 1 and argv[0] == "-h"):
        return 1, "", USAGE
    confine.confine([], confine.READER)  # unprivileged, and it stays within reading
    kind, owner = ("gid", argv[1]) if len(argv) == 2 and argv[0] == "-g" else ("uid", argv[0])
    owner_bytes = owner.encode("utf-8", "surrogateescape")
    uid = _resolve(owner_bytes)
    try:
        ranges = [] if uid is None else subid_db.list_ranges(
            kind, owner_bytes, uid, files.read_small("/etc/nsswitch.conf"))
    except Refusal as refusal:
        text = "".join(f"getsubids: {line}\n" for line in (refusal.first, *refusal.details))
        return 1, "", text
    if not ranges:
        return 1, "", "Error fetching ranges\n"
    listing = "".join(f"{i}: {owner} {start} {count}\n" for i, (start, count) in enumerate(ranges))
    return 0, listing, ""


def _resolve(owner: bytes) -> int | None:
    """The uid a getsubids argument denotes: a decimal uid, or a user name."""
    uid = parse_decimal(owner, UINT32_MAX)
    if uid is not None:
        return uid
    try:
        return pwd.getpwnam(owner.decode("utf-8", "surrogateescape")).pw_uid
    except (KeyError, ValueError):
        return None
