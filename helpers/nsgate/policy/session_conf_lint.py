"""`nsgate check` for /etc/nsgate/session.conf: lines that do not parse (the session hook then
refuses the whole file), user and group names NSS does not list, lines that can never decide
anything, limits on users whose cgroup is off. Bytes and the accounts in, findings out; the
parser is policy.session_conf's, the one the hook uses. Near-linear in the file's size (the
file may hold up to 1 MiB of lines)."""

import bisect

from nsgate.errors import Refusal
from nsgate.policy.accounts import Accounts
from nsgate.policy.findings import Finding
from nsgate.policy.install_lint import S_IFLNK, S_IFMT, S_IFREG, Stat
from nsgate.policy.numbers import UINT32_MAX
from nsgate.policy.session_conf import (
    ANYONE,
    GROUP,
    RANGE,
    SWITCHES,
    USER,
    Setting,
    login_uid_range,
    read,
    who_text,
)

HOOK_REFUSES = "until then the session hook refuses the whole file and sets up nothing for anyone"


def lint_file_kind(st: Stat) -> list[Finding]:
    """The policy's path holding something other than a regular file or a symbolic link (the
    trusted-file rule reports links): the hook cannot read it, and refuses it."""
    if st.mode is None or st.mode & S_IFMT in (S_IFREG, S_IFLNK):
        return []
    return [Finding(st.path, None, "unsafe-file",
                    f"{st.path} is not a regular file, so the session hook refuses it and "
                    "sets up nothing for anyone: make it a file (nsgate-session.conf(5)) or "
                    "remove it")]


def lint(path: str, data: bytes, accounts: Accounts, login_defs: bytes = b"") -> list[Finding]:
    """`login_defs` gives the default's uid range (UID_MIN..UID_MAX)."""
    settings, problems = read(data)
    findings = [Finding(path, p.lineno, "syntax", f"{p.cause}; {p.fix} ({HOOK_REFUSES})")
                for p in problems]
    first_of: dict[tuple[tuple[int, bytes, int, int], str], Setting] = {}
    ranges: dict[str, FirstCover] = {}
    named: set[tuple[int, bytes]] = set()
    for setting in settings:
        who, key = setting.who, setting.key
        if who.kind in (USER, GROUP) and (who.kind, who.name) not in named:
            named.add((who.kind, who.name))
            findings += _unknown_who(path, setting, accounts)
        first = first_of.setdefault((who.identity, key), setting)
        if first is not setting:
            findings.append(_repeated(path, setting, first))
        elif who.kind == RANGE and not ranges.setdefault(key, FirstCover()).paint(
                who.low, who.high, setting):
            findings.append(Finding(
                path, setting.lineno, "shadowed-setting",
                f"{key} for {who_text(who)} never applies: earlier range lines set {key} for "
                f"every uid of {who_text(who)} (among ranges the first line wins); move it "
                "above them or remove it"))
    effective = [s for s in settings if first_of[(s.who.identity, s.key)] is s]
    findings += _limits_without_cgroup(path, effective, ranges.get("cgroup", FirstCover()),
                                       accounts, login_defs)
    return sorted(findings, key=lambda f: f.line or 0)


class FirstCover:
    """Range lines painted in file order: which line, the first to cover it, decides each uid.
    `paint` says whether the line covers any uid no earlier line did."""

    def __init__(self) -> None:
        self._starts: list[int] = []  # the union painted so far: disjoint, sorted, merged
        self._ends: list[int] = []
        self._pieces: list[tuple[int, int, Setting]] = []  # who decides which uids
        self._piece_starts: list[int] = []
        self._sorted = True

    def paint(self, low: int, high: int, setting: Setting) -> bool:
        first = bisect.bisect_left(self._ends, low - 1)  # touching intervals merge too
        last, position, fresh = first, low, False
        merged_low, merged_high = low, high
        while last < len(self._starts) and self._starts[last] <= high + 1:
            start, end = self._starts[last], self._ends[last]
            if start > position:
                self._pieces.append((position, start - 1, setting))
                fresh = True
            position = max(position, end + 1)
            merged_low, merged_high = min(merged_low, start), max(merged_high, end)
            last += 1
        if position <= high:
            self._pieces.append((position, high, setting))
            fresh = True
        self._starts[first:last] = [merged_low]
        self._ends[first:last] = [merged_high]
        self._sorted = False
        return fresh

    def decider(self, uid: int) -> Setting | None:
        if not self._sorted:
            self._pieces.sort(key=lambda piece: piece[0])
            self._piece_starts = [piece[0] for piece in self._pieces]
            self._sorted = True
        index = bisect.bisect_right(self._piece_starts, uid) - 1
        if index >= 0 and self._pieces[index][1] >= uid:
            return self._pieces[index][2]
        return None


