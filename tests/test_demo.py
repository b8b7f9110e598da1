"""The README's first command ends in `make demo`: the demo must work on a fresh Debian 12, which
has no /etc/subuid or /etc/subgid and no demo user (here: the session's overlaid /etc)."""

from __future__ import annotations

import os
import pwd
import subprocess
from pathlib import Path

from tests.support import NSGATE, PREFIX

REPO = Path(__file__).resolve().parents[1]


def test_demo_on_a_system_without_subordinate_id_files():
    for name in ("/etc/subuid", "/etc/subgid"):
        os.unlink(name)
    try:
        result = subprocess.run(["/usr/bin/python3", "-I", str(REPO / "tools/demo.py"),
                                 str(NSGATE), str(PREFIX / "bin/nsgate")],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
        uid = pwd.getpwnam("nsgate-demo").pw_uid
        # the range shadow's useradd would have picked from login.defs' pool, in both files
        for name in ("/etc/subuid", "/etc/subgid"):
            assert Path(name).read_text() == "nsgate-demo:100000:65536\n"
        lines = [line.split() for line in result.stdout.splitlines()]
        assert ["0", str(uid), "1"] in lines and ["1", "100000", "65536"] in lines  # uid_map
        assert ["exit", "1"] in lines  # the refused request
        assert "nsgate explain nsgate-demo" in result.stdout
        assert "Traceback" not in result.stdout + result.stderr
        # the service part: a no_new_privs caller served by nsgated, then the refusal's fix
        served = result.stdout.split("nsgated running:", 1)[1]
        assert f"exit 0; uid_map: 0 {uid} 1" in served
        stopped = served.split("nsgated stopped:", 1)[1]
        assert "exit 1" in stopped and "systemctl enable --now nsgate.socket" in stopped
    finally:
        subprocess.run(["userdel", "nsgate-demo"], capture_output=True)
