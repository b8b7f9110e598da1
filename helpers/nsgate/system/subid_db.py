"""Gathering what a user holds in the subordinate-id database: the sources the `subid:` line of
/etc/nsswitch.conf names, asked in its order (newuidmap.md §6). Reads and looks up; the parsing is
policy.subid's and policy.config's, the deciding is policy.authorize's.

The order is NSS's: the first source that holds any range for the user answers; a source that
does not know the user (the files: no line; a module: SUBID_STATUS_UNKNOWN_USER or no range)
passes to the next; a source that fails (a module that cannot be loaded or reports an error) is a
refusal, never a fall-through. A source after the one that answers is not touched at all: a
module there is not even loaded, so local users keep working while the directory is down.
"""

import posix
import pwd

from nsgate.errors import Refusal
from nsgate.policy import subid
from nsgate.policy.config import FILES, InvalidSubidSource, login_defs_value, subid_sources
from nsgate.policy.numbers import UINT32_MAX, parse_decimal
from nsgate.system import files

TYPE_CHECKING = False  # typing costs import time on every helper run
if TYPE_CHECKING:
    from nsgate.system.kernel import SubidPlugin

PATHS = {"uid": "/etc/subuid", "gid": "/etc/subgid"}
COUNT_KEYS = {"uid": b"SUB_UID_COUNT", "gid": b"SUB_GID_COUNT"}
NSSWITCH = "/etc/nsswitch.conf"
NSS_ID_TYPES = {"uid": 1, "gid": 2}  # libsubid's enum subid_type
NSS_SUCCESS = 0
NSS_UNKNOWN_USER = 1
NSS_STATUS_NAMES = {2: "SUBID_STATUS_ERROR_CONN", 3: "SUBID_STATUS_ERROR"}
NSS_MAX_RANGES = 4096


_owner_uids: dict[bytes, int | None] = {}
_plugins: "dict[bytes, SubidPlugin]" = {}


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


def library_name(source: bytes) -> str:
    """The library a `subid:` token names (validated by policy.config: ASCII only)."""
    return f"libsubid_{source.decode()}.so"


def describe(kind: str, source: bytes) -> str:
    """How messages name a source: "/etc/subuid", "NSS module libsubid_sss.so"."""
    return PATHS[kind] if source == FILES else f"NSS module {library_name(source)}"


