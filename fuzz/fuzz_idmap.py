#!/usr/bin/env python3
"""newuidmap/newgidmap: idmap_request.parse (argv, uid and gid), map_text, find_overlap, and
authorize.decide against a subordinate-id file, all from one input.

Input: `header SEP subid-file SEP argv`; argv NUL-separated, as the kernel passes it. Header: kind
(bit 0 of byte 0), how the caller's own id is chosen (byte 1), a raw own id (bytes 2-5).
Properties: no exception but Refusal; accepted exactly when the documented grammar and bounds
(oracle) accept, with the same target and triples; map_text re-parses to the same triples;
find_overlap finds a pair iff one overlaps (brute force); decide never grants a triple the file
does not grant to the caller (its name or uid) unless it is the caller's own single id, refuses
nothing it grants, and allows setgroups only through a granted subordinate range.
"""

from __future__ import annotations

from itertools import combinations

from fuzz import common, oracles

with common.instrumented(__name__):
    from nsgate.errors import Refusal
    from nsgate.policy import authorize, idmap_request, subid

NAME, UID = b"bob", 1000
PID_MAX = FD_MAX = 2**31 - 1
MAX_ID = 2**32 - 2  # (uid_t)-1 is never an id


def _oracle_parse(args: list[bytes]) -> tuple[int | None, int | None, list[tuple]] | None:
    """(pid, fd, triples) for a request newuidmap.md §3.3 accepts, else None."""
    if len(args) < 2 or (len(args) - 1) % 3 or (len(args) - 1) // 3 > 340:
        return None
    target = args[0]
    pid = fd = None
    if target.startswith(b"fd:") and len(target) > 3:
        fd = oracles.canonical(target[3:], FD_MAX)
        if fd is None:
            return None
    else:
        pid = oracles.canonical(target, PID_MAX)
        if not pid:
            return None
    triples = []
    for i in range(1, len(args), 3):
        upper = oracles.canonical(args[i], MAX_ID)
        lower = oracles.canonical(args[i + 1], MAX_ID)
        count = oracles.canonical(args[i + 2], 2**64)
        if upper is None or lower is None or not count or max(upper, lower) + count > MAX_ID + 1:
            return None
        triples.append((upper, lower, count))
    if sum(len(b"%d %d %d\n" % t) for t in triples) > 4095:
        return None
    return pid, fd, triples


def _overlaps(triples: list[tuple], side: int) -> list[tuple[int, int]]:
    """Every pair (i, j), i < j, of 1-based positions whose ranges share an id on `side`
    (0 inside the namespace, 1 on the host)."""
    return [(i + 1, j + 1) for (i, a), (j, b) in combinations(enumerate(triples), 2)
            if a[side] < b[side] + b[2] and b[side] < a[side] + a[2]]


def _check_overlap(request: idmap_request.MapRequest, triples: list[tuple]) -> None:
    found = idmap_request.find_overlap(request.triples)
    upper, lower = _overlaps(triples, 0), _overlaps(triples, 1)
    if found is None:
        assert not upper and not lower, ("missed overlap", triples)
        return
    first, second, side = found
    assert first.index < second.index
    pairs = upper if side == "upper" else lower
    assert (first.index, second.index) in pairs, ("no overlap", side, first.index, second.index)
    assert side == "upper" or not upper


def _self_id(header: common.Header, triples: list[tuple]) -> int:
    mode = header.byte(1) % 4
    if mode == 0:
        return UID
    if mode == 1 and triples:
        return triples[header.byte(2) % len(triples)][1]
    return header.u32(2)


def _check_decide(file: bytes, request: idmap_request.MapRequest, self_id: int) -> None:
    quick = [(x.start, x.count) for x in subid.scan_owners([file], [NAME], numbered=False).lines]
    full = quick + [(x.start, x.count)
                    for x in subid.scan_owners([file], [b"%d" % UID], numbered=False).lines]

    def owns(start: int, count: int, thorough: bool) -> bool:
        return not subid.uncovered(full if thorough else quick, start, count)

    decision = authorize.decide(request.triples, self_id, owns)

    lines = [oracles.subid_line(line) for line in oracles.file_lines(file)]
    mine = [(s, c) for owner, s, c in filter(None, lines) if owner == NAME]
    mine_or_uid = [(s, c) for owner, s, c in filter(None, lines) if owner in (NAME, b"%d" % UID)]
    through_subids, refused = False, None
    for t in request.triples:
        own = t.count == 1 and t.lower == self_id
        if oracles.covered(mine, t.lower, t.count) or (
                not own and oracles.covered(mine_or_uid, t.lower, t.count)):
            through_subids = True
        elif not own:
            refused = t
            break
    assert decision.refused is refused, ("decision", decision.refused and
                                         decision.refused.argv(), refused and refused.argv())
    assert decision.allow_setgroups == through_subids
    if refused is None:
        assert decision.maps_host_root == any(t.lower == 0 for t in request.triples)


def check(data: bytes) -> None:
    header_bytes, file, args_part = common.parts(data, 3)
    header = common.Header(header_bytes)
    kind = "gid" if header.flag(0, 0) else "uid"
    args = common.argv(args_part)
    expected = _oracle_parse(args)
    try:
        request = idmap_request.parse(args, kind)
    except Refusal as refusal:
        assert expected is None, ("refused a valid request", args, refusal.first)
        assert refusal.first
        return
    assert expected is not None, ("accepted an invalid request", args)
    triples = [(t.upper, t.lower, t.count) for t in request.triples]
    assert (request.pid, request.fd, triples) == expected
    assert [t.index for t in request.triples] == list(range(1, len(triples) + 1))
    text = request.map_text()
    assert text == b"".join(b"%d %d %d\n" % t for t in triples)
    again = idmap_request.parse([args[0], *text.split()], kind)
    assert [(t.upper, t.lower, t.count) for t in again.triples] == triples
    assert again.target == request.target == args[0].decode()
    for t in request.triples:
        assert t.describe(kind).startswith(f"{kind} range [{t.upper}-")
    _check_overlap(request, triples)
    _check_decide(file, request, _self_id(header, triples))


if __name__ == "__main__":
    common.fuzz_main(check)
