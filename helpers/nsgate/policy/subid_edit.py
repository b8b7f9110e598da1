"""Edits of /etc/subuid and /etc/subgid for `nsgate subid`: bytes in, new bytes out. Every line
not added or removed is kept byte for byte (comments, blank lines, lines nsgate cannot read);
new lines are appended, as shadow's writers append them.

The allocation is shadow HEAD's (lib/find_new_sub_uids.c, find_new_sub_gids.c,
lib/subordinateio.c), so `nsgate subid allocate` and the session hook pick what `useradd` would:
- linear: the first free hole of SUB_UID_COUNT ids in SUB_UID_MIN..SUB_UID_MAX
  (`find_free_range`; defaults 100000, 600100000, 65536);
- deterministic, with `SUB_UID_DETERMINISTIC yes`: slot (uid - UID_MIN) of SUB_UID_COUNT ids
  from SUB_UID_MIN (defaults 1000, 65536, 4294967295, 65536), an error past SUB_UID_MAX unless
  `UNSAFE_SUB_UID_DETERMINISTIC_WRAP yes` (then the slot modulo the slots that fit); the same
  ranges on every host with the same login.defs, with no shared file;
- `SUB_UID_STORE_BY_UID yes`: the owner is written as the decimal uid.
/etc/subgid uses the SUB_GID_ keys, and its deterministic slot also comes from the user's uid.

Where nsgate differs, it fails closed: a login.defs number that is not plain decimal up to
4294967295 is refused (shadow reads octal and hex, and falls back to the default on garbage), and
a range that overlaps another owner's or swallows a real id is refused, never written.
"""

from nsgate.errors import Refusal
from nsgate.policy import subid
from nsgate.policy.accounts import Accounts
from nsgate.policy.config import login_defs_raw_value
from nsgate.policy.findings import text as shown_bytes
from nsgate.policy.numbers import UINT32_MAX, parse_decimal
from nsgate.policy.subid_lint import numbered_lines, real_ids_in, valid_lines

LINEAR_DEFAULTS = {"MIN": 100000, "MAX": 600100000, "COUNT": 65536}
DETERMINISTIC_DEFAULTS = {"MIN": 65536, "MAX": UINT32_MAX, "COUNT": 65536}
UID_MIN_DEFAULT = 1000
NOTHING_CHANGED = "nothing was changed"


class Edit:
    """The new content, and what to tell the administrator."""

    __slots__ = ("content", "report")

    def __init__(self, content: bytes, report: str) -> None:
        self.content = content
        self.report = report


def valid_owner(owner: bytes) -> bool:
    """An owner field a line can hold and the helpers can match."""
    return (bool(owner) and len(owner) < 256 and not owner.startswith((b"+", b"-", b"#"))
            and not any(c in owner for c in b":\n\r\t\v\f ") and owner.isascii()
            and owner.decode().isprintable())


def _append(data: bytes, line: bytes) -> bytes:
    if data and not data.endswith(b"\n"):
        data += b"\n"  # the last line had no newline: it gets one, the line itself is kept
    return data + line + b"\n"


def _shown(line: subid.SubidLine) -> str:
    return f"{line.owner.decode('utf-8', 'backslashreplace')}:{line.start}:{line.count}"


