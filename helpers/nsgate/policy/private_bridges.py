"""The private bridges' record /run/lxc/nsgate-bridges (`<uid> nsgu<uid>` per line, see
system/private_bridge.py) and which recorded bridge goes when. Bytes in, decisions out.

A recorded bridge is removed, with its line, once it has no port left: its last nic went with
its container. A line whose bridge no longer exists is forgotten. A recorded name that is not a
bridge now (someone else's link) and lines nsgate cannot read stay as they are.
"""

from nsgate.policy import nicnames

GONE = "gone"  # no link of that name
UNUSED = "unused"  # a bridge with no port
IN_USE = "in use"  # a bridge with at least one port
FOREIGN = "foreign"  # a link of another kind


def record_line(uid: int) -> bytes:
    return b"%d %s" % (uid, nicnames.private_bridge_name(uid))


def recorded_bridge(raw: bytes) -> bytes | None:
    """The bridge a well-formed record line names; None for any other line."""
    uid_text, _, name = raw.partition(b" ")
    uid = nicnames.private_bridge_uid(name)
    if uid is None or not uid_text.isdigit() or int(uid_text) != uid:
        return None
    return name if raw == record_line(uid) else None


def recorded_bridges(raw_lines: list[bytes]) -> list[bytes]:
    return [name for name in map(recorded_bridge, raw_lines) if name is not None]


def reap(raw_lines: list[bytes],
         states: dict[bytes, str]) -> tuple[list[bytes], list[bytes], list[bytes]]:
    """(kept, remove, forget): the record's lines to keep, the bridges to remove, the record
    lines' bridges that are gone. `states` tells, for some recorded bridges, what their link
    is (GONE, UNUSED, IN_USE, FOREIGN); a bridge without a state is left alone."""
    kept: list[bytes] = []
    remove: list[bytes] = []
    forget: list[bytes] = []
    for raw in raw_lines:
        name = recorded_bridge(raw)
        state = states.get(name) if name is not None else None
        if name is not None and state == UNUSED and name not in remove:
            remove.append(name)
        elif name is not None and state == GONE and name not in forget:
            forget.append(name)
        elif name in remove or name in forget:
            continue  # a duplicate line of a bridge that goes
        else:
            kept.append(raw)
    return kept, remove, forget