class Holdings:
    """The subordinate ids one user holds in one source, and how to explain them when refusing.

    In the files, found in steps, each only when the previous did not cover a request: the
    lines of the user's name (one fast pass), then those of the numeric uid, then those of other
    names with the same uid (shadow's second pass; slow, and only for lines touching the
    request). Line numbers and ignored lines are gathered only to explain a refusal. From a
    module, what its shadow_subid_has_range says. `passed`: the sources asked before this one
    that hold nothing for the user.
    """

    def __init__(self, kind: str, name: bytes, uid: int | None) -> None:
        self.kind = kind
        self.name = name
        self.uid = uid
        self.source = PATHS[kind]
        self.lines: list[subid.SubidLine] = []
        self.passed: list[str] = []
        self._fd: int | None = None
        self._uid_lines_added = False
        self._plugin: SubidPlugin | None = None
        self._plugin_ranges: list[tuple[int, int]] | None = None

    def owns(self, start: int, count: int, thorough: bool = True) -> bool:
        if self._plugin is not None:
            return self._plugin_owns(self._plugin, start, count)
        if not subid.uncovered(self._ranges(), start, count):
            return True
        if not thorough or self._fd is None:
            return False
        self._add_uid_lines()
        if not subid.uncovered(self._ranges(), start, count):
            return True
        self._add_alias_lines(start, start + count)
        return not subid.uncovered(self._ranges(), start, count)

    def holds_any(self) -> bool:
        """Whether this source holds any range for the user (whether it answers); a Refusal if
        a module fails to say."""
        if self._plugin is not None:
            return bool(self.plugin_ranges())
        if not self.lines and self._fd is not None:
            self._add_uid_lines()
            if not self.lines:
                self._add_alias_lines(0, subid.ID_SPACE_END)
        return bool(self.lines)

    def ranges(self) -> list[tuple[int, int]]:
        """Every (start, count) held here (the files: after holds_any, all the user's lines)."""
        if self._plugin is not None:
            return self.plugin_ranges()
        return sorted(self._ranges())

    def plugin_ranges(self) -> list[tuple[int, int]]:
        if self._plugin_ranges is None:
            assert self._plugin is not None
            self._plugin_ranges = _listed_by_plugin(self.kind, self.source, self._plugin,
                                                    self.name)
        return self._plugin_ranges

    def _ranges(self) -> list[tuple[int, int]]:
        return [(line.start, line.count) for line in self.lines]

    def _add_uid_lines(self) -> None:
        if self._uid_lines_added or self._fd is None or self.uid is None:
            return
        self._uid_lines_added = True
        self.lines += subid.scan_owners(files.chunks(self._fd), (str(self.uid).encode(),),
                                        numbered=False).lines

    def _add_alias_lines(self, start: int, end: int) -> None:
        if self._fd is None or self.uid is None:
            return
        known = {self.name, str(self.uid).encode()}
        for line in subid.iter_lines(files.chunks(self._fd)):
            if (isinstance(line, subid.SubidLine) and line.start < end and line.end > start
                    and line.owner not in known and same_user(line.owner, self.uid)
                    and (line.start, line.count) not in self._ranges()):
                self.lines.append(line)

    def _plugin_owns(self, plugin: "SubidPlugin", start: int, count: int) -> bool:
        status, result = plugin.has_range(self.name, start, count, NSS_ID_TYPES[self.kind])
        return status == NSS_SUCCESS and result  # any error counts as not owned

    def explain(self, start: int, count: int) -> list[str]:
        """Why [start, start + count) is not covered: what the user owns, the gaps, and the
        caller's own lines that were ignored (newuidmap.md §11 item 11)."""
        who = f"{self.name.decode('utf-8', 'backslashreplace')} (uid {self.uid})"
        text = [f"{source} holds no subordinate {self.kind}s for {who}: the next source in "
                f"the subid: line of {NSSWITCH} was asked" for source in self.passed]
        if self._plugin is not None:
            text.append(f"the {self.source} does not grant {who} host {self.kind}s "
                        f"{start}-{start + count - 1}")
            try:
                held = self.plugin_ranges()
            except Refusal:
                return text
            if held:
                text.append(f"it grants {who}: " + ", ".join(f"{s}-{s + c - 1}" for s, c in held))
            return text
        scan = subid.OwnerScan()
        if self._fd is not None:
            keys = (self.name,) if self.uid is None else (self.name, str(self.uid).encode())
            scan = subid.scan_owners(files.chunks(self._fd), keys)
        numbered = scan.lines + [line for line in self.lines if line.lineno]  # + aliases
        owned = ", ".join(f"{line.start}-{line.end - 1} (line {line.lineno})"
                          for line in sorted(numbered, key=lambda x: x.start))
        text.append(f"{who} owns in {self.source}: {owned}" if owned
                    else f"{who} owns no subordinate {self.kind}s in {self.source}")
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


def sources(nsswitch: bytes | None) -> list[bytes]:
    """The `subid:` sources in order, each once; a Refusal for a line nsgate will not read."""
    try:
        order = subid_sources(nsswitch or b"")
    except InvalidSubidSource as err:
        raise Refusal(f"invalid subid source {err} in {NSSWITCH}",
                      "nsgate fails closed instead of falling back to the files") from None
    return list(dict.fromkeys(order))


def load_plugin(kind: str, source: bytes) -> "SubidPlugin":
    """The NSS module `source` names, loaded once per process. Fails closed, naming the module,
    where shadow falls back to the files (§11 item 13)."""
    plugin = _plugins.get(source)
    if plugin is not None:
        return plugin
    from nsgate.system import kernel

    libname = library_name(source)
    loaded = kernel.plugin_open(libname.encode())
    if isinstance(loaded, str):
        raise Refusal(f"cannot load the subid NSS module {libname} named by {NSSWITCH}", loaded,
                      f"nsgate fails closed instead of going on to {_fallback(kind, source)}: "
                      "install the module, or remove it from the subid: line of "
                      f"{NSSWITCH}")
    _plugins[source] = loaded
    return loaded


def _fallback(kind: str, source: bytes) -> str:
    return PATHS[kind] if source != FILES else "another source"


