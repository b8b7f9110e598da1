"""The one rule for what only root can change (system/integrity.py `root_only`), on real files,
and ovs-vsctl found only as a regular file of root's: a root-owned directory of that name first
on the search path is passed over, not handed to posix_spawn."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from nsgate.system.integrity import S_IFDIR, S_IFREG, root_only

from tests.support import ALICE, SANDBOX

HELPERS = str(Path(__file__).resolve().parent.parent / "helpers")


@pytest.fixture
def place() -> Path:
    path = SANDBOX / "trust-rule"
    subprocess.run(["rm", "-rf", str(path)], check=True)
    path.mkdir(mode=0o755)
    return path


@pytest.mark.parametrize(("kind", "owner", "mode", "as_kind", "trusted"), [
    ("file", 0, 0o644, S_IFREG, True),
    ("file", 0, 0o600, S_IFREG, True),
    ("file", 0, 0o4755, S_IFREG, True),
    ("file", 0, 0o664, S_IFREG, False),
    ("file", 0, 0o646, S_IFREG, False),
    ("file", "alice", 0o644, S_IFREG, False),
    ("file", 0, 0o644, S_IFDIR, False),
    ("file", 0, 0o644, None, True),
    ("dir", 0, 0o755, S_IFDIR, True),
    ("dir", 0, 0o1777, S_IFDIR, False),
    ("dir", 0, 0o755, S_IFREG, False),
    ("dir", 0, 0o755, None, True),
    ("fifo", 0, 0o644, S_IFREG, False),
    ("fifo", 0, 0o644, None, True),
])
def test_root_only(place, kind, owner, mode, as_kind, trusted):
    path = place / "x"
    if kind == "file":
        path.write_text("")
    elif kind == "dir":
        path.mkdir()
    else:
        os.mkfifo(path)
    os.chown(path, ALICE.uid if owner == "alice" else 0, 0)
    os.chmod(path, mode)
    assert root_only(os.lstat(path), as_kind) is trusted


FIND_VSCTL = """
import subprocess, sys
subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "trust-rule", "/usr/sbin"], check=True)
subprocess.run(["mkdir", "-m", "0755", "/usr/sbin/ovs-vsctl"], check=True)
sys.path.insert(0, sys.argv[1])
from nsgate.system import ovs
print(ovs._vsctl())
"""


def test_a_directory_named_ovs_vsctl_is_passed_over():
    assert os.access("/usr/bin/ovs-vsctl", os.X_OK)  # Open vSwitch is installed (tools/deps.sh)
    result = subprocess.run(["unshare", "--mount", "--propagation", "private", "--",
                             sys.executable, "-I", "-c", FIND_VSCTL, HELPERS],
                            capture_output=True, text=True, check=True)
    assert result.stdout == "/usr/bin/ovs-vsctl\n", result
