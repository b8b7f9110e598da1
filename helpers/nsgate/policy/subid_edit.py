"""Edits of /etc/subuid and /etc/subgid for `nsgate subid`: bytes in, new bytes out. Every line
not added or removed is kept byte for byte (comments, blank lines, lines nsgate cannot read);
new lines are appended, as shadow's writers append them. The allocation is shadow's
`find_new_sub_uids` (lib/subordinateio.c `find_free_range`), so `nsgate subid allocate` picks
what `useradd` would pick."""

from nsgate.errors import Refusal
from nsgate.policy import subid
from nsgate.policy.accounts import Accounts
from nsgate.policy.config import login_defs_value
from nsgate.policy.numbers import UINT32_MAX, parse_decimal
from nsgate.policy.subid_lint import numbered_lines, real_ids_in, valid_lines

POOL_DEFAULTS = {b"MIN": 100000, b"MAX": 600100000, b"COUNT": 65536}


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
        accounts: Accounts) -> Edit:
    """Append `owner:start:count`, refusing duplicates, overlaps with other owners' ranges and
    ranges that swallow real ids (what `nsgate check` reports as errors)."""
    new = subid.SubidLine(owner, start, count, 0)
    text = _shown(new)
    lines = valid_lines(data)
    key = accounts.owner_key(owner)
    for line in lines:
        if accounts.owner_key(line.owner) == key and line.start == start and line.count == count:
            raise Refusal(f"{path} already grants {text}: line {line.lineno} is "
                          f"{_shown(line)}", "nothing was changed")
    clashes = [line for line in lines if accounts.owner_key(line.owner) != key
               and line.start < new.end and new.start < line.end]
    if clashes:
        other = min(clashes, key=lambda x: x.lineno)
        raise Refusal(f"{text} overlaps {_shown(other)} on line {other.lineno} of {path}, "
                      "another owner's range",
                      "users sharing subordinate ids can reach each other's containers: "
                      f"choose a free range (nsgate subid allocate "
                      f"{owner.decode('utf-8', 'backslashreplace')}{' -g' if kind == 'gid' else ''}"
                      ")", "nothing was changed")
    real = real_ids_in(new, kind, accounts)
    if real:
        raise Refusal(f"{text} contains {', '.join(real[:3])}",
                      f"its owner could act as that {'user' if kind == 'uid' else 'group'} on "
                      "the host: choose a range above the ids in use", "nothing was changed")
    return Edit(_append(data, b"%s:%d:%d" % (owner, start, count)),
                f"added {text} to {path}")


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


def pool(login_defs: bytes, kind: str) -> tuple[int, int, int]:
    """(SUB_*_MIN, SUB_*_MAX, SUB_*_COUNT) from login.defs, shadow's defaults where unset."""
    values = []
    for suffix in (b"MIN", b"MAX", b"COUNT"):
        key = b"SUB_" + kind.upper().encode() + b"_" + suffix
        raw = login_defs_value(login_defs, key)
        if raw is None:
            values.append(POOL_DEFAULTS[suffix])
            continue
        value = parse_decimal(raw, UINT32_MAX)
        if value is None:
            raise Refusal(f"{key.decode()} in /etc/login.defs is "
                          f"'{raw.decode('utf-8', 'backslashreplace')}', not a decimal number",
                          "fix the line in /etc/login.defs; nothing was changed")
        values.append(value)
    low, high, count = values
    if low > high or count >= high or low + count - 1 > high:
        name = f"SUB_{kind.upper()}"
        raise Refusal(f"invalid configuration in /etc/login.defs: {name}_MIN ({low}), "
                      f"{name}_MAX ({high}), {name}_COUNT ({count})",
                      f"the pool {name}_MIN..{name}_MAX must hold {name}_COUNT ids "
                      "(as for useradd); nothing was changed")
    return low, high, count


def find_free_range(lines: list[subid.SubidLine], low: int, high: int,
                    count: int) -> int | None:
    """The first start in [low, high] where `count` ids overlap no line: shadow's walk over
    the ranges sorted by start (a hole before a range counts up to min(range start, high))."""
    if count == 0 or high < low:
        return None
    for line in sorted(lines, key=lambda x: (x.start, x.count)):
        hole_end = min(line.start, high)
        if hole_end > low and hole_end - low >= count:
            return low
        low = max(low, line.end)
        if low > high:
            return None
    return low if high - low + 1 >= count else None


def allocate(data: bytes, path: str, kind: str, owner: bytes, login_defs: bytes,
             count: int | None, accounts: Accounts) -> Edit:
    low, high, default_count = pool(login_defs, kind)
    size = default_count if count is None else count
    start = find_free_range(valid_lines(data), low, high, size)
    name = f"SUB_{kind.upper()}"
    if start is None:
        raise Refusal(f"no free range of {size} ids left in {name}_MIN..{name}_MAX "
                      f"({low}-{high}) of /etc/login.defs",
                      f"raise {name}_MAX, or free ranges with nsgate subid remove; "
                      "nothing was changed")
    return add(data, path, kind, owner, start, size, accounts)
