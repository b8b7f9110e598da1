"""Property-based and example tests for every parser of untrusted input in nsgate.policy.

Each parser is checked against a small, independent oracle written from the specs
(newuidmap.md §3, §6, §11; security-cases.md part A), never against its own implementation:
canonical decimal numbers, the newuidmap/newgidmap command line, the subid files (under every
chunking of the same bytes), coverage, authorisation, nsswitch.conf and login.defs.
"""

from __future__ import annotations

import re
from itertools import pairwise

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from nsgate.errors import Refusal
from nsgate.policy import authorize, config, idmap_request, numbers, subid
from nsgate.policy.idmap_request import Triple

# The autouse fixtures of conftest.py are function-scoped; they only reset /etc, which these
# pure tests never read, so running them once per test (not per example) is correct.
_COMMON = {
    "deadline": None,
    "database": None,  # leave no .hypothesis directory in the checkout
    "suppress_health_check": [HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                              HealthCheck.data_too_large, HealthCheck.filter_too_much],
}


def fast(examples: int) -> settings:
    return settings(max_examples=examples, **_COMMON)


# --------------------------------------------------------------------------------------------
# Oracles, written from the specs
# --------------------------------------------------------------------------------------------

_CANONICAL = re.compile(rb"0|[1-9][0-9]*")
UINT32_MAX = 2**32 - 1
MAX_ID = 2**32 - 2  # newuidmap.md §3.3: upper, lower <= 4294967294
PID_MAX = FD_MAX = 2**31 - 1


def canonical(text: bytes) -> int | None:
    """The value of canonical decimal text (`0` or `[1-9][0-9]*`), else None."""
    return int(text) if _CANONICAL.fullmatch(text) else None


def oracle_subid_line(line: bytes, max_count: int = UINT32_MAX) -> tuple[bytes, int, int] | None:
    """A subid line as the spec reads it (§6.1 with the bounds of 4.20, §11 items 1, 2, 4):
    (owner, start, count) if it grants anything, else None."""
    if len(line) >= 1023:  # shadow's 1024-byte buffer, newline included
        return None
    fields = line.split(b":")
    if len(fields) != 3:
        return None
    owner, start_text, count_text = fields
    if not owner or owner[:1] in (b"+", b"-"):
        return None
    start, count = canonical(start_text), canonical(count_text)
    if start is None or count is None:
        return None
    if not (start <= UINT32_MAX and 1 <= count <= max_count and start + count <= 2**32):
        return None
    return owner, start, count


def is_count_2_32_line(line: bytes) -> bool:
    """`owner:0:4294967296`: the one line where a `start + count <= 2**32` rule and the spec's
    `count <= 2**32 - 1` disagree. Tested on its own (test_count_beyond_32_bits_is_ignored)."""
    return oracle_subid_line(line) is None and oracle_subid_line(line, max_count=2**32) is not None


def file_lines(data: bytes) -> list[bytes]:
    """The lines of a whole file; a last line without a newline is still a line."""
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    return lines


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in pairwise(points)]


def uncovered_ids(owned: list[tuple[int, int]], start: int, count: int) -> set[int]:
    have = {i for s, c in owned for i in range(s, s + c)}
    return {i for i in range(start, start + count) if i not in have}


# --------------------------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------------------------

BOUNDARY_NUMBERS = [0, 1, 2, 9, 10, 65536, 100000, 165536, 2**31 - 1, 2**31, 2**32 - 2,
                    2**32 - 1, 2**32, 2**32 + 1, 2**63, 2**64 - 1, 2**64, 10**20 - 1, 10**20,
                    10**30]

numbers_any = st.one_of(st.sampled_from(BOUNDARY_NUMBERS), st.integers(0, 2**33),
                        st.integers(0, 10**25))

