"""Canonical decimal numbers: `0` or `[1-9][0-9]*`, nothing else, never reinterpreted.

The reference parses with strtoul in base 0, so `010` is 8 and `0x10` is 16, and it accepts `+`
and leading white space. nsgate accepts only the one spelling that every reader agrees on.
"""

UINT32_MAX = 4294967295
_DIGITS = frozenset(b"0123456789")


def is_canonical(text: bytes) -> bool:
    """`0` or `[1-9][0-9]*`: no sign, space, leading zero (octal to the reference) or hex."""
    return bool(text) and _DIGITS.issuperset(text) and (text[0] != 0x30 or len(text) == 1)


def parse_decimal(text: bytes, maximum: int) -> int | None:
    """The value of `text` if it is canonical decimal and at most `maximum`, else None."""
    if len(text) > len(str(maximum)) or not is_canonical(text):
        return None
    value = int(text)
    return value if value <= maximum else None
