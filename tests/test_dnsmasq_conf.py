"""policy/dnsmasq_conf.py, pure: the configuration of the service's dnsmasq for the private
bridges, and the pruning of its lease file. (dnsmasq itself reads it in test_dhcp_service.py.)"""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nsgate.policy import dnsmasq_conf, networks_conf

V4 = b"ipv4-pool 10.210.0.0/16 24\n"
V6 = b"ipv4-pool 10.210.0.0/16 24\nipv6-pool fd42:6e73::/48 64\n"


def plan(text: bytes = V4) -> networks_conf.Plan:
    return networks_conf.parse(text, b"")


def lines(data: bytes) -> list[str]:
    return data.decode().splitlines()


def test_one_interface_and_one_range_per_bridge_and_nothing_else_served() -> None:
    p = plan()
    bridges = [("nsgu23002", networks_conf.subnet(p, 7)), ("nsgu23001", networks_conf.subnet(p, 3))]
    conf = lines(dnsmasq_conf.config(p, bridges, "/run/nsgate/dhcp", user="dnsmasq"))
    assert [line for line in conf if line.startswith(("interface=", "dhcp-range="))] == [
        "interface=nsgu23001", "dhcp-range=10.210.3.2,10.210.3.254,255.255.255.0,1h",
        "interface=nsgu23002", "dhcp-range=10.210.7.2,10.210.7.254,255.255.255.0,1h"]
    for wanted in ("bind-dynamic", "except-interface=lo", "user=dnsmasq", "log-facility=-",
                   "no-hosts", "resolv-file=/etc/resolv.conf", "dhcp-authoritative",
                   "dhcp-ignore-clid", "dhcp-ignore-names", "no-ping", "pid-file=",
                   "dhcp-leasefile=/run/nsgate/dhcp/leases", "dhcp-lease-max=506"):
        assert wanted in conf, wanted
    assert "enable-ra" not in conf
    assert not any(line.startswith(("conf-dir", "conf-file", "dhcp-script", "listen-address"))
                   for line in conf)


def test_the_order_of_bridges_does_not_change_the_configuration() -> None:
    p = plan()
    one = [("nsgu1", networks_conf.subnet(p, 1)), ("nsgu2", networks_conf.subnet(p, 2))]
    assert dnsmasq_conf.config(p, one, "/r") == dnsmasq_conf.config(p, one[::-1], "/r")
    assert "user=nobody" in lines(dnsmasq_conf.config(p, one, "/r"))


def test_ipv6_plans_advertise_each_bridges_64_stateless() -> None:
    p = plan(V6)
    conf = lines(dnsmasq_conf.config(p, [("nsgu1000", networks_conf.subnet(p, 2))], "/r"))
    assert "enable-ra" in conf
    assert "dhcp-range=fd42:6e73:0:2::,ra-stateless,64,1h" in conf


def test_no_bridge_is_no_configuration() -> None:
    """dnsmasq with no interface= line would serve every interface of the host."""
    with pytest.raises(ValueError):
        dnsmasq_conf.config(plan(), [], "/r")


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
