#!/usr/bin/env python3
"""getsubids: its argument handling and listing (cli.getsubids.main over subid_db.list_ranges),
with the files and the passwd database replaced by ones made from the input, read through
reused buffers as files.chunks hands them over. Only the pure part runs: no file is opened.

Input: `header SEP passwd SEP subid-file SEP argv`; passwd lines `name:uid`, group lines
`@name:gid`; argv NUL-separated.
Header byte 0: bit 0 no /etc/subuid, bit 1 no /etc/subgid, bits 2-4 the nsswitch.conf; bytes
1- chunk sizes.
Properties: no exception; `getsubids [-g] USER` lists, in file order and shadow's format, the
ranges of valid lines selected as shadow 4.13 selects them: once for an owner field equal to USER
as given, once more for one equal to the decimal id of the user (-g: group) named USER (a user
named by its own uid gets its lines twice), status 0 iff there is one; usage for no argument or
`-h`; a clear error and nothing listed for an invalid subid source; with `files extra` (a module
that cannot be loaded after the files), the files' listing when they hold a line of the user (by
name, by the decimal uid of the user named USER, or by another name of that uid), else the
module's load error and nothing listed; every file it opens is closed.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from fuzz import common, oracles

common.find_sysmodule()
with common.instrumented(__name__):
    from nsgate.cli import getsubids
    from nsgate.system import files, subid_db

UINT32_MAX = 2**32 - 1
NSSWITCH = [None, b"", b"subid: files\n", b"passwd: files\nsubid:\n", b"#subid: x\n",
            b"subid: ../evil\n", b"SUBID:\tfiles extra\n", b"subid: lib/x\n"]


def _accounts(passwd: bytes) -> tuple[dict[bytes, int], dict[bytes, int]]:
    """(users, groups): name -> id, the first line of a name winning, as getpwnam finds it."""
    users: dict[bytes, int] = {}
    groups: dict[bytes, int] = {}
    for line in passwd.split(b"\n"):
        table = groups if line.startswith(b"@") else users
        name, _, uid = line.removeprefix(b"@").partition(b":")
        value = oracles.canonical(uid, UINT32_MAX)
        if name and value is not None and b"\0" not in name:
            table.setdefault(name, value)
    return users, groups


@contextmanager
def _fake_system(etc: dict[str, bytes | None], users: dict[bytes, int],
                 groups: dict[bytes, int], sizes: bytes
                 ) -> Iterator[tuple[dict[int, str], list[int]]]:
    opened: dict[int, str] = {}
    closed: list[int] = []

    def open_trusted(path: str) -> int | None:
        if etc.get(path) is None:
            return None
        fd = 100 + len(opened)
        opened[fd] = path
        return fd

    def chunks(fd: int) -> Iterator[bytearray]:
        content = etc[opened[fd]] or b""
        return common.reused_buffer(common.chunkings(content, sizes)[-1])

    def read_small(path: str, limit: int = 1 << 20) -> bytes | None:
        return etc.get(path)

    def lookup(table: dict[bytes, int], field: str) -> Callable[[str], types.SimpleNamespace]:
        """A fake getpwnam/getgrnam over `table`, failing as the real ones do."""
        def find(name: str) -> types.SimpleNamespace:
            if "\0" in name:
                raise ValueError("embedded null character")
            number = table.get(name.encode("utf-8", "surrogateescape"))
            if number is None:
                raise KeyError(name)
            return types.SimpleNamespace(**{field: number})
        return find

    getpwnam, getgrnam = lookup(users, "pw_uid"), lookup(groups, "gr_gid")

    fakes = [(files, "open_trusted", open_trusted), (files, "chunks", chunks),
             (files, "read_small", read_small),
             (subid_db, "posix", types.SimpleNamespace(close=closed.append)),
             (subid_db, "pwd", types.SimpleNamespace(getpwnam=getpwnam)),
             (getsubids, "pwd", types.SimpleNamespace(getpwnam=getpwnam)),
             (getsubids, "grp", types.SimpleNamespace(getgrnam=getgrnam))]
    if hasattr(getsubids, "confine"):  # self-confinement (seccomp) must not hit this process
        fakes.append((getsubids, "confine", types.SimpleNamespace(
            confine=lambda caps, calls: None, READER=())))
    saved = [(module, attr, getattr(module, attr)) for module, attr, _ in fakes]
    for module, attr, fake in fakes:
        setattr(module, attr, fake)
    subid_db._owner_uids.clear()
    try:
        yield opened, closed
    finally:
        for module, attr, real in saved:
            setattr(module, attr, real)
        subid_db._owner_uids.clear()


def _files_hold(lines: list[tuple[bytes, int, int]], name: bytes,
                users: dict[bytes, int]) -> bool:
    """Whether the files answer for the user named `name` (subid_db's order of sources)."""
    uid = users.get(name)
    if any(owner == name for owner, _, _ in lines):
        return True
    if uid is None:
        return False
    for owner, _, _ in lines:
        number = oracles.canonical(owner, UINT32_MAX)
        if (number if number is not None else users.get(owner)) == uid:
            return True
    return False


def _expected(argv: list[str], etc: dict[str, bytes | None], users: dict[bytes, int],
              groups: dict[bytes, int]) -> tuple[int, str, str] | str:
    """(status, out, err), or the start of the error where only "status 1, that error, nothing
    listed" is known."""
    if not argv or argv == ["-h"]:
        return 1, "", getsubids.USAGE
    kind, owner = ("gid", argv[1]) if len(argv) == 2 and argv[0] == "-g" else ("uid", argv[0])
    name = owner.encode("utf-8", "surrogateescape")
    nsswitch = etc["/etc/nsswitch.conf"] or b""
    if b"../evil" in nsswitch or b"lib/x" in nsswitch:
        return "getsubids: invalid subid source"
    content = etc[f"/etc/sub{kind}"]
    valid = [] if content is None else list(filter(None, map(oracles.subid_line,
                                                            oracles.file_lines(content))))
    if b"extra" in nsswitch and not _files_hold(valid, name, users):
        return "getsubids: cannot load the subid NSS module libsubid_extra.so"
    found = (groups if kind == "gid" else users).get(name)  # shadow's get_owner_id
    id_key = None if found is None else str(found).encode()
    ranges = [(start, count) for owner_field, start, count in valid
              for _ in range((owner_field == name) + (owner_field == id_key))]
    if not ranges:
        return 1, "", "Error fetching ranges\n"
    return 0, "".join(f"{i}: {owner} {s} {c}\n" for i, (s, c) in enumerate(ranges)), ""


def check(data: bytes) -> None:
    header_bytes, passwd, subids, args_part = common.parts(data, 4)
    header = common.Header(header_bytes)
    argv = [arg.decode("utf-8", "surrogateescape") for arg in common.argv(args_part)]
    users, groups = _accounts(passwd)
    etc = {"/etc/subuid": None if header.flag(0, 0) else subids,
           "/etc/subgid": None if header.flag(0, 1) else subids,
           "/etc/nsswitch.conf": NSSWITCH[header.byte(0) >> 2 & 7]}
    with _fake_system(etc, users, groups, header_bytes[1:] or b"\x07") as (opened, closed):
        status, out, err = getsubids.main(argv)
    assert sorted(opened) == sorted(closed), ("fd leak", opened, closed)
    expected = _expected(argv, etc, users, groups)
    if isinstance(expected, str):
        assert (status, out) == (1, "") and err.startswith(expected), (argv, err, expected)
        return
    assert (status, out, err) == expected, ("getsubids", argv, (status, out, err), expected)


if __name__ == "__main__":
    common.fuzz_main(check)
