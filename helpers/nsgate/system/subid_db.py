"""Gathering what a user holds in the subordinate-id database: the files, or an NSS `subid:`
module (newuidmap.md §6). Reads and looks up; the parsing is policy.subid's, the deciding is
policy.authorize's.
"""

import posix
import pwd

from nsgate.errors import Refusal
from nsgate.policy import subid
from nsgate.policy.config import InvalidSubidSource, login_defs_value, subid_source
from nsgate.policy.numbers import UINT32_MAX, parse_decimal
from nsgate.system import files

PATHS = {"uid": "/etc/subuid", "gid": "/etc/subgid"}
COUNT_KEYS = {"uid": b"SUB_UID_COUNT", "gid": b"SUB_GID_COUNT"}
NSS_ID_TYPES = {"uid": 1, "gid": 2}  # libsubid's enum subid_type
NSS_SUCCESS = 0
NSS_MAX_RANGES = 4096


_owner_uids: dict[bytes, int | None] = {}


def same_user(owner: bytes, uid: int) -> bool:
    """Whether an owner field denotes `uid`: a decimal uid, or a name that resolves to it."""
    _cache = _owner_uids
    if owner not in _cache:
        value = parse_decimal(owner, UINT32_MAX)
        if value is None:
            try:
                value = pwd.getpwnam(owner.decode("utf-8", "surrogateescape")).pw_uid
            except (KeyError, ValueError, UnicodeError):
                value = None
        _cache[owner] = value
    return _cache[owner] == uid


class Holdings:
    """The subordinate ids one user holds, and how to explain them when refusing.

    Found in steps, each only when the previous did not cover a request: the lines of the
    user's name (one fast pass), then those of the numeric uid, then those of other names with
    the same uid (shadow's second pass; slow, and only for lines touching the request). Line
    numbers and ignored lines are gathered only to explain a refusal.
    """

    def __init__(self, kind: str, name: bytes, uid: int) -> None:
        self.kind = kind
        self.name = name
        self.uid = uid
        self.source = PATHS[kind]
        self.lines: list[subid.SubidLine] = []
        self._fd: int | None = None
        self._uid_lines_added = False
        self._plugin = False

    def owns(self, start: int, count: int, thorough: bool = True) -> bool:
        if self._plugin:
            return self._plugin_owns(start, count)
        if not subid.uncovered(self._ranges(), start, count):
            return True
        if not thorough or self._fd is None:
            return False
        if not self._uid_lines_added:
            self._uid_lines_added = True
            self.lines += subid.scan_owners(files.chunks(self._fd), (str(self.uid).encode(),),
                                            numbered=False).lines
            if not subid.uncovered(self._ranges(), start, count):
                return True
        self._add_alias_lines(start, start + count)
        return not subid.uncovered(self._ranges(), start, count)

    def _ranges(self) -> list[tuple[int, int]]:
        return [(line.start, line.count) for line in self.lines]

    def _add_alias_lines(self, start: int, end: int) -> None:
        if self._fd is None:
            return
        known = {self.name, str(self.uid).encode()}
        for line in subid.iter_lines(files.chunks(self._fd)):
            if (isinstance(line, subid.SubidLine) and line.start < end and line.end > start
                    and line.owner not in known and same_user(line.owner, self.uid)
                    and (line.start, line.count) not in self._ranges()):
                self.lines.append(line)

    def _plugin_owns(self, start: int, count: int) -> bool:
        from nsgate.system import kernel

        status, result = kernel.plugin_has_range(self.name, start, count,
                                                 NSS_ID_TYPES[self.kind])
        return status == NSS_SUCCESS and result  # any error counts as not owned

    def explain(self, start: int, count: int) -> list[str]:
        """Why [start, start + count) is not covered: what the user owns, the gaps, and the
        caller's own lines that were ignored (newuidmap.md §11 item 11)."""
        who = f"{self.name.decode('utf-8', 'backslashreplace')} (uid {self.uid})"
        if self._plugin:
            return [f"the {self.source} does not grant {who} host {self.kind}s "
                    f"{start}-{start + count - 1}"]
        scan = subid.OwnerScan()
        if self._fd is not None:
            scan = subid.scan_owners(files.chunks(self._fd), (self.name, str(self.uid).encode()))
        numbered = scan.lines + [line for line in self.lines if line.lineno]  # + aliases
        owned = ", ".join(f"{line.start}-{line.end - 1} (line {line.lineno})"
                          for line in sorted(numbered, key=lambda x: x.start))
        text = [f"{who} owns in {self.source}: {owned}" if owned
                else f"{who} owns no subordinate {self.kind}s in {self.source}"]
        gaps = subid.uncovered([(x.start, x.count) for x in numbered], start, count)
        if owned and gaps:
            text.append("not covered: " + ", ".join(f"{a}-{b - 1}" for a, b in gaps))
        text.extend(f"line {line.lineno} of {self.source} is ignored: {line.reason}"
                    for line in scan.ignored)
        return text

    def close(self) -> None:
        if self._fd is not None:
            posix.close(self._fd)
            self._fd = None


