"""C13/C12/C2: very long, very many and malformed arguments.

The valid request is mangled: a 100 KB field, 100 KB in every field, 4000 arguments, more than
the launcher takes, a megabyte of environment; non-UTF-8 bytes, escape sequences, overlong
UTF-8 and non-ASCII digits in the fields that decide something, and in the fields lxc-user-nic
ignores. Every parse is bounded (quick, and the message never echoes the 100 KB back), a mangled
deciding field is refused with nothing done, and what is echoed is escaped, printable UTF-8.
"""

from __future__ import annotations

import pytest

from tests.attacks.conftest import Request, assert_clear_error, attack, user_env, verify
from tests.support import transport

pytestmark = [pytest.mark.attack("C13 long and non-UTF-8 arguments"),
              pytest.mark.usefixtures("transport")]

BIG = 100_000


def _field(request: Request) -> int:
    """The index (in args) of the field that decides the most: the pid, the user name, the
    bridge."""
    return {"newuidmap": 0, "newgidmap": 0, "getsubids": 0, "lxc-user-nic": 5}[request.prog]


def _number(request: Request) -> int:
    """A numeric field: the count, the user (as a uid), the pid."""
    return {"newuidmap": 3, "newgidmap": 3, "getsubids": 0, "lxc-user-nic": 3}[request.prog]


def _replace(args: list, index: int, value: bytes) -> list:
    return [value if i == index else arg for i, arg in enumerate(args)]


# variant -> (mangle, expected): "refused", "done", or "any" (either is a correct answer)
VARIANTS = {
    "100KB extra argument": (lambda r: [*r.args, "A" * BIG], "any"),
    "100KB deciding field": (lambda r: _replace(r.args, _field(r), b"1" * BIG), "refused"),
    "100KB every field": (lambda r: [b"9" * BIG for _ in r.args], "refused"),
    "4000 arguments": (lambda r: [*r.args, *["1"] * (4000 - len(r.args))], "any"),
    "1333 triples": (lambda r: [*r.args[:1], *["1"] * 3999], "any"),
    "4100 arguments": (lambda r: [*r.args, *["1"] * (4100 - len(r.args))], "refused"),
    "100000 arguments": (lambda r: [*r.args, *["1"] * BIG], "refused"),
    "non-UTF-8 deciding field": (lambda r: _replace(r.args, _field(r), b"\xff\xfe"), "refused"),
    "non-UTF-8 number": (lambda r: _replace(r.args, _number(r), b"1\xff0"), "refused"),
    "escape sequences": (lambda r: _replace(r.args, _field(r), b"\x1b[31m\x1b]0;x\x07\r\n\x7f"),
                         "refused"),
    "overlong UTF-8 and surrogates": (
        lambda r: _replace(r.args, _field(r), b"\xc0\xaf\xed\xa0\x80\xf8\x88\x80\x80\x80"),
        "refused"),
    "all high bytes": (lambda r: _replace(r.args, _field(r), bytes(range(0x80, 0x100))),
                       "refused"),
    "non-ASCII digits": (lambda r: _replace(r.args, _number(r),
                                            "٢٣٠٠١".encode()), "refused"),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_mangled_arguments(helper, scenario, variant):
    request = scenario.request()
    mangle, expected = VARIANTS[variant]
    args = mangle(request)
    result = attack([request.argv[0], *args])
    state = verify(request, result)
    assert result.cpu < 5, f"{result.cpu:.1f} s of CPU"  # not the clock: a loaded CI stretches that
    if expected != "any":
        assert state == ("done" if expected == "done" else "untouched"), result
    if result.err:
        assert b"A" * 1000 not in result.err and b"1" * 1000 not in result.err, \
            "the long argument is echoed back"


@pytest.mark.helpers("lxc-user-nic")
@pytest.mark.parametrize("value", [b"\xff\xfe", b"\x1b[2J\x1b]0;x\x07", b"x" * BIG])
def test_ignored_fields_take_any_bytes(helper, scenario, value):
    """lxcpath and name are ignored, as in the reference: odd bytes there change nothing."""
    request = scenario.request()
    args = [request.args[0], value, value, *request.args[3:]]
    result = attack([request.argv[0], *args])
    if transport() == "service" and len(value) == BIG:
        # 200 kB of arguments fit no packet (nsgate-protocol(7)): the launcher goes in-process,
        # where no_new_privs leaves it no privilege; refused before anything, as it says
        assert request.outcome() == "untouched" and (result.rc, result.out) == (1, b""), result
        assert_clear_error(helper, result.err or b"")
        assert b"cannot get CAP_NET_ADMIN: no_new_privs is set" in (result.err or b"")
        return
    assert verify(request, result) == "done", result


def test_megabyte_of_environment(helper, scenario):
    """1 MiB of environment in 1000 variables next to a valid request: ignored, done."""
    request = scenario.request()
    env = {f"NSGT_BLOAT_{i}": "B" * 1000 for i in range(1000)}
    result = attack([*user_env(env), *request.argv])
    assert verify(request, result) == "done", result
