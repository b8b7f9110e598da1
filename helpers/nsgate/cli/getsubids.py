"""getsubids [-g] USER: list USER's subordinate ranges as shadow 4.13's getsubids selects them
(lines keyed by USER as given, and by the decimal id of the user, with -g the group, of that
name), of the lines the map helpers honour, in shadow's format `<index>: <user as given> <start>
<count>` (newuidmap.md §9). Unprivileged. Every answer goes to syslog (authpriv), as the map
helpers' decisions do."""

import grp
import posix
import pwd

from nsgate.errors import Refusal
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
    try:
        ranges = subid_db.list_ranges(kind, owner.encode("utf-8", "surrogateescape"),
                                      _id_of_name(kind, owner),
                                      files.read_small("/etc/nsswitch.conf"))
    except Refusal as refusal:
        return 1, "", refusal.text("getsubids")
    if not ranges:
        return 1, "", "Error fetching ranges\n"
    listing = "".join(f"{i}: {owner} {start} {count}\n" for i, (start, count) in enumerate(ranges))
    return 0, listing, ""


def _id_of_name(kind: str, owner: str) -> int | None:
    """The id whose decimal form also keys `owner`'s lines, as shadow's get_owner_id finds it:
    the uid of the user named `owner` (with -g, the gid of the group named `owner`); None if
    there is none. A decimal argument is a name like any other (it is one only if such a user
    exists)."""
    try:
        if kind == "gid":
            return grp.getgrnam(owner).gr_gid
        return pwd.getpwnam(owner).pw_uid
    except (KeyError, ValueError):
        return None
