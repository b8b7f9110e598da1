"""LXC with helpers installed for the service only (make install MODE=service: no setuid bit, no
file capabilities).

liblxc (5.0.2, Debian 12; the same in 6.x, src/lxc/conf.c `lxc_map_ids` and
`idmaptool_on_path_and_privileged`) looks at the first `newuidmap` and `newgidmap` on PATH and
runs them only if each is setuid or carries CAP_SETUID (CAP_SETGID) in its file capabilities'
effective and permitted sets, as libcap's cap_get_file reports them. Otherwise it writes the maps
itself, with the caller's own credentials, which the kernel allows for one line mapping the
caller's own uid (gid, with setgroups denied) and nothing else. `lxc-usernsexec`, an unprivileged
`lxc-start` and every liblxc user-namespace helper go through that one function.

The cases run the real `lxc-usernsexec` as the test user with a service-only copy of nsgate's
helpers first on PATH, and Debian's setuid tools replaced by /usr/bin/false (nothing can fall
through to them). The LXC mark (nsgated(8)): a namespaced file capability whose root is host uid
4294967294; libcap reports it, liblxc then runs the helper, and the kernel grants it nothing in
the host's user namespace."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import ALICE, NSGATE, SANDBOX, run_as
from tests.test_clients import SYSTEM_PATH, reference_tools_disabled

SERVICE_ONLY = SANDBOX / "service-only"
HELPERS = ("newuidmap", "newgidmap", "getsubids", "lxc-user-nic")
MARK_ROOT = "4294967294"
SHOW = ["cat", "/proc/self/uid_map", "/proc/self/gid_map", "/proc/self/setgroups"]


@pytest.fixture
def service_only() -> Iterator[Path]:
    """The installed helpers, copied as MODE=service installs them: root's, 0755, nothing else."""
    shutil.rmtree(SERVICE_ONLY, ignore_errors=True)
    SERVICE_ONLY.mkdir(mode=0o755)
    for name in HELPERS:
        shutil.copyfile(NSGATE / name, SERVICE_ONLY / name)
        (SERVICE_ONLY / name).chmod(0o755)
    yield SERVICE_ONLY
    shutil.rmtree(SERVICE_ONLY, ignore_errors=True)


def mark(directory: Path) -> None:
    for name, cap in (("newuidmap", "cap_setuid"), ("newgidmap", "cap_setgid")):
        subprocess.run(["setcap", "-n", MARK_ROOT, f"{cap}+ep", str(directory / name)],
                       check=True)


def usernsexec(directory: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    with reference_tools_disabled():
        return run_as(ALICE, ["lxc-usernsexec", *args], timeout=60,
                      env={"PATH": f"{directory}:{SYSTEM_PATH}", "LC_ALL": "C", "HOME": "/"})


def test_without_privilege_liblxc_never_runs_the_helpers_and_a_subid_map_fails(service_only):
    result = usernsexec(service_only, "-m", "b:0:200000:65536", "--", "true")
    assert result.returncode != 0
    output = result.stdout + result.stderr
    # liblxc wrote the map itself, as alice, and the kernel refused it ...
    assert re.search(rb'Operation not permitted - Failed to write uid mapping to '
                     rb'"/proc/\d+/uid_map"', output), output
    assert b"Failed to write mapping: 0 200000 65536" in output
    # ... and never ran newuidmap (its failures read "newuidmap failed to write mapping").
    assert b"newuidmap failed" not in output and b"newuidmap: " not in output


def test_without_privilege_liblxc_still_maps_the_callers_own_ids(service_only):
    """What LXC keeps: a namespace with the caller's own uid and gid only."""
    result = usernsexec(service_only, "-m", f"u:0:{ALICE.uid}:1", "-m", f"g:0:{ALICE.gid}:1",
                        "--", *SHOW)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [b"0", str(ALICE.uid).encode(), b"1",
                                     b"0", str(ALICE.gid).encode(), b"1", b"deny"]


def test_with_the_lxc_mark_liblxc_runs_the_helpers(service_only):
    """The marked helpers are what liblxc runs; with no service here, the helper (without any
    privilege) refuses, and its own text reaches LXC's log line."""
    mark(service_only)
    result = usernsexec(service_only, "-m", "b:0:200000:65536", "--", "true")
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert re.search(rb'newuidmap failed to write mapping "newuidmap: .*": newuidmap \d+ 0 '
                     rb'200000 65536', output, re.DOTALL), output
    assert b"Failed to write uid mapping to" not in output  # liblxc did not write it itself


def test_the_lxc_mark_grants_nothing_on_the_host(service_only):
    """libcap (what liblxc asks) reports the capability; the kernel raises none for it: a
    program carrying the same mark runs with empty capability sets."""
    mark(service_only)
    shown = subprocess.run(["getcap", "-n", str(service_only / "newuidmap")], capture_output=True,
                           text=True, check=True).stdout
    assert "cap_setuid=ep" in shown and "rootid=" in shown, shown
    probe = service_only / "cat"
    shutil.copyfile("/usr/bin/cat", probe)
    probe.chmod(0o755)
    subprocess.run(["setcap", "-n", MARK_ROOT, "cap_setuid,cap_setgid+ep", str(probe)],
                   check=True)
    status = run_as(ALICE, [str(probe), "/proc/self/status"], timeout=30)
    assert status.returncode == 0, status.stderr
    caps = dict(re.findall(rb"^(Cap(?:Inh|Prm|Eff|Amb)):\s+([0-9a-f]+)$", status.stdout, re.M))
    assert caps == {b"CapInh": b"0" * 16, b"CapPrm": b"0" * 16, b"CapEff": b"0" * 16,
                    b"CapAmb": b"0" * 16}, caps
    # The same file with an ordinary capability would raise it: the probe itself is sound.
    subprocess.run(["setcap", "cap_setuid+ep", str(probe)], check=True)
    raised = run_as(ALICE, [str(probe), "/proc/self/status"], timeout=30)
    assert re.search(rb"^CapPrm:\s+0000000000000080$", raised.stdout, re.M), raised.stdout
