"""/etc/nsgate/session.conf (nsgate-session.conf(5)): what a login gets from the session hook,
subordinate ids and a delegated cgroup with limits, per user, @group, uid range or anyone.

One setting per line, `WHO KEY VALUE`; a `#` at the start of a field starts a comment. For each
key the most specific matching WHO wins (user, then @group, then range, then `*`), the first line
in file order among equals. A file with any line that does not parse is refused whole: a policy
half understood is not applied. Names are bytes, compared as they are (no decoding).
"""

from nsgate.errors import Refusal
from nsgate.policy import cgroup_limits
from nsgate.policy.config import login_defs_value
from nsgate.policy.nicdb import split_lines
from nsgate.policy.numbers import UINT32_MAX, parse_decimal

PATH = "/etc/nsgate/session.conf"
SWITCHES = ("subids", "cgroup")
KEYS = SWITCHES + cgroup_limits.KEYS
SIZE_LIMIT = 1 << 20  # bytes of the whole file
LINE_LIMIT = 4096  # bytes of one line
UID_MIN_DEFAULT, UID_MAX_DEFAULT = 1000, 60000  # shadow's, when login.defs does not say

# How specific a WHO is: the higher wins.
ANYONE, RANGE, GROUP, USER = 0, 1, 2, 3
_KIND_NAMES = {ANYONE: "*", RANGE: "range", GROUP: "group", USER: "user"}
_CONTROL = frozenset(set(range(0x20)) - {0x09} | {0x7F})
_WHO_SYNTAX = "WHO is a user name, @group, a uid range LOW-HIGH (e.g. 1000-59999) or *"


class Who:
    """The users a line is about."""

    __slots__ = ("high", "kind", "low", "name")

    def __init__(self, kind: int, name: bytes = b"", low: int = 0, high: int = UINT32_MAX
                 ) -> None:
        self.kind = kind
        self.name = name  # the user or group name (USER, GROUP)
        self.low = low  # the uid range (RANGE), inclusive
        self.high = high

    def matches(self, name: bytes, uid: int, groups: list[bytes]) -> bool:
        if self.kind == USER:
            return name == self.name
        if self.kind == GROUP:
            return self.name in groups
        if self.kind == RANGE:
            return self.low <= uid <= self.high
        return True

    @property
    def identity(self) -> tuple[int, bytes, int, int]:
        return self.kind, self.name, self.low, self.high


class Setting:
    """One line that parsed: WHO KEY VALUE at `lineno`."""

    __slots__ = ("key", "lineno", "value", "who")

    def __init__(self, lineno: int, who: Who, key: str, value: str) -> None:
        self.lineno = lineno
        self.who = who
        self.key = key
        self.value = value


class Settings:
    """What the policy gives one user. `limits` are the limits that apply (none when `cgroup`
    is off; those are in `unapplied`); `origin` names, for every key, the line that decided it
    ("line N") or "default"."""

    __slots__ = ("cgroup", "limits", "origin", "subids", "unapplied")

    def __init__(self, subids: bool, cgroup: bool, limits: dict[str, str],
                 origin: dict[str, str], unapplied: dict[str, str]) -> None:
        self.subids = subids
        self.cgroup = cgroup
        self.limits = limits
        self.origin = origin
        self.unapplied = unapplied


class SessionConf:
    def __init__(self, settings: list[Setting]) -> None:
        self.settings = settings  # in file order

    def deciding(self, name: bytes, uid: int, groups: list[bytes]) -> dict[str, Setting]:
        """Per key, the line that decides it for this user (keys no line decides are absent)."""
        best: dict[str, Setting] = {}
        for setting in self.settings:
            current = best.get(setting.key)
            if (current is None or setting.who.kind > current.who.kind) \
                    and setting.who.matches(name, uid, groups):
                best[setting.key] = setting
        return best

    def settings_for(self, name: bytes, uid: int, groups: list[bytes], login_defs: bytes
                     ) -> Settings:
        """The settings of the user `name` (uid `uid`) whose login holds the groups named
        `groups` (initgroups: primary and supplementary). A Refusal if login.defs is needed
        (no line decides subids or cgroup) and its UID_MIN or UID_MAX is not a number."""
        best = self.deciding(name, uid, groups)
        origin = {key: f"line {best[key].lineno}" if key in best else "default" for key in KEYS}
        switches = {}
        for key in SWITCHES:
            if key in best:
                switches[key] = best[key].value == "yes"
            else:
                low, high = login_uid_range(login_defs)
                switches[key] = low <= uid <= high
        limits = {key: best[key].value for key in cgroup_limits.KEYS if key in best}
        applied, unapplied = (limits, {}) if switches["cgroup"] else ({}, limits)
        return Settings(switches["subids"], switches["cgroup"], applied, origin, unapplied)


def login_uid_range(login_defs: bytes) -> tuple[int, int]:
    """UID_MIN..UID_MAX from login.defs (1000..60000 where unset): the users the default covers."""
    values = []
    for key, default in ((b"UID_MIN", UID_MIN_DEFAULT), (b"UID_MAX", UID_MAX_DEFAULT)):
        raw = login_defs_value(login_defs, key)
        if raw is None:
            values.append(default)
            continue
        value = parse_decimal(raw, UINT32_MAX)
        if value is None:
            raise Refusal(f"{key.decode()} in /etc/login.defs is "
                          f"'{raw.decode('utf-8', 'backslashreplace')}', not a decimal number",
                          f"fix /etc/login.defs, or set subids and cgroup for everyone in {PATH}")
        values.append(value)
    return values[0], values[1]


# --- reading the file ------------------------------------------------------------------------

