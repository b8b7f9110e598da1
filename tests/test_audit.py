"""Every decision reaches syslog (authpriv) with caller-supplied text escaped (security C2).

/dev/log is made to exist only in the test's mount namespace: an overlay over /dev whose upper
layer holds the test's own datagram socket. The host's /dev is not touched.
"""

from __future__ import annotations

import socket

import pytest

from tests.support import ALICE, helper, private_dev_log, run_as

pytestmark = pytest.mark.usefixtures("transport")

LOG_AUTHPRIV = 10 << 3
LOG_WARNING, LOG_NOTICE = 4, 5


@pytest.fixture
def syslog():
    with private_dev_log() as sock:
        sock.settimeout(5)
        yield sock


def _messages(sock: socket.socket) -> list[bytes]:
    found = []
    sock.settimeout(0.5)
    try:
        while True:
            found.append(sock.recv(65536))
    except TimeoutError:
        return found


def test_allowed_and_refused_decisions_are_logged(syslog, target):
    assert run_as(ALICE, [helper("newuidmap"), str(target.pid), "0", "200000", "10"]) \
        .returncode == 0
    assert run_as(ALICE, [helper("newuidmap"), str(target.pid), "0", "400000", "10"]) \
        .returncode == 1
    allowed, refused = _messages(syslog)
    assert allowed.startswith(b"<%d>" % (LOG_AUTHPRIV | LOG_NOTICE))
    assert b"newuidmap[" in allowed
    assert (b"allowed: caller uid 23001 gid 23001, newuidmap %d 0 200000 10: target %d owned by "
            b"nsgt-alice (23001)" % (target.pid, target.pid)) in allowed
    assert refused.startswith(b"<%d>" % (LOG_AUTHPRIV | LOG_WARNING))
    assert b"refused: caller uid 23001" in refused
    assert b"uid_map already written" in refused


def test_caller_text_is_escaped_in_the_log(syslog, target):
    result = run_as(ALICE, [helper("newuidmap"), "\x1b[31m\nevil", "0", "200000", "10"])
    assert result.returncode == 1
    (record,) = _messages(syslog)
    assert b"\x1b" not in record and b"\n" not in record
    assert b"\\x1b[31m\\nevil" in record
    assert b"\x1b" not in result.stderr
