"""/etc/nsgate/networks.conf as policy (nsgate-networks.conf(5)) and the stable nic MACs: the
refusal of each malformed line with its file:line, the subnet arithmetic, the allocation of
indexes (derived and recorded: sticky, lowest free, reuse of a dead owner's, full pool). Pure:
bytes in, decisions out, no root and no files."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nsgate.errors import Refusal
from nsgate.policy import networks_conf, nic_macs

FAST = settings(max_examples=300, deadline=None, database=None)
PATH = "/etc/nsgate/networks.conf"
BASIC = b"ipv4-pool 10.210.0.0/16 24\n"


def plan(text: str | bytes = BASIC, login_defs: bytes = b"") -> networks_conf.Plan:
    data = text.encode() if isinstance(text, str) else text
    return networks_conf.parse(data, login_defs)


def refusal(text: str | bytes, login_defs: bytes = b"", path: str = PATH) -> Refusal:
    data = text.encode() if isinstance(text, str) else text
    with pytest.raises(Refusal) as caught:
        networks_conf.parse(data, login_defs, path)
    return caught.value


# --- parsing ------------------------------------------------------------------------------------

def test_the_full_example_parses():
    parsed = plan("# the plan\n\nipv4-pool 10.210.0.0/16 24     # required\n"
                  "ipv6-pool fd42:6e73::/48 64\n\tuplink routed\nallocation derived # x\n",
                  b"UID_MIN 1000\nUID_MAX 1200\n")
    assert parsed == networks_conf.Plan(IPv4Network("10.210.0.0/16"), 24,
                                        IPv6Network("fd42:6e73::/48"), "routed", "derived",
                                        1000, 1200)
    assert (parsed.ipv4_prefix, parsed.ipv6_prefix, parsed.uid_min, parsed.uid_max) == (
        24, 64, 1000, 1200)
    assert parsed.capacity == 256  # the IPv4 pool is the smaller one


def test_defaults_nat_and_recorded_without_ipv6():
    parsed = plan()
    assert (parsed.uplink, parsed.allocation, parsed.ipv6_pool) == ("nat", "recorded", None)
    assert parsed.capacity == 256
    assert parsed != plan("ipv4-pool 10.210.0.0/16 25\n")


def test_capacity_is_the_smaller_pool():
    assert plan("ipv4-pool 10.0.0.0/8 24\nipv6-pool fd00:1::/60 64\n").capacity == 16


def test_login_defs_give_the_uid_range():
    parsed = plan(BASIC, b"UID_MIN 2000\nUID_MAX  2100\n")
    assert (parsed.uid_min, parsed.uid_max) == (2000, 2100)


@pytest.mark.parametrize(("text", "line", "words"), [
    ("ipv4-pool 10.0.0.0/16 24\nipv4-pool 10.1.0.0/16 24\n", 2, "given twice (first on line 1)"),
    (BASIC.decode() + "uplink nat\n#\nuplink none\n", 4, "uplink given twice"),
    (BASIC.decode() + "\nmtu 1400\n", 3, "unknown setting 'mtu'"),
    ("ipv4-pool 10.0.0.300/16 24\n", 1, "not an IPv4 network"),
    ("ipv4-pool fd00::/16 24\n", 1, "not a network ADDRESS/LENGTH"),
    ("ipv4-pool 10.0.0.0 24\n", 1, "not a network ADDRESS/LENGTH"),
    ("ipv4-pool 10.0.0.0/255.255.0.0 24\n", 1, "not a network ADDRESS/LENGTH"),
    ("ipv4-pool 10.0.0.0/16\n", 1, "takes a network and a prefix length"),
    ("ipv4-pool 10.0.0.0/16 24 25\n", 1, "takes a network and a prefix length"),
    ("ipv4-pool 10.210.1.0/16 24\n", 1, "has host bits set"),
    ("ipv4-pool 10.210.0.0/24 24\n", 1, "/24 is not longer than the pool's /24"),
    ("ipv4-pool 10.210.0.0/25 24\n", 1, "/24 is not longer than the pool's /25"),
    ("ipv4-pool 10.0.0.0/8 15\n", 1, "must be 16 to 30, not 15"),
    ("ipv4-pool 10.0.0.0/8 31\n", 1, "must be 16 to 30, not 31"),
    ("ipv4-pool 10.0.0.0/8 024\n", 1, "'024' is not a prefix length"),
    ("ipv4-pool 127.0.0.0/8 24\n", 1, "overlaps 127.0.0.0/8"),
    ("ipv4-pool 224.0.0.0/8 24\n", 1, "overlaps 224.0.0.0/4"),
    ("ipv4-pool 169.254.0.0/16 24\n", 1, "overlaps 169.254.0.0/16"),
    (BASIC.decode() + "ipv6-pool fd42::/48 56\n", 2, "must be 64 (SLAAC), not 56"),
    (BASIC.decode() + "ipv6-pool fd42::/48 80\n", 2, "must be 64 (SLAAC), not 80"),
    (BASIC.decode() + "ipv6-pool fd42::/64 64\n", 2, "/64 is not longer than the pool's /64"),
    (BASIC.decode() + "ipv6-pool fd42::1/48 64\n", 2, "has host bits set"),
    (BASIC.decode() + "ipv6-pool fd42::%eth0/48 64\n", 2, "not a network ADDRESS/LENGTH"),
    ("ipv4-pool 10.0.0.0%1/16 24\n", 1, "not a network ADDRESS/LENGTH"),
    (BASIC.decode() + "ipv6-pool fe80::/16 64\n", 2, "overlaps fe80::/10"),
    (BASIC.decode() + "ipv6-pool 10.0.0.0/8 64\n", 2, "not an IPv6 network"),
    (BASIC.decode() + "uplink bridged\n", 2, "uplink is 'bridged'"),
    (BASIC.decode() + "uplink\n", 2, "uplink is ''"),
    (BASIC.decode() + "allocation derived now\n", 2, "allocation is 'derived now'"),
    (BASIC.decode() + "allocation random\n", 2, "allocation is 'random'"),
    (BASIC.decode() + "uplink n\x01at\n", 2, "a control character"),
    (BASIC + b"uplink n\xc3\xa4t\n", 2, "not ASCII"),
])
def test_a_bad_line_is_refused_with_its_file_and_line(text, line, words):
    caught = refusal(text, path="/x/networks.conf")
    assert caught.first.startswith(f"/x/networks.conf:{line}: "), caught.first
    assert words in caught.first
    assert caught.details and "nsgate-networks.conf(5)" in caught.details[-1]


def test_no_ipv4_pool_is_refused():
    caught = refusal("uplink nat\n")
    assert caught.first == f"{PATH}: no ipv4-pool line"


def test_an_empty_file_is_refused():
    assert "no ipv4-pool" in refusal("").first


def test_derived_needs_a_subnet_per_uid():
    caught = refusal(BASIC.decode() + "allocation derived\n")
    assert caught.first == (f"{PATH}:2: allocation derived needs 59001 subnets (UID_MIN 1000 "
                            "to UID_MAX 60000), the pools hold 256")
    ok = plan(BASIC.decode() + "allocation derived\n", b"UID_MIN 1000\nUID_MAX 1255\n")
    assert ok.capacity == 256
    caught = refusal(BASIC.decode() + "allocation derived\n", b"UID_MIN 1000\nUID_MAX 1256\n")
    assert "needs 257 subnets" in caught.first and "hold 256" in caught.first
    caught = refusal("ipv4-pool 10.0.0.0/8 24\nipv6-pool fd00::/60 64\nallocation derived\n",
                     b"UID_MIN 1000\nUID_MAX 1016\n")
    assert "needs 17 subnets" in caught.first and "hold 16" in caught.first
    assert plan("ipv4-pool 10.0.0.0/8 30\nallocation derived\n").capacity == 1 << 22


@pytest.mark.parametrize("defs", [b"UID_MIN 0x10\n", b"UID_MAX ten\n", b"UID_MIN 5\nUID_MAX 4\n"])
def test_a_bad_login_defs_is_refused(defs):
    assert "/etc/login.defs" in refusal(BASIC, defs).first


def test_a_huge_file_is_refused():
    assert "larger than" in refusal(BASIC + b"#" * networks_conf.SIZE_LIMIT).first


@FAST
@given(st.binary(max_size=200))
def test_any_bytes_parse_or_are_refused(data):
    try:
        parsed = networks_conf.parse(data, b"")
    except Refusal as caught:
        assert caught.first.startswith(PATH + ":")
    else:
        assert parsed.capacity >= 1


def test_the_shipped_example_and_the_man_page_example_parse():
    repo = Path(__file__).resolve().parents[1]
    example = (repo / "etc" / "networks.conf.example").read_bytes()
    assert plan(example) == plan(BASIC)
    uncommented = b"\n".join(line.removeprefix(b"#") for line in example.splitlines()
                             if not line.startswith(b"# ") and line != b"#")
    assert plan(uncommented).ipv6_pool == IPv6Network("fd42:6e73::/48")
    page = (repo / "man" / "nsgate-networks.conf.5.scd").read_text()
    block = page.split("# EXAMPLE", 1)[1].split("```")[1]
    assert plan(block).capacity == 256


# --- subnets --------------------------------------------------------------------------------------

def test_subnet_math():
    parsed = plan("ipv4-pool 10.210.0.0/16 24\nipv6-pool fd42:6e73::/48 64\n")
    first = networks_conf.subnet(parsed, 0)
    assert (first.index, first.ipv4, first.ipv4_gateway) == (
        0, IPv4Network("10.210.0.0/24"), IPv4Address("10.210.0.1"))
    assert (first.dhcp_first, first.dhcp_last) == (IPv4Address("10.210.0.2"),
                                                   IPv4Address("10.210.0.254"))
    assert (first.ipv6, first.ipv6_gateway) == (IPv6Network("fd42:6e73::/64"),
                                                IPv6Address("fd42:6e73::1"))
    last = networks_conf.subnet(parsed, 255)
    assert (last.ipv4, last.ipv4_gateway, last.dhcp_last) == (
        IPv4Network("10.210.255.0/24"), IPv4Address("10.210.255.1"), IPv4Address("10.210.255.254"))
    assert (last.ipv6, last.ipv6_gateway) == (IPv6Network("fd42:6e73:0:ff::/64"),
                                              IPv6Address("fd42:6e73:0:ff::1"))
    with pytest.raises(ValueError):
        networks_conf.subnet(parsed, 256)
    with pytest.raises(ValueError):
        networks_conf.subnet(parsed, -1)


def test_small_subnets():
    parsed = plan("ipv4-pool 192.168.8.0/22 30\n")
    assert parsed.capacity == 256
    third = networks_conf.subnet(parsed, 3)
    assert (third.ipv4, third.ipv4_gateway, third.dhcp_first, third.dhcp_last, third.ipv6,
            third.ipv6_gateway) == (
        IPv4Network("192.168.8.12/30"), IPv4Address("192.168.8.13"),
        IPv4Address("192.168.8.14"), IPv4Address("192.168.8.14"), None, None)


@FAST
@given(st.integers(16, 29), st.integers(0, 14), st.data())
def test_subnets_tile_the_pool(pool_len, extra, data):
    prefix = min(30, pool_len + 1 + extra)
    parsed = plan(f"ipv4-pool 10.0.0.0/{pool_len} {prefix}\nipv6-pool fd00:5::/32 64\n")
    index = data.draw(st.integers(0, parsed.capacity - 1))
    one = networks_conf.subnet(parsed, index)
    assert one.ipv4.prefixlen == prefix and one.ipv4.subnet_of(parsed.ipv4_pool)
    assert one.ipv6 is not None and one.ipv6.subnet_of(parsed.ipv6_pool)
    assert one.ipv4_gateway in one.ipv4 and one.dhcp_first > one.ipv4_gateway
    assert one.dhcp_last < one.ipv4.broadcast_address and one.dhcp_first <= one.dhcp_last
    if index + 1 < parsed.capacity:
        after = networks_conf.subnet(parsed, index + 1)
        assert int(after.ipv4.network_address) == int(one.ipv4.broadcast_address) + 1
        assert not after.ipv6.overlaps(one.ipv6)


# --- allocation -----------------------------------------------------------------------------------

SMALL = "ipv4-pool 10.9.0.0/22 24\n"  # 4 subnets


def test_derived_index_is_uid_minus_uid_min():
    parsed = plan(SMALL + "allocation derived\n", b"UID_MIN 2000\nUID_MAX 2003\n")
    assert networks_conf.index_for(parsed, 2000, {}, set()) == (0, False)
    assert networks_conf.index_for(parsed, 2003, {2003: 0}, {2003}) == (3, False)
    assert networks_conf.lookup(parsed, 2002, {}) == 2
    for outside in (1999, 2004, 0):
        assert networks_conf.lookup(parsed, outside, {}) is None
        with pytest.raises(Refusal) as caught:
            networks_conf.index_for(parsed, outside, {}, set())
        assert f"uid {outside} is outside UID_MIN..UID_MAX (2000..2003)" in caught.value.first


def test_recorded_new_user_takes_the_lowest_free_index():
    parsed = plan(SMALL)
    assert networks_conf.index_for(parsed, 5000, {}, set()) == (0, True)
    assert networks_conf.index_for(parsed, 5000, {1: 0, 2: 2}, {1, 2}) == (1, True)
    assert networks_conf.index_for(parsed, 5000, {1: 0, 2: 1}, set()) == (2, True)
    assert networks_conf.lookup(parsed, 5000, {1: 0}) is None


def test_recorded_index_is_sticky_without_a_live_bridge():
    parsed = plan(SMALL)
    record = {1: 0, 5000: 3}
    assert networks_conf.index_for(parsed, 5000, record, set()) == (3, False)
    assert networks_conf.lookup(parsed, 5000, record) == 3


def test_full_pool_reuses_the_lowest_index_whose_owner_has_no_bridge():
    parsed = plan(SMALL)
    record = {1: 0, 2: 1, 3: 2, 4: 3}
    assert networks_conf.index_for(parsed, 9, record, {1, 3, 4}) == (1, True)
    assert networks_conf.index_for(parsed, 9, record, {1, 2}) == (2, True)


def test_full_pool_with_every_owner_live_is_refused():
    parsed = plan(SMALL)
    with pytest.raises(Refusal) as caught:
        networks_conf.index_for(parsed, 9, {1: 0, 2: 1, 3: 2, 4: 3}, {1, 2, 3, 4})
    assert caught.value.first.startswith("the pool is full: all 4 subnets")


def test_an_index_beyond_a_shrunk_pool_is_not_kept():
    parsed = plan(SMALL)
    assert networks_conf.lookup(parsed, 7, {7: 4}) is None
    assert networks_conf.index_for(parsed, 7, {7: 4, 8: 0}, {8}) == (1, True)


def test_an_index_two_users_claim_is_kept_by_neither():
    parsed = plan(SMALL)
    record = {7: 1, 8: 1}
    assert networks_conf.lookup(parsed, 7, record) is None
    assert networks_conf.index_for(parsed, 7, record, {7, 8}) == (0, True)


def test_record_lines_round_trip_and_junk_is_kept():
    data = b"# made by nsgate\n7 1\nnot a line\n8 +2\n9 02\n10 3\n"
    assert networks_conf.parse_record(data) == {7: 1, 10: 3}
    assert networks_conf.record_line(23001, 4) == b"23001 4"
    rewritten = networks_conf.record_text(data, 11, 3)  # 10's index goes to 11
    assert rewritten == b"# made by nsgate\n7 1\nnot a line\n8 +2\n9 02\n23001 4\n".replace(
        b"23001 4", b"11 3")
    assert networks_conf.parse_record(rewritten) == {7: 1, 11: 3}
    moved = networks_conf.record_text(b"7 1\n8 2", 7, 0)
    assert moved == b"8 2\n7 0\n"
    assert networks_conf.record_text(b"", 5, 0) == b"5 0\n"


@FAST
@given(st.lists(st.integers(1, 12), max_size=40), st.data())
def test_recorded_allocation_never_gives_a_live_users_subnet_away(uids, data):
    """Users come (allocating) and their bridges go, in any order: no two live users ever share
    an index, a user keeps their index while it is not reassigned, and a refusal happens only
    when every index belongs to a live user."""
    parsed = plan(SMALL)
    text = b""
    live: set[int] = set()
    for uid in uids:
        record = networks_conf.parse_record(text)
        before = networks_conf.lookup(parsed, uid, record)
        try:
            index, write = networks_conf.index_for(parsed, uid, record, live - {uid})
        except Refusal:
            assert len(live - {uid}) == parsed.capacity
            continue
        assert (before == index) == (not write)
        if write:
            text = networks_conf.record_text(text, uid, index)
        live.add(uid)
        for gone in data.draw(st.lists(st.sampled_from(sorted(live)), max_size=2)):
            live.discard(gone)
        record = networks_conf.parse_record(text)
        held = [record[user] for user in live if user in record]
        assert len(held) == len(set(held))
        assert all(networks_conf.lookup(parsed, user, record) is not None for user in live)


# --- MACs ---------------------------------------------------------------------------------------

def is_local_unicast(mac: bytes) -> bool:
    return len(mac) == 6 and mac[0] & 0x03 == 0x02


def test_container_mac_is_stable_and_differs_per_field():
    base = (23001, b"/home/a/.local/share/lxc", b"c1", b"eth0")
    mac = nic_macs.container_mac(*base)
    assert mac == nic_macs.container_mac(*base) and is_local_unicast(mac)
    assert mac[0] not in (0x02, 0xFE)
    variants = [(23002, *base[1:]), (base[0], b"/other", *base[2:]),
                (*base[:2], b"c2", base[3]), (*base[:3], b"eth1"),
                (base[0], b"/home/a/.local/share/lxcc1", b"", b"eth0")]
    macs = {nic_macs.container_mac(*variant) for variant in variants} | {mac}
    assert len(macs) == len(variants) + 1


def test_host_and_bridge_macs():
    mac = nic_macs.container_mac(1, b"/l", b"n", b"eth0")
    host = nic_macs.host_mac(mac)
    assert host[0] == 0xFE and host[1:] == mac[1:] and is_local_unicast(host)
    assert nic_macs.bridge_mac(23001) == bytes.fromhex("026e000059d9")
    assert nic_macs.bridge_mac(23001) == nic_macs.bridge_mac(23001)
    assert nic_macs.bridge_mac(0) != nic_macs.bridge_mac(1)
    assert nic_macs.bridge_mac(4294967295) < host


@FAST
@given(st.integers(0, 4294967295), st.binary(max_size=40), st.binary(max_size=40),
       st.binary(max_size=16))
def test_any_container_mac_is_local_unicast_and_not_zero(uid, lxcpath, name, nicname):
    mac = nic_macs.container_mac(uid, lxcpath, name, nicname)
    assert is_local_unicast(mac) and any(mac[1:]) and mac[0] not in (0x02, 0xFE)
    assert is_local_unicast(nic_macs.bridge_mac(uid))
    assert nic_macs.bridge_mac(uid) < nic_macs.host_mac(mac)
