"""Interface names: what the kernel and nsgate accept, and the host veth naming scheme."""

IFNAMSIZ = 16
_ALPHABET = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
# Printable ASCII without space, `/`, `:` (the kernel's rules) and `%` (a kernel name template).
_ALLOWED = bytes(c for c in range(0x21, 0x7F) if c not in b"/:%")


def valid_ifname(name: bytes) -> bool:
    """1 to 15 printable ASCII bytes, no `/`, `:`, `%` or white space, not `.` or `..`."""
    return (0 < len(name) < IFNAMSIZ and name not in (b".", b"..")
            and not name.translate(None, _ALLOWED))


def host_veth_name(uid: int, random: bytes) -> bytes:
    """`veth<uid>_XXXX` for 0 < uid <= 65536, else `vethXXXXXX` (the reference's scheme); the
    X are drawn from `random` (at least 6 bytes)."""
    if 0 < uid <= 65536:
        prefix, count = b"veth%d_" % uid, 4
    else:
        prefix, count = b"veth", 6
    return prefix + bytes(_ALPHABET[b % len(_ALPHABET)] for b in random[:count])

