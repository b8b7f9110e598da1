"""The pure parts of group commit (issue 10 item 5), without privilege:

- policy/nic_batch.py: a batch decided in arrival order gives every create exactly what it would
  get alone, had the creates before it in the batch run first (the sequential oracle below,
  written from lxc-usernet(5): first grant in file order with room, live nics per owner, type and
  bridge; a refused create records nothing). So quotas are exact however the creates batch.
- policy/nic_commit_wire.py: what the encoder makes decodes to the same values; a packet that
  decodes is canonical (it encodes back to the same bytes) and holds only values the helper
  itself could hold; anything else is a WireError, never another exception.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from nsgate.errors import Refusal
from nsgate.policy import nic_batch, nicdb, usernet
from nsgate.policy import nic_commit_wire as wire
from nsgate.policy.nicnames import valid_ifname

SETTINGS = settings(max_examples=300, deadline=None, database=None, derandomize=True,
                    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

TOKENS = [b"alice", b"bob", b"@aux", b"@staff"]
BRIDGES = [b"br0", b"br1"]
DEVS = [b"veth%d" % i for i in range(6)]


def oracle_owner(grants: list[tuple[bytes, int]], used: dict[bytes, int]) -> bytes | None:
    if sum(number for _, number in grants) <= 0:
        return None
    for token, number in grants:
        if used.get(token, 0) < number:
            return token
    return None


def oracle_batch(db: list[tuple[bytes, bytes, bytes]], live: set[bytes],
                 intents: list[tuple[bytes, list[tuple[bytes, int]]]]) -> list[bytes | None]:
    """The owner of each create, run one after the other on the database: (owner, bridge, dev)
    lines of type veth; only live nics count; each granted create adds a live line."""
    lines = [line for line in db if line[2] in live]
    owners = []
    for position, (bridge, grants) in enumerate(intents):
        used: dict[bytes, int] = {}
        for owner, line_bridge, _ in lines:
            if line_bridge == bridge:
                used[owner] = used.get(owner, 0) + 1
        owner = oracle_owner(grants, used)
        owners.append(owner)
        if owner is not None:
            lines.append((owner, bridge, b"new%d" % position))
    return owners


grants_strategy = st.lists(st.tuples(st.sampled_from(TOKENS), st.integers(-1, 3)),
                           min_size=1, max_size=4)


@SETTINGS
@given(db=st.lists(st.tuples(st.sampled_from(TOKENS), st.sampled_from(BRIDGES),
                             st.sampled_from(DEVS)), max_size=8),
       live=st.sets(st.sampled_from(DEVS)),
       intents=st.lists(st.tuples(st.sampled_from(BRIDGES), grants_strategy), min_size=1,
                        max_size=8))
def test_a_batch_decides_as_the_creates_would_one_after_the_other(db, live, intents):
    raw_lines = [b"%s veth %s %s" % line for line in db]
    batch = [nic_batch.Intent(1000, b"veth", bridge,
                              [usernet.Grant(t, b"veth", bridge, n, i)
                               for i, (t, n) in enumerate(grants)],
                              private=False, guarded=True)
             for bridge, grants in intents]
    counted = nic_batch.candidates(raw_lines, batch)
    # only lines of the batch's owners on their bridges are counted (and so checked for life)
    assert all(line.owner in {t for b in batch if b.bridge == line.bridge for t in b.owners()}
               for line in counted.values())
    tally = nic_batch.Tally([line for line in counted.values() if line.dev in live])
    owners = []
    for position, intent in enumerate(batch):
        decision = tally.decide(intent)
        owners.append(decision.owner)
        if decision.owner is not None:
            tally.add(nicdb.entry(decision.owner, b"veth", intent.bridge, b"new%d" % position))
    assert owners == oracle_batch(db, live, intents)


def test_the_quota_refusal_names_the_batch_reservations():
    grants = [usernet.Grant(b"alice", b"veth", b"br0", 2, 1)]
    intent = nic_batch.Intent(1000, b"veth", b"br0", grants, private=False, guarded=True)
    tally = nic_batch.Tally([nicdb.NicLine(b"alice veth br0 veth1000_aaaa")])
    assert tally.decide(intent).owner == b"alice"
    tally.add(nicdb.entry(b"alice", b"veth", b"br0", b"veth1000_bbbb"))
    refusal = nic_batch.quota_refusal(tally.decide(intent), b"br0")
    assert refusal.first == "quota 2 on br0 used by veth1000_aaaa, veth1000_bbbb"
    assert refusal.details == ("remove one of these nics (stop its container) or ask for a "
                               "larger quota in /etc/lxc/lxc-usernet",)


# --- the wire -----------------------------------------------------------------------------------

_PRINTABLE = bytes(range(0x21, 0x7F))
ifnames = st.binary(min_size=1, max_size=15).map(
    lambda raw: bytes(_PRINTABLE[b % len(_PRINTABLE)] for b in raw).translate(
        None, b"/:%")).filter(valid_ifname)
tokens = st.binary(min_size=1, max_size=99).map(
    lambda raw: bytes(b if b not in b" \t\n\r\x0b\x0c" else 0x61 for b in raw)).filter(
        wire.valid_token)
types = st.binary(min_size=1, max_size=99).map(
    lambda raw: bytes(_PRINTABLE[b % len(_PRINTABLE)] for b in raw))


@SETTINGS
@given(uid=st.integers(0, 2**32 - 2), nic_type=types,
       bridge=st.one_of(st.just(b"none"), ifnames),
       grants=st.lists(st.tuples(tokens, st.integers(-(2**31), 2**31 - 1)), min_size=1,
                       max_size=20),
       private=st.booleans(), guarded=st.booleans())
def test_intents_travel_unchanged(uid, nic_type, bridge, grants, private, guarded):
    intent = nic_batch.Intent(uid, nic_type, bridge,
                              [usernet.Grant(t, nic_type, bridge, n, 7) for t, n in grants],
                              private=private, guarded=guarded)
    packet = wire.encode_intent(intent)
    got = wire.decode_intent(packet)
    assert (got.uid, got.nic_type, got.bridge, got.private, got.guarded) == \
        (uid, nic_type, bridge, private, guarded)
    assert [(g.token, g.nic_type, g.bridge, g.number) for g in got.grants] == \
        [(t, nic_type, bridge, n) for t, n in grants]
    assert wire.encode_intent(got) == packet


def test_the_most_grants_fit_a_packet_and_one_more_does_not():
    grants = [usernet.Grant(b"@" + b"g" * 98, b"veth", b"br0", 1, i)
              for i in range(wire.MAX_GRANTS)]
    intent = nic_batch.Intent(1, b"veth", b"br0", grants, private=False, guarded=True)
    packet = wire.encode_intent(intent)
    assert len(wire.decode_intent(packet).grants) == wire.MAX_GRANTS
    _, fields = wire.unpack(packet)
    too_many = wire.pack(wire.INTENT, *fields, fields[4], fields[5])
    with pytest.raises(wire.WireError):
        wire.decode_intent(too_many)
    intent.grants.append(grants[0])
    with pytest.raises(wire.WireError):
        wire.encode_intent(intent)


@SETTINGS
@given(host=ifnames, bridge=st.one_of(st.just(b""), ifnames), index=st.integers(1, 2**32 - 1))
def test_reservations_travel_unchanged(host, bridge, index):
    index = index if bridge else 0
    assert wire.decode_reserved(wire.encode_reserved(host, bridge, index)) == (host, bridge, index)


@SETTINGS
@given(first=st.text(max_size=300), details=st.lists(st.text(max_size=300), max_size=16))
def test_refusals_travel_unchanged(first, details):
    got = wire.decode_refusal(wire.encode_refusal(Refusal(first, *details)))
    assert (got.first, got.details) == (first, tuple(details))


def _decoders():
    return [(wire.decode_intent, wire.encode_intent),
            (wire.decode_reserved, lambda value: wire.encode_reserved(*value)),
            (wire.decode_refusal, wire.encode_refusal),
            (wire.decode_report, lambda value: wire.DONE if value else wire.FAILED)]


packets = st.one_of(
    st.binary(max_size=200),
    st.builds(lambda kind, fields: wire.pack(kind, *fields),
              st.sampled_from([b"I", b"R", b"X", b"D", b"F", b"K", b"Z"]),
              st.lists(st.one_of(st.binary(max_size=20), st.sampled_from(
                  [b"\x00\x00\x00\x01", b"\x03", b"veth", b"br0", b"none", b"alice", b"",
                   b"\xff\xff\xff\xff", b"eth0"])), max_size=8)))


@SETTINGS
@given(packet=packets)
@example(packet=b"I\x00\x04\x00\x00\x00\x01\x00\x01\x00\x00\x04veth\x00\x03br0\x00\x05alice"
                b"\x00\x04\x00\x00\x00\x01")
@example(packet=b"R\x00\x04eth0\x00\x00\x00\x04\x00\x00\x00\x00")
def test_what_decodes_is_canonical_and_valid(packet):
    for decode, encode in _decoders():
        try:
            value = decode(packet)
        except wire.WireError:
            continue
        if isinstance(value, Refusal):
            assert wire.encode_refusal(value) == packet
            continue
        assert encode(value) == packet
        if isinstance(value, nic_batch.Intent):
            assert wire.valid_type(value.nic_type) and value.grants
            assert all(wire.valid_token(g.token) for g in value.grants)
