"""Per-user bridges, an nsgate extension of lxc-usernet that old files and old tools ignore.

A grant whose bridge is the reserved name `nsgate-private` (a name no real bridge has) gives the
user nics on a bridge of its own, `nsgu<uid>` (within IFNAMSIZ for every uid), which nsgate
creates on first use and records in /run/lxc/nsgate-bridges (`<uid> <bridge>` per line) so that
it never adopts a bridge it did not make. The bridge has no address (containers do not reach the
host through it) and accepts no router advertisements. Call with the database lock held.
"""

import posix

from nsgate.errors import Refusal
from nsgate.policy import nicnames
from nsgate.system import files, nicdb_store, ports, rtnl

RESERVED_NAME = b"nsgate-private"
RECORD_PATH = nicdb_store.DB_DIR + "/nsgate-bridges"


def bridge_name(uid: int) -> str:
    return nicnames.private_bridge_name(uid).decode()


def _recorded() -> set[bytes]:
    return set(nicdb_store.read(RECORD_PATH).split(b"\n"))


def _record(line: bytes) -> None:
    fd = posix.open(RECORD_PATH, posix.O_WRONLY | posix.O_APPEND | posix.O_CREAT
                    | posix.O_CLOEXEC | posix.O_NOFOLLOW, 0o644)
    try:
        files.write_all(fd, line + b"\n")
    finally:
        posix.close(fd)


def ensure(net: "rtnl.Rtnl", uid: int) -> ports.Attachment:
    """The caller's private bridge, created and recorded on first use."""
    name = bridge_name(uid)
    record = f"{uid} {name}".encode()
    link = net.link(name)
    if link is not None:
        if link.kind != "bridge" or record not in _recorded():
            raise Refusal(f"{name} exists but is not a private bridge nsgate made for uid {uid}",
                          "refusing to attach containers to it: remove it, or grant it by name")
        return ports.Attachment(name, link.index, shared=False)
    if record not in _recorded():
        _record(record)  # first: a helper killed right after creating it still owns it
    index = net.create_bridge(name)
    try:
        ports.no_router_advertisements(name)
        net.set_link(index, up=True)
    except BaseException:
        net.delete_link(index)
        raise
    return ports.Attachment(name, index, shared=False)
