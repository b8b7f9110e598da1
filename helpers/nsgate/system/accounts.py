"""The users and groups NSS knows (every source nsswitch.conf names), for `nsgate check`,
`explain` and `subid`. Enumeration only; what the ids mean is policy.accounts'."""

import grp
import os
import pwd

from nsgate.policy.accounts import Accounts


def _b(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def load() -> Accounts:
    users = [(_b(p.pw_name), p.pw_uid, p.pw_gid) for p in pwd.getpwall()]
    groups = [(_b(g.gr_name), g.gr_gid, [_b(m) for m in g.gr_mem]) for g in grp.getgrall()]
    return Accounts(users, groups)


def group_names_of(name: bytes, gid: int) -> list[bytes]:
    """The names of the groups a login of `name` gets (initgroups), as lxc-user-nic sees them
    in its caller's supplementary groups."""
    names = []
    for group_id in os.getgrouplist(name.decode("utf-8", "surrogateescape"), gid):
        try:
            names.append(_b(grp.getgrgid(group_id).gr_name))
        except KeyError:
            continue
    return names


def user(name: bytes) -> tuple[bytes, int, int] | None:
    """(name, uid, primary gid) of a user name or a decimal uid, None if NSS does not know it."""
    text = name.decode("utf-8", "surrogateescape")
    try:
        entry = pwd.getpwuid(int(text)) if text.isdigit() and text.isascii() else pwd.getpwnam(text)
    except (KeyError, ValueError, OverflowError):
        return None
    return _b(entry.pw_name), entry.pw_uid, entry.pw_gid


def by_name(name: bytes) -> tuple[bytes, int, int] | None:
    """(name, uid, primary gid) of the user `name` (a name only, never read as a uid, as PAM
    names a user), None if NSS does not know it."""
    try:
        entry = pwd.getpwnam(name.decode("utf-8", "surrogateescape"))
    except (KeyError, ValueError, UnicodeError):
        return None
    return _b(entry.pw_name), entry.pw_uid, entry.pw_gid
