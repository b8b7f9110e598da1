"""Property-based and example tests for the pure policy of the lxc-user-nic helper.

Modules under test (bytes in, decisions out, no privilege): nsgate.policy.usernet (the
/etc/lxc/lxc-usernet grammar and the quota walk), nicdb (the /run/lxc/nics lines), nicnames
(interface names) and nic_request (the command line). Each is checked against a small oracle
written from lxc-user-nic.md (§2, §3, §5, §6, §7, §10), security-cases.md part B and the
documented choices of usernet.py (counting per owner token, type and bridge; only live nics
count; grants walked in file order), never against its own implementation.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from nsgate.errors import Refusal
from nsgate.policy import nic_request, nicdb, nicnames, private_bridges, usernet

# Pure tests: the autouse fixtures of conftest.py only reset /etc, which nothing here reads.
_COMMON = {
    "deadline": None,
    "database": None,  # leave no .hypothesis directory in the checkout
    "derandomize": True,  # the same examples on every run
    # No Phase.explain: after a failure it costs seconds and the shrunk example says enough.
    "phases": [Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
    "suppress_health_check": [HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                              HealthCheck.data_too_large, HealthCheck.filter_too_much],
}


def fast(examples: int) -> settings:
    return settings(max_examples=examples, **_COMMON)


# --------------------------------------------------------------------------------------------
# Oracles, written from the specs
# --------------------------------------------------------------------------------------------

INT_MIN, INT_MAX = -(2**31), 2**31 - 1
PID_MAX = 2**31 - 1

# sscanf(line, "%99[^ \t] %99[^ \t] %99[^ \t] %d") == 4 (lxc-user-nic.md §5.1): a field is a run
# of 1..99 bytes other than space and tab, starting right at the beginning of the line (so a
# leading blank fails), ending at a blank or at the end (a longer run never matches, as the
# spec says); each " " of the format skips any C white space; %d is an optionally signed run of
# digits and whatever follows it is ignored. sscanf works on a C string: it ends at a NUL.
_C_SPACE = rb"[ \t\n\x0b\x0c\r]*+"  # possessive: sscanf never gives white space back
_FIELD = rb"([^ \t]{1,99})(?![^ \t])"
_GRANT = re.compile(_FIELD + _C_SPACE + _FIELD + _C_SPACE + _FIELD + _C_SPACE + rb"([+-]?[0-9]+)",
                    re.DOTALL)


def oracle_grant(line: bytes) -> tuple[bytes, bytes, bytes, int] | None:
    """(token, type, bridge, number) of one policy line, or None where it grants nothing.

    A number outside int is refused (the reference's %d has undefined behaviour there; nsgate
    fails closed)."""
    match = _GRANT.match(line.split(b"\x00", 1)[0])
    if match is None:
        return None
    number = int(match.group(4))
    if not INT_MIN <= number <= INT_MAX:
        return None
    return match.group(1), match.group(2), match.group(3), number


def effective(grant: usernet.Grant | None) -> tuple[bytes, bytes, bytes, int] | None:
    """What a parsed grant means: a field holding a NUL can never equal a user name, a group or
    an argv string, so such a grant is the same as none (the reference stops at the NUL)."""
    if grant is None or any(b"\x00" in f for f in (grant.token, grant.nic_type, grant.bridge)):
        return None
    return grant.token, grant.nic_type, grant.bridge, grant.number


def oracle_grants_for(policy: bytes, user: bytes, groups: list[bytes], nic_type: bytes,
                      bridge: bytes) -> list[tuple[bytes, int]]:
    """The caller's applicable grants in file order (§5.2): the token is the user name, or
    `@g` for one of its groups; type and bridge equal exactly."""
    found = []
    for line in policy.split(b"\n"):
        grant = oracle_grant(line)
        if grant is None:
            continue
        token, t, b, number = grant
        mine = token == user or (token.startswith(b"@") and token[1:] in groups)
        if mine and t == nic_type and b == bridge:
            found.append((token, number))
    return found


def oracle_owner(grants: list[tuple[bytes, int]], used: dict[bytes, int]) -> bytes | None:
    """The quota walk (usernet.py's docstring, §5.3 items 2 and 4): refuse a total <= 0; else
    the first grant in file order whose token has fewer live nics than its number."""
    if sum(number for _, number in grants) <= 0:
        return None
    candidates = [i for i, (token, number) in enumerate(grants) if used.get(token, 0) < number]
    return grants[min(candidates)][0] if candidates else None


# printable, no / : % or space ('%' would be a kernel name template such as eth%d)
_IFNAME = re.compile(rb"[\x21-\x24\x26-\x2e\x30-\x39\x3b-\x7e]{1,15}")


def oracle_ifname(name: bytes) -> bool:
    return _IFNAME.fullmatch(name) is not None and name not in (b".", b"..")


_WORD = re.compile(rb"[^ \t]+")  # the reference splits database lines on blanks only


def oracle_db_line(raw: bytes) -> tuple[bytes, bytes, bytes, bytes] | None:
    """(owner, type, bridge, dev) of a /run/lxc/nics line nsgate may count, else None (§6.1):
    `#` lines are skipped, leading blanks skipped, four words split on white space; the device
    is an interface name (16+ bytes marks damage) and the bridge one too, or `none`."""
    if raw.startswith(b"#"):
        return None
    words = _WORD.findall(raw)
    if len(words) != 4:
        return None
    owner, nic_type, bridge, dev = words
    if not oracle_ifname(dev) or not (bridge == b"none" or oracle_ifname(bridge)):
        return None
    return owner, nic_type, bridge, dev


_CANONICAL = re.compile(rb"[1-9][0-9]*")
_TYPE = re.compile(rb"[\x21-\x7e]{1,99}")
# a kernel name template: one %d among the bytes a name may hold (issue 9 §3)
_TEMPLATE = re.compile(rb"[\x21-\x24\x26-\x2e\x30-\x39\x3b-\x7e]*%d"
                       rb"[\x21-\x24\x26-\x2e\x30-\x39\x3b-\x7e]*")


def oracle_request(args: list[bytes]) -> tuple:
    """("usage",), ("refuse",) or ("ok", verb, pid, netns_path, type, bridge, nicname) (§2,
    §10 item 12, B11, B15); lxcpath and name are never looked at."""
    if len(args) not in (6, 7) or args[0] not in (b"create", b"delete"):
        return ("usage",)
    verb, target, nic_type, bridge = args[0], args[3], args[4], args[5]
    nicname = args[6] if len(args) == 7 else None
    if _TYPE.fullmatch(nic_type) is None:
        return ("refuse",)
    if bridge != b"none" and not oracle_ifname(bridge):
        return ("refuse",)
    if nicname is not None and not oracle_ifname(nicname) and not (
            verb == b"create" and _TEMPLATE.fullmatch(nicname) and len(nicname) <= 15):
        return ("refuse",)
    if verb == b"delete":
        if nicname is None:
            return ("refuse",)
        return ("ok", "delete", 0, target, nic_type, bridge, nicname)
    if _CANONICAL.fullmatch(target) is None or int(target) > PID_MAX:
        return ("refuse",)
    return ("ok", "create", int(target), b"", nic_type, bridge, nicname)


def outcome(args: list[bytes]) -> tuple:
    """nic_request.parse() in the shape of oracle_request(); any other exception propagates."""
    try:
        request = nic_request.parse(args)
    except Refusal as refusal:
        assert isinstance(refusal.first, str) and refusal.first
        assert all(isinstance(d, str) for d in refusal.details)
        # Caller bytes are echoed escaped: nothing unprintable reaches the terminal or the log.
        assert all(text.isprintable() for text in (refusal.first, *refusal.details))
        return ("usage",) if refusal.usage else ("refuse",)
    assert isinstance(request, nic_request.NicRequest)
    return ("ok", request.verb, request.pid, request.netns_path, request.nic_type,
            request.bridge, request.nicname)


# --------------------------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------------------------

short_text = st.binary(max_size=6) | st.text(
    alphabet="ab09_-.#@:/ \t\r\x0b\x0c\x00\xe9", max_size=6).map(
    lambda s: s.encode("utf-8"))

policy_fields = st.one_of(
    st.sampled_from([b"u", b"bob", b"bobby", b"@g", b"@netgrp", b"#u", b"veth", b"macvlan",
                     b"br0", b"br1", b"none", b"\r", b"1", b"-1", b"u\x0bveth", b"b\x00"]),
    st.text(alphabet="ub0@#-+\r\x0b\x0c\x00.\xe9", min_size=1, max_size=5).map(
        lambda s: s.encode("utf-8")),
    st.integers(97, 101).map(lambda n: b"x" * n),  # around the 99-byte field limit
)
separators = st.one_of(
    st.sampled_from([b" ", b" ", b" ", b"\t", b"  \t ", b""]),
    st.text(alphabet=" \t\r\x0b\x0c\n", min_size=1, max_size=3).map(str.encode),
)
policy_numbers = st.one_of(
    st.sampled_from([0, 1, 2, 9, 10, INT_MAX, INT_MAX + 1, 2**32 + 1, 10**10, 10**12]),
    st.integers(-3, 12),
    st.integers(-(2**33), 2**33),
)


@st.composite
def number_texts(draw) -> bytes:
    """The fourth field: signed or not, sometimes zero-padded, junk after it."""
    value = draw(policy_numbers)
    sign = b"-" if value < 0 else draw(st.sampled_from([b"", b"", b"+"]))
    if draw(st.integers(0, 15)) == 0:
        sign = draw(st.sampled_from([b"++", b"+-", b"-+", b" +", b"x"]))
    zeros = b"0" * draw(st.sampled_from([0, 0, 0, 1, 2, 3, 11 - len(str(abs(value)))]))
    tail = draw(st.sampled_from([b"", b"", b"junk", b" # c", b"\r", b"5", b".5", b" 7",
                                 b"\x00junk", b"x1", b"\t", b"e3"]))
    return sign + zeros + str(abs(value)).encode() + tail


@st.composite
def policy_lines(draw) -> bytes:
    """Near-valid lines: four fields with runs of separators, a leading blank now and then, a
    missing or extra field now and then."""
    fields = [draw(policy_fields) for _ in range(3)] + [draw(number_texts())]
    shape = draw(st.integers(0, 9))
    if shape == 0:
        del fields[draw(st.integers(0, 3))]
    elif shape == 1:
        fields.insert(draw(st.integers(0, 3)), draw(policy_fields))
    line = fields[0]
    for field in fields[1:]:
        line += draw(separators) + field
    if draw(st.integers(0, 7)) == 0:
        line = draw(st.sampled_from([b" ", b"\t", b"\r", b"\x0b", b"#", b"\x00"])) + line
    return line.replace(b"\n", b" ") if draw(st.booleans()) else line.split(b"\n")[0]


# A small world for quota scenarios: users, groups, types, bridges and devices.
USERS = [b"bob", b"bobby", b"alice", b"grp"]
GROUPS = [b"grp", b"grp2", b"netgrp", b"bob"]
POLICY_TOKENS = [*USERS, *(b"@" + g for g in GROUPS), b"#bob", b"@", b"bob\r", b"@grp\x00"]
TYPES = [b"veth", b"macvlan", b"Veth"]
BRIDGES = [b"br0", b"br1", b"none", b"ovsbr"]
DEVS = [b"veth1000_a%d" % i for i in range(8)] + [b"veth0123456", b"none"]


@st.composite
def scenarios(draw) -> dict:
    grants = draw(st.lists(st.tuples(st.sampled_from(POLICY_TOKENS), st.sampled_from(TYPES),
                                     st.sampled_from(BRIDGES), st.integers(-2, 3)),
                           max_size=7))
    lines = []
    for token, t, b, n in grants:
        sep = draw(st.sampled_from([b" ", b"\t", b"  "]))
        lines.append(sep.join((token, t, b, b"%d" % n)))
    for _ in range(draw(st.integers(0, 2))):
        lines.insert(draw(st.integers(0, len(lines))), draw(policy_lines()))
    db = []
    for _ in range(draw(st.integers(0, 10))):
        if draw(st.integers(0, 7)) == 0:
            db.append(draw(st.sampled_from([b"# comment", b"bob veth br0", b"bob veth br0 "
                                            b"veth1000_a0bob veth br0 veth1000_a1",
                                            b"bob veth br0 veth1000_abcdefghijk", b"\r"])))
        else:
            sep = draw(st.sampled_from([b" ", b" ", b"\t", b"  "]))
            db.append(draw(st.sampled_from([b"", b"", b" "])) + sep.join(
                (draw(st.sampled_from(POLICY_TOKENS[:-2])), draw(st.sampled_from(TYPES)),
                 draw(st.sampled_from(BRIDGES)), draw(st.sampled_from(DEVS)))))
    return {
        "policy": b"\n".join(lines) + draw(st.sampled_from([b"", b"\n"])),
        "user": draw(st.sampled_from(USERS)),
        "groups": draw(st.lists(st.sampled_from(GROUPS), unique=True, max_size=3)),
        "nic_type": draw(st.sampled_from(TYPES)),
        "bridge": draw(st.sampled_from(BRIDGES)),
        "db": b"".join(line + b"\n" for line in db),
        "live": set(draw(st.lists(st.sampled_from(DEVS), unique=True))),
    }


def owner_after(policy: bytes, user: bytes, groups: list[bytes], nic_type: bytes, bridge: bytes,
                db: bytes, live: set[bytes]) -> usernet.QuotaDecision:
    """The pipeline the helper runs under its lock (cli/usernic.py _create_locked)."""
    grants = usernet.applicable(usernet.parse(policy), usernet.tokens_of(user, groups),
                                nic_type, bridge)
    raw_lines = nicdb.split_lines(db)
    _kept, stale = nicdb.prune(raw_lines, nicdb.numbered(raw_lines), live)
    alive = [nicdb.NicLine(raw) for position, raw in enumerate(raw_lines) if position not in stale]
    return usernet.decide(grants, nicdb.nics_by_owner(alive, nic_type, bridge))


def oracle_used(db: bytes, nic_type: bytes, bridge: bytes, live: set[bytes]) -> dict[bytes, int]:
    used: dict[bytes, int] = {}
    for raw in db.split(b"\n"):
        line = oracle_db_line(raw) if raw else None
        if line and line[1] == nic_type and line[2] == bridge and line[3] in live:
            used[line[0]] = used.get(line[0], 0) + 1
    return used


ifname_candidates = st.one_of(
    st.sampled_from([b".", b"..", b"...", b"a", b"eth0", b"br0", b"none", b"a" * 15, b"a" * 16,
                     b"br:0", b"br/0", b"br 0", b"br\t0", b"br0\n", b"\x7f", b"\xe9", b"-",
                     b"veth1000_wl7j", b"eth%d", b"", b"~", b"!"]),
    st.binary(max_size=17),
    st.text(alphabet="ab09.:/ \t\n\r\x0b\x0c\x00\x7f\x80\xff%~!", max_size=17).map(
        lambda s: s.encode("latin-1")),
)


# --------------------------------------------------------------------------------------------
# 1. usernet.parse_line / parse: the reference's sscanf grammar
# --------------------------------------------------------------------------------------------

@fast(600)
@given(line=policy_lines())
@example(line=b"u veth br0 1junk # c")
def test_policy_line_matches_sscanf_grammar(line: bytes) -> None:
    assert effective(usernet.parse_line(line, 1)) == oracle_grant(line)


@fast(500)
@given(line=st.one_of(st.binary(max_size=120),
                      st.text(alphabet="ub0@# \t-+1\x00\r\x0b", max_size=30).map(str.encode)))
def test_policy_line_never_crashes_on_arbitrary_bytes(line: bytes) -> None:
    grant = usernet.parse_line(line.replace(b"\n", b""), 7)
    assert grant is None or isinstance(grant, usernet.Grant)
    if grant is not None:
        assert grant.lineno == 7
        assert all(0 < len(f) <= 99 for f in (grant.token, grant.nic_type, grant.bridge))
        assert all(b" " not in f and b"\t" not in f
                   for f in (grant.token, grant.nic_type, grant.bridge))
        assert INT_MIN <= grant.number <= INT_MAX
    assert effective(grant) == oracle_grant(line.replace(b"\n", b""))


@fast(150)
@given(lines=st.lists(st.one_of(policy_lines(), st.binary(max_size=30)), max_size=6),
       final_newline=st.booleans())
def test_policy_file_is_read_line_by_line_in_order(lines: list[bytes],
                                                   final_newline: bool) -> None:
    data = b"\n".join(lines) + (b"\n" if final_newline else b"")
    got = [(g.lineno, effective(g)) for g in usernet.parse(data) if effective(g)]
    want = [(n, oracle_grant(line)) for n, line in enumerate(data.split(b"\n"), 1)
            if oracle_grant(line)]
    assert got == want


@pytest.mark.parametrize(("line", "expected"), [
    (b"u veth br0 1junk # c", (b"u", b"veth", b"br0", 1)),
    (b" u veth br0 1", None),
    (b"\tu veth br0 1", None),
    (b"u veth br0 -1", (b"u", b"veth", b"br0", -1)),
    (b"u veth br0 +2", (b"u", b"veth", b"br0", 2)),
    (b"#u veth br0 1", (b"#u", b"veth", b"br0", 1)),
    (b"u \t veth\t\tbr0   3", (b"u", b"veth", b"br0", 3)),
    (b"u veth br0 1\r", (b"u", b"veth", b"br0", 1)),
    (b"u veth br0 \x0b4", (b"u", b"veth", b"br0", 4)),
    (b"@netgrp veth none 2", (b"@netgrp", b"veth", b"none", 2)),
    (b"u\x0bveth br0 1 2", (b"u\x0bveth", b"br0", b"1", 2)),  # \v is no field separator
    (b"u veth br0", None),
    (b"u veth br0 ", None),
    (b"u veth br0 x1", None),
    (b"u veth br0 + 1", None),
    (b"u veth br0 0x10", (b"u", b"veth", b"br0", 0)),
    (b"u veth br0 2147483647", (b"u", b"veth", b"br0", INT_MAX)),
    (b"u veth br0 -2147483648", (b"u", b"veth", b"br0", INT_MIN)),
    (b"u veth br0 2147483648", None),  # beyond int: refused, never wrapped
    (b"u veth br0 4294967297", None),  # the reference's int would be 1
    (b"x" * 99 + b" veth br0 1", (b"x" * 99, b"veth", b"br0", 1)),
    (b"x" * 100 + b" veth br0 1", None),
    (b"u veth " + b"b" * 100 + b" 1", None),
    (b"", None),
    (b"u", None),
])
def test_policy_line_examples(line: bytes, expected: tuple | None) -> None:
    assert oracle_grant(line) == expected  # the oracle agrees with the spec's examples
    assert effective(usernet.parse_line(line, 1)) == expected


def test_policy_number_with_leading_zeros_is_read_as_sscanf_reads_it() -> None:
    """%d reads `000000000001` as 1 and `-00000000002` as -2 (§5.1; "kept on purpose: the
    policy-file grammar"); the 11+ digits are within int."""
    assert effective(usernet.parse_line(b"u veth br0 000000000001", 1)) == (
        b"u", b"veth", b"br0", 1)
    assert effective(usernet.parse_line(b"u veth br0 -00000000002", 1)) == (
        b"u", b"veth", b"br0", -2)


def test_hash_line_is_no_comment_but_never_a_user() -> None:
    grants = usernet.parse(b"#u veth br0 1\nu veth br0 1\n")
    assert [(g.token, g.lineno) for g in grants] == [(b"#u", 1), (b"u", 2)]
    assert [g.token for g in usernet.applicable(grants, usernet.tokens_of(b"u", [b"g"]),
                                                b"veth", b"br0")] == [b"u"]


# --------------------------------------------------------------------------------------------
# 2. usernet.tokens_of / applicable / decide: the quota walk
# --------------------------------------------------------------------------------------------

@fast(400)
@given(s=scenarios())
def test_quota_decision_matches_oracle(s: dict) -> None:
    grants = oracle_grants_for(s["policy"], s["user"], s["groups"], s["nic_type"], s["bridge"])
    used = oracle_used(s["db"], s["nic_type"], s["bridge"], s["live"])
    decision = owner_after(**s)
    assert decision.owner == oracle_owner(grants, used)
    largest: dict[bytes, int] = {}
    for token, number in grants:  # duplicate lines of one token do not add up
        largest[token] = max(largest.get(token, 0), number)
    total = sum(n for _, n in grants)
    assert decision.capacity == (sum(largest.values()) if total > 0 else 0)


@fast(300)
@given(user=st.sampled_from(USERS), groups=st.lists(st.sampled_from(GROUPS), max_size=3),
       policy=st.lists(st.tuples(st.sampled_from(POLICY_TOKENS), st.sampled_from(TYPES),
                                 st.sampled_from(BRIDGES), st.integers(-2, 4)), max_size=8),
       nic_type=st.sampled_from(TYPES), bridge=st.sampled_from(BRIDGES))
def test_applicable_is_exact_token_type_and_bridge(user, groups, policy, nic_type, bridge):
    tokens = usernet.tokens_of(user, groups)
    assert tokens == {user} | {b"@" + g for g in groups}
    grants = [usernet.Grant(*g, lineno=i) for i, g in enumerate(policy, 1)]
    got = [(g.token, g.lineno) for g in usernet.applicable(grants, tokens, nic_type, bridge)]
    want = [(tok, i) for i, (tok, t, b, _) in enumerate(policy, 1)
            if (tok == user or (tok[:1] == b"@" and tok[1:] in groups))
            and t == nic_type and b == bridge]
    assert got == want


@fast(300)
@given(grants=st.lists(st.tuples(st.sampled_from([b"u", b"@g", b"@h", b"v"]),
                                 st.integers(-2, 4)), max_size=6),
       start=st.dictionaries(st.sampled_from([b"u", b"@g", b"@h", b"v"]), st.integers(0, 5)))
def test_quota_walk_never_grants_more_than_the_file_says(grants, start):
    """Create until refused: every step picks the first grant in file order with room, and in
    the end each token holds exactly max(its start, its largest number), no more; a total <= 0
    refuses from the start."""
    objs = [usernet.Grant(tok, b"veth", b"br0", n, i) for i, (tok, n) in enumerate(grants, 1)]
    live = {tok: [b"old%d" % i for i in range(k)] for tok, k in start.items()}
    counts = dict.fromkeys([tok for tok, _ in grants], 0) | {t: k for t, k in start.items()}
    for step in range(30):
        decision = usernet.decide(objs, {tok: list(devs) for tok, devs in live.items()})
        assert decision.owner == oracle_owner(grants, counts)
        if decision.owner is None:
            break
        live.setdefault(decision.owner, []).append(b"new%d" % step)
        counts[decision.owner] = counts.get(decision.owner, 0) + 1
    else:
        pytest.fail("the walk never stopped")
    total = sum(n for _, n in grants)
    for tok in {tok for tok, _ in grants}:
        largest = max(n for t, n in grants if t == tok)
        want = max(start.get(tok, 0), largest) if total > 0 else start.get(tok, 0)
        assert counts[tok] == want


def _run(policy: bytes, user: bytes = b"u", groups: list[bytes] | None = None,
         db: bytes = b"", live: set[bytes] | None = None, nic_type: bytes = b"veth",
         bridge: bytes = b"br0", creates: int = 5) -> list[bytes | None]:
    """Owners of successive creates (each recorded as a new live nic), until the first refusal."""
    live = set(live or ())
    owners: list[bytes | None] = []
    for i in range(creates):
        owner = owner_after(policy, user, groups or [], nic_type, bridge, db, live).owner
        owners.append(owner)
        if owner is None:
            break
        dev = b"veth1000_n%03d" % i
        db += nicdb.entry(owner, nic_type, bridge, dev).raw + b"\n"
        live.add(dev)
    return owners


@pytest.mark.parametrize(("policy", "user", "groups", "owners"), [
    (b"u veth br0 1\n", b"u", [], [b"u", None]),
    (b"u veth br0 2\n", b"u", [], [b"u", b"u", None]),
    (b"bobby veth br0 1\n", b"bob", [], [None]),  # exact user match only
    (b"bob veth br0 1\n", b"bobby", [], [None]),
    (b"@grp veth br0 1\n", b"bob", [b"other"], [None]),  # only the caller's own groups
    (b"@grp veth br0 1\n", b"grp", [], [None]),  # a user named like the group is no member
    (b"grp veth br0 1\n", b"bob", [b"grp"], [None]),  # a bare group name is a user name
    (b"@grp veth br0 1\n", b"bob", [b"grp"], [b"@grp", None]),
    (b"u veth br0 1\nu veth br0 1\n", b"u", [], [b"u", None]),  # duplicates do not add up
    (b"u veth br0 1\n@g veth br0 1\n", b"u", [b"g"], [b"u", b"@g", None]),  # these do
    (b"@g veth br0 1\nu veth br0 1\n", b"u", [b"g"], [b"@g", b"u", None]),
    (b"u veth br0 -1\nu veth br0 1\n", b"u", [], [None]),  # total 0 refuses
    (b"u veth br0 -1\nu veth br0 2\n", b"u", [], [b"u", b"u", None]),
    (b"u veth br0 0\n", b"u", [], [None]),
    (b"u veth br0 0\nu veth br0 1\n", b"u", [], [b"u", None]),
    (b"u veth br0 0\n@g veth br0 1\n", b"u", [b"g"], [b"@g", None]),
    (b"u veth br0 -5\n@g veth br0 1\n", b"u", [b"g"], [None]),
    (b"u veth br1 1\nu macvlan br0 1\nu Veth br0 1\nu veth br0  1\n", b"u", [], [b"u", None]),
    (b"u veth br1 3\nu macvlan br0 3\nu veth  br0\n", b"u", [], [None]),
    (b" u veth br0 1\n#u veth br0 1\n", b"u", [], [None]),
    (b"u veth br0 1junk # comment\n", b"u", [], [b"u", None]),
    (b"", b"u", [], [None]),
])
def test_quota_examples(policy, user, groups, owners):
    assert _run(policy, user, groups) == owners


def test_quota_type_and_bridge_must_match_exactly():
    for nic_type, bridge in [(b"veth", b"br1"), (b"Veth", b"br0"), (b"macvlan", b"br0"),
                             (b"veth", b"none"), (b"veth", b"br0 "), (b"veth", b"br")]:
        assert _run(b"u veth br0 5\n", nic_type=nic_type, bridge=bridge) == [None]


def test_quota_counts_only_live_nics_of_the_owner_token():
    db = (b"u veth br0 veth1000_dead\n"  # stale: its interface is gone
          b"bobby veth br0 veth1001_live\n"  # B8: another user's line is not counted
          b"uu veth br0 veth1002_live\n"
          b"@h veth br0 veth1003_live\n")  # a group the caller is not in
    live = {b"veth1001_live", b"veth1002_live", b"veth1003_live"}
    assert _run(b"u veth br0 1\n", db=db, live=live) == [b"u", None]


def test_quota_group_share_is_used_by_any_member():
    db = b"@g veth br0 veth1001_them\n"  # recorded for another member of g
    assert _run(b"@g veth br0 1\n", groups=[b"g"], db=db, live={b"veth1001_them"}) == [None]
    assert _run(b"@g veth br0 2\n", groups=[b"g"], db=db, live={b"veth1001_them"}) == [
        b"@g", None]


def test_quota_is_per_type_and_bridge_by_nsgate_choice():
    """usernet.py's documented choice (the issue; lxc-usernet(5)): a nic on br0 does not use
    the br1 grant. The reference counts per token only (§5.3), and would refuse here."""
    db = b"u veth br0 veth1000_a\n"
    policy = b"u veth br0 1\nu veth br1 1\n"
    assert _run(policy, db=db, live={b"veth1000_a"}, bridge=b"br1") == [b"u", None]
    assert _run(policy, db=db, live={b"veth1000_a"}, bridge=b"br0") == [None]


def test_quota_full_when_live_nics_fill_every_grant():
    grants = [usernet.Grant(b"u", b"veth", b"br0", 2, 1),
              usernet.Grant(b"@g", b"veth", b"br0", 1, 2)]
    full = usernet.decide(grants, {b"u": [b"a", b"b"], b"@g": [b"c"]})
    assert full.owner is None and full.capacity == 3
    assert full.used == {b"u": [b"a", b"b"], b"@g": [b"c"]}
    over = usernet.decide(grants, {b"u": [b"a", b"b", b"x"], b"@g": [b"c", b"d"]})
    assert over.owner is None
    assert usernet.decide(grants, {b"u": [b"a", b"b"]}).owner == b"@g"
    assert usernet.decide(grants, {b"@g": [b"c"]}).owner == b"u"
    assert usernet.decide([], {}).owner is None


# --------------------------------------------------------------------------------------------
# 3. nicdb: parse / serialize / prune / nics_by_owner / find / entry
# --------------------------------------------------------------------------------------------

db_words = st.one_of(st.sampled_from([b"u", b"@g", b"bob", b"bobby", b"#u", b"veth", b"macvlan",
                                      b"br0", b"none", b"ovsbr", b"veth1000_wl7j",
                                      b"veth3NMhB6", b"x" * 16, b"a:b", b"."]),
                     short_text.filter(lambda w: w and b"\n" not in w))


@st.composite
def db_lines(draw) -> bytes:
    """One non-empty line without its newline: mostly well-formed, sometimes damaged."""
    kind = draw(st.integers(0, 5))
    if kind == 0:
        raw = draw(st.binary(min_size=1, max_size=40))
    elif kind == 1:
        raw = draw(st.sampled_from([b"# comment", b"#u veth br0 veth1000_a", b"\r", b" ",
                                    b"u veth br0 veth1000_au veth br0 veth1000_b",
                                    b"veth br0 veth1000_a", b"u veth br0 veth1000_abcdefghijk",
                                    b"u veth br0 veth1000_a extra", b"u\x0bveth br0 vethA"]))
    else:
        words = [draw(db_words) for _ in range(draw(st.sampled_from([3, 4, 4, 4, 4, 5])))]
        raw = draw(st.sampled_from([b"", b"", b" ", b"\t"]))
        for word in words:
            raw += word + draw(st.sampled_from([b" ", b" ", b" ", b"\t", b"  "]))
        raw = raw[:-1] if draw(st.booleans()) else raw
    raw = raw.replace(b"\n", b"")
    return raw or b"x"


db_files = st.lists(db_lines(), max_size=12)


@fast(250)
@given(lines=db_files)
def test_db_round_trip_and_verbatim_lines(lines: list[bytes]) -> None:
    data = b"".join(line + b"\n" for line in lines)
    parsed = nicdb.parse(data)
    assert nicdb.serialize(parsed) == data
    assert [line.raw for line in parsed] == lines
    for raw, line in zip(lines, parsed, strict=True):
        want = oracle_db_line(raw)
        assert line.valid == (want is not None)
        if want is not None:
            assert (line.owner, line.nic_type, line.bridge, line.dev) == want


@fast(300)
@given(data=st.binary(max_size=200))
def test_db_parse_never_crashes_and_keeps_every_non_empty_line(data: bytes) -> None:
    parsed = nicdb.parse(data)
    assert [line.raw for line in parsed] == [raw for raw in data.split(b"\n") if raw]
    for line in parsed:
        assert line.valid == (oracle_db_line(line.raw) is not None)


@fast(200)
@given(lines=db_files, live=st.sets(st.sampled_from([b"veth1000_wl7j", b"veth3NMhB6", b"br0",
                                                      b"none", b"u", b"veth", b"ovsbr"])))
def test_db_prune_drops_exactly_the_dead_valid_lines(lines, live):
    raw_lines = nicdb.split_lines(b"".join(line + b"\n" for line in lines))
    kept, stale = nicdb.prune(raw_lines, nicdb.numbered(raw_lines), live)
    dead = [oracle_db_line(raw) is not None and oracle_db_line(raw)[3] not in live
            for raw in raw_lines]
    assert kept == [raw for raw, d in zip(raw_lines, dead, strict=True) if not d]
    assert [(position, line.raw) for position, line in stale.items()] == [
        (position, raw) for position, (raw, d) in enumerate(zip(raw_lines, dead, strict=True))
        if d]
    # only the candidates can be stale: the lines of one owner leave the others' alone
    mine = nicdb.lines_of(raw_lines, {b"u"}, b"veth", b"br0")
    kept_mine, stale_mine = nicdb.prune(raw_lines, mine, live)
    assert stale_mine == {position: line for position, line in mine.items()
                          if line.dev not in live}
    assert kept_mine == [raw for position, raw in enumerate(raw_lines)
                         if position not in stale_mine]


@fast(200)
@given(lines=db_files, devs=st.sets(st.sampled_from([b"veth1000_wl7j", b"veth3NMhB6", b"br0",
                                                      b"none", b"u", b"veth", b"ovsbr"])))
def test_db_lines_naming_finds_exactly_the_valid_lines_of_those_interfaces(lines, devs):
    """The janitor's candidates: the lines whose interface the kernel said was deleted."""
    raw_lines = nicdb.split_lines(b"".join(line + b"\n" for line in lines))
    found = nicdb.lines_naming(raw_lines, devs)
    assert {position: line.raw for position, line in found.items()} == {
        position: raw for position, raw in enumerate(raw_lines)
        if oracle_db_line(raw) is not None and oracle_db_line(raw)[3] in devs}


@fast(200)
@given(lines=db_files, nic_type=st.sampled_from([b"veth", b"macvlan", b"br0"]),
       bridge=st.sampled_from([b"br0", b"none", b"ovsbr", b"veth"]))
def test_db_nics_by_owner_counts_only_valid_matching_lines(lines, nic_type, bridge):
    parsed = nicdb.parse(b"".join(line + b"\n" for line in lines))
    want: dict[bytes, list[bytes]] = {}
    for raw in lines:
        line = oracle_db_line(raw)
        if line and line[1] == nic_type and line[2] == bridge:
            want.setdefault(line[0], []).append(line[3])
    assert nicdb.nics_by_owner(parsed, nic_type, bridge) == want


@fast(250)
@given(lines=db_files, tokens=st.sets(st.sampled_from([b"u", b"@g", b"bob", b"#u", b"x" * 16])),
       nic_type=st.sampled_from([b"veth", b"macvlan"]),
       bridge=st.sampled_from([b"br0", b"none", b"ovsbr"]),
       dev=st.sampled_from([b"veth1000_wl7j", b"veth3NMhB6", b"br0", b"none", b"veth"]))
def test_db_find_requires_owner_type_bridge_and_dev(lines, tokens, nic_type, bridge, dev):
    parsed = nicdb.parse(b"".join(line + b"\n" for line in lines))
    want = [line for line in parsed
            if oracle_db_line(line.raw) is not None
            and oracle_db_line(line.raw)[0] in tokens
            and oracle_db_line(line.raw)[1:] == (nic_type, bridge, dev)]
    found = nicdb.find(parsed, tokens, nic_type, bridge, dev)
    assert found is (want[0] if want else None)


def test_db_find_cve_2026_39402():
    db = nicdb.parse(b"bigu veth ovsbr vethX\n"
                     b"bobby veth ovsbr vethB\n"
                     b"u veth br0 vethY\n"
                     b"u macvlan ovsbr vethZ\n"
                     b"@g veth ovsbr vethG\n"
                     b"#u veth ovsbr vethH\n"
                     b"u veth ovsbr veth1000_abcdefghijk\n")
    mine = {b"u", b"@g"}
    assert nicdb.find(db, mine, b"veth", b"ovsbr", b"vethX") is None  # another user's line
    assert nicdb.find(db, {b"bob"}, b"veth", b"ovsbr", b"vethB") is None
    assert nicdb.find(db, mine, b"veth", b"ovsbr", b"vethY") is None  # own line, other bridge
    assert nicdb.find(db, mine, b"veth", b"ovsbr", b"vethZ") is None  # own line, other type
    assert nicdb.find(db, mine, b"veth", b"ovsbr", b"vethH") is None  # a comment
    assert nicdb.find(db, mine, b"veth", b"ovsbr", b"veth1000_abcdefghijk") is None  # damaged
    assert nicdb.find(db, mine, b"veth", b"ovsbr", b"vethG") is db[4]  # any member of g
    assert nicdb.find(db, {b"bigu"}, b"veth", b"ovsbr", b"vethX") is db[0]
    assert nicdb.find(db, {b"u"}, b"veth", b"br0", b"vethY") is db[2]
    assert nicdb.find(db, {b"u"}, b"veth", b"br0", b"vethy") is None


@fast(200)
@given(owner=st.sampled_from([b"u", b"@netgrp", b"nsgt-alice", b"x" * 99]),
       nic_type=st.sampled_from([b"veth", b"macvlan", b"#", b"t" * 99]),
       bridge=st.one_of(st.just(b"none"),
                        st.from_regex(_IFNAME, fullmatch=True).filter(oracle_ifname)),
       uid=st.integers(0, 2**32 - 1), rnd=st.binary(min_size=6, max_size=8))
def test_db_entry_is_the_reference_single_space_line(owner, nic_type, bridge, uid, rnd):
    dev = nicnames.host_veth_name(uid, rnd)
    line = nicdb.entry(owner, nic_type, bridge, dev)
    assert line.raw == owner + b" " + nic_type + b" " + bridge + b" " + dev
    assert nicdb.serialize([line]) == line.raw + b"\n"
    assert line.valid
    assert (line.owner, line.nic_type, line.bridge, line.dev) == (owner, nic_type, bridge, dev)
    assert nicdb.parse(nicdb.serialize([line]))[0].raw == line.raw


def test_db_entry_examples():
    assert nicdb.entry(b"u", b"veth", b"br0", b"veth1001_wl7j").raw == b"u veth br0 veth1001_wl7j"
    assert nicdb.entry(b"@netgrp", b"veth", b"none", b"veth1001_e17L").raw == (
        b"@netgrp veth none veth1001_e17L")


# Anything that can be a grant's token, and thus a caller's name or `@group`: no blank, no
# newline, no NUL (those never match), at most 99 bytes (usernet grammar).
grantable_names = st.binary(min_size=1, max_size=12).filter(
    lambda n: not any(c in n for c in b" \t\n\x00"))


@fast(200)
@given(name=grantable_names, as_group=st.booleans(),
       nic_type=st.sampled_from([b"veth", b"macvlan"]), bridge=st.sampled_from([b"br0", b"none"]),
       uid=st.integers(0, 70000), rnd=st.binary(min_size=8, max_size=8))
@example(name=b"#x", as_group=False, nic_type=b"veth", bridge=b"br0", uid=1000,
         rnd=b"\x00" * 8)
@example(name=b"a\x0bb", as_group=True, nic_type=b"veth", bridge=b"br0", uid=1000,
         rnd=b"\x00" * 8)
def test_every_recorded_nic_is_counted_again(name, as_group, nic_type, bridge, uid, rnd):
    """Quota integrity (B10, §10 item 1): whatever token a grant applies to, the line nsgate
    records for it is read back and counted, so a grant of 1 allows exactly one live nic.
    Names at risk: a user name starting with `#` (nicdb skips `#` lines; the spec assumes no
    such user) and names holding \r, \v or \f (nicdb splits words on them, usernet does not);
    useradd refuses both, NSS or a hand-edited passwd/group do not."""
    tokens = usernet.tokens_of(b"somebody", [name]) if as_group else usernet.tokens_of(name, [])
    token = b"@" + name if as_group else name
    grants = usernet.applicable(usernet.parse(token + b" " + nic_type + b" " + bridge + b" 1\n"),
                                tokens, nic_type, bridge)
    if token.startswith(b"#") or any(c in token for c in b"\r\v\f"):
        assert grants == []  # a token the database could not hold back grants nothing
        return
    assert [g.token for g in grants] == [token]
    assert usernet.decide(grants, {}).owner == token
    host = nicnames.host_veth_name(uid, rnd)
    db = nicdb.serialize([nicdb.entry(token, nic_type, bridge, host)])
    raw_lines = nicdb.split_lines(db)
    kept, stale = nicdb.prune(raw_lines, nicdb.numbered(raw_lines), {host})
    assert kept == raw_lines and stale == {}
    alive = nicdb.parse(nicdb.join_lines(kept))
    assert nicdb.nics_by_owner(alive, nic_type, bridge) == {token: [host]}
    assert usernet.decide(grants, nicdb.nics_by_owner(alive, nic_type, bridge)).owner is None


# --------------------------------------------------------------------------------------------
# 4. nicnames
# --------------------------------------------------------------------------------------------

@fast(600)
@given(name=ifname_candidates)
def test_valid_ifname_matches_oracle(name: bytes) -> None:
    assert nicnames.valid_ifname(name) == oracle_ifname(name)


@pytest.mark.parametrize(("name", "valid"), [
    (b"a", True), (b"eth0", True), (b"a" * 15, True), (b"a" * 16, False), (b"", False),
    (b".", False), (b"..", False), (b"...", True), (b".a", True), (b"br:0", False),
    (b"br/0", False), (b"br 0", False), (b"br\t0", False), (b"br0\n", False),
    (b"br\x0b0", False), (b"br\x00", False), (b"\x7f", False), (b"\xe9", False),
    (b"!", True), (b"~", True), (b"eth%d", False),
])
def test_valid_ifname_examples(name: bytes, valid: bool) -> None:
    assert oracle_ifname(name) == valid
    assert nicnames.valid_ifname(name) == valid


@fast(300)
@given(uid=st.one_of(st.sampled_from([0, 1, 9, 10, 999, 1000, 65535, 65536, 65537, 70000,
                                      2**31 - 1, 2**31, 2**32 - 2, 2**32 - 1]),
                     st.integers(0, 2**32 - 1)),
       rnd=st.binary(min_size=6, max_size=16))
def test_host_veth_name_scheme(uid: int, rnd: bytes) -> None:
    name = nicnames.host_veth_name(uid, rnd)
    if 0 < uid <= 65536:
        assert re.fullmatch(b"veth%d_[0-9a-zA-Z]{4}" % uid, name), name
    else:
        assert re.fullmatch(rb"veth[0-9a-zA-Z]{6}", name), name
    assert len(name) <= 15
    assert oracle_ifname(name) and nicnames.valid_ifname(name)
    assert nicnames.host_veth_name(uid, rnd) == name  # a function of uid and the random bytes


@fast(300)
@given(uid=st.one_of(st.sampled_from([0, 1, 999, 1000, 65536, 65537, 2**32 - 1]),
                     st.integers(0, 2**32 - 1)),
       other=st.integers(0, 2**32 - 1), rnd=st.binary(min_size=6, max_size=16),
       name=st.binary(max_size=16))
def test_is_host_veth_name_is_exactly_the_scheme(uid: int, other: int, rnd: bytes,
                                                 name: bytes) -> None:
    """What the OVS runner of a create accepts as a port name (system/ovs.py): the names
    host_veth_name gives this uid, and nothing else."""
    assert nicnames.is_host_veth_name(uid, nicnames.host_veth_name(uid, rnd))
    if 0 < uid <= 65536:
        expected = re.fullmatch(b"veth%d_[0-9a-zA-Z]{4}" % uid, name) is not None
    else:
        expected = re.fullmatch(rb"veth[0-9a-zA-Z]{6}", name) is not None
    assert nicnames.is_host_veth_name(uid, name) == expected
    if 0 < uid <= 65536 and other != uid:
        assert not nicnames.is_host_veth_name(other, nicnames.host_veth_name(uid, rnd))


def test_host_veth_name_examples():
    assert re.fullmatch(rb"veth65536_[0-9a-zA-Z]{4}", nicnames.host_veth_name(65536, b"\xff" * 6))
    assert len(nicnames.host_veth_name(65536, b"\x00" * 8)) == 14  # peer `<host>p` fits too
    assert re.fullmatch(rb"veth1_[0-9a-zA-Z]{4}", nicnames.host_veth_name(1, b"\x00" * 6))
    assert re.fullmatch(rb"veth[0-9a-zA-Z]{6}", nicnames.host_veth_name(0, b"\x00" * 6))
    assert re.fullmatch(rb"veth[0-9a-zA-Z]{6}", nicnames.host_veth_name(65537, b"\x01" * 6))
    assert re.fullmatch(rb"veth[0-9a-zA-Z]{6}", nicnames.host_veth_name(70000, b"\x01" * 6))


def test_host_veth_name_every_position_uses_its_random_byte_and_all_62_characters():
    alphabet = set(b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
    for uid, start, count in ((70000, 4, 6), (1000, 9, 4)):
        for position in range(count):
            seen = set()
            for value in range(256):
                rnd = bytearray(6)
                rnd[position] = value
                name = nicnames.host_veth_name(uid, bytes(rnd))
                seen.add(name[start + position])
                assert name[:start + position] + name[start + position + 1:] == (
                    nicnames.host_veth_name(uid, bytes(6))[:start + position]
                    + nicnames.host_veth_name(uid, bytes(6))[start + position + 1:])
            assert seen == alphabet


# --------------------------------------------------------------------------------------------
# 5. nic_request.parse: the command line
# --------------------------------------------------------------------------------------------

pid_texts = st.one_of(
    st.integers(-5, PID_MAX + 5).map(lambda n: str(n).encode()),
    st.sampled_from([b"0x10", b" 5", b"5 ", b"-1", b"0", b"010", b"+5", b"", b"1e3", b"1_0",
                     b"\xd9\xa3", b"2147483647", b"2147483648", b"4294967297", b"\t7",
                     b"00", b"1\x00"]),
    st.binary(max_size=8),
)
path_texts = st.one_of(st.sampled_from([b"/proc/123/fd/5", b"/proc/self/ns/net", b"", b"x",
                                        b"/dev/null", b"\xff\n:"]), st.binary(max_size=12))
type_texts = st.one_of(st.sampled_from([b"veth", b"veth", b"macvlan", b"", b"t" * 99,
                                        b"t" * 100, b"ve th", b"v\x00", b"\xe9", b"#", b"~"]),
                       st.binary(max_size=6))
bridge_texts = st.one_of(st.sampled_from([b"none", b"none", b"br0", b"lxcbr0", b"None"]),
                         ifname_candidates)
free_texts = st.one_of(st.sampled_from([b"/dev/null", b"dummy", b"xx", b"", b"/var/lib/lxc",
                                        b"--help", b"\xff\x00 \n"]), st.binary(max_size=12))


@st.composite
def argvs(draw) -> list[bytes]:
    verb = draw(st.sampled_from([b"create", b"delete"])) if draw(st.integers(0, 9)) else draw(
        st.sampled_from([b"Create", b"create ", b"", b"--help", b"del", b"CREATE", b"add"]))
    target = draw(pid_texts) if verb == b"create" else draw(path_texts)
    if draw(st.integers(0, 5)) == 0:
        target = draw(st.one_of(pid_texts, path_texts))
    args = [verb, draw(free_texts), draw(free_texts), target, draw(type_texts),
            draw(bridge_texts)]
    if draw(st.integers(0, 3)):
        args.append(draw(bridge_texts))
    shape = draw(st.integers(0, 9))
    if shape == 0:
        args = args[:draw(st.integers(0, len(args) - 1))]
    elif shape == 1:
        args += draw(st.lists(free_texts, min_size=1, max_size=2))
    return args


@fast(600)
@given(args=st.one_of(argvs(), st.lists(st.binary(max_size=10), max_size=9)))
def test_request_matches_oracle(args: list[bytes]) -> None:
    got = outcome(args)
    assert got == oracle_request(args)
    if got[0] == "ok":
        verb, pid, _path, _type, bridge, nicname = got[1:]
        assert bridge == b"none" or nicnames.valid_ifname(bridge)
        assert nicname is None or nicnames.valid_ifname(nicname)
        assert (pid >= 1) if verb == "create" else (nicname is not None)


@fast(300)
@given(args=argvs(), lxcpath=free_texts, name=free_texts)
def test_request_ignores_lxcpath_and_name(args, lxcpath, name):
    if len(args) < 3:
        return
    assert outcome([args[0], lxcpath, name, *args[3:]]) == outcome(args)


@pytest.mark.parametrize("args", [
    [], [b"create"], [b"create", b"x", b"x", b"1", b"veth"],
    [b"create", b"x", b"x", b"1", b"veth", b"br0", b"eth0", b"extra"],
    [b"--help"], [b"create", b"--help"], [b"add", b"x", b"x", b"1", b"veth", b"br0"],
    [b"CREATE", b"x", b"x", b"1", b"veth", b"br0"], [b"delete "] + [b"x"] * 6,
])
def test_request_usage_errors(args):
    with pytest.raises(Refusal) as caught:
        nic_request.parse(args)
    assert caught.value.usage


@pytest.mark.parametrize("pid", [b"0x10", b" 5", b"5 ", b"-1", b"0", b"010", b"+5", b"",
                                 b"2147483648", b"1_0", b"\xd9\xa3", b"\t7", b"1\n"])
def test_request_pid_must_be_canonical_decimal(pid):
    with pytest.raises(Refusal) as caught:
        nic_request.parse([b"create", b"x", b"x", pid, b"veth", b"br0"])
    assert not caught.value.usage


@pytest.mark.parametrize(("args", "pid", "nicname"), [
    ([b"create", b"/dev/null", b"dummy", b"1234", b"veth", b"lxcbr0", b"eth0"], 1234, b"eth0"),
    ([b"create", b"xx", b"xx", b"1", b"veth", b"none"], 1, None),
    ([b"create", b"/var/lib/lxc", b"c1", b"2147483647", b"macvlan", b"br0", b"net1"],
     PID_MAX, b"net1"),
])
def test_request_create_examples(args, pid, nicname):
    request = nic_request.parse(args)
    assert (request.verb, request.pid, request.nic_type, request.bridge, request.nicname) == (
        "create", pid, args[4], args[5], nicname)


def test_request_delete_needs_the_host_name():
    with pytest.raises(Refusal) as caught:
        nic_request.parse([b"delete", b"x", b"x", b"/proc/1/fd/3", b"veth", b"ovsbr"])
    assert not caught.value.usage
    request = nic_request.parse([b"delete", b"x", b"x", b"/proc/1/fd/3", b"veth", b"ovsbr",
                                 b"veth1000_wl7j"])
    assert (request.verb, request.netns_path, request.bridge, request.nicname) == (
        "delete", b"/proc/1/fd/3", b"ovsbr", b"veth1000_wl7j")


@pytest.mark.parametrize("bad", [b"br:0", b"br/0", b"br 0", b"a" * 16, b"", b".", b"..",
                                 b"br\n0", b"\xe9"])
def test_request_bad_names_refused(bad):
    for args in ([b"create", b"x", b"x", b"1", b"veth", bad],
                 [b"create", b"x", b"x", b"1", b"veth", b"br0", bad],
                 [b"delete", b"x", b"x", b"/p", b"veth", b"br0", bad]):
        with pytest.raises(Refusal):
            nic_request.parse(args)


def test_request_create_name_of_one_byte_is_accepted_as_the_issue_says():
    """Issue 3 asks for names of length 1..15 (B11 and the reference's rename say 2..15): a
    one-byte name is a valid kernel name, and nsgate follows the issue."""
    request = nic_request.parse([b"create", b"x", b"x", b"1234", b"veth", b"br0", b"a"])
    assert request.nicname == b"a"


def test_request_name_templates():
    """Issue 9 §3: a create may ask for a kernel template (`net%d`: the kernel picks net0, net1...
    as the reference lets it); only one `%d`, as the kernel's dev_alloc_name allows, and never
    for delete, whose name is a host end's."""
    for name in (b"a%d", b"eth%d", b"%d", b"net%dx", b"abcdefghijklm%d"):
        request = nic_request.parse([b"create", b"x", b"x", b"1234", b"veth", b"br0", name])
        assert request.nicname == name
    for name in (b"%", b"a%", b"a%s", b"a%d%d", b"%%d", b"a%dx%", b"abcdefghijklmn%d", b"a/%d",
                 b"a %d", b"a:%d", b"a%D"):
        with pytest.raises(Refusal):
            nic_request.parse([b"create", b"x", b"x", b"1234", b"veth", b"br0", name])
    with pytest.raises(Refusal):
        nic_request.parse([b"delete", b"x", b"x", b"/proc/1/ns/net", b"veth", b"br0", b"a%d"])




# --------------------------------------------------------------------------------------------
# The private bridges' record: which recorded bridge goes when (policy/private_bridges.py)
# --------------------------------------------------------------------------------------------


def test_record_lines_name_the_uid_s_own_bridge_only():
    assert private_bridges.record_line(1001) == b"1001 nsgu1001"
    assert private_bridges.recorded_bridge(b"1001 nsgu1001") == b"nsgu1001"
    for raw in (b"1001 nsgu1002", b"1001  nsgu1001", b"1001 nsgu1001 ", b" 1001 nsgu1001",
                b"01001 nsgu1001", b"1001 nsgu01001", b"1001 br0", b"# 1001 nsgu1001", b"",
                b"x nsgux", b"1001\tnsgu1001"):
        assert private_bridges.recorded_bridge(raw) is None, raw


def test_reap_removes_portless_bridges_forgets_gone_ones_and_keeps_the_rest():
    record = [b"1 nsgu1", b"2 nsgu2", b"junk", b"3 nsgu3", b"4 nsgu4", b"1 nsgu1", b"5 nsgu5"]
    states = {b"nsgu1": private_bridges.UNUSED, b"nsgu2": private_bridges.GONE,
              b"nsgu3": private_bridges.IN_USE, b"nsgu4": private_bridges.FOREIGN}
    kept, remove, forget = private_bridges.reap(record, states)
    assert kept == [b"junk", b"3 nsgu3", b"4 nsgu4", b"5 nsgu5"]  # nsgu5: not judged
    assert remove == [b"nsgu1"]  # once, with its duplicate line
    assert forget == [b"nsgu2"]
    assert private_bridges.reap(record, {}) == (record, [], [])


@fast(200)
@given(uids=st.lists(st.integers(0, 5), max_size=8),
       states=st.dictionaries(st.integers(0, 5),
                              st.sampled_from([private_bridges.GONE, private_bridges.UNUSED,
                                               private_bridges.IN_USE, private_bridges.FOREIGN])))
def test_reap_keeps_exactly_the_lines_of_bridges_that_stay(uids, states):
    record = [b"%d nsgu%d" % (uid, uid) for uid in uids]
    by_name = {b"nsgu%d" % uid: state for uid, state in states.items()}
    kept, remove, forget = private_bridges.reap(record, by_name)
    goes = {private_bridges.UNUSED, private_bridges.GONE}
    assert kept == [raw for raw, uid in zip(record, uids, strict=True)
                    if states.get(uid) not in goes]
    assert set(remove) == {b"nsgu%d" % uid for uid in uids
                           if states.get(uid) == private_bridges.UNUSED}
    assert set(forget) == {b"nsgu%d" % uid for uid in uids
                           if states.get(uid) == private_bridges.GONE}
    assert len(remove) == len(set(remove)) and len(forget) == len(set(forget))


def test_a_create_keeps_lxcpath_and_name_for_its_stable_macs():
    """They decide nothing (above); a create keeps them as given, hashed into its nic's MACs."""
    request = nic_request.parse([b"create", b"/home/u/.local/share/lxc", b"c\xff 1", b"42",
                                 b"veth", b"nsgate-private", b"eth0"])
    assert (request.lxcpath, request.name) == (b"/home/u/.local/share/lxc", b"c\xff 1")