def add(data: bytes, path: str, kind: str, owner: bytes, start: int, count: int,
        accounts: Accounts, deterministic_for: int | None = None) -> Edit:
    """Append `owner:start:count`, refusing duplicates, overlaps with other owners' ranges and
    ranges that swallow real ids (what `nsgate check` reports as errors). `deterministic_for`:
    the uid whose deterministic range this is (the refusals then name the layout, not a
    free range, as the fix)."""
    new = subid.SubidLine(owner, start, count, 0)
    text = _shown(new)
    if deterministic_for is not None:
        text += f", the deterministic range of uid {deterministic_for},"
    lines = valid_lines(data)
    key = accounts.owner_key(owner)
    for line in lines:
        if accounts.owner_key(line.owner) == key and line.start == start and line.count == count:
            raise Refusal(f"{path} already grants {_shown(new)}: line {line.lineno} is "
                          f"{_shown(line)}", NOTHING_CHANGED)
    clashes = [line for line in lines if accounts.owner_key(line.owner) != key
               and line.start < new.end and new.start < line.end]
    flag = " -g" if kind == "gid" else ""
    if clashes:
        other = min(clashes, key=lambda x: x.lineno)
        if deterministic_for is None:
            fix = (f"choose a free range (nsgate subid allocate {shown_bytes(owner)}{flag})")
        else:
            fix = (f"this file does not follow the deterministic layout: move that range "
                   f"(nsgate subid remove {shown_bytes(other.owner)} {other.start} "
                   f"{other.count}{flag}), or give this user a range by hand "
                   f"(nsgate subid add)")
        raise Refusal(f"{text} overlaps {_shown(other)} on line {other.lineno} of {path}, "
                      "another owner's range",
                      "users sharing subordinate ids can reach each other's containers: " + fix,
                      NOTHING_CHANGED)
    real = real_ids_in(new, kind, accounts)
    if real:
        fix = ("choose a range above the ids in use" if deterministic_for is None else
               f"raise SUB_{kind.upper()}_MIN in /etc/login.defs above the ids in use (on "
               "every host alike)")
        raise Refusal(f"{text} contains {', '.join(real[:3])}",
                      f"its owner could act as that {'user' if kind == 'uid' else 'group'} on "
                      f"the host: {fix}", NOTHING_CHANGED)
    return Edit(_append(data, b"%s:%d:%d" % (owner, start, count)),
                f"added {_shown(new)} to {path}")


def remove(data: bytes, path: str, owner: bytes, start: int, count: int,
           accounts: Accounts) -> Edit:
    """Drop exactly the lines `owner:start:count` (the owner as written: a name matches name
    lines, a uid matches uid lines)."""
    target = b"%s:%d:%d" % (owner, start, count)
    shown = target.decode("utf-8", "backslashreplace")
    kept: list[tuple[int, bytes]] = []
    removed: list[tuple[int, bytes]] = []
    had_newline = data.endswith(b"\n")
    for lineno, raw in numbered_lines(data):
        (removed if raw == target else kept).append((lineno, raw))
    if not removed:
        details = ["nothing was changed"]
        key = accounts.owner_key(owner)
        same = [line for line in valid_lines(data) if accounts.owner_key(line.owner) == key]
        if same:
            details.insert(0, "the same user's lines: " + ", ".join(
                f"{_shown(line)} (line {line.lineno})" for line in same))
        raise Refusal(f"{path} has no line {shown}", *details)
    content = b"\n".join(raw for _, raw in kept)
    last = max(lineno for lineno, _ in kept + removed)
    if kept and (had_newline or kept[-1][0] != last):
        content += b"\n"
    where = ", ".join(str(lineno) for lineno, _ in removed)
    plural = "s" if len(removed) > 1 else ""
    return Edit(content, f"removed {shown} from {path} (line{plural} {where})")


def _key(kind: str, suffix: str) -> bytes:
    return f"SUB_{kind.upper()}_{suffix}".encode()


def _unquoted(login_defs: bytes, key: bytes) -> bytes | None:
    """The value of `key`; a quoted one is refused, as shadow's versions disagree on it (HEAD
    reads the quotes as part of the value, older ones strip them)."""
    raw = login_defs_raw_value(login_defs, key)
    if raw is not None and b'"' in raw:
        raise Refusal(f"{key.decode()} in /etc/login.defs is quoted ('{shown_bytes(raw)}'): "
                      "shadow HEAD reads the quotes as part of the value, older shadow drops "
                      "them", f"write the value without quotes; {NOTHING_CHANGED}")
    return raw


def _flag(login_defs: bytes, key: bytes) -> bool:
    """shadow's getdef_bool: `yes` in any case; anything else, or no line, is no."""
    value = _unquoted(login_defs, key)
    return value is not None and value.lower() == b"yes"


def defs_number(login_defs: bytes, key: bytes, default: int) -> int:
    """A number of login.defs, `default` where unset; anything but plain decimal up to
    4294967295 is refused (shadow would read octal, hex, or fall back to the default)."""
    raw = _unquoted(login_defs, key)
    if raw is None:
        return default
    value = parse_decimal(raw, UINT32_MAX)
    if value is None:
        raise Refusal(f"{key.decode()} in /etc/login.defs is '{shown_bytes(raw)}', not a "
                      "decimal number from 0 to 4294967295",
                      f"fix the line in /etc/login.defs; {NOTHING_CHANGED}")
    return value


