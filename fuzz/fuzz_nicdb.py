#!/usr/bin/env python3
"""The nics database /run/lxc/nics: nicdb.parse, split_lines, serialize, lines_of, find, prune,
nics_by_owner and entry.

Input: `header SEP database SEP tokens SEP query SEP live`; tokens (the caller's owner tokens) and
live (names of existing interfaces) NUL-separated; query `type NUL bridge NUL dev`.
Properties: no exception; every non-empty line kept verbatim and read as the oracle reads it
(lxc-user-nic.md §6); serialize(parse(x)) == x for a well-formed file (non-empty lines, each
ending in a newline) and is idempotent for any; lines_of and find return only lines the file
records for these owners, type, bridge (and dev), and all of them; prune drops exactly the valid
lines of dead interfaces among its candidates (every line, or lines_of's), by position, and keeps
every other line; an entry nsgate writes reads back as the same valid line.
"""

from __future__ import annotations

from fuzz import common, oracles

with common.instrumented(__name__):
    from nsgate.policy import nicdb


def _well_formed(db: bytes) -> bool:
    return not db or (db.endswith(b"\n") and not db.startswith(b"\n") and b"\n\n" not in db)


def check(data: bytes) -> None:
    _, db, tokens_part, query, live_part = common.parts(data, 5)
    tokens = set(tokens_part.split(b"\0"))
    nic_type, bridge, dev = common.fields(query, 3)
    live = set(live_part.split(b"\0")) if live_part else set()

    raw_lines = oracles.file_lines(db)
    assert nicdb.split_lines(db) == raw_lines
    records = [oracles.nic_line(raw) for raw in raw_lines]

    lines = nicdb.parse(db)
    expected = [(raw, rec) for raw, rec in zip(raw_lines, records, strict=True) if raw]
    assert [line.raw for line in lines] == [raw for raw, _ in expected]
    for line, (_, rec) in zip(lines, expected, strict=True):
        assert line.valid == (rec is not None), ("valid", line.raw, rec)
        if rec is not None:
            assert (line.owner, line.nic_type, line.bridge, line.dev) == rec

    text = nicdb.serialize(lines)
    if _well_formed(db):
        assert text == db, ("round trip", db, text)
    again = nicdb.parse(text)
    assert [line.raw for line in again] == [line.raw for line in lines]
    assert nicdb.serialize(again) == text

    mine = nicdb.lines_of(raw_lines, tokens, nic_type, bridge)
    expected_mine = {i: raw for i, (raw, rec) in enumerate(zip(raw_lines, records, strict=True))
                     if rec is not None and rec[0] in tokens and rec[1:3] == (nic_type, bridge)}
    assert {i: line.raw for i, line in mine.items()} == expected_mine, ("lines_of", mine)

    wanted = (nic_type, bridge, dev)
    first = next((line for line, (_, rec) in zip(lines, expected, strict=True)
                  if rec is not None and rec[0] in tokens and rec[1:] == wanted), None)
    assert nicdb.find(lines, tokens, nic_type, bridge, dev) is first, ("find", first)
    found = nicdb.find(list(mine.values()), tokens, nic_type, bridge, dev)  # the delete path
    assert (found and found.raw) == (first and first.raw)

    kept, stale = nicdb.prune(raw_lines, nicdb.numbered(raw_lines), live)
    dead = {i for i, rec in enumerate(records) if rec is not None and rec[3] not in live}
    assert set(stale) == dead and all(stale[i].raw == raw_lines[i] for i in dead), ("prune", stale)
    assert kept == [raw for i, raw in enumerate(raw_lines) if i not in dead]
    kept_mine, stale_mine = nicdb.prune(raw_lines, mine, live)  # the create path
    assert set(stale_mine) == {i for i in dead if i in mine}
    assert kept_mine == [raw for i, raw in enumerate(raw_lines) if i not in stale_mine]

    by_owner: dict[bytes, list[bytes]] = {}
    for _, rec in expected:
        if rec is not None and rec[1:3] == (nic_type, bridge):
            by_owner.setdefault(rec[0], []).append(rec[3])
    assert nicdb.nics_by_owner(lines, nic_type, bridge) == by_owner

    for owner in sorted(tokens)[:4]:
        new = nicdb.entry(owner, nic_type, bridge, dev)
        assert new.raw == b" ".join((owner, nic_type, bridge, dev))
        plain = all(word and not any(c in b" \t\n" for c in word) for word in (owner, nic_type))
        names = oracles.ifname(dev) and (bridge == b"none" or oracles.ifname(bridge))
        if plain and names and not owner.startswith(b"#"):  # what lxc-user-nic records
            assert new.valid and (new.owner, new.nic_type, new.bridge, new.dev) == \
                (owner, nic_type, bridge, dev)
            reread = nicdb.parse(nicdb.serialize([*lines, new]))
            assert reread[-1].raw == new.raw and reread[-1].valid


if __name__ == "__main__":
    common.fuzz_main(check)