def load_plugin(kind: str, nsswitch: bytes | None) -> str | None:
    """Load the NSS module `subid:` names, if any; its description, or None for the files.
    Fails closed, naming the module, where shadow falls back to the files (§11 item 13)."""
    try:
        module = subid_source(nsswitch or b"")
    except InvalidSubidSource as err:
        raise Refusal(f"invalid subid source {err} in /etc/nsswitch.conf",
                      "nsgate fails closed instead of falling back to the files") from None
    if module is None:
        return None
    from nsgate.system import kernel

    libname = b"libsubid_" + module + b".so"
    error = kernel.plugin_open(libname)
    if error is not None:
        raise Refusal(f"cannot load the subid NSS module {libname.decode()} named by "
                      "/etc/nsswitch.conf", error,
                      f"nsgate fails closed instead of falling back to {PATHS[kind]}: install the "
                      "module, or set 'subid: files' in /etc/nsswitch.conf")
    return f"NSS module {libname.decode()}"


def holdings(kind: str, name: bytes, uid: int, login_defs: bytes,
             nsswitch: bytes | None) -> Holdings:
    """What `name`/`uid` holds: the caller's own lines, found fast; aliases only when needed."""
    result = Holdings(kind, name, uid)
    plugin = load_plugin(kind, nsswitch)
    if plugin is not None:
        result.source, result._plugin = plugin, True
        return result
    result._fd = files.open_trusted(PATHS[kind])
    if result._fd is None:
        if login_defs_value(login_defs, COUNT_KEYS[kind]) == b"0":
            return result  # shadow 4.19: with SUB_*_COUNT 0 a missing file means no ranges
        raise Refusal(f"cannot open {PATHS[kind]}: No such file or directory")
    result.lines = subid.scan_owners(files.chunks(result._fd), (name,), numbered=False).lines
    return result


def list_ranges(kind: str, owner: bytes, owner_id: int | None, nsswitch: bytes | None
                ) -> list[tuple[int, int]]:
    """getsubids: the ranges of the lines keyed by `owner` or by the decimal `owner_id`, that
    the map helpers honour, in file order (policy.subid.listed_ranges)."""
    if load_plugin(kind, nsswitch) is not None:
        from nsgate.system import kernel

        status, ranges = kernel.plugin_list_ranges(owner, NSS_ID_TYPES[kind], NSS_MAX_RANGES)
        return ranges if status == NSS_SUCCESS else []
    fd = files.open_trusted(PATHS[kind])
    if fd is None:
        return []
    try:
        key = None if owner_id is None else str(owner_id).encode()
        return subid.listed_ranges(files.chunks(fd), owner, key)
    finally:
        posix.close(fd)
