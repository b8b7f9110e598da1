"""The subordinate-id database (/etc/subuid, /etc/subgid): parsing and coverage, bytes in.

Line format: `owner:start:count`, owner a login name or a numeric uid (in both files). A line that
is not exactly that, in canonical decimal, within 32 bits, with count >= 1, is ignored and grants
nothing (newuidmap.md §6.1, §11 items 1, 2, 4, 11). A last line without a newline is accepted.

The database can be large (a million lines), and a helper runs on every container start: the fast
path looks only at the lines of the owners asked for, searching the raw bytes chunk by chunk, and
never builds an object per line of the file.
"""

from nsgate.policy.numbers import parse_decimal

TYPE_CHECKING = False  # typing costs import time on every helper run
if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

ID_SPACE_END = 1 << 32  # a range may end at most here (last id 4294967295), as shadow 4.20
MAX_LINE_BYTES = 1023  # shadow reads lines through a 1024-byte buffer, newline included


class SubidLine:
    """One valid line: `owner` may use ids [start, start + count)."""

    __slots__ = ("count", "lineno", "owner", "start")

    def __init__(self, owner: bytes, start: int, count: int, lineno: int) -> None:
        self.owner = owner
        self.start = start
        self.count = count
        self.lineno = lineno

    @property
    def end(self) -> int:
        return self.start + self.count


class IgnoredLine:
    """A line that grants nothing, and why (reported when a request is refused)."""

    __slots__ = ("lineno", "reason")

    def __init__(self, lineno: int, reason: str) -> None:
        self.lineno = lineno
        self.reason = reason


def parse_line(line: bytes, lineno: int) -> SubidLine | IgnoredLine:
    """Parse one line without its newline."""
    if len(line) >= MAX_LINE_BYTES:
        return IgnoredLine(lineno, f"longer than {MAX_LINE_BYTES - 1} bytes")
    if line.rstrip() != line:
        return IgnoredLine(lineno, "trailing white space")
    fields = line.split(b":")
    if len(fields) != 3:
        return IgnoredLine(lineno, f"{len(fields)} ':'-separated fields instead of 3")
    owner, start_text, count_text = fields
    if not owner or owner[:1] in (b"+", b"-"):
        return IgnoredLine(lineno, "empty owner or NIS marker")
    start = parse_decimal(start_text, ID_SPACE_END - 1)
    count = parse_decimal(count_text, ID_SPACE_END - 1)
    if start is None or count is None:
        return IgnoredLine(lineno, "start and count must be canonical decimal numbers "
                                   "below 4294967296")
    if count == 0:
        return IgnoredLine(lineno, "count 0 grants nothing")
    if start + count > ID_SPACE_END:
        return IgnoredLine(lineno, "range ends beyond id 4294967295")
    return SubidLine(owner, start, count, lineno)


class OwnerScan:
    """What the database holds for a set of owner strings: valid lines and ignored lines."""

    __slots__ = ("ignored", "lines")

    def __init__(self) -> None:
        self.lines: list[SubidLine] = []
        self.ignored: list[IgnoredLine] = []


def _complete_regions(chunks: "Iterable[bytes | bytearray]"
                      ) -> "Iterator[tuple[bytes, int]]":
    """Split a byte stream into regions of whole lines, with the number of the first line."""
    carry = b""
    lineno = 1
    for chunk in chunks:
        buf = carry + chunk  # bytes, whatever the chunk's type
        cut = buf.rfind(b"\n") + 1
        if cut == 0:
            carry = buf
            continue
        region, carry = buf[:cut], buf[cut:]
        yield region, lineno
        lineno += region.count(b"\n")
    if carry:
        yield carry + b"\n", lineno


