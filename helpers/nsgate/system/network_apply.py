"""Making the host what networks.conf asks (`nsgate network apply`, the service's keeper, the
helper's create): forwarding on, the firewall table loaded, the gateway addresses of the private
bridges that exist. On the helper's path (set_forwarding): imports stay few."""

TYPE_CHECKING = False  # typing costs import time on the helper's path
if TYPE_CHECKING:
    from nsgate.policy.networks_conf import Plan

IPV4_FORWARDING = "/proc/sys/net/ipv4/ip_forward"
IPV6_FORWARDING = "/proc/sys/net/ipv6/conf/all/forwarding"


def forwarding_wanted(plan: "Plan") -> list[str]:
    """The forwarding sysctls (their /proc/sys paths) `plan` needs on: none when nothing leaves
    the users' bridges (`uplink none`)."""
    if plan.uplink == "none":
        return []
    return [IPV4_FORWARDING] + ([IPV6_FORWARDING] if plan.ipv6_pool is not None else [])


def set_forwarding(plan: "Plan") -> list[str]:
    """Turn on the forwarding `plan` needs (never off: other things may route too); what was
    changed, as text."""
    import posix

    changed = []
    for path in forwarding_wanted(plan):
        fd = posix.open(path, posix.O_RDWR | posix.O_CLOEXEC)
        try:
            if posix.read(fd, 16).strip() != b"1":
                posix.lseek(fd, 0, 0)
                posix.write(fd, b"1\n")
                changed.append(f"{path[len('/proc/sys/'):].replace('/', '.')} = 1")
        finally:
            posix.close(fd)
    return changed