_MUTATIONS = [
    lambda n: b"0" + str(n).encode(),  # octal to the reference
    lambda n: b"00" + str(n).encode(),
    lambda n: b"+" + str(n).encode(),
    lambda n: b"-" + str(n).encode(),
    lambda n: b" " + str(n).encode(),
    lambda n: b"\t" + str(n).encode(),
    lambda n: str(n).encode() + b" ",
    lambda n: str(n).encode() + b"\n",
    lambda n: str(n).encode() + b"\x00",
    lambda n: hex(n).encode(),
    lambda n: hex(n).upper().encode(),
    lambda n: oct(n).encode(),
    lambda n: f"{n:_}".encode(),  # Python's int() would accept this
    lambda n: str(n).translate(str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩")).encode(),
    lambda n: str(n).translate(str.maketrans("0123456789", "０１２３４５６７８９")).encode(),
    lambda n: b"",
    lambda n: str(n).encode() + b"x",
    lambda n: f"{n}e0".encode(),
]

noncanonical_numbers = st.builds(lambda f, n: f(n), st.sampled_from(_MUTATIONS), numbers_any)
canonical_numbers = numbers_any.map(lambda n: str(n).encode())


@st.composite
def number_texts(draw) -> bytes:
    """Mostly canonical decimal near the interesting bounds, sometimes a near miss."""
    if draw(st.integers(0, 3)):
        return draw(canonical_numbers)
    return draw(st.one_of(noncanonical_numbers, st.binary(max_size=6)))


small_ids = st.one_of(st.sampled_from([0, 1, 1000, 100000, 2**32 - 3, 2**32 - 2]),
                      st.integers(0, 2**32 - 2))


@st.composite
def likely_valid_numbers(draw) -> bytes:
    if draw(st.integers(0, 9)):
        return str(draw(small_ids)).encode()
    return draw(number_texts())


@st.composite
def targets(draw) -> bytes:
    return draw(st.one_of(
        st.integers(-5, 2**31 + 5).map(lambda n: str(n).encode()),
        st.integers(0, 2**31 + 5).map(lambda n: f"fd:{n}".encode()),
        st.sampled_from([b"1", b"fd:0", b"fd:3", b"fd:", b"fd:+9", b"fd:09", b"fd: 9", b"fd:-1",
                         b"fd:0x3", b"FD:3", b"+1", b" 1", b"1 ", b"01", b"0x10", b"-h",
                         b"--help", b"-V", b"", b"1x", b"\xff"]),
        number_texts().map(lambda t: b"fd:" + t),
        number_texts(),
    ))


@st.composite
def structured_argv(draw) -> list[bytes]:
    target = draw(targets()) if draw(st.integers(0, 4)) == 0 else str(
        draw(st.integers(1, PID_MAX))).encode()
    triples = draw(st.lists(st.tuples(likely_valid_numbers(), likely_valid_numbers(),
                                      st.one_of(st.integers(0, 70000).map(lambda n: str(n)
                                                                          .encode()),
                                                likely_valid_numbers())),
                            max_size=6))
    fields = [field for triple in triples for field in triple]
    if draw(st.integers(0, 7)) == 0:  # break the arity now and then
        fields = fields + draw(st.lists(likely_valid_numbers(), min_size=1, max_size=2))
    return [target, *fields]


def expected_request(args: list[bytes]) -> tuple[str, object]:
    """What the spec says parse() must do: ("ok", (pid, fd, triples)) or ("refuse", reason)."""
    if not args:
        return "refuse", "target"
    target = args[0]
    if target.startswith(b"fd:") and len(target) > 3:
        pid, fd = None, canonical(target[3:])
        if fd is None or fd > FD_MAX:
            return "refuse", "target"
    else:
        pid, fd = canonical(target), None
        if pid is None or not 1 <= pid <= PID_MAX:
            return "refuse", "target"
    fields = args[1:]
    if not fields:
        return "refuse", "zero triples"
    if len(fields) % 3:
        return "refuse", "arity"
    if len(fields) // 3 > 340:
        return "refuse", "too many"
    values = [canonical(f) for f in fields]
    if None in values:
        return "refuse", "syntax"
    triples = [tuple(values[i:i + 3]) for i in range(0, len(values), 3)]
    for upper, lower, count in triples:
        if upper > MAX_ID or lower > MAX_ID or not 1 <= count <= UINT32_MAX - max(upper, lower):
            return "refuse", "bounds"
    if len("".join(f"{u} {lo} {c}\n" for u, lo, c in triples)) >= 4096:
        return "refuse", "page"
    return "ok", (pid, fd, triples)


# --------------------------------------------------------------------------------------------
# 1. numbers.parse_decimal
# --------------------------------------------------------------------------------------------

MAXIMUMS = st.one_of(
    st.sampled_from([0, 1, PID_MAX, UINT32_MAX, 2**32, 2**64 - 1, 10**20]),
    st.integers(0, 2**64),
)


@fast(400)
@given(value=st.one_of(st.sampled_from(BOUNDARY_NUMBERS), st.integers(0, 10**21)),
       maximum=MAXIMUMS)
@example(value=10**20, maximum=10**20)  # idmap_request's "any number" maximum, 21 digits
def test_parse_decimal_reads_canonical_decimal(value, maximum):
    expected = value if value <= maximum else None
    assert numbers.parse_decimal(str(value).encode(), maximum) == expected


# Syntax only: maximums of at most 20 digits, so the length cap is not what is tested here
# (test_parse_decimal_reads_canonical_decimal covers larger maximums).
SYNTAX_MAXIMUMS = st.one_of(st.sampled_from([0, 1, PID_MAX, UINT32_MAX, 2**32, 2**64 - 1]),
                            st.integers(0, 2**64))


@fast(400)
@given(text=st.one_of(st.binary(max_size=30), noncanonical_numbers, canonical_numbers,
                      st.text(max_size=8).map(lambda s: s.encode())),
       maximum=SYNTAX_MAXIMUMS)
def test_parse_decimal_never_reinterprets(text, maximum):
    result = numbers.parse_decimal(text, maximum)
    if _CANONICAL.fullmatch(text) and int(text) <= maximum:
        assert result == int(text)
    else:
        assert result is None


@pytest.mark.parametrize("text", [
    b"010", b"00", b"0x10", b"0X10", b"0o10", b"0b1", b"+5", b" 5", b"5 ", b"\t5", b"5\n",
    b"-1", b"-0", "٣".encode(), "５".encode(), b"", b"1_000", b"1e3", b"5\x00", b"\xff",
    b"1" * 5000,  # longer than Python's int() digit limit: must not raise
])
def test_parse_decimal_rejects_non_canonical(text):
    assert numbers.parse_decimal(text, 10**20) is None


@pytest.mark.parametrize(("text", "maximum", "expected"), [
    (b"0", 0, 0), (b"1", 0, None), (b"4294967295", UINT32_MAX, UINT32_MAX),
    (b"4294967296", UINT32_MAX, None), (b"2147483647", PID_MAX, PID_MAX),
    (b"18446744073709551616", 2**64, 2**64),
])
def test_parse_decimal_examples(text, maximum, expected):
    assert numbers.parse_decimal(text, maximum) == expected


# --------------------------------------------------------------------------------------------
# 2. idmap_request.parse and find_overlap
# --------------------------------------------------------------------------------------------

def parse_outcome(args: list[bytes], kind: str = "uid"):
    """parse() must return a MapRequest or raise Refusal, nothing else."""
    try:
        return idmap_request.parse(args, kind)
    except Refusal as refusal:
        assert isinstance(refusal.first, str) and refusal.first
        return refusal


def check_accepted(request, args: list[bytes]) -> None:
    """Every invariant a returned request must satisfy, whatever the input was."""
    assert isinstance(request, idmap_request.MapRequest)
    target = args[0]
    if request.fd is not None:
        assert request.pid is None and 0 <= request.fd <= FD_MAX
        assert target == b"fd:%d" % request.fd
    else:
        assert request.pid is not None and 1 <= request.pid <= PID_MAX
        assert target == b"%d" % request.pid
    assert 1 <= len(request.triples) <= 340
    assert len(args) == 1 + 3 * len(request.triples)
    for field in args[1:]:
        assert _CANONICAL.fullmatch(field), field
    for position, triple in enumerate(request.triples):
        assert triple.index == position + 1
        assert (triple.upper, triple.lower, triple.count) == tuple(
            int(f) for f in args[1 + 3 * position:4 + 3 * position])
        assert 0 <= triple.upper <= MAX_ID and 0 <= triple.lower <= MAX_ID
        assert 1 <= triple.count <= UINT32_MAX - max(triple.upper, triple.lower)
    text = request.map_text()
    assert len(text) < 4096
    # Round trip: the buffer written to the kernel says exactly what was asked, in decimal.
    lines = text.split(b"\n")
    assert lines[-1] == b""
    reparsed = [tuple(canonical(x) for x in line.split(b" ")) for line in lines[:-1]]
    assert reparsed == [(t.upper, t.lower, t.count) for t in request.triples]
    again = idmap_request.parse([target, *text.split()], "uid")
    assert [(t.upper, t.lower, t.count) for t in again.triples] == reparsed


@fast(300)
@given(args=st.lists(st.binary(max_size=24), max_size=14), kind=st.sampled_from(["uid", "gid"]))
def test_parse_arbitrary_argv(args, kind):
    outcome = parse_outcome(args, kind)
    verdict, detail = expected_request(args)
    if verdict == "ok":
        check_accepted(outcome, args)
    else:
        assert isinstance(outcome, Refusal), (args, detail)


@fast(500)
@given(args=structured_argv(), kind=st.sampled_from(["uid", "gid"]))
@example(args=[b"1", b"4294967294", b"100000", b"1"], kind="uid")
@example(args=[b"1", b"0", b"4294967294", b"1"], kind="uid")
@example(args=[b"1", b"0", b"0", b"4294967295"], kind="uid")
@example(args=[b"fd:0", b"0", b"1000", b"1", b"1", b"100000", b"65536"], kind="gid")
def test_parse_near_valid_argv(args, kind):
    outcome = parse_outcome(args, kind)
    verdict, detail = expected_request(args)
    if verdict == "ok":
        check_accepted(outcome, args)
        pid, fd, triples = detail  # type: ignore[misc]
        assert (outcome.pid, outcome.fd) == (pid, fd)
        assert [(t.upper, t.lower, t.count) for t in outcome.triples] == triples
    else:
        assert isinstance(outcome, Refusal), (args, detail)
        if detail in ("zero triples", "target", "arity", "syntax"):
            assert outcome.usage, (args, outcome.first)


@pytest.mark.parametrize("triple", [
    (b"4294967294", b"100000", b"1"), (b"0", b"4294967294", b"1"), (b"0", b"0", b"4294967295"),
    (b"4294967293", b"0", b"2"), (b"0", b"100000", b"65536"),
])
def test_parse_accepts_the_bounds(triple):
    request = idmap_request.parse([b"1", *triple], "uid")
    assert [(t.upper, t.lower, t.count) for t in request.triples] == [
        tuple(int(x) for x in triple)]


@pytest.mark.parametrize("triple", [
    (b"4294967294", b"100000", b"2"), (b"0", b"4294967295", b"1"), (b"4294967295", b"0", b"1"),
    (b"0", b"0", b"4294967296"), (b"0", b"1", b"4294967295"), (b"0", b"100000", b"0"),
    (b"4294967294", b"4294967294", b"2"), (b"0", b"18446744073709551615", b"1"),
    (b"0", b"18446744073709551616", b"1"),
])
def test_parse_refuses_out_of_bounds_as_overflow(triple):
    with pytest.raises(Refusal) as refused:
        idmap_request.parse([b"1", *triple], "uid")
    assert refused.value.first == "subuid overflow detected."
    assert refused.value.usage


@fast(200)
@given(value=st.integers(2**32 - 1, 10**40), position=st.integers(0, 1))
@example(value=10**20, position=1)
def test_parse_refuses_huge_canonical_numbers_as_overflow(value, position):
    """A canonical number beyond the bounds is the reference's `subuid overflow detected.`
    (§3.3, §10 "MUST keep the reference's text"), however many digits it has."""
    triple = [b"0", b"0", b"1"]
    triple[position] = str(value).encode()
    with pytest.raises(Refusal) as refused:
        idmap_request.parse([b"1", *triple], "uid")
    assert refused.value.first == "subuid overflow detected."


@pytest.mark.parametrize("bad", [
    b"-1", b"010", b"0x10", b"+5", b" 5", b"5 ", b"", "٣".encode(), b"1x", b"-0",
])
@pytest.mark.parametrize("position", [0, 1, 2])
def test_parse_refuses_non_canonical_fields(bad, position):
    triple = [b"0", b"100000", b"1"]
    triple[position] = bad
    with pytest.raises(Refusal) as refused:
        idmap_request.parse([b"1", *triple], "uid")
    assert refused.value.usage


@pytest.mark.parametrize("target", [
    b"0", b"-1", b"-5", b"+1", b" 1", b"1 ", b"01", b"0x1", b"", b"1x", b"-h", b"--help", b"-V",
    b"2147483648", b"4294967291", b"fd:", b"fd:+9", b"fd: 9", b"fd:09", b"fd:-1", b"fd:0x3",
    b"fd:2147483648", b"fd:9x", b"FD:9", "٣".encode(),
])
def test_parse_refuses_bad_targets(target):
    with pytest.raises(Refusal) as refused:
        idmap_request.parse([target, b"0", b"100000", b"1"], "uid")
    assert refused.value.usage


@pytest.mark.parametrize(("target", "pid", "fd"), [
    (b"1", 1, None), (b"2147483647", PID_MAX, None), (b"fd:0", None, 0), (b"fd:9", None, 9),
    (b"fd:2147483647", None, FD_MAX),
])
def test_parse_targets(target, pid, fd):
    request = idmap_request.parse([target, b"0", b"100000", b"1"], "gid")
    assert (request.pid, request.fd) == (pid, fd)
    assert request.target == target.decode()


@pytest.mark.parametrize("kind", ["uid", "gid"])
def test_parse_zero_triples_is_a_usage_error(kind):
    with pytest.raises(Refusal) as refused:
        idmap_request.parse([b"1"], kind)
    assert refused.value.usage
    with pytest.raises(Refusal) as refused:
        idmap_request.parse([], kind)
    assert refused.value.usage


@pytest.mark.parametrize("extra", [1, 2, 4, 5])
def test_parse_refuses_wrong_arity(extra):
    with pytest.raises(Refusal) as refused:
        idmap_request.parse([b"1", *[b"1"] * extra], "uid")
    assert refused.value.usage


def _flat(triples) -> list[bytes]:
    return [str(x).encode() for triple in triples for x in triple]


def test_parse_kernel_limits():
    # §3.4: 340 lines at most, and a write shorter than a page.
    assert len(idmap_request.parse([b"1", *_flat((i, i, 1) for i in range(340))],
                                   "uid").triples) == 340
    with pytest.raises(Refusal):
        idmap_request.parse([b"1", *_flat((i, i, 1) for i in range(341))], "uid")
    six_digits = [(i, 100000 + i, 1) for i in range(341)]
    assert len(idmap_request.parse([b"1", *_flat(six_digits[:320])], "uid").triples) == 320
    with pytest.raises(Refusal):
        idmap_request.parse([b"1", *_flat(six_digits)], "uid")
    big = [(4294967294 - i, 4294967294 - i, 1) for i in range(200)]  # 24 bytes a line
    with pytest.raises(Refusal):
        idmap_request.parse([b"1", *_flat(big)], "uid")


def test_parse_page_limit_exactly():
    lines = [(4000000000 + i, 4000000000 + i, 1) for i in range(170)]  # 24 bytes each: 4080
    assert len(idmap_request.parse([b"1", *_flat([*lines, (12345, 123456, 1)])],
                                   "uid").map_text()) == 4095
    with pytest.raises(Refusal):
        idmap_request.parse([b"1", *_flat([*lines, (123456, 123456, 1)])], "uid")  # 4096


_SIZED = st.sampled_from([0, 9, 99999, 4000000000])


@fast(150)
@given(triples=st.lists(st.tuples(_SIZED, _SIZED, st.sampled_from([1, 10])),
                        min_size=140, max_size=345))
def test_parse_size_limits_match_oracle(triples):
    """Hundreds of triples, around both kernel limits (340 lines, a write under a page)."""
    args = [b"fd:3", *_flat(triples)]
    outcome = parse_outcome(args)
    verdict, _ = expected_request(args)
    if verdict == "ok":
        check_accepted(outcome, args)
    else:
        assert isinstance(outcome, Refusal)


def _overlap(a: Triple, b: Triple, side: str) -> bool:
    x, y = getattr(a, side), getattr(b, side)
    return x < y + b.count and y < x + a.count


small_triples = st.lists(st.tuples(st.integers(0, 30), st.integers(0, 30), st.integers(1, 8)),
                         max_size=6).map(
    lambda ts: [Triple(u, lo, c, i + 1) for i, (u, lo, c) in enumerate(ts)])


@fast(500)
@given(triples=small_triples)
def test_find_overlap_matches_brute_force(triples):
    brute = any(_overlap(a, b, side) for a in triples for b in triples if a.index < b.index
                for side in ("upper", "lower"))
    found = idmap_request.find_overlap(triples)
    if not brute:
        assert found is None
    else:
        assert found is not None
        first, second, side = found
        assert first in triples and second in triples
        assert first.index < second.index
        assert side in ("upper", "lower")
        assert _overlap(first, second, side)


def test_find_overlap_examples():
    def triples(*spec):
        return [Triple(u, lo, c, i + 1) for i, (u, lo, c) in enumerate(spec)]

    assert idmap_request.find_overlap(triples((0, 1500, 1), (0, 100000, 1)))[2] == "upper"
    assert idmap_request.find_overlap(triples((0, 100000, 10), (5, 100005, 10))) is not None
    own = idmap_request.find_overlap(triples((0, 100500, 1), (1, 100000, 65536)))
    assert own is not None and own[2] == "lower"
    assert idmap_request.find_overlap(triples((0, 1500, 1), (1, 100000, 65536))) is None
    assert idmap_request.find_overlap(triples((0, 0, 10), (10, 10, 10))) is None


# --------------------------------------------------------------------------------------------
# 3. The subid files
# --------------------------------------------------------------------------------------------

LINE_OWNERS = [b"bob", b"bobby", b"xbob", b"bo", b"Bob", b"bob ", b" bob", b"alice", b"1500",
               b"01500", b"b\xffb", b"+bob", b"-bob", b"#bob", b"", b"bob\r",
               *(b"L" * n for n in (1015, 1017, 1018, 1019, 1020, 1030))]
QUERY_OWNERS = [b"bob", b"bobby", b"xbob", b"bo", b"Bob", b"bob ", b"alice", b"1500",
                b"b\xffb", b"+bob", b"nobody", b"L" * 1015, b"L" * 1018, b"L" * 1019]

id_numbers = st.one_of(st.sampled_from([0, 1, 2, 65536, 100000, 165536, 2**32 - 2, 2**32 - 1,
                                        2**32, 2**32 + 1, 2**64, 10**30]),
                       st.integers(0, 2**33), st.integers(0, 300000))


@st.composite
def subid_number(draw) -> bytes:
    if draw(st.integers(0, 4)):
        return str(draw(id_numbers)).encode()
    return draw(noncanonical_numbers)


@st.composite
def subid_lines(draw, owners=LINE_OWNERS, number=None) -> bytes:
    if number is None:
        number = subid_number()
    kind = draw(st.sampled_from(["entry"] * 8 + ["two", "four", "comment", "blank", "spaces",
                                                 "nis", "random"]))
    owner = draw(st.sampled_from(owners))
    if kind == "entry":
        junk = draw(st.sampled_from([b""] * 8 + [b" ", b"\t", b"\r", b"x", b":", b"\x00"]))
        return owner + b":" + draw(number) + b":" + draw(number) + junk
    if kind == "two":
        return owner + b":" + draw(number)
    if kind == "four":
        return owner + b":" + draw(number) + b":" + draw(number) + b":" + draw(number)
    if kind == "comment":
        return b"#" + owner + b":" + draw(number) + b":" + draw(number)
    if kind == "blank":
        return b""
    if kind == "spaces":
        return draw(st.sampled_from([b" ", b"\t", b"  ", b"\r"]))
    if kind == "nis":
        return draw(st.sampled_from([b"+", b"-", b"+bob:1:2", b"-bob:1:2", b"+:1:2"]))
    return draw(st.binary(max_size=40))


@st.composite
def subid_files(draw, lines=None) -> bytes:
    body = b"\n".join(draw(st.lists(subid_lines() if lines is None else lines, max_size=25)))
    if body and draw(st.booleans()):
        body += b"\n"  # else: a last line without a newline, which nsgate accepts (§11 item 11)
    return body


@st.composite
def chunkings(draw, data: bytes) -> list[bytes]:
    cuts = draw(st.lists(st.integers(0, len(data)), max_size=10))
    return split_at(data, cuts)


def owner_scan(result: subid.OwnerScan) -> tuple[list, list]:
    return ([(x.lineno, x.owner, x.start, x.count) for x in result.lines],
            [(x.lineno, x.reason) for x in result.ignored])


def all_lines(chunks: list[bytes]) -> list[tuple]:
    return [(x.lineno, x.owner, x.start, x.count) if isinstance(x, subid.SubidLine)
            else (x.lineno, x.reason) for x in subid.iter_lines(chunks)]


@fast(300)
@given(data=subid_files(), owners=st.sets(st.sampled_from(QUERY_OWNERS), max_size=3),
       more=st.data())
def test_scan_owners_matches_oracle_for_every_chunking(data, owners, more):
    lines = file_lines(data)
    assume(not any(is_count_2_32_line(line) for line in lines))
    expected = []
    expected_ignored = []
    for lineno, line in enumerate(lines, 1):
        parsed = oracle_subid_line(line)
        if parsed is not None and parsed[0] in owners:
            expected.append((lineno, *parsed))
        elif parsed is None and any(line.startswith(o + b":") for o in owners):
            expected_ignored.append(lineno)

    results = []
    for chunks in ([data], more.draw(chunkings(data)), more.draw(chunkings(data)),
                   [data[i:i + 1] for i in range(len(data))]):
        assert b"".join(chunks) == data
        found, ignored = owner_scan(subid.scan_owners(iter(chunks), owners))
        assert found == expected, (data, owners, chunks)
        assert [lineno for lineno, _ in ignored] == expected_ignored
        for _, owner, start, count in found:
            assert owner in owners
            assert count >= 1 and start + count <= 2**32
        results.append((found, ignored))
    assert all(r == results[0] for r in results)


@fast(300)
@given(data=subid_files(), more=st.data())
def test_iter_lines_matches_oracle_for_every_chunking(data, more):
    lines = file_lines(data)
    assume(not any(is_count_2_32_line(line) for line in lines))
    expected = []
    for lineno, line in enumerate(lines, 1):
        if line:
            parsed = oracle_subid_line(line)
            expected.append((lineno, *parsed) if parsed else lineno)
    results = []
    for chunks in ([data], more.draw(chunkings(data)), [data[i:i + 1] for i in range(len(data))]):
        got = all_lines(chunks)
        assert [x if len(x) == 4 else x[0] for x in got] == expected, (data, chunks)
        for x in got:
            if len(x) == 4:
                assert x[3] >= 1 and x[2] + x[3] <= 2**32
        results.append(got)
    assert all(r == results[0] for r in results)


@fast(300)
@given(line=st.one_of(subid_lines(), st.binary(max_size=60)), lineno=st.integers(1, 10**6))
@example(line=b"bob:0:1", lineno=1)
def test_parse_line_matches_oracle(line, lineno):
    assume(b"\n" not in line and not is_count_2_32_line(line))
    parsed = subid.parse_line(line, lineno)
    assert parsed.lineno == lineno
    expected = oracle_subid_line(line)
    if expected is None:
        assert isinstance(parsed, subid.IgnoredLine) and parsed.reason
    else:
        assert isinstance(parsed, subid.SubidLine)
        assert (parsed.owner, parsed.start, parsed.count) == expected
        assert parsed.end == parsed.start + parsed.count


@pytest.mark.parametrize("line", [
    b"bob:100000:65536 ", b"bob:100000:65536\t", b"bob:100000:65536\r", b"bob:100000",
    b"bob:100000:65536:1", b"bob:0100000:65536", b"bob:100000:0x10000", b"bob: 100000:65536",
    b"bob:+100000:65536", b"bob:100000:-1", b"bob:0:0", b"bob:100000:0",
    b"bob:4294967295:2", b"bob:4294967296:1", b"bob:1:18446744073709551615",
    b"bob:0:18446744073709551616", b"bob:2:4294967295", b"+bob:100000:65536",
    b"-bob:100000:65536", b"+", b"# comment", b"#", b"", b" ", b":100000:65536",
    b"bob:100000:65536x", b"bob:" + b"1" * 1100 + b":1", b"b" * 1019 + b":1:2",
])
def test_parse_line_ignores_invalid_lines(line):
    parsed = subid.parse_line(line, 7)
    assert isinstance(parsed, subid.IgnoredLine)
    assert parsed.lineno == 7 and parsed.reason


@pytest.mark.parametrize(("line", "expected"), [
    (b"bob:100000:65536", (b"bob", 100000, 65536)),
    (b"1500:0:1", (b"1500", 0, 1)),
    (b"bob:4294967295:1", (b"bob", 4294967295, 1)),
    (b"bob:0:4294967295", (b"bob", 0, 4294967295)),
    (b"bob:1:4294967295", (b"bob", 1, 4294967295)),  # ends exactly at 2^32
    (b"bob:2:4294967295", None),
    (b"#bob:1:2", (b"#bob", 1, 2)),  # no comment syntax: the owner is "#bob"
    (b"b" * 1018 + b":1:2", (b"b" * 1018, 1, 2)),
])
def test_parse_line_examples(line, expected):
    parsed = subid.parse_line(line, 1)
    if expected is None:
        assert isinstance(parsed, subid.IgnoredLine)
    else:
        assert isinstance(parsed, subid.SubidLine)
        assert (parsed.owner, parsed.start, parsed.count) == expected


def test_count_beyond_32_bits_is_ignored():
    """newuidmap.md §6.1 (4.20 bounds: count <= min(2^32 - start, 2^32 - 1)) and §11 item 2
    (ignore entries whose start/count is above 32 bits): `u:0:4294967296` grants nothing."""
    assert isinstance(subid.parse_line(b"bob:0:4294967296", 1), subid.IgnoredLine)
    assert subid.scan_owners([b"bob:0:4294967296\n"], [b"bob"]).lines == []


def test_scan_owners_examples():
    data = (b"bobby:1:10\nxbob:20:10\nbob:100000:65536\n#bob:0:1\nbob:0:0\n"
            b"bob:165536:65536 \nbob :5:5\nBob:7:7\nbob:4294967295:2\n+bob:9:9\n"
            b"alice:200000:65536\r\nbob:300000:10")  # no final newline
    scan = subid.scan_owners([data], [b"bob"])
    assert [(x.lineno, x.owner, x.start, x.count) for x in scan.lines] == [
        (3, b"bob", 100000, 65536), (12, b"bob", 300000, 10)]
    assert [x.lineno for x in scan.ignored] == [5, 6, 9]
    assert subid.scan_owners([data], [b"alice"]).lines == []  # CRLF: trailing white space
    assert subid.scan_owners([data], [b"bo"]).lines == []
    assert subid.scan_owners([data], [b""]).lines == []
    both = subid.scan_owners([data], [b"bob", b"bobby", b"bob"])
    assert [x.lineno for x in both.lines] == [1, 3, 12]


_ODD_OWNER_BYTES = st.binary(min_size=1, max_size=4).filter(lambda b: b"\n" not in b)


@fast(300)
@given(data=subid_files(subid_lines(owners=[b"a", b"a:1", b"a:", b":", b"1", b"a:1:2", b"b"])),
       owners=st.sets(st.one_of(st.sampled_from([b"a", b"a:1", b"a:", b":", b"a:1:2", b"1:2"]),
                                _ODD_OWNER_BYTES), min_size=1, max_size=3))
@example(data=b"a:1:5\n", owners={b"a:1"})
@example(data=b"a:1:5\n", owners={b"a", b"a:1"})
def test_scan_owners_never_returns_another_owner(data, owners):
    """Whatever strings are asked for (a name from NSS may hold any byte but NUL), only lines
    whose owner field is one of them come back, each once."""
    lines = file_lines(data)
    assume(not any(is_count_2_32_line(line) for line in lines))
    expected = []
    for lineno, line in enumerate(lines, 1):
        parsed = oracle_subid_line(line)
        if parsed is not None and parsed[0] in owners:
            expected.append((lineno, *parsed))
    found, _ = owner_scan(subid.scan_owners([data], owners))
    for _, owner, _, _ in found:
        assert owner in owners, (data, owners, found)
    assert found == expected


owned_ranges = st.lists(st.tuples(st.integers(0, 40), st.integers(1, 12)), max_size=6)


@fast(500)
@given(owned=owned_ranges, start=st.integers(0, 45), count=st.integers(1, 20))
def test_uncovered_matches_brute_force(owned, start, count):
    gaps = subid.uncovered(owned, start, count)
    missing = uncovered_ids(owned, start, count)
    assert (gaps == []) == (not missing)
    ids = [i for a, b in gaps for i in range(a, b)]
    assert len(ids) == len(set(ids)), gaps  # gaps are disjoint
    assert set(ids) == missing
    for a, b in gaps:
        assert start <= a < b <= start + count
    assert gaps == sorted(gaps)


def test_uncovered_chains_adjacent_ranges():
    owned = [(165536, 65536), (100000, 65536)]  # file order need not be sorted
    assert subid.uncovered(owned, 100000, 131072) == []
    assert subid.uncovered(owned, 100000, 131073) == [(231072, 231073)]
    assert subid.uncovered([(100000, 65536), (165537, 10)], 100000, 65547) == [(165536, 165537)]
    assert subid.uncovered([], 5, 3) == [(5, 8)]
    assert subid.uncovered([(0, 2**32)], 0, 2**32 - 1) == []


small_number = st.one_of(st.integers(0, 40).map(lambda n: str(n).encode()),
                         st.sampled_from([b"0", b"00", b"01", b"4294967295", b"4294967296",
                                          b"18446744073709551616", b"-1", b"+3", b"0x5"]))


@fast(300)
@given(data=subid_files(subid_lines(owners=[b"bob", b"bobby", b"xbob", b"bo", b"1500"],
                                    number=small_number)),
       more=st.data(), triples=small_triples, self_id=st.integers(0, 40))
def test_files_never_grant_more_than_they_say(data, more, triples, self_id):
    """End to end on small ids: the lines scan_owners finds, combined by uncovered(), decide
    exactly what the file's valid lines of `bob` (or uid 1500) grant."""
    lines = file_lines(data)
    assume(not any(is_count_2_32_line(line) for line in lines))
    granted = []
    for line in lines:
        parsed = oracle_subid_line(line)
        if parsed is not None and parsed[0] in (b"bob", b"1500"):
            granted.append((parsed[1], parsed[2]))

    def in_file(start: int, count: int) -> bool:  # id by id, as the file says
        return all(any(s <= i < s + c for s, c in granted) for i in range(start, start + count))

    scan = subid.scan_owners(more.draw(chunkings(data)), (b"bob", b"1500"))
    ranges = [(x.start, x.count) for x in scan.lines]

    def owns(start: int, count: int, thorough: bool = True) -> bool:
        return not subid.uncovered(ranges, start, count)

    for start in range(0, 45):
        for count in (1, 2, 5):
            assert owns(start, count) == in_file(start, count), (data, start, count)
    decision = authorize.decide(triples, self_id, owns)
    allowed = all((t.count == 1 and t.lower == self_id) or in_file(t.lower, t.count)
                  for t in triples)
    assert (decision.refused is None) == allowed


# --------------------------------------------------------------------------------------------
# 4. authorize.decide
# --------------------------------------------------------------------------------------------

@fast(500)
@given(triples=small_triples, owned=owned_ranges, self_id=st.integers(0, 40))
def test_decide_matches_brute_force(triples, owned, self_id):
    have = {i for s, c in owned for i in range(s, s + c)}
    calls = []

    def owns(start: int, count: int, thorough: bool) -> bool:
        calls.append((start, count))
        return set(range(start, start + count)) <= have

    def self_map(t: Triple) -> bool:
        return t.count == 1 and t.lower == self_id

    def allowed(t: Triple) -> bool:
        return self_map(t) or set(range(t.lower, t.lower + t.count)) <= have

    decision = authorize.decide(triples, self_id, owns)
    refused = [t for t in triples if not allowed(t)]
    if refused:
        assert decision.refused is refused[0]  # the first failure, all or nothing
    else:
        assert decision.refused is None
        # As shadow's newgidmap: subordinate ids are consulted first, so a self-mapped id that
        # the caller also owns as a subordinate id counts as a subordinate grant.
        assert decision.allow_setgroups == any(
            set(range(t.lower, t.lower + t.count)) <= have for t in triples)
        assert decision.maps_host_root == any(t.lower == 0 for t in triples)
    for start, count in calls:
        assert count >= 1 and start >= 0


def test_decide_examples():
    def t(upper, lower, count, index=1):
        return Triple(upper, lower, count, index)

    def owns(start, count, thorough=True):
        return start >= 100000 and start + count <= 165536

    pure_self = authorize.decide([t(0, 1000, 1)], 1000, owns)
    assert pure_self.refused is None and not pure_self.allow_setgroups
    assert not pure_self.maps_host_root
    mixed = authorize.decide([t(0, 1000, 1), t(1, 100000, 65536, 2)], 1000, owns)
    assert mixed.refused is None and mixed.allow_setgroups
    two_ids = authorize.decide([t(0, 1000, 2)], 1000, owns)  # a self-map is one id long
    assert two_ids.refused is not None
    beyond = authorize.decide([t(0, 100000, 65537)], 1000, owns)
    assert beyond.refused is not None
    root = authorize.decide([t(0, 0, 1)], 0, owns)
    assert root.refused is None and root.maps_host_root
    other = authorize.decide([t(0, 1000, 1), t(1, 0, 1, 2)], 1000, owns)
    assert other.refused is not None and other.refused.index == 2
    inside = authorize.decide([t(0, 100005, 1)], 100005, owns)  # self-map and subordinate id
    assert inside.refused is None and inside.allow_setgroups


# --------------------------------------------------------------------------------------------
# 5. nsswitch.conf and login.defs
# --------------------------------------------------------------------------------------------

_NSS_NAME = re.compile(rb"[A-Za-z0-9_-]{1,50}")


@fast(400)
@given(data=st.one_of(st.binary(max_size=200),
                      st.lists(st.sampled_from([b"subid:", b"SUBID:", b" ", b"\t", b"\n",
                                                b"files", b"sss", b"#", b"\r", b"/", b"a" * 51,
                                                b"\x00", b"\xff", b"[NOTFOUND=return]"]),
                               max_size=20)
                      .map(b"".join)))
def test_subid_sources_never_crash(data):
    try:
        names = config.subid_sources(data)
    except config.InvalidSubidSource as err:
        assert str(err)
        return
    assert names, data
    assert all(name == b"files" or _NSS_NAME.fullmatch(name) for name in names), names


def oracle_subid_sources(data: bytes) -> list[bytes] | type:
    """shadow's lib/nss.c choice of the line, for files whose lines all end in a newline; then
    every token of it (shadow reads only the first), each a library name or `files` (nsgate's
    fail-closed rule). Returns InvalidSubidSource for "raises"."""
    value = None
    for line in (piece + b"\n" for piece in data.split(b"\n")[:-1]):
        if line.startswith(b"#") or len(line) < 8 or line[:6].lower() != b"subid:":
            continue
        rest = line[6:].lstrip(b" \t\n")
        if rest:
            value = rest
            break
    if value is None:
        return [b"files"]
    tokens = [token for token in re.split(rb"[ \t\n]", value) if token]
    if not all(token == b"files" or _NSS_NAME.fullmatch(token) for token in tokens):
        return config.InvalidSubidSource
    return tokens


_NSS_KEYS = [b"subid:", b"SUBID:", b"SubId:", b"#subid:", b" subid:", b"subids:", b"sub id:",
             b"passwd:", b"subid"]
_NSS_TOKENS = [b"files", b"sss", b"sssd", b"FILES", b"a" * 50, b"a" * 51, b"x/y", b"../evil",
               b"lib.so", b"my_mod-2", b"\xff", b"files_", b"s", b"[NOTFOUND=return]"]
_SEPARATORS = [b"", b" ", b"\t", b"  \t"]


@st.composite
def nsswitch_lines(draw) -> bytes:
    if draw(st.integers(0, 5)) == 0:
        return draw(st.sampled_from([b"", b"# comment", b"passwd: files systemd", b"   "]))
    line = draw(st.sampled_from(_NSS_KEYS))
    for _ in range(draw(st.integers(0, 3))):
        line += draw(st.sampled_from(_SEPARATORS[1:])) + draw(st.sampled_from(_NSS_TOKENS))
    return line + draw(st.sampled_from(_SEPARATORS))


@fast(400)
@given(lines=st.lists(nsswitch_lines(), max_size=6))
def test_subid_sources_match_shadows_line_choice(lines):
    data = b"".join(line + b"\n" for line in lines)
    expected = oracle_subid_sources(data)
    if expected is config.InvalidSubidSource:
        with pytest.raises(config.InvalidSubidSource):
            config.subid_sources(data)
    else:
        assert config.subid_sources(data) == expected, data


@pytest.mark.parametrize(("data", "expected"), [
    (b"", [b"files"]),
    (b"subid: files\n", [b"files"]),
    (b"subid:   sss  files\n", [b"sss", b"files"]),
    (b"subid: files sss\n", [b"files", b"sss"]),
    (b"subid: files\tsss other\n", [b"files", b"sss", b"other"]),
    (b"subid: sss sss\n", [b"sss", b"sss"]),  # as written; the helpers ask each source once
    (b"subid:\tsss\n", [b"sss"]),
    (b"SUBID: sss\n", [b"sss"]),
    (b"SubId: sss\n", [b"sss"]),
    (b"#subid: sss\n", [b"files"]),
    (b" subid: sss\n", [b"files"]),
    (b"subid:\nsubid: sss\n", [b"sss"]),
    (b"subid:   \t\nsubid: files\nsubid: sss\n", [b"files"]),
    (b"passwd: files\nsubid: my_mod-2\n", [b"my_mod-2"]),
    (b"subids: sss\n", [b"files"]),
    (b"subid: " + b"a" * 50 + b"\n", [b"a" * 50]),
])
def test_subid_sources_examples(data, expected):
    assert config.subid_sources(data) == expected


@pytest.mark.parametrize("name", [b"x/y", b"../../tmp/evil", b"a" * 51, b"lib.so", b"\xff",
                                  b"a\x00b", b"[NOTFOUND=return]", b"[!UNAVAIL=return]"])
@pytest.mark.parametrize("where", ["alone", "first", "after files"])
def test_subid_sources_refuse_names_that_are_not_library_names(name, where):
    line = {"alone": name, "first": name + b" files", "after files": b"files sss " + name}[where]
    with pytest.raises(config.InvalidSubidSource):
        config.subid_sources(b"subid: " + line + b"\n")


@fast(400)
@given(data=st.one_of(st.binary(max_size=200),
                      st.lists(st.sampled_from([b"GRANT_AUX_GROUP_SUBIDS", b"SUB_UID_COUNT", b" ",
                                                b"\t", b"\n", b'"', b"yes", b"0", b"#", b"\r",
                                                b"\x00", b"\xff", b"\x0b"]), max_size=20)
                      .map(b"".join)),
       key=st.sampled_from([b"GRANT_AUX_GROUP_SUBIDS", b"SUB_UID_COUNT", b"SUB_GID_COUNT"]))
def test_login_defs_never_crashes(data, key):
    value = config.login_defs_value(data, key)
    assert value is None or isinstance(value, bytes)
    flag = config.login_defs_flag(data, key)
    assert flag == (value is not None and value.lower() == b"yes")
    if value is not None:
        assert b"\n" not in value


def oracle_getdef(data: bytes) -> dict[bytes, bytes]:
    """shadow's lib/getdef.c def_load, for the lines generated below: a later definition
    overrides an earlier one."""
    table = {}
    for raw in data.split(b"\n"):
        line = raw.rstrip(b" \t\n\r\x0b\x0c")
        name = line.lstrip(b" \t")
        if not name or name.startswith(b"#"):
            continue
        cut = re.search(rb"[ \t]", name)
        if cut is None:
            continue
        value = name[cut.end():].lstrip(b' "\t')
        table[name[:cut.start()]] = value.split(b'"', 1)[0]
    return table


_DEFS_KEYS = [b"GRANT_AUX_GROUP_SUBIDS", b"SUB_UID_COUNT", b"SUB_GID_COUNT", b"UID_MIN",
              b"GRANT_AUX_GROUP_SUBIDSX", b"#GRANT_AUX_GROUP_SUBIDS", b"grant_aux_group_subids"]
_DEFS_VALUES = [b"yes", b"no", b"YES", b"Yes", b"0", b"65536", b'"yes"', b'"yes', b'""',
                b"y es", b'"a b"', b""]


@st.composite
def login_defs_lines(draw) -> tuple[bytes, bytes]:
    key = draw(st.sampled_from(_DEFS_KEYS))
    lead = draw(st.sampled_from([b"", b" ", b"\t"]))
    sep = draw(st.sampled_from([b" ", b"\t", b" \t "]))
    value = draw(st.sampled_from(_DEFS_VALUES))
    tail = draw(st.sampled_from([b"", b" ", b"\t", b"\r"]))
    return key, lead + key + sep + value + tail


@fast(300)
@given(lines=st.lists(st.one_of(login_defs_lines(),
                                st.sampled_from([b"", b"# comment", b"MAIL_DIR /var/mail",
                                                 b"LONELY"]).map(lambda b: (b, b))),
                      max_size=8),
       unique=st.booleans())
def test_login_defs_matches_getdef(lines, unique):
    if unique:  # also with each key once, so a first-wins/last-wins mix-up shows either way
        seen: dict[bytes, bytes] = {}
        for key, line in lines:
            seen.setdefault(key, line)
        lines = list(seen.items())
    data = b"\n".join(line for _, line in lines) + b"\n"
    table = oracle_getdef(data)
    for key in (b"GRANT_AUX_GROUP_SUBIDS", b"SUB_UID_COUNT", b"SUB_GID_COUNT"):
        assert config.login_defs_value(data, key) == table.get(key), data
        assert config.login_defs_flag(data, key) == (table.get(key, b"").lower() == b"yes")


@pytest.mark.parametrize(("data", "expected"), [
    (b"GRANT_AUX_GROUP_SUBIDS yes\n", True),
    (b"GRANT_AUX_GROUP_SUBIDS\tYES\n", True),
    (b'GRANT_AUX_GROUP_SUBIDS "yes"\n', True),
    (b"  GRANT_AUX_GROUP_SUBIDS yes  \r\n", True),
    (b"GRANT_AUX_GROUP_SUBIDS no\n", False),
    (b"GRANT_AUX_GROUP_SUBIDS\n", False),
    (b"#GRANT_AUX_GROUP_SUBIDS yes\n", False),
    (b"GRANT_AUX_GROUP_SUBIDSX yes\n", False),
    (b"UID_MIN 1000\n", False),
    (b"", False),
    (b"GRANT_AUX_GROUP_SUBIDS yes\nGRANT_AUX_GROUP_SUBIDS no\n", False),  # the last one counts
    (b"GRANT_AUX_GROUP_SUBIDS no\nGRANT_AUX_GROUP_SUBIDS yes\n", True),
])
def test_login_defs_flag_examples(data, expected):
    assert config.login_defs_flag(data, b"GRANT_AUX_GROUP_SUBIDS") is expected


@pytest.mark.parametrize(("data", "key", "expected"), [
    (b"SUB_UID_COUNT 0\n", b"SUB_UID_COUNT", b"0"),
    (b"SUB_UID_COUNT\t65536\nSUB_GID_COUNT 0\n", b"SUB_GID_COUNT", b"0"),
    (b"SUB_UID_COUNT 65536\nSUB_UID_COUNT 0\n", b"SUB_UID_COUNT", b"0"),
    (b"SUB_UID_COUNT 0", b"SUB_UID_COUNT", b"0"),
    (b"# SUB_UID_COUNT 0\n", b"SUB_UID_COUNT", None),
    (b"SUB_UID_COUNT\n", b"SUB_UID_COUNT", None),
    (b"SUB_UID_COUNTS 0\n", b"SUB_UID_COUNT", None),
])
def test_login_defs_value_examples(data, key, expected):
    assert config.login_defs_value(data, key) == expected


def _reused_buffer_chunks(chunks: list[bytes]):
    """Chunks as files.chunks gives them: one bytearray, overwritten for the next chunk."""
    buf = bytearray()
    for chunk in chunks:
        buf[:] = chunk
        yield buf


@fast(300)
@given(data=subid_files(), owners=st.sets(st.sampled_from(QUERY_OWNERS), max_size=3),
       more=st.data())
def test_fast_unnumbered_scan_finds_the_same_lines(data, owners, more):
    """The fast path (no line numbers, reused buffers) finds exactly what the numbered scan
    finds, for every chunking, including a line longer than a chunk."""
    numbered = subid.scan_owners([data], owners)
    expected = ([(x.owner, x.start, x.count) for x in numbered.lines],
                [x.reason for x in numbered.ignored])
    for chunks in ([data], more.draw(chunkings(data)),
                   [data[i:i + 1] for i in range(len(data))]):
        fast_scan = subid.scan_owners(_reused_buffer_chunks(chunks), owners, numbered=False)
        assert ([(bytes(x.owner), x.start, x.count) for x in fast_scan.lines],
                [x.reason for x in fast_scan.ignored]) == expected, (data, chunks)
        assert all(x.lineno == 0 for x in fast_scan.lines)


def test_fast_scan_of_a_line_longer_than_a_chunk_stays_bounded():
    data = b"bob:1:2\n" + b"bob:" + b"9" * 5000 + b":1\nbob:3:4"
    chunks = [data[i:i + 64] for i in range(0, len(data), 64)]
    scan = subid.scan_owners(_reused_buffer_chunks(chunks), [b"bob"], numbered=False)
    assert [(x.start, x.count) for x in scan.lines] == [(1, 2), (3, 4)]
    assert [x.reason for x in scan.ignored] == ["longer than 1022 bytes"]


def test_login_defs_value_of_a_key_no_line_can_hold():
    """Found by the fuzzer: an empty key matched at every offset and never advanced."""
    for key in (b"", b"A\nB", b" A"):
        assert config.login_defs_value(b"A 1\nB 2\n", key) is None
