"""C15: the caller starts the helper where it cannot get its privilege: under no_new_privs
(`setpriv --no-new-privs`, as systemd's NoNewPrivileges= or docker's no-new-privileges do),
with the capability dropped from the bounding set, or from inside a user namespace of its own
(where a setuid-root file gives nothing). The helper says why, naming the cause, before any side
effect, instead of letting an EPERM surface later. getsubids needs no privilege and just works.
Through the service transport the same callers are served: the launcher needs no privilege of
its own (a caller inside a user namespace of its own is refused by the service: its peer is not
in the service's user namespace).
"""

from __future__ import annotations

import pytest

from tests.attacks.conftest import attack, verify
from tests.support import transport

pytestmark = [pytest.mark.attack("C15 no_new_privs / missing privilege"),
              pytest.mark.usefixtures("transport")]

NEEDED = {"newuidmap": "setuid", "newgidmap": "setgid", "lxc-user-nic": "net_admin",
          "getsubids": "all"}


def _expect(helper: str, result, request, cause: bytes) -> None:
    state = verify(request, result)
    if helper == "getsubids" or transport() == "service":
        assert state == "done", result
    else:
        assert state == "untouched", result
        assert cause in (result.err or b""), result.err


def test_no_new_privs(helper, scenario):
    request = scenario.request()
    result = attack(request.argv, extra=("--no-new-privs",))
    _expect(helper, result, request, b"no_new_privs")


@pytest.mark.parametrize("dropped", ["all", "needed"])
def test_bounding_set(helper, scenario, dropped):
    request = scenario.request()
    cap = "all" if dropped == "all" else NEEDED[helper]
    result = attack(request.argv, extra=(f"--bounding-set=-{cap}",))
    _expect(helper, result, request, b"bounding set")


def test_no_new_privs_and_bounding_set(helper, scenario):
    """Both at once: the first cause found is named; nothing is done."""
    request = scenario.request()
    result = attack(request.argv, extra=("--no-new-privs", "--bounding-set=-all"))
    _expect(helper, result, request, b"no_new_privs")


def test_from_inside_a_user_namespace(helper, scenario):
    """In alice's own user namespace the setuid bit of a file owned by the unmapped root gives
    nothing (and her ids there are unmapped): a refusal with the helper's name, or, for
    getsubids, its answer."""
    request = scenario.request()
    result = attack(["unshare", "--user", "--", *request.argv])
    state = verify(request, result)
    if helper != "getsubids":
        assert state == "untouched", result
