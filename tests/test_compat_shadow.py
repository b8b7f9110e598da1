"""Side by side with Debian's uidmap (shadow 4.13), the oracle: on every case the spec calls
compatible, nsgate and the reference give the same exit status and leave the kernel in the same
state (maps, setgroups). Deliberate differences (newuidmap.md §11) are asserted as differences.
nsgate runs through both transports (in-process, and nsgated serving a no_new_privs caller); the
reference always setuid.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field

import pytest

from tests.support import ALICE, AUX_GID, BOB, Target, User, helper, run_as, write_etc

pytestmark = pytest.mark.usefixtures("transport")

DEFAULT = "nsgt-alice:200000:65536\nnsgt-bob:300000:65536\n"


@dataclass
class Case:
    tool: str
    args: list[str]  # after the pid; "{uid}"/"{gid}" are the caller's
    subuid: str = DEFAULT
    subgid: str = DEFAULT
    owner: User = ALICE  # whose process the target is
    caller: User = ALICE
    caller_gid: int | None = None
    login_defs_extra: str = ""
    prepare: list[str] = field(default_factory=list)  # shell run as root with $P = target pid


CASES = {
    "self map and range": Case("newuidmap", ["0", "{uid}", "1", "1", "200000", "65536"]),
    "pure self map": Case("newuidmap", ["0", "{uid}", "1"], subuid=""),
    "several triples": Case("newuidmap", ["0", "200000", "10", "10", "200100", "5",
                                          "100", "{uid}", "1"]),
    "not owned": Case("newuidmap", ["0", "400000", "10"]),
    "another user's range": Case("newuidmap", ["0", "300000", "10"]),
    "partly owned": Case("newuidmap", ["0", "260000", "10000"]),
    "all or nothing": Case("newuidmap", ["0", "200000", "10", "10", "400000", "10"]),
    "adjacent entries chain": Case("newuidmap", ["0", "200000", "131072"],
                                   subuid="nsgt-alice:200000:65536\nnsgt-alice:265536:65536\n"),
    "numeric owner": Case("newuidmap", ["0", "400000", "10"], subuid="23001:400000:10\n"),
    "alias owner": Case("newuidmap", ["0", "400000", "10"], subuid="nsgt-alias:400000:10\n"),
    "prefix-named owner": Case("newuidmap", ["0", "400000", "10"],
                               subuid="nsgt-alicex:400000:10\nxnsgt-alice:400000:10\n"),
    "no final newline": Case("newuidmap", ["0", "200000", "10"],
                             subuid="nsgt-bob:1:2\nnsgt-alice:200000:65536"),
    "trailing space ignored": Case("newuidmap", ["0", "200000", "10"],
                                   subuid="nsgt-alice:200000:65536 \n"),
    "other user's target": Case("newuidmap", ["0", "200000", "10"], owner=BOB),
    "overflow": Case("newuidmap", ["4294967294", "200000", "2"]),
    "host uid overflow": Case("newuidmap", ["0", "4294967295", "1"]),
    "overlap": Case("newuidmap", ["0", "200000", "10", "5", "200005", "10"]),
    "own uid inside range": Case("newuidmap", ["0", "{uid}", "1", "1", "23000", "65536"],
                                 subuid="nsgt-alice:23000:65536\n"),
    "arity": Case("newuidmap", ["0", "200000"]),
    "map already written": Case("newuidmap", ["0", "200000", "10"],
                                prepare=["echo '0 23001 1' > /proc/$P/uid_map"]),
    "gid self map denies setgroups": Case("newgidmap", ["0", "{gid}", "1"]),
    "gid range keeps setgroups": Case("newgidmap", ["0", "{gid}", "1", "1", "200000", "10"]),
    "gid setgroups already deny": Case("newgidmap", ["0", "{gid}", "1"],
                                       prepare=["echo deny > /proc/$P/setgroups"]),
    "gid not owned": Case("newgidmap", ["0", "400000", "10"]),
    "gid map written, setgroups allow": Case("newgidmap", ["0", "{gid}", "1"],
                                             prepare=["echo '0 23001 1' > /proc/$P/gid_map"]),
    "aux gid refused by default": Case("newgidmap", ["0", "{gid}", "1"], caller_gid=AUX_GID),
    "aux gid with GRANT_AUX_GROUP_SUBIDS": Case("newgidmap", ["0", "{gid}", "1"],
                                                caller_gid=AUX_GID,
                                                login_defs_extra="GRANT_AUX_GROUP_SUBIDS yes"),
}


def _run(case: Case, impl: str) -> tuple[int, bytes, list, list, str]:
    write_etc("subuid", case.subuid)
    write_etc("subgid", case.subgid)
    if case.login_defs_extra:
        with open("/etc/login.defs", "a") as defs:
            defs.write("\n" + case.login_defs_extra + "\n")
    target = Target.start(case.owner, gid=case.caller_gid)
    try:
        for command in case.prepare:
            subprocess.run(["sh", "-c", command], env={"P": str(target.pid)}, check=True)
        gid = case.caller.gid if case.caller_gid is None else case.caller_gid
        args = [a.format(uid=case.caller.uid, gid=gid) for a in case.args]
        result = run_as(case.caller, [helper(case.tool, impl), str(target.pid), *args],
                        gid=case.caller_gid)
        first = result.stderr.split(b"\n", 1)[0]
        return (result.returncode, first, target.uid_map(), target.gid_map(),
                target.setgroups())
    finally:
        target.stop()


@pytest.mark.parametrize("name", CASES)
def test_same_outcome_as_the_reference(name):
    case = CASES[name]
    ours = _run(case, "nsgate")
    theirs = _run(case, "shadow")
    assert ours[0] == theirs[0], (ours, theirs)
    assert ours[2:] == theirs[2:], (ours, theirs)
    assert ours[0] in (0, 1)
    if ours[0] == 0:
        assert ours[1] == theirs[1] == b""


NOT_ALLOWED = ["not owned", "another user's range", "partly owned", "all or nothing",
               "prefix-named owner", "trailing space ignored", "gid not owned"]


@pytest.mark.parametrize("name", NOT_ALLOWED)
def test_not_allowed_first_line_is_the_references(name):
    """Clients log this line and users search for it: byte for byte the same."""
    ours, theirs = _run(CASES[name], "nsgate"), _run(CASES[name], "shadow")
    assert ours[1] == theirs[1]
    assert ours[1].endswith(b" not allowed")


def test_ownership_first_line_keeps_the_references_words():
    ours, theirs = (_run(CASES["other user's target"], impl) for impl in ("nsgate", "shadow"))
    assert ours[1].startswith(b"newuidmap: Target process is owned by a different user")
    assert theirs[1].startswith(b"newuidmap: Target process") and b"is owned by a different " \
        b"user" in theirs[1]


# Deliberate differences (newuidmap.md §11): the reference's behaviour is the vulnerability.

def test_count_zero_entry_grants_host_root_in_the_reference_but_not_in_nsgate():
    case = Case("newuidmap", ["0", "0", "1"], subuid="nsgt-alice:0:0\n")
    ours, theirs = _run(case, "nsgate"), _run(case, "shadow")
    assert theirs[0] == 0 and theirs[2] == [(0, 0, 1)]  # shadow 4.13 (A3)
    assert ours[0] == 1 and ours[2] == []


def test_octal_entry_is_reinterpreted_by_the_reference_but_ignored_by_nsgate():
    case = Case("newuidmap", ["0", "8", "1"], subuid="nsgt-alice:010:1\n")
    ours, theirs = _run(case, "nsgate"), _run(case, "shadow")
    assert theirs[0] == 0 and theirs[2] == [(0, 8, 1)]  # `010` read as 8
    assert ours[0] == 1 and ours[2] == []


def test_hex_argument_is_reinterpreted_by_the_reference_but_refused_by_nsgate():
    case = Case("newuidmap", ["0", "0x30d40", "10"])  # 200000
    ours, theirs = _run(case, "nsgate"), _run(case, "shadow")
    assert theirs[0] == 0 and theirs[2] == [(0, 200000, 10)]
    assert ours[0] == 1 and ours[2] == []


def test_zero_triples_writes_deny_in_the_reference_but_touches_nothing_in_nsgate():
    case = Case("newgidmap", [])
    ours, theirs = _run(case, "nsgate"), _run(case, "shadow")
    assert theirs[0] == 1 and theirs[4] == "deny"  # 4.13: EINVAL after writing deny
    assert ours[0] == 1 and ours[4] == "allow"