class Problem:
    """A line (or, with lineno None, the file) that does not parse: the cause, then the fix."""

    __slots__ = ("cause", "fix", "lineno")

    def __init__(self, lineno: int | None, cause: str, fix: str) -> None:
        self.lineno = lineno
        self.cause = cause
        self.fix = fix


def parse(data: bytes) -> SessionConf:
    """The policy in `data`; a Refusal naming the first line that does not parse ("line N: ...",
    then the fix) if any does."""
    settings, problems = read(data)
    if problems:
        first = problems[0]
        where = "" if first.lineno is None else f"line {first.lineno}: "
        raise Refusal(f"{where}{first.cause}", first.fix)
    return SessionConf(settings)


def read(data: bytes) -> tuple[list[Setting], list[Problem]]:
    """Every line that parses and every one that does not, in file order."""
    if len(data) > SIZE_LIMIT:
        return [], [Problem(None, f"the file is larger than {SIZE_LIMIT} bytes",
                            "a policy needs a few lines per group or range: shorten it")]
    settings, problems = [], []
    for lineno, raw in enumerate(split_lines(data), 1):
        parsed = _parse_line(lineno, raw)
        if isinstance(parsed, Problem):
            problems.append(parsed)
        elif parsed is not None:
            settings.append(parsed)
    return settings, problems


def _shown(raw: bytes) -> str:
    from nsgate.policy.findings import text

    return text(raw[:80]) + ("..." if len(raw) > 80 else "")


def _parse_line(lineno: int, raw: bytes) -> "Setting | Problem | None":
    if len(raw) > LINE_LIMIT:
        return Problem(lineno, f"the line is longer than {LINE_LIMIT} bytes",
                       "write one short WHO KEY VALUE setting per line")
    if not _CONTROL.isdisjoint(raw):
        return Problem(lineno, "the line holds a control character (a carriage return, a NUL, "
                       "an escape...)", "save the file with plain newlines and printable text")
    fields = raw.replace(b"\t", b" ").split()
    for position, field in enumerate(fields):
        if field.startswith(b"#"):
            del fields[position:]
            break
    if not fields:
        return None
    if len(fields) < 3:
        return Problem(lineno, f"'{_shown(raw)}' is not WHO KEY VALUE",
                       f"{_WHO_SYNTAX}; e.g. '@users memory.max 4G'")
    who = _parse_who(fields[0])
    if isinstance(who, str):
        return Problem(lineno, who, _WHO_SYNTAX)
    key = fields[1].decode("utf-8", "backslashreplace")
    if key not in KEYS:
        return Problem(lineno, f"unknown key '{_shown(fields[1])}'",
                       f"KEY is one of {', '.join(KEYS)}")
    value_bytes = b" ".join(fields[2:])
    value = value_bytes.decode("utf-8", "backslashreplace")
    if key in SWITCHES:
        if value not in ("yes", "no"):
            return Problem(lineno, f"{key} is '{_shown(value_bytes)}', not yes or no",
                           f"write '{_shown(fields[0])} {key} yes' or '... {key} no'")
    else:
        why = cgroup_limits.check_value(key, value)
        if why is not None:
            return Problem(lineno, f"{key} '{_shown(value_bytes)}': {why}",
                           "write the value as the cgroup v2 file takes it (see "
                           "nsgate-session.conf(5))")
    return Setting(lineno, who, key, value)


def _parse_who(field: bytes) -> "Who | str":
    if field == b"*":
        return Who(ANYONE)
    if field.startswith(b"@"):
        if len(field) == 1:
            return "'@' names no group"
        if b"*" in field:
            return f"'{_shown(field)}': wildcards are not supported in a group name"
        return Who(GROUP, name=field[1:])
    if field[:1].isdigit() and not field.strip(b"0123456789-"):
        return _parse_range(field)
    if b"*" in field:
        return f"'{_shown(field)}': wildcards are not supported (only * alone, for anyone)"
    if field.startswith(b"!"):
        return f"'{_shown(field)}': negation is not supported"
    if field.startswith(b"-"):
        return f"'{_shown(field)}' is no user name (a name never starts with '-')"
    return Who(USER, name=field)


def _parse_range(field: bytes) -> "Who | str":
    shown = _shown(field)
    if b"-" not in field:
        return (f"'{shown}' is a number, not a WHO: write {shown}-{shown} for the one uid, or "
                "the user name")
    low_text, _, high_text = field.partition(b"-")
    low, high = parse_decimal(low_text, UINT32_MAX), parse_decimal(high_text, UINT32_MAX)
    if low is None or high is None:
        return (f"'{shown}' is not a uid range LOW-HIGH of two decimal numbers up to "
                f"{UINT32_MAX} (no sign, no leading zero)")
    if low > high:
        return f"the range '{shown}' is empty: its low end is above its high end"
    return Who(RANGE, low=low, high=high)


def who_text(who: Who) -> str:
    """A WHO as the file writes it (for messages; names escaped)."""
    if who.kind == ANYONE:
        return "*"
    if who.kind == RANGE:
        return f"{who.low}-{who.high}"
    from nsgate.policy.findings import text

    return ("@" if who.kind == GROUP else "") + text(who.name)


def kind_name(who: Who) -> str:
    return _KIND_NAMES[who.kind]


# --- nsgate check ----------------------------------------------------------------------------

TYPE_CHECKING = False
if TYPE_CHECKING:
    from nsgate.policy.accounts import Accounts
    from nsgate.policy.findings import Finding


def lint(path: str, data: bytes, accounts: "Accounts", login_defs: bytes = b""
         ) -> "list[Finding]":
    """`nsgate check` of the file (policy.session_conf_lint)."""
    from nsgate.policy import session_conf_lint

    return session_conf_lint.lint(path, data, accounts, login_defs)
