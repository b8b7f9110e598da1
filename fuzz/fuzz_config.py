#!/usr/bin/env python3
"""/etc/login.defs and /etc/nsswitch.conf: config.login_defs_value, login_defs_flag and
subid_sources.

Input: `header SEP text`; the text is read both as login.defs and as nsswitch.conf. Header byte 0
picks the key: one nsgate reads, or (odd values) the rest of the header kept to `[A-Z_]`. Keys are
nsgate's own constants, never input: an empty key or one with a newline is outside the contract.
Properties: no exception but InvalidSubidSource (a ValueError) from subid_sources; the value of
the last line `KEY value` (quotes removed) as the oracle reads it; the flag is `yes` in any case;
the subid sources are every token of the first `subid:` line with one, in order, [files] for
none, and a refusal exactly when one of them is neither `files` nor a library name.
"""

from __future__ import annotations

import re

from fuzz import common

with common.instrumented(__name__):
    from nsgate.policy import config

KEYS = [b"SUB_UID_COUNT", b"SUB_GID_COUNT", b"GRANT_AUX_GROUP_SUBIDS", b"SUB_UID_MIN",
        b"USERGROUPS_ENAB"]
_NSS_NAME = re.compile(rb"[A-Za-z0-9_-]{1,50}")


def _key(header: bytes) -> bytes:
    if header[:1] and header[0] & 1:
        key = bytes(c for c in header[1:] if c == 0x5F or 0x41 <= c <= 0x5A)
        if key:
            return key
    return KEYS[(header[0] if header else 0) // 2 % len(KEYS)]


def _oracle_value(text: bytes, key: bytes) -> bytes | None:
    found = None
    for line in text.split(b"\n"):
        words = line.split(maxsplit=1)
        if len(words) == 2 and words[0] == key:
            value = words[1].strip()
            found = value[1:].partition(b'"')[0] if value[:1] == b'"' else value
    return found


def _oracle_sources(text: bytes) -> tuple[str, list[bytes] | None]:
    for line in text.split(b"\n"):
        if line[:1] == b"#" or line[:6].lower() != b"subid:":
            continue
        tokens = re.split(rb"[ \t]+", line[6:].strip(b" \t"))
        if tokens == [b""]:
            continue
        if all(token == b"files" or _NSS_NAME.fullmatch(token) for token in tokens):
            return "sources", tokens
        return "refused", None
    return "sources", [b"files"]


def check(data: bytes) -> None:
    header, text = common.parts(data, 2)
    key = _key(header)
    value = config.login_defs_value(text, key)
    assert value == _oracle_value(text, key), ("login.defs", key, value)
    assert config.login_defs_flag(text, key) == (value is not None and value.lower() == b"yes")
    try:
        got: tuple[str, list[bytes] | None] = ("sources", config.subid_sources(text))
    except config.InvalidSubidSource as err:
        assert isinstance(err, ValueError) and str(err)
        got = ("refused", None)
    assert got == _oracle_sources(text), ("nsswitch", got)


if __name__ == "__main__":
    common.fuzz_main(check)
