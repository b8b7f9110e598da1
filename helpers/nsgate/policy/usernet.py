"""/etc/lxc/lxc-usernet: who may create how many nics on which bridge, and whose quota a new nic
counts against (lxc-user-nic.md §5). Bytes in, decision out.

Grammar, as the reference's `sscanf("%99[^ \\t] %99[^ \\t] %99[^ \\t] %d")` reads it: a line
starting with a blank is ignored; fields are separated by runs of white space; a field is at most
99 bytes; the number may be signed and anything after it is ignored. Lines that do not parse
grant nothing.

Counting (nsgate, as the issue asks and lxc-usernet(5) documents): per owner token (the user, or
`@group`), per type and per bridge; only nics that still exist count. Grants are walked in file
order and the first one with room owns the new nic, so duplicate lines do not add up and a user
line plus a group line do. A total of zero or less refuses, as in the reference.
"""

PATH = "/etc/lxc/lxc-usernet"
FIELD_MAX = 99
_BLANKS = b" \t"
_SPACE = b" \t\n\v\f\r"
INT_MAX = 2147483647


class Grant:
    """One parsed line: `token` (a user name or `@group`) may have `number` nics of `nic_type` on
    `bridge`."""

    __slots__ = ("bridge", "lineno", "nic_type", "number", "token")

    def __init__(self, token: bytes, nic_type: bytes, bridge: bytes, number: int,
                 lineno: int) -> None:
        self.token = token
        self.nic_type = nic_type
        self.bridge = bridge
        self.number = number
        self.lineno = lineno


def _field(line: bytes, pos: int) -> tuple[bytes, int] | None:
    end = pos
    while end < len(line) and line[end] not in _BLANKS:
        end += 1
    if end == pos or end - pos > FIELD_MAX:
        return None
    return line[pos:end], end


def _skip_space(line: bytes, pos: int) -> int:
    while pos < len(line) and line[pos] in _SPACE:
        pos += 1
    return pos


def parse_line(line: bytes, lineno: int) -> Grant | None:
    """One line without its newline, or None where the reference would not match it."""
    fields = []
    pos = 0
    for _ in range(3):
        found = _field(line, pos)
        if found is None:
            return None
        fields.append(found[0])
        pos = _skip_space(line, found[1])
    sign = 1
    if pos < len(line) and line[pos] in b"+-":
        sign = -1 if line[pos] == 0x2D else 1
        pos += 1
    digits = pos
    while pos < len(line) and 0x30 <= line[pos] <= 0x39:
        pos += 1
    if pos == digits:
        return None
    text = line[digits:pos].lstrip(b"0") or b"0"  # %d reads 000001 as 1
    if len(text) > 10:
        return None
    number = sign * int(text)
    if not -INT_MAX - 1 <= number <= INT_MAX:
        return None
    return Grant(fields[0], fields[1], fields[2], number, lineno)


def parse(data: bytes) -> list[Grant]:
    grants = []
    for lineno, line in enumerate(data.split(b"\n"), 1):
        grant = parse_line(line, lineno)
        if grant is not None:
            grants.append(grant)
    return grants


def tokens_of(user: bytes, group_names: list[bytes]) -> set[bytes]:
    """The owner tokens that stand for the caller: its name, and `@group` for each of the
    groups in its supplementary list (lxc-user-nic.md §5.2)."""
    return {user} | {b"@" + name for name in group_names}


def recordable(token: bytes) -> bool:
    """Whether the nic database can hold lines of this owner: a `#` token would read as a
    comment there, and other white space would split the line."""
    return not token.startswith(b"#") and not any(c in token for c in b"\r\v\f\n")


def applicable(grants: list[Grant], tokens: set[bytes], nic_type: bytes,
               bridge: bytes) -> list[Grant]:
    return [g for g in grants if g.token in tokens and g.nic_type == nic_type
            and g.bridge == bridge and recordable(g.token)]


class QuotaDecision:
    """`owner`: the token the new nic is recorded under, or None when refused; `capacity`: how
    many nics the grants allow in all (duplicate lines of a token do not add up); `used`: the
    live nics counted against the applicable grants, by token."""

    __slots__ = ("capacity", "owner", "used")

    def __init__(self, owner: bytes | None, capacity: int,
                 used: dict[bytes, list[bytes]]) -> None:
        self.owner = owner
        self.capacity = capacity
        self.used = used


def decide(grants: list[Grant], live_nics: dict[bytes, list[bytes]]) -> QuotaDecision:
    """`grants`: the applicable grants in file order; `live_nics`: for each owner token, the
    existing nics recorded for it on this type and bridge."""
    used = {g.token: live_nics.get(g.token, []) for g in grants}
    largest: dict[bytes, int] = {}
    for grant in grants:
        largest[grant.token] = max(largest.get(grant.token, 0), grant.number)
    if sum(g.number for g in grants) <= 0:  # the reference's rule: -1 and 1 refuse
        return QuotaDecision(None, 0, used)
    capacity = sum(largest.values())
    for grant in grants:
        if len(used[grant.token]) < grant.number:
            return QuotaDecision(grant.token, capacity, used)
    return QuotaDecision(None, capacity, used)
