"""Tiny independent oracles, written from the documented formats (docstrings of nsgate.policy,
newuidmap.md, lxc-user-nic.md), never from nsgate's code: regular expressions and brute force
where nsgate searches bytes and walks sorted ranges. Shared by several harnesses."""

from __future__ import annotations

import re
from itertools import pairwise

ID_SPACE_END = 1 << 32
_CANONICAL = re.compile(rb"0|[1-9][0-9]*")
_SUBID_LINE = re.compile(rb"([^:\n]+):(0|[1-9][0-9]*):(0|[1-9][0-9]*)")


def canonical(text: bytes, maximum: int) -> int | None:
    """`0` or `[1-9][0-9]*` with a value of at most `maximum` (below 10**20)."""
    if len(text) > 20 or not _CANONICAL.fullmatch(text):
        return None
    value = int(text)
    return value if value <= maximum else None


def file_lines(data: bytes) -> list[bytes]:
    """The lines of a file; a last line without a newline is a line, a final newline adds none."""
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    return lines


def subid_line(line: bytes) -> tuple[bytes, int, int] | None:
    """`owner:start:count` (newuidmap.md §6.1): (owner, start, count) if the line grants ids."""
    if len(line) > 1022:  # shadow's 1024-byte buffer, newline and NUL included
        return None
    match = _SUBID_LINE.fullmatch(line)
    if match is None or match[1][:1] in (b"+", b"-"):
        return None
    start, count = int(match[2]), int(match[3])
    if start >= ID_SPACE_END or not 1 <= count < ID_SPACE_END or start + count > ID_SPACE_END:
        return None
    return match[1], start, count


def subid_owner_field(line: bytes) -> bytes:
    return line.split(b":", 1)[0]


def gaps(owned: list[tuple[int, int]], start: int, count: int) -> list[tuple[int, int]]:
    """The parts [a, b) of [start, start + count) no owned (start, count) covers, merged.
    Brute force on elementary segments: no owned boundary falls inside one, so a segment is
    covered everywhere or nowhere, and its first id tells which."""
    end = start + count
    points = sorted({start, end} | {p for s, c in owned for p in (s, s + c) if start < p < end})
    missing: list[tuple[int, int]] = []
    for a, b in pairwise(points):
        if not any(s <= a < s + c for s, c in owned):
            if missing and missing[-1][1] == a:
                missing[-1] = (missing[-1][0], b)
            else:
                missing.append((a, b))
    return missing


def covered(owned: list[tuple[int, int]], start: int, count: int) -> bool:
    return not gaps(owned, start, count)


_IFNAME_BYTES = frozenset(range(0x21, 0x7F)) - frozenset(b"/:%")


def ifname(name: bytes) -> bool:
    """A kernel interface name nsgate accepts: 1 to 15 printable ASCII bytes, none of `/`, `:`,
    `%` or white space, not `.` or `..`."""
    return (1 <= len(name) <= 15 and name not in (b".", b"..")
            and all(c in _IFNAME_BYTES for c in name))


def ifname_template(name: bytes) -> bool:
    """A kernel name template (`net%d`, lxc-user-nic.md amendments): at most 15 bytes, one `%d`
    and otherwise what an interface name may hold."""
    return len(name) <= 15 and re.fullmatch(rb"([^%]*)%d([^%]*)", name, re.DOTALL) is not None \
        and all(c in _IFNAME_BYTES for c in name.replace(b"%d", b""))


def nic_line(raw: bytes) -> tuple[bytes, bytes, bytes, bytes] | None:
    """A nics-database line (lxc-user-nic.md §6): four words separated by runs of blanks, not a
    `#` comment, the last an interface name, the bridge one or `none`."""
    if raw.startswith(b"#"):
        return None
    words = re.split(rb"[ \t]+", raw.strip(b" \t"))
    if len(words) != 4 or b"" in words:
        return None
    owner, nic_type, bridge, dev = words
    if not ifname(dev) or not (bridge == b"none" or ifname(bridge)):
        return None
    return owner, nic_type, bridge, dev
