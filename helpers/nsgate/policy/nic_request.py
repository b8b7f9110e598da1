"""The lxc-user-nic command line (lxc-user-nic.md §2, §3), bytes in:

    lxc-user-nic create <lxcpath> <name> <pid> <type> <bridge> [<container-nicname>]
    lxc-user-nic delete <lxcpath> <name> <netns-path> <type> <bridge> [<host-nicname>]

`lxcpath` and `name` are ignored, as in the reference. Every name is validated here, before
anything is opened or created.
"""

from nsgate.errors import Refusal
from nsgate.policy.nicnames import valid_ifname, valid_ifname_template
from nsgate.policy.numbers import parse_decimal

USAGE = ("Description:\n"
         "  Manage nics in another network namespace\n"
         "\n"
         "Usage:\n"
         "  lxc-user-nic [command]\n"
         "\n"
         "Available Commands:\n"
         "  create {lxcpath} {name} {pid} {type} {bridge} {container nicname}\n"
         "  delete {lxcpath} {name} {/proc/<pid>/ns/net} {type} {bridge} {container nicname}\n")
PID_MAX = 2147483647
NO_BRIDGE = b"none"


class NicRequest:
    __slots__ = ("bridge", "lxcpath", "name", "netns_path", "nic_type", "nicname", "pid", "verb")

    def __init__(self, verb: str, pid: int, netns_path: bytes, nic_type: bytes, bridge: bytes,
                 nicname: bytes | None, lxcpath: bytes = b"", name: bytes = b"") -> None:
        self.verb = verb
        self.pid = pid  # create
        self.netns_path = netns_path  # delete
        self.nic_type = nic_type
        self.bridge = bridge
        self.nicname = nicname
        self.lxcpath = lxcpath  # the caller's words, only hashed into the nic's stable MAC
        self.name = name


def _show(text: bytes) -> str:
    return repr(text[:64])[1:] + ("..." if len(text) > 64 else "")


def parse(args: list[bytes]) -> NicRequest:
    """The arguments after the program name."""
    if len(args) not in (6, 7) or args[0] not in (b"create", b"delete"):
        raise Refusal("wrong command line", usage=True)
    verb = args[0].decode()
    target, nic_type, bridge = args[3], args[4], args[5]
    nicname = args[6] if len(args) == 7 else None
    if not nic_type or len(nic_type) > 99 or any(c <= 0x20 or c >= 0x7F for c in nic_type):
        raise Refusal(f"invalid type {_show(nic_type)}")
    if bridge != NO_BRIDGE and not valid_ifname(bridge):
        raise Refusal(f"invalid bridge name {_show(bridge)}: an interface name is 1 to 15 "
                      "printable characters without '/', ':' or white space")
    if nicname is not None and not valid_ifname(nicname) and not (
            verb == "create" and valid_ifname_template(nicname)):
        raise Refusal(f"invalid interface name {_show(nicname)}: an interface name is 1 to 15 "
                      "printable characters without '/', ':' or white space"
                      + (" (or, in the container, a kernel template with one '%d')"
                         if verb == "create" else ""))
    if verb == "delete":
        if nicname is None:
            raise Refusal("delete needs the host interface name as its last argument")
        return NicRequest(verb, 0, target, nic_type, bridge, nicname)
    pid = parse_decimal(target, PID_MAX)
    if pid is None or pid < 1:
        raise Refusal(f"Could not read pid: {_show(target)}",
                      "the pid must be a positive number in canonical decimal")
    return NicRequest(verb, pid, b"", nic_type, bridge, nicname, args[1], args[2])
