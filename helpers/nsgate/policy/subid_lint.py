"""`nsgate check` for /etc/subuid and /etc/subgid: lines that do not parse, lines that grant
nothing (an error while another privileged reader still grants something with them), ranges of
different owners that overlap, ranges that swallow real ids. Bytes in, findings out; the parsing
is policy.subid's, the very one the helpers use."""

from nsgate.policy import subid
from nsgate.policy.accounts import Accounts
from nsgate.policy.findings import Finding, text
from nsgate.policy.nicdb import split_lines
from nsgate.policy.numbers import is_canonical

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

ULONG_END = 1 << 64  # shadow parses start and count as 64-bit unsigned longs (getulong)


def is_blank_or_comment(raw: bytes) -> bool:
    return not raw.strip() or raw.startswith(b"#")


def numbered_lines(data: bytes) -> list[tuple[int, bytes]]:
    return list(enumerate(split_lines(data), 1))


def valid_lines(data: bytes) -> list[subid.SubidLine]:
    """Every line the helpers honour, in file order."""
    found = []
    for lineno, raw in numbered_lines(data):
        if not is_blank_or_comment(raw):
            parsed = subid.parse_line(raw, lineno)
            if isinstance(parsed, subid.SubidLine):
                found.append(parsed)
    return found


def _ignored_numbers(raw: bytes) -> tuple[int, int] | None:
    """(start, count) of a well-formed line that still grants nothing in nsgate (count 0, or a
    range past the id space), else None."""
    fields = raw.split(b":")
    if len(fields) != 3 or not fields[0] or not all(is_canonical(f) for f in fields[1:]):
        return None
    start, count = int(fields[1]), int(fields[2])
    if count == 0 or start + count > subid.ID_SPACE_END:
        return start, count
    return None


def _grants_nothing_reason(start: int, count: int) -> str:
    if count == 0:
        return ("count 0 grants nothing (shadow before 4.20 reads such a line starting at 0 as "
                "every id, host root included)")
    return f"the range {start}-{start + count - 1} goes past the last id 4294967295"


def lenient_grant(start: int, count: int) -> tuple[int, int] | None:
    """The host ids (first, last) shadow's newuidmap and newgidmap before 4.20 honour for a line
    nsgate ignores for its count or its end: shadow covers start..start+count-1 computed in 64
    bits (modulo 2^64), so `u:0:0` covers every id, host root included, and a range past the id
    space covers its ids up to 4294967295. None if it covers none there either."""
    if start >= ULONG_END or count >= ULONG_END:
        return None  # shadow's getulong refuses the number (ERANGE): the line is ignored
    last = (start + count - 1) % ULONG_END
    if last < start or start >= subid.ID_SPACE_END:
        return None
    return start, min(last, subid.ID_SPACE_END - 1)


def _honoured_elsewhere(raw: bytes, start: int, count: int, kind: str,
                        lenient_readers: "Sequence[str]") -> str | None:
    """Why an ignored line is an error: a privileged reader other than nsgate grants ids with
    it. None if no such reader, or if it grants nothing there either."""
    granted = lenient_grant(start, count)
    if not lenient_readers or granted is None:
        return None
    first, last = granted
    root = ", host root included" if first == 0 else ""
    why = "count 0" if count == 0 else "it goes past the last id 4294967295"
    readers = " and ".join(lenient_readers)
    verb = "honours" if len(lenient_readers) == 1 else "honour"
    owner = text(raw.split(b":", 1)[0])
    return (f"{text(raw)} grants nothing to nsgate ({why}), but {readers} {verb} it as {kind}s "
            f"{first}-{last}{root}, as shadow before 4.20 does: {owner} can map those host "
            f"{kind}s by running it; remove the line or fix its numbers")


