"""Setting up the host end of a new veth: the reference's MAC rule, the bridge's MTU, the
attachment, and nsgate's hardening of the port (no router advertisements accepted)."""

import posix

from nsgate.errors import Refusal
from nsgate.system import ovs, rtnl


def _no_router_advertisements(name: str) -> None:
    """accept_ra=0 on the host end: containers cannot configure the host's IPv6 through it."""
    try:
        fd = posix.open(f"/proc/sys/net/ipv6/conf/{name}/accept_ra",
                        posix.O_WRONLY | posix.O_CLOEXEC | posix.O_NOFOLLOW)
    except FileNotFoundError:
        return  # IPv6 is off for this interface: nothing to accept
    try:
        posix.write(fd, b"0\n")
    finally:
        posix.close(fd)


def set_up_host_end(net: "rtnl.Rtnl", link: "rtnl.Link", bridge_index: int, is_ovs: bool,
                    bridge: bytes) -> None:
    # The first byte 0xfe keeps the bridge from adopting a container's MAC (the reference's).
    net.set_link(link.index, address=b"\xfe" + link.address[1:])
    _no_router_advertisements(link.name)
    if is_ovs:
        if not ovs.run("add-port", bridge.decode(), link.name):
            raise Refusal(f"Error attaching {link.name} to {bridge.decode()}",
                          "ovs-vsctl add-port failed")
    elif bridge_index:
        net.set_link(link.index, master=bridge_index)
    net.set_link(link.index, up=True)
