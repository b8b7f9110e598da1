"""policy/dnsmasq_conf.py, pure: the configuration of the service's dnsmasq for the private
bridges, and the pruning of its lease file. (dnsmasq itself reads it in test_dhcp_service.py.)"""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network

from hypothesis import given
from hypothesis import strategies as st
from nsgate.policy import dnsmasq_conf, networks_conf

V4 = b"ipv4-pool 10.210.0.0/16 24\n"
V6 = b"ipv4-pool 10.210.0.0/16 24\nipv6-pool fd42:6e73::/48 64\n"


def plan(text: bytes = V4) -> networks_conf.Plan:
    return networks_conf.parse(text, b"")


def lines(data: bytes) -> list[str]:
    return data.decode().splitlines()


def test_every_subnet_of_the_pool_has_its_range_and_only_users_bridges_are_served() -> None:
    """One wildcard interface line and a range per subnet of the pool: a bridge made after
    dnsmasq started is served by it at once (rootlesskit asks once, right after the create)."""
    p = plan()
    conf = lines(dnsmasq_conf.config(p, [], "/run/nsgate/dhcp", user="dnsmasq"))
    assert [line for line in conf if line.startswith("interface=")] == ["interface=nsgu*"]
    ranges = [line for line in conf if line.startswith("dhcp-range=")]
    assert len(ranges) == p.capacity == 256
    assert ranges[3] == "dhcp-range=10.210.3.2,10.210.3.254,255.255.255.0,1h"
    for wanted in ("bind-dynamic", "except-interface=lo", "user=dnsmasq", "log-facility=-",
                   "no-hosts", "resolv-file=/etc/resolv.conf", "dhcp-authoritative",
                   "dhcp-ignore-clid", "dhcp-ignore-names", "no-ping", "pid-file=",
                   "quiet-dhcp", "quiet-dhcp6", "quiet-ra",
                   "dhcp-leasefile=/run/nsgate/dhcp/leases", f"dhcp-lease-max={256 * 253}"):
        assert wanted in conf, wanted
    assert "enable-ra" not in conf
    assert not any(line.startswith(("conf-dir", "conf-file", "dhcp-script", "listen-address"))
                   for line in conf)


@given(st.integers(17, 30), st.integers(0, 1 << 14))
def test_each_range_is_the_subnets_dhcp_range(prefix: int, pick: int) -> None:
    p = plan(b"ipv4-pool 10.210.0.0/16 %d\n" % prefix)
    ranges = [line for line in lines(dnsmasq_conf.config(p, [], "/r"))
              if line.startswith("dhcp-range=")]
    index = pick % p.capacity
    subnet = networks_conf.subnet(p, index)
    assert ranges[index] == (f"dhcp-range={subnet.dhcp_first},{subnet.dhcp_last},"
                             f"{subnet.ipv4.netmask},1h")


def test_derived_plans_range_the_uid_range_and_bridges_beyond_a_limit_are_added() -> None:
    p = plan(b"ipv4-pool 10.0.0.0/8 24\nallocation derived\n")
    p_small = networks_conf.parse(b"ipv4-pool 10.0.0.0/8 24\nallocation derived\n",
                                  b"UID_MIN 1000\nUID_MAX 1009\n")
    small = [line for line in lines(dnsmasq_conf.config(p_small, [], "/r"))
             if line.startswith("dhcp-range=")]
    assert len(small) == 10
    assert len([line for line in lines(dnsmasq_conf.config(p, [], "/r"))
                if line.startswith("dhcp-range=")]) == 59001
    huge = plan(b"ipv4-pool 10.0.0.0/8 30\n")
    far = networks_conf.subnet(huge, 3_000_000)
    ranges = [line for line in lines(dnsmasq_conf.config(huge, [("nsgu9", far)], "/r"))
              if line.startswith("dhcp-range=")]
    assert len(ranges) == dnsmasq_conf.RANGE_LIMIT + 1
    assert ranges[-1] == f"dhcp-range={far.dhcp_first},{far.dhcp_last},255.255.255.252,1h"


