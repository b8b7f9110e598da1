#!/usr/bin/env python3
"""The environment block pam_exec(8) hands `nsgate session`: pam_exec_env.parse.

Input: the block as it is (NUL-separated entries, as /proc/self/environ shows it); a user may
shape the PAM environment part of it. Properties: no exception; None exactly when the block does
not end with PAM_TYPE or no suffix before it is a run of pam_exec's items in its order starting
at PAM_SERVICE; otherwise the items are those of the shortest such suffix (the oracle searches
the suffixes from the end, the parser walks back entry by entry), and the type is the last
entry's value.
"""

from __future__ import annotations

from fuzz import common

with common.instrumented(__name__):
    from nsgate.policy import pam_exec_env

ORDER = [b"PAM_SERVICE", b"PAM_USER", b"PAM_TTY", b"PAM_RHOST", b"PAM_RUSER"]


def _oracle(data: bytes) -> tuple[bytes, dict[bytes, bytes]] | None:
    entries = data.split(b"\0")
    if entries and entries[-1] == b"":
        entries = entries[:-1]
    if not entries or not entries[-1].startswith(b"PAM_TYPE="):
        return None
    for start in range(len(entries) - 2, -1, -1):
        run = [entry.partition(b"=") for entry in entries[start:-1]]
        names = [name for name, equals, _ in run if equals]
        if len(names) != len(run) or names[0] != b"PAM_SERVICE":
            continue
        if all(name in ORDER for name in names) and \
                [ORDER.index(n) for n in names] == sorted({ORDER.index(n) for n in names}):
            return entries[-1][len(b"PAM_TYPE="):], {name: value for name, _, value in run}
    return None


def check(data: bytes) -> None:
    call = pam_exec_env.parse(data)
    expected = _oracle(data)
    if expected is None:
        assert call is None, (data, call.type if call else None)
        return
    assert call is not None, data
    assert (call.type, call.items) == expected, (data, call.type, call.items)
    assert call.user == expected[1].get(b"PAM_USER")


if __name__ == "__main__":
    common.fuzz_main(check)
