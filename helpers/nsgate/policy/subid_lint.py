"""`nsgate check` for /etc/subuid and /etc/subgid: lines that do not parse, lines that grant
nothing, ranges of different owners that overlap, ranges that swallow real ids. Bytes in,
findings out; the parsing is policy.subid's, the very one the helpers use."""

from nsgate.policy import subid
from nsgate.policy.accounts import Accounts
from nsgate.policy.findings import Finding, text
from nsgate.policy.nicdb import split_lines
from nsgate.policy.numbers import is_canonical


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


def _grants_nothing_reason(raw: bytes) -> str | None:
    """Why a well-formed line still grants nothing (count 0, past the id space), else None."""
    fields = raw.split(b":")
    if len(fields) != 3 or not fields[0] or not all(is_canonical(f) for f in fields[1:]):
        return None
    start, count = int(fields[1]), int(fields[2])
    if count == 0:
        return "count 0 grants nothing (shadow before 4.19 let such a line map host root)"
    if start + count > subid.ID_SPACE_END:
        return f"the range {start}-{start + count - 1} goes past the last id 4294967295"
    return None


def lint(path: str, data: bytes, kind: str, accounts: Accounts) -> list[Finding]:
    findings = []
    lines = []
    example = "alice:100000:65536"
    for lineno, raw in numbered_lines(data):
        if is_blank_or_comment(raw):
            continue
        parsed = subid.parse_line(raw, lineno)
        if isinstance(parsed, subid.IgnoredLine):
            reason = _grants_nothing_reason(raw)
            if reason is not None:
                findings.append(Finding(path, lineno, "grants-nothing",
                                        f"{reason}: remove the line or fix its numbers"))
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
