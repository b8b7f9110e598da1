"""Self-confinement (issue 4): after deciding, the map helpers cut the bounding set to the
action's capabilities, set no_new_privs and load a seccomp filter; anything outside the action
then fails. Shown on the installed helper (strace, and its /proc status while it writes) and by
running the installed confinement code itself against forbidden system calls."""

from __future__ import annotations

import subprocess
import textwrap

from tests.support import ALICE, PREFIX, helper


def _trace(target) -> list[str]:
    result = subprocess.run(["strace", "-f", "-qq", "-u", ALICE.name, "-e",
                             "trace=seccomp,prctl,openat", helper("newuidmap"),
                             str(target.pid), "0", "200000", "10"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return [" ".join(line.split()) for line in result.stderr.splitlines()
            if "ENOENT" not in line]


def test_confined_before_the_map_is_opened(target):
    lines = _trace(target)
    opened = next(i for i, line in enumerate(lines) if '"uid_map", O_WRONLY' in line)
    before = lines[:opened]
    assert any(line.startswith("prctl(PR_SET_NO_NEW_PRIVS, 1") for line in before)
    assert any("seccomp(SECCOMP_SET_MODE_FILTER" in line and line.endswith("= 0")
               for line in before)
    drops = [line for line in before if line.startswith("prctl(PR_CAPBSET_DROP")]
    assert len(drops) >= 30  # every capability but CAP_SETUID goes
    assert not any("CAP_SETUID)" in line for line in drops)
    assert target.uid_map() == [(0, 200000, 10)]


CONFINED = textwrap.dedent("""
    import errno, json, os, socket, sys
    sys.path.insert(0, {libdir!r})
    from nsgate.system import confine, kernel
    confine.confine([kernel.CAP_SETUID], confine.MAP_WRITER)
    status = dict(line.split(":\\t", 1) for line in open("/proc/self/status").read().splitlines()
                  if ":\\t" in line)
    def attempt(what):
        try:
            what()
            return "allowed"
        except OSError as err:
            return errno.errorcode[err.errno]
    print(json.dumps({{
        "seccomp": status["Seccomp"].strip(), "nnp": status["NoNewPrivs"].strip(),
        "bounding": status["CapBnd"].strip(),
        "mkdir": attempt(lambda: os.mkdir("/run/nsgate-test/confined-mkdir")),
        "inet": attempt(lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM)),
        "exec": attempt(lambda: os.execv("/bin/true", ["/bin/true"])),
        "kill": attempt(lambda: os.kill(1, 0)),
        "read": attempt(lambda: os.read(os.open("/proc/self/status", os.O_RDONLY), 10)),
    }}))
""")


def test_outside_the_action_every_system_call_fails():
    import json
    code = CONFINED.format(libdir=str(PREFIX / "lib" / "nsgate"))
    result = subprocess.run(["/usr/bin/python3", "-I", "-S", "-c", code],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["seccomp"] == "2" and seen["nnp"] == "1"
    assert int(seen["bounding"], 16) == 1 << 7  # CAP_SETUID alone
    for forbidden in ("mkdir", "inet", "exec", "kill"):
        assert seen[forbidden] == "EPERM", (forbidden, seen)
    assert seen["read"] == "allowed"


def test_lxc_user_nic_is_confined_before_it_locks_and_creates():
    """The create path confines itself after proving privilege and before the lock."""
    from pathlib import Path

    from tests.support import write_etc
    from tests.usernic_support import Proc

    write_etc("lxc/lxc-usernet", "nsgt-alice veth br9 1\n")
    for name in ("nics", "nics.lock"):
        Path("/run/lxc", name).unlink(missing_ok=True)
    subprocess.run(["ip", "link", "add", "br9", "type", "bridge"], check=True)
    container = Proc.container(ALICE)
    try:
        result = subprocess.run(["strace", "-f", "-qq", "-u", ALICE.name, "-e",
                                 "trace=seccomp,flock,prctl", helper("lxc-user-nic"), "create",
                                 "x", "x", str(container.pid), "veth", "br9", "eth0"],
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        lines = [" ".join(line.split()) for line in result.stderr.splitlines()]
        sealed = next(i for i, line in enumerate(lines)
                      if "seccomp(SECCOMP_SET_MODE_FILTER" in line and line.endswith("= 0"))
        locked = next(i for i, line in enumerate(lines) if line.startswith("flock("))
        assert sealed < locked
        assert any(line.startswith("prctl(PR_SET_NO_NEW_PRIVS, 1") for line in lines[:sealed])
        assert result.stdout.count(":") == 3
    finally:
        container.stop()
        subprocess.run(["ip", "link", "del", "br9"], check=True)


def test_getsubids_confines_itself_before_reading():
    result = subprocess.run(["strace", "-f", "-qq", "-u", ALICE.name, "-e",
                             "trace=seccomp,openat", helper("getsubids"), "nsgt-alice"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "0: nsgt-alice 200000 65536\n"
    lines = [" ".join(line.split()) for line in result.stderr.splitlines()]
    sealed = next(i for i, line in enumerate(lines)
                  if "seccomp(SECCOMP_SET_MODE_FILTER" in line and line.endswith("= 0"))
    subuid = next(i for i, line in enumerate(lines) if '"/etc/subuid"' in line)
    assert sealed < subuid