def scan_owners(chunks: "Iterable[bytes | bytearray]", owners: "Iterable[bytes]",
                numbered: bool = True) -> OwnerScan:
    """Find, in file order, every line whose owner field is exactly one of `owners`.

    With `numbered` false the lines' numbers are 0 and nothing counts newlines: the fast path
    for the common case, where no line number is reported. A chunk may be a buffer that the
    producer reuses once the next chunk is asked for.
    """
    wanted = [owner for owner in set(owners) if owner and b"\n" not in owner and b":" not in owner]
    result = OwnerScan()
    regions = _numbered_regions(chunks) if numbered else _fast_regions(chunks)
    for buf, lo, hi, first_lineno in regions:
        starts = []
        for owner in wanted:
            if buf.startswith(owner + b":", lo):
                starts.append(lo)
            needle = b"\n" + owner
            pos = buf.find(needle, lo, hi)
            while pos != -1:
                pos += len(needle)
                if buf[pos] == 0x3A:  # the owner field ends here: ':'
                    starts.append(pos - len(owner))
                pos = buf.find(needle, pos, hi)
        starts.sort()
        lineno, counted_to = first_lineno, lo
        for start in starts:
            if numbered:
                lineno += buf.count(b"\n", counted_to, start)
                counted_to = start
            _add(result, parse_line(bytes(buf[start:buf.index(b"\n", start, hi)]), lineno))
    return result


def listed_ranges(chunks: "Iterable[bytes | bytearray]", owner: bytes, id_key: bytes | None
                  ) -> list[tuple[int, int]]:
    """What getsubids lists, selected as shadow 4.13's list_owner_ranges selects: in file order,
    every valid line keyed by `owner` exactly as given, and every one keyed by `id_key` (the
    decimal id of the user, or group, named `owner`). No other name of the same id, and a
    decimal `owner` is matched as text only. A line keyed by both (a user named by its own
    uid) is listed twice, as shadow lists it."""
    keys = (owner,) if id_key is None else (owner, id_key)
    times = 2 if id_key == owner else 1
    return [(line.start, line.count)
            for line in scan_owners(chunks, keys, numbered=False).lines for _ in range(times)]


def _numbered_regions(chunks: "Iterable[bytes | bytearray]"
                      ) -> "Iterator[tuple[bytes, int, int, int]]":
    for region, lineno in _complete_regions(chunks):
        yield region, 0, len(region), lineno


def _fast_regions(chunks: "Iterable[bytes | bytearray]"
                  ) -> "Iterator[tuple[bytes | bytearray, int, int, int]]":
    """(buf, lo, hi, 0): buf[lo:hi] is whole lines, lo a line start; no copy of the chunks
    beyond the one line that straddles each boundary."""
    carry = b""
    for chunk in chunks:
        first = chunk.find(b"\n")
        if first == -1:
            carry = (carry + chunk)[:MAX_LINE_BYTES + 1]  # too long already: keep it invalid
            continue
        head = carry + chunk[:first + 1]
        yield head, 0, len(head), 0
        last = chunk.rfind(b"\n")
        if last > first:
            yield chunk, first + 1, last + 1, 0
        carry = bytes(chunk[last + 1:last + 2 + MAX_LINE_BYTES])
    if carry:
        yield carry + b"\n", 0, len(carry) + 1, 0


def _add(result: OwnerScan, parsed: SubidLine | IgnoredLine) -> None:
    if isinstance(parsed, SubidLine):
        result.lines.append(parsed)
    else:
        result.ignored.append(parsed)


def iter_lines(chunks: "Iterable[bytes | bytearray]") -> "Iterator[SubidLine | IgnoredLine]":
    """Every non-blank line, parsed (the slow path: an object per line)."""
    for region, lineno in _complete_regions(chunks):
        for line in region.split(b"\n")[:-1]:
            if line:
                yield parse_line(line, lineno)
            lineno += 1


def uncovered(owned: "Iterable[tuple[int, int]]", start: int, count: int
              ) -> list[tuple[int, int]]:
    """The parts of [start, start + count) that no owned (start, count) range covers.

    Adjacent and overlapping owned ranges combine, as shadow's have_range chains them.
    """
    gaps = []
    position, end = start, start + count
    for own_start, own_count in sorted(owned):
        if own_start > position:
            if own_start >= end:
                break
            gaps.append((position, own_start))
        position = max(position, own_start + own_count)
        if position >= end:
            return gaps
    if position < end:
        gaps.append((position, end))
    return gaps
