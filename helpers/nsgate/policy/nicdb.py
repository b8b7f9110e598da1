"""The nic database /run/lxc/nics: `<owner-token> <type> <bridge> <host-veth>` per line, single
spaces, exactly as the reference writes it (lxc-user-nic.md §6). Bytes in, bytes out.

Lines nsgate cannot read (damage left by the reference's cull, comments, foreign text) are kept
as they are and never counted: nsgate does not destroy what it does not understand.
"""

from nsgate.policy.nicnames import valid_ifname


class NicLine:
    __slots__ = ("bridge", "dev", "nic_type", "owner", "raw")

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        words = [w for w in raw.replace(b"\t", b" ").split(b" ") if w]  # blanks, as the reference
        valid = (len(words) == 4 and not raw.startswith(b"#")
                 and valid_ifname(words[3]) and (words[2] == b"none" or valid_ifname(words[2])))
        self.owner, self.nic_type, self.bridge, self.dev = words if valid else (b"",) * 4

    @property
    def valid(self) -> bool:
        return bool(self.dev)


def parse(data: bytes) -> list[NicLine]:
    return [NicLine(raw) for raw in split_lines(data) if raw]


def split_lines(data: bytes) -> list[bytes]:
    """The lines of a newline-separated file, a missing final newline allowed."""
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return lines


def lines_of(raw_lines: list[bytes], tokens: set[bytes], nic_type: bytes,
             bridge: bytes) -> dict[int, NicLine]:
    """The valid lines of these owners on this type and bridge, by position, without parsing
    the others (the database may hold many thousands of other users' lines)."""
    prefixes = tuple(t + sep for t in tokens for sep in (b" ", b"\t"))
    found = {}
    for position, raw in enumerate(raw_lines):
        if raw.lstrip(b" \t").startswith(prefixes):
            line = NicLine(raw)
            if (line.valid and line.owner in tokens and line.nic_type == nic_type
                    and line.bridge == bridge):
                found[position] = line
    return found


def join_lines(raw_lines: list[bytes]) -> bytes:
    """The inverse of split_lines: every line ends in a newline."""
    return b"".join(raw + b"\n" for raw in raw_lines)


def serialize(lines: list[NicLine]) -> bytes:
    return join_lines([line.raw for line in lines])


def entry(owner: bytes, nic_type: bytes, bridge: bytes, dev: bytes) -> NicLine:
    return NicLine(b" ".join((owner, nic_type, bridge, dev)))


def numbered(raw_lines: list[bytes]) -> dict[int, NicLine]:
    """Every line of the file, parsed, by position."""
    return {position: NicLine(raw) for position, raw in enumerate(raw_lines)}


def lines_naming(raw_lines: list[bytes], devs: set[bytes]) -> dict[int, NicLine]:
    """The valid lines whose interface is one of `devs`, by position."""
    found = {}
    for position, raw in enumerate(raw_lines):
        if raw.rstrip(b" \t").endswith(tuple(devs)):  # cheap first: the name ends the line
            line = NicLine(raw)
            if line.valid and line.dev in devs:
                found[position] = line
    return found


def prune(raw_lines: list[bytes], candidates: dict[int, NicLine],
          live: set[bytes]) -> tuple[list[bytes], dict[int, NicLine]]:
    """(kept, stale): the file's lines without the stale ones, and those by position. Stale is a
    candidate (a line of `raw_lines`, by position: `numbered` or `lines_of`) that is valid and
    whose interface is not `live`; every other line is kept as it is."""
    stale = {position: line for position, line in candidates.items()
             if line.valid and line.dev not in live}
    kept = [raw for position, raw in enumerate(raw_lines) if position not in stale]
    return kept, stale


def nics_by_owner(lines: list[NicLine], nic_type: bytes,
                  bridge: bytes) -> dict[bytes, list[bytes]]:
    """The recorded nics of each owner token on this type and bridge, in file order."""
    found: dict[bytes, list[bytes]] = {}
    for line in lines:
        if line.valid and line.nic_type == nic_type and line.bridge == bridge:
            found.setdefault(line.owner, []).append(line.dev)
    return found


def find(lines: list[NicLine], tokens: set[bytes], nic_type: bytes, bridge: bytes,
         dev: bytes) -> NicLine | None:
    """The caller's own exact line for `dev` (owner + type + bridge + name, CVE-2026-39402)."""
    for line in lines:
        if (line.valid and line.owner in tokens and line.nic_type == nic_type
                and line.bridge == bridge and line.dev == dev):
            return line
    return None
