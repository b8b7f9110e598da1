"""`nsgate check` reports the lock protocol's leftovers (code lock-leftover): the `FILE.<pid>`
link file a writer of /etc/subuid (or passwd, group, ...) makes, links to `FILE.lock` and
removes, left in /etc when the writer is killed in between. The leftover here is made for real:
`nsgate subid add` is held by strace just before its link(2) and killed there; the command the
finding names then removes it. A file of a running process, or one the protocol did not write,
is not reported."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.admin_support import NSGATE_BIN, nsgate_json
from tests.usernic_support import wait_until

LEFTOVER = re.compile(r"^(passwd|group|shadow|gshadow|subuid|subgid)\.\d+$")
REMOVAL = re.compile(r"\((kill -0 (\d+) 2>/dev/null \|\| rm -f (\S+))\)$")


def leftovers() -> list[str]:
    return sorted(name for name in os.listdir("/etc") if LEFTOVER.match(name))


@pytest.fixture(autouse=True)
def no_leftovers_after() -> Iterator[None]:
    assert leftovers() == []
    yield
    for name in leftovers():
        os.unlink(f"/etc/{name}")


def findings() -> tuple[int, list[tuple[str, int | None, str, str, str]]]:
    status, report = nsgate_json("check")
    return status, [(f["file"], f["line"], f["severity"], f["code"], f["message"])
                    for f in report["findings"]]


def killed_writer() -> int:
    """Run `nsgate subid add` held by strace at the entry of its link(2) of /etc/subuid.<pid> to
    /etc/subuid.lock, kill it there, and return its pid. (With -D the writer is our child and
    strace its grandchild; a SIGKILL reaches a ptrace-stopped writer once its tracer is gone.)"""
    writer = subprocess.Popen(
        ["strace", "-D", "-f", "-o", "/dev/null", "-e", "trace=link", "-e",
         "inject=link:delay_enter=600000000", str(NSGATE_BIN), "subid", "add", "nsgt-carol",
         "500000", "65536"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    pid = writer.pid
    try:
        wait_until(lambda: Path(f"/etc/subuid.{pid}").exists()
                   and Path(f"/proc/{pid}/wchan").read_text() == "ptrace_stop",
                   timeout=60, what="the writer held before its link")
        assert b"subid" in Path(f"/proc/{pid}/cmdline").read_bytes()
        assert not Path("/etc/subuid.lock").exists()  # held before the link
    finally:
        status = Path(f"/proc/{pid}/status").read_text()
        traced = re.search(r"^TracerPid:\s+(\d+)$", status, re.M)
        tracer = int(traced.group(1)) if traced else 0
        writer.kill()
        if tracer:
            os.kill(tracer, signal.SIGKILL)
        writer.wait(timeout=60)
    assert writer.returncode == -signal.SIGKILL
    assert not Path("/etc/subuid.lock").exists()  # it died before its link
    return pid


def test_a_killed_writers_link_file_is_reported_and_its_command_removes_it():
    before = Path("/etc/subuid").read_bytes()
    pid = killed_writer()
    path = f"/etc/subuid.{pid}"
    assert Path(path).read_bytes() == f"{pid}\0".encode()  # what the protocol writes
    status, found = findings()
    assert status == 0  # a warning
    [(file, line, severity, code, message)] = found
    assert (file, line, severity, code) == (path, None, "warning", "lock-leftover")
    assert f"process {pid}, a writer of /etc/subuid" in message
    command = REMOVAL.search(message)
    assert command and command.group(2, 3) == (str(pid), path), message
    subprocess.run(["sh", "-c", command.group(1)], check=True)
    assert not Path(path).exists()
    assert findings() == (0, [])
    assert Path("/etc/subuid").read_bytes() == before  # the killed writer changed nothing


def test_a_running_writers_file_is_not_reported_and_the_command_keeps_it():
    sleeper = subprocess.Popen(["sleep", "600"])
    path = Path(f"/etc/subgid.{sleeper.pid}")
    try:
        path.write_bytes(f"{sleeper.pid}\0".encode())
        assert findings() == (0, [])
        subprocess.run(["sh", "-c", f"kill -0 {sleeper.pid} 2>/dev/null || rm -f {path}"],
                       check=True)
        assert path.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    status, found = findings()  # once the process is gone, it is a leftover
    assert (status, [(f[0], f[3]) for f in found]) == (0, [(str(path), "lock-leftover")])


def test_files_the_protocol_did_not_write_are_not_reported():
    gone = subprocess.Popen(["true"])
    gone.wait()
    Path("/etc/passwd.20240101").write_text("root:x:0:0:root:/root:/bin/sh\n")  # a dated copy
    Path(f"/etc/subuid.{gone.pid}").write_text("not a pid\n")
    Path(f"/etc/group.0{gone.pid}").write_bytes(f"0{gone.pid}\0".encode())  # not canonical
    assert findings() == (0, [])
    Path(f"/etc/shadow.{gone.pid}").write_bytes(b"")  # killed before it wrote its pid
    status, found = findings()
    assert (status, [(f[0], f[2], f[3]) for f in found]) == (
        0, [(f"/etc/shadow.{gone.pid}", "warning", "lock-leftover")])
