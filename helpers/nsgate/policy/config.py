"""Small system configuration files nsgate honours: /etc/login.defs and /etc/nsswitch.conf."""

NSS_MODULE_NAME_MAX = 50
_NSS_NAME_CHARS = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


def login_defs_value(data: bytes, key: bytes) -> bytes | None:
    """The value of `key` in login.defs text (shadow's getdef: `NAME value`, `#` comments; a
    later definition overrides an earlier one), a leading `"` quoting it (shadow before
    855d15a, 2026; shadow HEAD keeps the quotes: `login_defs_raw_value`)."""
    value = login_defs_raw_value(data, key)
    if value is not None and value.startswith(b'"'):
        value = value[1:].split(b'"', 1)[0]
    return value


def login_defs_raw_value(data: bytes, key: bytes) -> bytes | None:
    """The value of `key` as shadow HEAD reads it: everything after the name, quotes kept."""
    if not key or b"\n" in key or key.strip() != key:
        return None  # not a name login.defs can hold (and an empty one would match everywhere)
    found = None
    pos = data.find(key)
    while pos != -1:  # only the lines that mention the key are split (login.defs is long)
        line_start = data.rfind(b"\n", 0, pos) + 1
        line_end = data.find(b"\n", pos)
        line = data[line_start:line_end if line_end != -1 else len(data)]
        fields = line.split(None, 1)
        if len(fields) == 2 and fields[0] == key:
            found = fields[1].strip()
        pos = data.find(key, line_end) if line_end != -1 else -1
    return found


def login_defs_flag(data: bytes, key: bytes) -> bool:
    value = login_defs_value(data, key)
    return value is not None and value.lower() == b"yes"


class InvalidSubidSource(ValueError):
    """A `subid:` source name nsgate will not turn into a library name."""


FILES = b"files"


def subid_line(nsswitch: bytes) -> tuple[int, list[bytes]] | None:
    """(line number, tokens) of the `subid:` line that counts, or None if there is none.

    As shadow's lib/nss.c picks it: the first line with a case-insensitive `subid:` at column 0
    and a value; tokens are separated by spaces and tabs.
    """
    for lineno, line in enumerate(nsswitch.split(b"\n"), 1):
        if line.startswith(b"#") or line[:6].lower() != b"subid:":
            continue
        tokens = [t for t in line[6:].replace(b"\t", b" ").split(b" ") if t]  # as shadow
        if tokens:
            return lineno, tokens
    return None


def is_library_name(token: bytes) -> bool:
    """Whether `libsubid_<token>.so` is a plain library name (no path, no NSS `[...]` action)."""
    return 0 < len(token) <= NSS_MODULE_NAME_MAX and _NSS_NAME_CHARS.issuperset(token)


def subid_sources(nsswitch: bytes) -> list[bytes]:
    """Every source of the `subid:` line, in order: `files` for /etc/subuid and /etc/subgid,
    any other token the NSS module libsubid_<token>.so. No `subid:` line means the files.

    shadow reads the first token only (shadow#1562); nsgate asks each in turn. A token that
    cannot be a library name is an error for the whole line, never the files.
    """
    found = subid_line(nsswitch)
    if found is None:
        return [FILES]
    for token in found[1]:
        if token != FILES and not is_library_name(token):
            raise InvalidSubidSource(repr(token[:64])[1:])
    return found[1]
