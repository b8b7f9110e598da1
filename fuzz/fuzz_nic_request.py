#!/usr/bin/env python3
"""lxc-user-nic's command line: nic_request.parse.

Input: the argv after the program name, NUL-separated, as the kernel passes it.
Properties: no exception but Refusal; accepted exactly when the documented grammar
(lxc-user-nic.md §2, §3) accepts, with the same fields: a canonical pid >= 1 for create, a type of
1 to 99 printable bytes, a bridge that is `none` or an interface name, an interface name where a
nic name is given (for create also a kernel template with one `%d`), and delete only with the
host nic's name.
"""

from __future__ import annotations

from fuzz import common, oracles

with common.instrumented(__name__):
    from nsgate.errors import Refusal
    from nsgate.policy import nic_request


def _oracle(args: list[bytes]) -> tuple | None:
    """(verb, pid, netns path, type, bridge, nic name) for an accepted command line."""
    if len(args) not in (6, 7) or args[0] not in (b"create", b"delete"):
        return None
    verb, target, nic_type, bridge = args[0], args[3], args[4], args[5]
    nicname = args[6] if len(args) == 7 else None
    if not 1 <= len(nic_type) <= 99 or not all(0x21 <= c <= 0x7E for c in nic_type):
        return None
    if bridge != b"none" and not oracles.ifname(bridge):
        return None
    if nicname is not None and not oracles.ifname(nicname) and not (
            verb == b"create" and oracles.ifname_template(nicname)):
        return None
    if verb == b"delete":
        return None if nicname is None else ("delete", 0, target, nic_type, bridge, nicname)
    pid = oracles.canonical(target, 2**31 - 1)
    return ("create", pid, b"", nic_type, bridge, nicname) if pid else None


def check(data: bytes) -> None:
    args = common.argv(data)
    expected = _oracle(args)
    try:
        request = nic_request.parse(args)
    except Refusal as refusal:
        assert expected is None, ("refused a valid command line", args, refusal.first)
        assert refusal.first
        return
    got = (request.verb, request.pid, request.netns_path, request.nic_type, request.bridge,
           request.nicname)
    assert got == expected, ("accepted", args, got, expected)


if __name__ == "__main__":
    common.fuzz_main(check)
