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


def subid_source(nsswitch: bytes) -> bytes | None:
    """The NSS module named by the first `subid:` line with a value, or None for the files.

    As shadow's lib/nss.c: case-insensitive `subid:` at column 0, first token only, `files`
    means the files. Unlike shadow, a name that cannot be a library name is an error, not files.
    """
    for line in nsswitch.split(b"\n"):
        if line.startswith(b"#") or line[:6].lower() != b"subid:":
            continue
        tokens = [t for t in line[6:].replace(b"\t", b" ").split(b" ") if t]  # as shadow
        if not tokens:
            continue
        name = tokens[0]
        if name == b"files":
            return None
        if len(name) > NSS_MODULE_NAME_MAX or not _NSS_NAME_CHARS.issuperset(name):
            raise InvalidSubidSource(repr(name[:64])[1:])
        return name
    return None