def test_the_order_of_bridges_does_not_change_the_configuration() -> None:
    p = plan(b"ipv4-pool 10.0.0.0/8 30\n")
    one = [("nsgu1", networks_conf.subnet(p, 70000)), ("nsgu2", networks_conf.subnet(p, 80000))]
    assert dnsmasq_conf.config(p, one, "/r") == dnsmasq_conf.config(p, one[::-1], "/r")
    assert "user=nobody" in lines(dnsmasq_conf.config(p, one, "/r"))


def test_ipv6_plans_advertise_on_every_users_bridge_with_a_fixed_duid() -> None:
    """dnsmasq takes its DUID from a link's MAC unless told one: with no bridge yet it would
    not start."""
    p = plan(V6)
    conf = lines(dnsmasq_conf.config(p, [], "/r"))
    assert "enable-ra" in conf
    assert "dhcp-range=::,constructor:nsgu*,ra-stateless,64,1h" in conf
    assert f"dhcp-duid={dnsmasq_conf.DUID}" in conf


LEASES = (b"1796470604 0a:18:ea:1f:64:02 10.210.3.89 * *\n"
          b"1796470605 0a:18:ea:1f:64:03 10.210.4.20 host 01:0a:18:ea:1f:64:03\n"
          b"duid 00:01:00:01:32:a6:a5:b6:5e:e7:d8:74:14:3d\n"
          b"1796470606 1234 fd42:6e73:0:3::99 * 00:01:00:01\n"
          b"1796470607 1235 fd42:6e73:0:4::99 * 00:01:00:02\n")


def test_prune_keeps_the_leases_of_the_networks_kept_and_the_duid() -> None:
    keep: list[IPv4Network | IPv6Network] = [IPv4Network("10.210.3.0/24"),
                                             IPv6Network("fd42:6e73:0:3::/64")]
    assert dnsmasq_conf.prune_leases(LEASES, keep) == (
        b"1796470604 0a:18:ea:1f:64:02 10.210.3.89 * *\n"
        b"duid 00:01:00:01:32:a6:a5:b6:5e:e7:d8:74:14:3d\n"
        b"1796470606 1234 fd42:6e73:0:3::99 * 00:01:00:01\n")
    assert dnsmasq_conf.prune_leases(LEASES, []) == (
        b"duid 00:01:00:01:32:a6:a5:b6:5e:e7:d8:74:14:3d\n")
    assert dnsmasq_conf.prune_leases(b"", keep) == b""


def test_prune_drops_lines_it_cannot_read() -> None:
    keep: list[IPv4Network | IPv6Network] = [IPv4Network("10.0.0.0/8")]
    assert dnsmasq_conf.prune_leases(b"garbage\n1 2 not-an-address x\n1 aa 10.1.1.1\n", keep) \
        == b""


@given(st.lists(st.tuples(st.integers(0, 255), st.integers(0, 255)), max_size=20),
       st.sets(st.integers(0, 255), max_size=5))
def test_prune_keeps_exactly_the_leases_in_the_kept_subnets(
        addresses: list[tuple[int, int]], kept: set[int]) -> None:
    data = b"".join(b"1 02:00:00:00:00:%02x 10.210.%d.%d * *\n" % (n, third, fourth)
                    for n, (third, fourth) in enumerate(addresses))
    keep: list[IPv4Network | IPv6Network] = [IPv4Network(f"10.210.{third}.0/24")
                                             for third in kept]
    pruned = dnsmasq_conf.prune_leases(data, keep)
    assert pruned.splitlines() == [line for line in data.splitlines()
                                   if int(line.split()[2].split(b".")[2]) in kept]
    assert dnsmasq_conf.prune_leases(pruned, keep) == pruned
