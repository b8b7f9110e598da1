"""Self-confinement (issue 4): after deciding, the map helpers cut the bounding set to the
action's capabilities, set no_new_privs and load a seccomp filter; anything outside the action
then fails. Shown on the installed helper (strace, and its /proc status while it writes) and by
running the installed confinement code itself against forbidden system calls. The helpers' runs
go through both transports: through the service, strace follows the worker that serves them.
"""

from __future__ import annotations

import re
import subprocess
import textwrap

import pytest

from tests.service_support import service_traced
from tests.support import ALICE, PATIENCE, PREFIX, helper, run_as, transport


def traced(argv: list[str], calls: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """argv run as alice under strace -e trace=`calls`: in-process, or, through the service,
    with strace attached to the worker that serves it; its result and the trace lines."""
    if transport() == "service":
        with service_traced("-qq", "-e", f"trace={calls}") as served:
            result = run_as(ALICE, argv, text=True)
        lines = [line for _, line in served]
    else:
        result = subprocess.run(["strace", "-f", "-qq", "-u", ALICE.name, "-e",
                                 f"trace={calls}", *argv], capture_output=True, text=True)
        lines = result.stderr.splitlines()
    assert result.returncode == 0, result.stderr
    # strace marks every line `[pid N] ` once the helper has a child: which process is not asked
    return result, [re.sub(r"^\[pid +\d+\] ", "", " ".join(line.split())) for line in lines]


def _trace(target) -> list[str]:
    _, lines = traced([helper("newuidmap"), str(target.pid), "0", "200000", "10"],
                      "seccomp,prctl,openat")
    return [line for line in lines if "ENOENT" not in line]


@pytest.mark.usefixtures("transport")
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


@pytest.mark.usefixtures("transport")
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
        result, lines = traced([helper("lxc-user-nic"), "create", "x", "x", str(container.pid),
                                "veth", "br9", "eth0"], "seccomp,flock,prctl")
        sealed = next(i for i, line in enumerate(lines)
                      if "seccomp(SECCOMP_SET_MODE_FILTER" in line and line.endswith("= 0"))
        locked = next(i for i, line in enumerate(lines) if line.startswith("flock("))
        assert sealed < locked
        assert any(line.startswith("prctl(PR_SET_NO_NEW_PRIVS, 1") for line in lines[:sealed])
        assert result.stdout.count(":") == 3
    finally:
        container.stop()
        subprocess.run(["ip", "link", "del", "br9"], check=True)


@pytest.mark.usefixtures("transport")
def test_getsubids_confines_itself_before_reading():
    result, lines = traced([helper("getsubids"), "nsgt-alice"], "seccomp,openat")
    assert result.stdout == "0: nsgt-alice 200000 65536\n"
    sealed = next(i for i, line in enumerate(lines)
                  if "seccomp(SECCOMP_SET_MODE_FILTER" in line and line.endswith("= 0"))
    subuid = next(i for i, line in enumerate(lines) if '"/etc/subuid"' in line)
    assert sealed < subuid


# nsgated compiles the filters before it forks its workers (confine.compile_filters), and a
# worker's confine() loads the compiled program: it must be, instruction for instruction, the
# program the setuid path has libseccomp generate and install. Each variant confines itself,
# says so and waits on stdin; the test reads the filter the kernel holds for it via ptrace.
HELD = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {libdir!r})
    from nsgate.system import confine, kernel
    if sys.argv[1] == "compiled":
        confine.compile_filters()
    confine.confine([kernel.CAP_SETUID], getattr(confine, sys.argv[2]))
    os.write(1, b"confined\\n")
    os.read(0, 1)
""")
PTRACE_ATTACH, PTRACE_DETACH, PTRACE_SECCOMP_GET_FILTER = 16, 17, 0x420C


def _installed_filter(pid: int) -> bytes:
    """The process's (only) seccomp filter, as the kernel holds it."""
    import ctypes
    import os

    libc = ctypes.CDLL(None, use_errno=True)
    libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
    libc.ptrace.restype = ctypes.c_long
    assert libc.ptrace(PTRACE_ATTACH, pid, None, None) == 0, ctypes.get_errno()
    try:
        _, status = os.waitpid(pid, 0)
        assert os.WIFSTOPPED(status)
        count = libc.ptrace(PTRACE_SECCOMP_GET_FILTER, pid, None, None)
        assert count > 0, ctypes.get_errno()
        program = ctypes.create_string_buffer(count * 8)  # struct sock_filter: 8 bytes
        assert libc.ptrace(PTRACE_SECCOMP_GET_FILTER, pid, None, program) == count
        assert libc.ptrace(PTRACE_SECCOMP_GET_FILTER, pid, 1, None) == -1  # no second filter
        return program.raw
    finally:
        libc.ptrace(PTRACE_DETACH, pid, None, None)


@pytest.mark.parametrize("allowed", ["MAP_WRITER", "READER", "NIC_MAKER"])
def test_the_service_s_compiled_filter_is_the_one_libseccomp_installs(allowed):
    code = HELD.format(libdir=str(PREFIX / "lib" / "nsgate"))
    programs = {}
    for how in ("compiled", "generated"):
        proc = subprocess.Popen(["/usr/bin/python3", "-I", "-S", "-c", code, how, allowed],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        try:
            assert proc.stdout is not None and proc.stdout.readline() == b"confined\n"
            programs[how] = _installed_filter(proc.pid)
        finally:
            assert proc.stdin is not None
            proc.stdin.close()
            assert proc.wait(timeout=PATIENCE) == 0
            proc.stdout.close()
    assert programs["compiled"] == programs["generated"]