def is_deterministic(login_defs: bytes, kind: str) -> bool:
    return _flag(login_defs, _key(kind, "DETERMINISTIC"))


def stored_owner(login_defs: bytes, kind: str, owner: bytes, uid: int) -> bytes:
    """The owner field a new line gets: the decimal uid with SUB_*_STORE_BY_UID yes (shadow's
    sub_uid_add, sub_gid_add), else `owner` as given."""
    if _flag(login_defs, _key(kind, "STORE_BY_UID")):
        return b"%d" % uid
    return owner


def _invalid(kind: str, low: int, high: int, count: int, why: str) -> Refusal:
    name = f"SUB_{kind.upper()}"
    return Refusal(f"invalid configuration in /etc/login.defs: {name}_MIN ({low}), "
                   f"{name}_MAX ({high}), {name}_COUNT ({count})",
                   f"{why}; {NOTHING_CHANGED}")


def linear_pool(login_defs: bytes, kind: str, count: int | None) -> tuple[int, int, int]:
    """(SUB_*_MIN, SUB_*_MAX, size) for the linear search, shadow's defaults where unset, the
    size `count` or else SUB_*_COUNT; a pool that cannot hold one range of that size is
    refused (shadow: find_free_range's ERANGE)."""
    low, high, size = (defs_number(login_defs, _key(kind, suffix), LINEAR_DEFAULTS[suffix])
                       for suffix in ("MIN", "MAX", "COUNT"))
    if count is not None:
        size = count
    if size == 0 or high < low or size > high - low + 1:
        name = f"SUB_{kind.upper()}"
        raise _invalid(kind, low, high, size, f"the pool {name}_MIN..{name}_MAX must hold "
                       f"{size if count is not None else name + '_COUNT'} ids, at least 1 (as "
                       "for useradd)")
    return low, high, size


def find_free_range(lines: list[subid.SubidLine], low: int, high: int,
                    count: int) -> int | None:
    """The first start in [low, high] where `count` ids overlap no line: shadow's walk over
    the ranges sorted by start (the hole before a range ends at the range or at high)."""
    if count == 0 or high < low or count > high - low + 1:
        return None
    for line in sorted(lines, key=lambda x: (x.start, x.count)):
        hole_end = min(line.start, high + 1)  # exclusive
        if hole_end > low and hole_end - low >= count:
            return low
        low = max(low, line.end)
        if low > high:
            return None
    return low if high - low + 1 >= count else None


def deterministic_range(login_defs: bytes, kind: str, uid: int) -> tuple[int, int]:
    """(start, count) of `uid`'s slot: shadow HEAD's find_new_sub_uids_deterministic (and
    _gids, also from the uid), with its defaults and its refusals."""
    name = f"SUB_{kind.upper()}"
    uid_min = defs_number(login_defs, b"UID_MIN", UID_MIN_DEFAULT)
    low, high, count = (defs_number(login_defs, _key(kind, suffix),
                                    DETERMINISTIC_DEFAULTS[suffix])
                        for suffix in ("MIN", "MAX", "COUNT"))
    if uid < uid_min:
        raise Refusal(f"uid {uid} is below UID_MIN {uid_min}: no deterministic range "
                      f"({name}_DETERMINISTIC is yes in /etc/login.defs)",
                      f"give the user a range by hand (nsgate subid add), or lower UID_MIN; "
                      f"{NOTHING_CHANGED}")
    if low > high or count == 0:
        raise _invalid(kind, low, high, count, f"{name}_MIN must not exceed {name}_MAX and "
                       f"{name}_COUNT must be at least 1")
    space = high - low + 1
    if count > space:
        raise _invalid(kind, low, high, count, f"{name}_MIN..{name}_MAX has no room for one "
                       f"range of {name}_COUNT ids")
    slots = space // count
    slot = uid - uid_min
    if slot >= slots:
        wrap = f"UNSAFE_{name}_DETERMINISTIC_WRAP".encode()
        if not _flag(login_defs, wrap):
            raise Refusal(f"the deterministic range of uid {uid} would end past {name}_MAX "
                          f"({high}): {name}_MIN..{name}_MAX ({low}-{high}) holds {slots} "
                          f"ranges of {count}, for uids {uid_min}-{uid_min + slots - 1}",
                          f"raise {name}_MAX or lower {name}_COUNT in /etc/login.defs (alike "
                          f"on every host); {NOTHING_CHANGED}")
        slot %= slots  # UNSAFE_..._WRAP: shadow's ring; a clash with a line is still refused
    return low + slot * count, count


