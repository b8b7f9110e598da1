"""Stable MAC addresses for the nics nsgate makes, so a restarted container keeps its DHCP lease
and its neighbours' ARP entries stay right. All locally administered unicast (bit 1 of the
first byte set, bit 0 clear).

- a container's end: a hash of who asked and for which nic (uid, lxcpath, name, nicname);
- its host end: the same with 0xfe first, the form ports.set_up_host_end gives host ends;
- a private bridge: 02:6e and the uid, lower than every fe: host end, so the bridge never
  takes a port's address.
"""

from _blake2 import blake2b

_PERSON = b"nsgate nic mac 1"  # 16 bytes: blake2b's personalisation, a domain of its own


def container_mac(uid: int, lxcpath: bytes, name: bytes, nicname: bytes) -> bytes:
    """6 bytes, the same for the same four values, unrelated for any other."""
    digest = blake2b(digest_size=6, person=_PERSON)
    for field in (b"%d" % uid, lxcpath, name, nicname):
        digest.update(b"%d:" % len(field) + field)  # length first: no two inputs run together
    mac = bytearray(digest.digest())
    mac[0] = (mac[0] & 0xFC) | 0x02
    if mac[0] == 0xFE:
        mac[0] = 0xFA  # fe: is the host ends' form
    elif mac[0] == 0x02:
        mac[0] = 0x06  # 02: is the private bridges'
    if not any(mac[1:]):
        mac[5] = 1
    return bytes(mac)


def host_mac(container: bytes) -> bytes:
    return b"\xfe" + container[1:]


def bridge_mac(uid: int) -> bytes:
    return b"\x02\x6e" + uid.to_bytes(4, "big")