def _unknown_who(path: str, setting: Setting, accounts: Accounts) -> list[Finding]:
    who = setting.who
    if who.kind == USER and who.name not in accounts.uid_of:
        what = f"no user '{who_text(who)}' in the passwd database"
    elif who.kind == GROUP and who.name not in accounts.gid_of:
        what = f"no group '{who_text(who)[1:]}' in the group database"
    else:
        return []
    return [Finding(path, setting.lineno, "unknown-who",
                    f"{what}, so its lines apply to nobody NSS lists (a directory that does "
                    "not enumerate may still know it at login): correct the name or remove "
                    "its lines")]


def _repeated(path: str, setting: Setting, first: Setting) -> Finding:
    where = f"{who_text(setting.who)} {setting.key}"
    if setting.value == first.value:
        return Finding(path, setting.lineno, "duplicate-setting",
                       f"{where} is already set to the same value at line {first.lineno}: "
                       "remove this line")
    return Finding(path, setting.lineno, "shadowed-setting",
                   f"{where} '{setting.value}' never applies: line {first.lineno} sets it to "
                   f"'{first.value}' and the first line wins; keep the one you mean")


def _limits_without_cgroup(path: str, settings: list[Setting], cgroup_ranges: FirstCover,
                           accounts: Accounts, login_defs: bytes) -> list[Finding]:
    """A limit for a WHO whose cgroup is off (by a `cgroup` line for the same WHO, or, for a
    user NSS lists, by the policy as a whole): the hook makes no cgroup, so it never applies.
    `settings`: the first line of each WHO and KEY."""
    cgroup_of = {s.who.identity: s for s in settings if s.key == "cgroup"}
    groups_of = _groups_by_member(accounts)
    findings = []
    for setting in settings:
        if setting.key in SWITCHES:
            continue
        who = setting.who
        same_who = cgroup_of.get(who.identity)
        if same_who is not None:
            if same_who.value == "yes":
                continue
            why = f"line {same_who.lineno} sets 'cgroup no' for {who_text(who)}"
        elif who.kind == USER and who.name in accounts.uid_of:
            uid = accounts.uid_of[who.name]
            decider = _cgroup_decider(cgroup_of, cgroup_ranges, who.name, uid,
                                      groups_of.get(who.name, []))
            if decider is not None:
                if decider.value == "yes":
                    continue
                why = f"{who_text(who)}'s cgroup is off (line {decider.lineno})"
            else:
                try:
                    low, high = login_uid_range(login_defs)
                except Refusal:
                    continue
                if low <= uid <= high:
                    continue
                why = (f"{who_text(who)}'s cgroup is off (default: uid {uid} is outside "
                       f"UID_MIN..UID_MAX, {low}..{high})")
        else:
            continue
        findings.append(Finding(path, setting.lineno, "limit-without-cgroup",
                                f"{setting.key} for {who_text(who)} never applies: {why}, so "
                                "the session hook makes no cgroup; set 'cgroup yes' for them "
                                "or remove the limit"))
    return findings


def _cgroup_decider(cgroup_of: dict[tuple[int, bytes, int, int], Setting],
                    cgroup_ranges: FirstCover, name: bytes, uid: int, groups: list[bytes]
                    ) -> Setting | None:
    """The line that decides `cgroup` for this user (session_conf.SessionConf.deciding, with
    the lines indexed)."""
    mine = cgroup_of.get((USER, name, 0, UINT32_MAX))
    if mine is not None:
        return mine
    by_group = [cgroup_of[(GROUP, group, 0, UINT32_MAX)] for group in groups
                if (GROUP, group, 0, UINT32_MAX) in cgroup_of]
    if by_group:
        return min(by_group, key=lambda setting: setting.lineno)
    return cgroup_ranges.decider(uid) or cgroup_of.get((ANYONE, b"", 0, UINT32_MAX))


def _groups_by_member(accounts: Accounts) -> dict[bytes, list[bytes]]:
    """The groups a login of each user gets, as far as the group database lists them: the
    primary group and those listing the user as a member."""
    found: dict[bytes, list[bytes]] = {}
    for group, members in accounts.members.items():
        for member in members:
            found.setdefault(member, []).append(group)
    for name, gid in accounts.gid_of_user.items():
        primary = accounts.group_by_gid.get(gid)
        if primary is not None:
            found.setdefault(name, []).append(primary)
    return found
