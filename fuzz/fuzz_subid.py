#!/usr/bin/env python3
"""/etc/subuid and /etc/subgid: subid.parse_line, scan_owners (numbered and fast, every chunking,
reused buffers), iter_lines and uncovered, against the oracle of fuzz/oracles.py.

Input: `header SEP owners SEP file`; owners NUL-separated. Header: u32 query start (0-3), u32
query count (4-7), query mode (8), chunk sizes (9-).
Properties: no exception; exactly the lines the file grants to the owners asked for, with their
line numbers, whatever the chunking and even when the reader's buffer is reused; the ignored lines
of those owners reported; uncovered() returns exactly the ids no granted range covers.
"""

from __future__ import annotations

from fuzz import common, oracles

with common.instrumented(__name__):
    from nsgate.policy import subid


def _expected(file: bytes, wanted: set[bytes]) -> tuple[list[tuple], list[int], list[tuple]]:
    granted, ignored, every = [], [], []
    for lineno, line in enumerate(oracles.file_lines(file), 1):
        parsed = oracles.subid_line(line)
        if line:
            every.append((lineno, *parsed) if parsed else (lineno,))
        if parsed is not None and parsed[0] in wanted:
            granted.append((lineno, *parsed))
        elif parsed is None and b":" in line and oracles.subid_owner_field(line) in wanted:
            ignored.append(lineno)
    return granted, ignored, every


def _query(header: common.Header, owned: list[tuple[int, int]]) -> tuple[int, int]:
    mode = header.byte(8) % 3
    if mode == 0 or not owned:
        return header.u32(0), 1 + header.u32(4)
    if mode == 1:
        start, count = owned[header.byte(0) % len(owned)]
        point = (start, start + count)[header.byte(1) & 1] + header.byte(2) % 5 - 2
        return max(point, 0), 1 + header.byte(3) % 70000
    return 0, oracles.ID_SPACE_END


def check(data: bytes) -> None:
    header_bytes, owners_part, file = common.parts(data, 3)
    header = common.Header(header_bytes)
    owners = owners_part.split(b"\0")
    wanted = {o for o in owners if o and b"\n" not in o and b":" not in o}
    granted, ignored, every = _expected(file, wanted)

    ways = common.chunkings(file, header_bytes[9:])
    for number, chunks in enumerate(ways):
        assert b"".join(chunks) == file
        cut = number >= len(ways) - 2  # the chunkings drawn from the input: also reused
        for source in (chunks, common.reused_buffer(chunks)) if cut else (chunks,):
            scan = subid.scan_owners(iter(source), owners)
            got = [(x.lineno, bytes(x.owner), x.start, x.count) for x in scan.lines]
            assert got == granted, ("numbered scan", got, granted, chunks)
            assert [x.lineno for x in scan.ignored] == ignored, ("ignored", scan.ignored, chunks)
            assert all(x.reason for x in scan.ignored)

        fast = subid.scan_owners(common.reused_buffer(chunks), owners, numbered=False)
        got = [(bytes(x.owner), x.start, x.count) for x in fast.lines]
        assert got == [g[1:] for g in granted], ("fast scan", got, granted, chunks)
        assert all(x.lineno == 0 for x in fast.lines)
        assert len(fast.ignored) == len(ignored), ("fast ignored", fast.ignored, ignored)

        if number == 0 or number == len(ways) - 2:  # the slow path: whole, and reused cuts
            source = common.reused_buffer(chunks) if number else iter(chunks)
            lines = [(x.lineno, bytes(x.owner), x.start, x.count)
                     if isinstance(x, subid.SubidLine) else (x.lineno,)
                     for x in subid.iter_lines(source)]
            assert lines == every, ("iter_lines", lines, every, chunks)

    for line in oracles.file_lines(file)[:20]:
        parsed = subid.parse_line(line, 7)
        expected = oracles.subid_line(line)
        if expected is None:
            assert isinstance(parsed, subid.IgnoredLine) and parsed.reason and parsed.lineno == 7
        else:
            assert isinstance(parsed, subid.SubidLine)
            assert (parsed.owner, parsed.start, parsed.count, parsed.lineno) == (*expected, 7)
            assert parsed.end == parsed.start + parsed.count <= oracles.ID_SPACE_END

    owned = [(start, count) for _, _, start, count in granted]
    start, count = _query(header, owned)
    assert subid.uncovered(owned, start, count) == oracles.gaps(owned, start, count), \
        ("uncovered", owned, start, count)


if __name__ == "__main__":
    common.fuzz_main(check)