def _listed_by_plugin(kind: str, description: str, plugin: "SubidPlugin",
                      owner: bytes) -> list[tuple[int, int]]:
    """The ranges a module lists for `owner` ([] for a user it does not know); a Refusal if it
    fails (the directory is down, say): never a fall-through to the next source."""
    status, ranges = plugin.list_ranges(owner, NSS_ID_TYPES[kind], NSS_MAX_RANGES)
    if status in (NSS_SUCCESS, NSS_UNKNOWN_USER):
        return ranges if status == NSS_SUCCESS else []
    raise Refusal(f"the subid source {description} failed for "
                  f"{owner.decode('utf-8', 'backslashreplace')}: "
                  f"{NSS_STATUS_NAMES.get(status, f'status {status}')}",
                  "nsgate fails closed instead of asking the next source: bring the service "
                  f"behind the module back, or change the subid: line of {NSSWITCH}")


def _files_holdings(kind: str, name: bytes, uid: int | None, login_defs: bytes | None
                    ) -> Holdings:
    """The user's own lines in the files, found fast; aliases only when needed. A missing file
    is an error unless SUB_*_COUNT is 0 (shadow 4.19) or `login_defs` is None (no range)."""
    result = Holdings(kind, name, uid)
    result._fd = files.open_trusted(PATHS[kind])
    if result._fd is None:
        if login_defs is None or login_defs_value(login_defs, COUNT_KEYS[kind]) == b"0":
            return result
        raise Refusal(f"cannot open {PATHS[kind]}: No such file or directory")
    result.lines = subid.scan_owners(files.chunks(result._fd), (name,), numbered=False).lines
    return result


def source_holdings(kind: str, source: bytes, name: bytes, uid: int | None,
                    login_defs: bytes | None) -> Holdings:
    """What one source holds for the user (a module: loaded, not asked yet)."""
    if source == FILES:
        return _files_holdings(kind, name, uid, login_defs)
    result = Holdings(kind, name, uid)
    result.source = describe(kind, source)
    result._plugin = load_plugin(kind, source)
    return result


def _answering(kind: str, name: bytes, uid: int | None, order: list[bytes],
               login_defs: bytes | None) -> Holdings:
    """The holdings of the first source of `order` that holds any range for the user, or of
    the last one if none does (every earlier one in its `passed`). Nothing after the answering
    source is opened or loaded; the last source is not even asked whether it holds anything."""
    passed: list[str] = []
    for index, source in enumerate(order):
        held = source_holdings(kind, source, name, uid, login_defs)
        held.passed = passed
        try:
            if index == len(order) - 1 or held.holds_any():
                return held
        except BaseException:
            held.close()
            raise
        passed.append(held.source)
        held.close()
    raise AssertionError("no subid source")  # policy.config gives at least one


def holdings(kind: str, name: bytes, uid: int, login_defs: bytes,
             nsswitch: bytes | None) -> Holdings:
    """What `name`/`uid` holds, in the source that answers for the user."""
    order = sources(nsswitch)
    if order == [FILES]:  # the common case: no module, no second pass over the file
        return _files_holdings(kind, name, uid, login_defs)
    return _answering(kind, name, uid, order, login_defs)


def holding_source(kind: str, name: bytes, uid: int, nsswitch: bytes | None) -> str | None:
    """The source that holds any range of `kind` for the user ("/etc/subuid", "NSS module
    libsubid_sss.so"), the first in the order of the `subid:` line; None if none does (a
    missing file holds nothing). A Refusal if a source it had to ask failed."""
    held = _answering(kind, name, uid, sources(nsswitch), None)
    try:
        return held.source if held.holds_any() else None
    finally:
        held.close()


def list_ranges(kind: str, owner: bytes, owner_id: int | None, nsswitch: bytes | None
                ) -> list[tuple[int, int]]:
    """getsubids: from the source that answers for the user (as for the map helpers), the
    ranges it lists; from the files, those of the lines keyed by `owner` or by the decimal
    `owner_id`, that the map helpers honour, in file order (policy.subid.listed_ranges)."""
    order = sources(nsswitch)
    if order == [FILES]:
        held = Holdings(kind, owner, owner_id)
        held._fd = files.open_trusted(PATHS[kind])
    else:
        held = _answering(kind, owner, owner_id if kind == "uid" else _uid_of(owner), order,
                          None)
    try:
        if held._plugin is not None:
            return held.plugin_ranges()
        if held._fd is None:
            return []
        key = None if owner_id is None else str(owner_id).encode()
        return subid.listed_ranges(files.chunks(held._fd), owner, key)
    finally:
        held.close()


def _uid_of(name: bytes) -> int | None:
    try:
        return pwd.getpwnam(name.decode("utf-8", "surrogateescape")).pw_uid
    except (KeyError, ValueError, UnicodeError):
        return None
