"""Interface names: what the kernel and nsgate accept, and the host veth naming scheme."""

IFNAMSIZ = 16
_ALPHABET = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
# Printable ASCII without space, `/`, `:` (the kernel's rules) and `%` (a kernel name template).
_ALLOWED = bytes(c for c in range(0x21, 0x7F) if c not in b"/:%")


def valid_ifname(name: bytes) -> bool:
    """1 to 15 printable ASCII bytes, no `/`, `:`, `%` or white space, not `.` or `..`."""
    return (0 < len(name) < IFNAMSIZ and name not in (b".", b"..")
            and not name.translate(None, _ALLOWED))


PRIVATE_BRIDGE_PREFIX = b"nsgu"


def private_bridge_name(uid: int) -> bytes:
    """The per-user bridge nsgate makes for `uid` (system/private_bridge.py)."""
    return PRIVATE_BRIDGE_PREFIX + b"%d" % uid


def private_bridge_uid(name: bytes) -> int | None:
    """The uid whose per-user bridge `name` is, None for a name no uid's bridge has."""
    digits = name[len(PRIVATE_BRIDGE_PREFIX):]
    if not name.startswith(PRIVATE_BRIDGE_PREFIX) or not digits.isdigit():
        return None
    uid = int(digits)
    return uid if private_bridge_name(uid) == name else None


def valid_ifname_template(name: bytes) -> bool:
    """A kernel name template (`net%d`): one `%d` and no other `%`, and a valid name once the
    kernel puts a number there (dev_valid_name, dev_alloc_name)."""
    return (len(name) < IFNAMSIZ and name.count(b"%") == 1 and b"%d" in name
            and valid_ifname(name.replace(b"%d", b"0")))


def host_veth_name(uid: int, random: bytes) -> bytes:
    """`veth<uid>_XXXX` for 0 < uid <= 65536, else `vethXXXXXX` (the reference's scheme); the
    X are drawn from `random` (at least 6 bytes)."""
    prefix, count = _host_veth_scheme(uid)
    return prefix + bytes(_ALPHABET[b % len(_ALPHABET)] for b in random[:count])



def is_host_veth_name(uid: int, name: bytes) -> bool:
    """Whether `name` is one `host_veth_name(uid, ...)` can give."""
    prefix, count = _host_veth_scheme(uid)
    return (len(name) == len(prefix) + count and name.startswith(prefix)
            and not name[len(prefix):].translate(None, _ALPHABET))


def _host_veth_scheme(uid: int) -> tuple[bytes, int]:
    """The fixed prefix and the number of random characters after it."""
    if 0 < uid <= 65536:
        return b"veth%d_" % uid, 4
    return b"veth", 6