def allocate(data: bytes, path: str, kind: str, owner: bytes, uid: int, login_defs: bytes,
             count: int | None, accounts: Accounts) -> Edit:
    """A new range for `owner` (uid `uid`) as login.defs asks. `count`: linear, the size
    instead of SUB_*_COUNT; deterministic, the first `count` ids of the user's slot (at most
    SUB_*_COUNT, so the start is still the one every host computes)."""
    name = f"SUB_{kind.upper()}"
    stored = stored_owner(login_defs, kind, owner, uid)
    if not valid_owner(stored):  # a directory's name may hold ':', blanks, even a newline
        raise Refusal(f"the user name '{shown_bytes(owner)}' cannot be an owner in {path}: it "
                      "would not read back as one owner:start:count line",
                      f"set {name}_STORE_BY_UID yes in /etc/login.defs (the line then names "
                      f"the uid), or give a range by hand to the uid; {NOTHING_CHANGED}")
    if parse_decimal(owner, UINT32_MAX) is None:
        accounts = accounts.knowing(owner, uid, None)  # its own uid is a real id, enumerated or not
    defaults = DETERMINISTIC_DEFAULTS if is_deterministic(login_defs, kind) else LINEAR_DEFAULTS
    if count is None and defs_number(login_defs, _key(kind, "COUNT"), defaults["COUNT"]) == 0:
        raise Refusal(f"{name}_COUNT is 0 in /etc/login.defs: it asks for no subordinate "
                      f"{kind}s (useradd allocates none)",
                      f"set {name}_COUNT (e.g. 65536) to allocate ranges; {NOTHING_CHANGED}")
    if is_deterministic(login_defs, kind):
        start, slot_size = deterministic_range(login_defs, kind, uid)
        if count is not None and count > slot_size:
            raise Refusal(f"--count {count} is more than {name}_COUNT ({slot_size}), the size "
                          f"of each uid's deterministic range: it would reach into uid "
                          f"{uid + 1}'s", f"give at most {slot_size}; {NOTHING_CHANGED}")
        return add(data, path, kind, stored, start, slot_size if count is None else count,
                   accounts, deterministic_for=uid)
    low, high, size = linear_pool(login_defs, kind, count)
    free = find_free_range(valid_lines(data), low, high, size)
    if free is None:
        raise Refusal(f"no free range of {size} ids left in {name}_MIN..{name}_MAX "
                      f"({low}-{high}) of /etc/login.defs",
                      f"raise {name}_MAX, or free ranges with nsgate subid remove; "
                      f"{NOTHING_CHANGED}")
    return add(data, path, kind, stored, free, size, accounts)


def held_range(data: bytes, name: bytes, uid: int,
               accounts: Accounts) -> subid.SubidLine | None:
    """The first valid line of the user: owner `name`, the decimal uid, or another name of
    the same uid (as `accounts` knows it). Only those owners' lines are parsed: this runs at
    every login, and the file may hold a million lines."""
    owners = {name, b"%d" % uid} | {other for other, other_uid in accounts.uid_of.items()
                                    if other_uid == uid}
    found = subid.scan_owners((data,), owners, numbered=False).lines
    return found[0] if found else None


def ensure(data: bytes, path: str, kind: str, name: bytes, uid: int, login_defs: bytes,
           accounts: Accounts) -> Edit | None:
    """None if the user already holds a range in the file, else the allocation login.defs asks
    for (a Refusal when it cannot be made safely)."""
    if held_range(data, name, uid, accounts) is not None:
        return None
    return allocate(data, path, kind, name, uid, login_defs, None, accounts)
