#!/usr/bin/env python3
"""/etc/lxc/lxc-usernet and the quota: usernet.parse, tokens_of, applicable and decide, fed as
lxc-user-nic's create path feeds them (the live nics of the nics database, through nicdb.lines_of
and nics_by_owner), and the line recorded for the new nic.

Input: `header SEP lxc-usernet SEP user NUL group... SEP type NUL bridge SEP database SEP live`;
live: NUL-separated names of the interfaces that exist.
Properties: no exception; every line read as the sscanf grammar of the docstring reads it
(oracle: a regular expression); a nic is granted only under a grant line of the caller's own
tokens for exactly this type and bridge, with fewer live nics recorded for that token than the
line allows, and is granted whenever such a line exists and the total is positive (first such
line in file order); the nic is recorded under that token in a line the database reads back as
the same owner, type and bridge, so it is counted next time.
"""

from __future__ import annotations

import re

from fuzz import common, oracles

with common.instrumented(__name__):
    from nsgate.errors import Refusal
    from nsgate.policy import nic_request, nicdb, usernet

# sscanf("%99[^ \t] %99[^ \t] %99[^ \t] %d"): possessive, as scanf never gives back what it read.
_FIELD = rb"([^ \t]{1,99}+)(?![^ \t])"
_SPACE = rb"[ \t\n\v\f\r]*+"
_LINE = re.compile(_FIELD + _SPACE + _FIELD + _SPACE + _FIELD + _SPACE + rb"([+-]?)([0-9]++)")


def _oracle_grants(text: bytes) -> list[tuple[int, bytes, bytes, bytes, int]]:
    grants = []
    for lineno, line in enumerate(text.split(b"\n"), 1):
        match = _LINE.match(line)
        if match is None:
            continue
        digits = match[5].lstrip(b"0") or b"0"
        if len(digits) > 10:
            continue
        number = int(digits) * (-1 if match[4] == b"-" else 1)
        if -2**31 <= number < 2**31:
            grants.append((lineno, match[1], match[2], match[3], number))
    return grants


def _recordable(token: bytes) -> bool:
    return token[:1] != b"#" and not re.search(rb"[\r\v\f\n]", token)


def check(data: bytes) -> None:
    _, policy, who, request, db, live_part = common.parts(data, 6)
    user, *groups = who.split(b"\0")
    nic_type, bridge = common.fields(request, 2)
    live = set(live_part.split(b"\0")) if live_part else set()

    grants = usernet.parse(policy)
    expected = _oracle_grants(policy)
    assert [(g.lineno, g.token, g.nic_type, g.bridge, g.number) for g in grants] == expected

    tokens = usernet.tokens_of(user, groups)
    assert tokens == {user, *(b"@" + g for g in groups)}
    mine = usernet.applicable(grants, tokens, nic_type, bridge)
    assert [g.lineno for g in mine] == [
        lineno for lineno, token, t, b, _ in expected
        if token in tokens and (t, b) == (nic_type, bridge) and _recordable(token)]

    raw_lines = nicdb.split_lines(db)
    owners = {g.token for g in mine}
    recorded = nicdb.lines_of(raw_lines, owners, nic_type, bridge)
    alive = [line for line in recorded.values() if line.dev in live]
    decision = usernet.decide(mine, nicdb.nics_by_owner(alive, nic_type, bridge))

    counted: dict[bytes, int] = {}
    for raw in raw_lines:
        rec = oracles.nic_line(raw)
        if rec is not None and rec[1:3] == (nic_type, bridge) and rec[3] in live:
            counted[rec[0]] = counted.get(rec[0], 0) + 1
    numbers = [(g.token, g.number) for g in mine]
    room = [token for token, number in numbers if counted.get(token, 0) < number]
    total = sum(number for _, number in numbers)
    owner = room[0] if room and total > 0 else None
    assert decision.owner == owner, ("owner", decision.owner, owner, numbers, counted)
    largest = {token: max([0] + [n for t, n in numbers if t == token]) for token, _ in numbers}
    assert decision.capacity == (sum(largest.values()) if total > 0 else 0)
    assert {t: len(devs) for t, devs in decision.used.items() if devs} == \
        {t: counted[t] for t, _ in numbers if counted.get(t)}
    if owner is None:
        return

    assert owner in tokens and _recordable(owner)
    try:
        nic_request.parse([b"create", b"p", b"n", b"1", nic_type, bridge])
    except Refusal:
        return  # lxc-user-nic never gets this far with such a type or bridge
    new = nicdb.entry(owner, nic_type, bridge, b"veth1000_ab12")
    database = nicdb.parse(b"".join(raw + b"\n" for raw in [*raw_lines, new.raw]))
    assert database[-1].raw == new.raw and database[-1].valid, ("unreadable record", new.raw)
    assert nicdb.nics_by_owner(database, nic_type, bridge)[owner][-1] == b"veth1000_ab12"


if __name__ == "__main__":
    common.fuzz_main(check)