def lint(path: str, data: bytes, kind: str, accounts: Accounts,
         lenient_readers: "Sequence[str]" = ()) -> list[Finding]:
    """The findings of one subid file. `lenient_readers`: the privileged programs other than
    nsgate that read it (shadow's newuidmap or newgidmap, install_lint.lenient_reader)."""
    findings = []
    lines = []
    example = "alice:100000:65536"
    for lineno, raw in numbered_lines(data):
        if is_blank_or_comment(raw):
            continue
        parsed = subid.parse_line(raw, lineno)
        if isinstance(parsed, subid.IgnoredLine):
            numbers = _ignored_numbers(raw)
            if numbers is not None:
                honoured = _honoured_elsewhere(raw, *numbers, kind, lenient_readers)
                if honoured is not None:
                    findings.append(Finding(path, lineno, "shadow-grants", honoured))
                else:
                    findings.append(Finding(path, lineno, "grants-nothing",
                                            f"{_grants_nothing_reason(*numbers)}: remove the "
                                            "line or fix its numbers"))
            else:
                findings.append(Finding(
                    path, lineno, "syntax",
                    f"'{text(raw[:80])}' does not parse ({parsed.reason}), so it grants "
                    f"nothing: write OWNER:START:COUNT in plain decimal (e.g. {example}) or "
                    "remove the line"))
            continue
        lines.append(parsed)
        if accounts.owner_uid(parsed.owner) is None:
            owner = text(parsed.owner)
            findings.append(Finding(
                path, lineno, "grants-nothing",
                f"no user '{owner}' in the passwd database, so this line grants nothing: "
                f"create the user, write its numeric uid instead, or remove the line"))
    findings += _overlaps(path, lines, accounts)
    findings += _real_ids(path, lines, kind, accounts)
    return sorted(findings, key=lambda f: (f.line or 0, f.code))


def _shown(line: subid.SubidLine) -> str:
    return f"{text(line.owner)}:{line.start}:{line.count}"


def _overlaps(path: str, lines: list[subid.SubidLine], accounts: Accounts) -> list[Finding]:
    findings = []
    for line, other in overlapping_pairs(lines, accounts):
        findings.append(Finding(
            path, line.lineno, "overlap",
            f"{_shown(line)} overlaps {_shown(other)} (line {other.lineno}) of another owner: "
            "users sharing subordinate ids can reach each other's containers and files; give "
            f"each owner a range of its own (nsgate subid remove {text(line.owner)} "
            f"{line.start} {line.count}, then nsgate subid allocate {text(line.owner)})"))
    return findings


def overlapping_pairs(lines: list[subid.SubidLine], accounts: Accounts
                      ) -> list[tuple[subid.SubidLine, subid.SubidLine]]:
    """(later line, earlier line) for each pair of different owners' overlapping ranges."""
    pairs = []
    active: list[subid.SubidLine] = []
    for line in sorted(lines, key=lambda x: (x.start, x.lineno)):
        active = [a for a in active if a.end > line.start]
        key = accounts.owner_key(line.owner)
        for other in active:
            if accounts.owner_key(other.owner) != key:
                later, earlier = (line, other) if line.lineno > other.lineno else (other, line)
                pairs.append((later, earlier))
        active.append(line)
    return pairs


def real_ids_in(line: subid.SubidLine, kind: str, accounts: Accounts) -> list[str]:
    """The real ids a range swallows, described: those NSS knows and the owner's own."""
    found = [f"{kind} {i} ({text(name)})"
             for i, name in accounts.known_ids_in(kind, line.start, line.end)]
    own = accounts.owner_own_id(line.owner, kind)
    if own is not None and line.start <= own < line.end:
        mine = f"{kind} {own} (the owner's own)"
        found = [mine] + [f for f in found if not f.startswith(f"{kind} {own} ")]
    return found


def _real_ids(path: str, lines: list[subid.SubidLine], kind: str,
              accounts: Accounts) -> list[Finding]:
    findings = []
    for line in lines:
        found = real_ids_in(line, kind, accounts)
        if found:
            more = f" and {len(found) - 3} more" if len(found) > 3 else ""
            findings.append(Finding(
                path, line.lineno, "contains-real-id",
                f"{_shown(line)} contains {', '.join(found[:3])}{more}: inside a user "
                f"namespace its owner could act as that {'user' if kind == 'uid' else 'group'} "
                f"on the host; move the range above the ids in use (SUB_{kind.upper()}_MIN "
                f"in /etc/login.defs, default 100000)"))
    return findings
