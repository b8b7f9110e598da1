"""C4: the caller closes fd 0, 1 or 2 (or all three) before running the helper. The launcher
fills the gaps with /dev/null before anything is opened, so no privileged file (map, setgroups,
the nic db or its lock) can become the helper's stdout or stderr. The valid request still
completes, with exactly the request's effect."""

from __future__ import annotations

import pytest

from tests.attacks.conftest import Result, attack, verify

pytestmark = [pytest.mark.attack("C4 fds 0/1/2 closed"),
              pytest.mark.usefixtures("transport")]

CLOSE = {"stdin": "<&-", "stdout": ">&-", "stderr": "2>&-", "all": "<&- >&- 2>&-"}


@pytest.mark.parametrize("closed", list(CLOSE))
def test_closed_standard_fds(helper, scenario, closed):
    request = scenario.request()
    result = attack(["/bin/sh", "-c", f'exec "$@" {CLOSE[closed]}', "sh", *request.argv])
    seen = Result(result.rc,
                  None if closed in ("stdout", "all") else result.out,
                  None if closed in ("stderr", "all") else result.err)
    assert verify(request, seen) == "done", seen
