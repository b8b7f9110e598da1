"""Setting up the host end of a new veth: the reference's MAC rule, the attachment, and nsgate's
hardening of the port (lxc-user-nic.md §7; issue: per-user bridges and isolation):

- accept_ra=0 on the host end: router advertisements from containers configure nothing;
- every host end is in the interface group port_security.GROUP: on a Linux bridge (VLAN
  filtering or not) nsgate's nftables table then lets the port send only from MACs no other
  port and not the host has, a few new ones at a time, and the container may change its MAC
  (port_security.py); learning stays on and no FDB entry is written, so nothing read from the
  caller's namespace decides what the port may send;
- on a bridge shared between users the port is isolated: it reaches the bridge's other ports
  (the uplink, the host) but no other container port, so users' containers cannot talk to
  each other; on a user's private bridge its containers talk freely.
"""

import posix

from nsgate.errors import Refusal
from nsgate.system import ovs, port_security, rtnl


class Attachment:
    """Where the host end goes: nowhere (`none`), a Linux bridge, or an OVS bridge."""

    __slots__ = ("index", "is_ovs", "name", "ovs", "shared")

    def __init__(self, name: str, index: int = 0, *, is_ovs: bool = False,
                 shared: bool = True) -> None:
        self.name = name
        self.index = index
        self.is_ovs = is_ovs
        self.shared = shared
        self.ovs: ovs.Runner | None = None  # forked before the helper confines itself


def set_sysctl(path: str, value: bytes) -> bool:
    """Write a /proc/sys value; False when the setting does not exist (IPv6 disabled)."""
    try:
        fd = posix.open(path, posix.O_WRONLY | posix.O_CLOEXEC | posix.O_NOFOLLOW)
    except FileNotFoundError:
        return False
    try:
        if posix.write(fd, value) != len(value):
            raise OSError(5, f"short write to {path}")
    finally:
        posix.close(fd)
    return True


def no_router_advertisements(name: str) -> None:
    set_sysctl(f"/proc/sys/net/ipv6/conf/{name}/accept_ra", b"0\n")


def set_up_host_end(net: "rtnl.Rtnl", link: "rtnl.Link", attach: Attachment) -> None:
    # The first byte 0xfe keeps the bridge from adopting a container's MAC (the reference's).
    net.set_link(link.index, address=b"\xfe" + link.address[1:], group=port_security.GROUP)
    no_router_advertisements(link.name)
    if attach.is_ovs:
        if attach.ovs is None or not attach.ovs.run("add-port", attach.name, link.name):
            raise Refusal(f"Error attaching {link.name} to {attach.name}",
                          "ovs-vsctl add-port failed")
    elif attach.index:
        net.set_link(link.index, master=attach.index)
        if attach.shared:
            net.set_bridge_port(link.index, isolated=True)
    net.set_link(link.index, up=True)
