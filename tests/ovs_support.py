"""Open vSwitch for real in the tests: `ovsdb-server` and `ovs-vswitchd` started by hand (no
systemd) in the session's private network namespace and private /run (tests/conftest.py), with a
fresh database made by `ovsdb-tool create` from the installed schema, and bridges on the
userspace datapath (`datapath_type=netdev`: its netdevs are taps over /dev/net/tun; the kernel
datapath module is not available here).

The daemons listen where every `ovs-vsctl` looks by default, /run/openvswitch/db.sock, so the
helper's own `ovs-vsctl` (fixed PATH, empty environment) reaches them. They run as children of
the pytest process, which they do not outlive (PR_SET_PDEATHSIG), and stop at the end of the
session with the bridges removed.

What ovs-vsctl changed is read from the database's own transaction log: `ovs-vsctl` writes its
command line as the comment of every transaction it commits, so `OpenVSwitch.commands()` lists
the commands that changed Open vSwitch (queries such as `br-exists` change nothing)."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import SANDBOX

RUN_DIR = Path("/run/openvswitch")  # ovs-vsctl's compiled-in default (/var/run -> /run)
DB_SOCKET = RUN_DIR / "db.sock"
SCHEMA = "/usr/share/openvswitch/vswitch.ovsschema"
VSCTL = "/usr/bin/ovs-vsctl"
WORK = SANDBOX / "ovs"
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")


def _spawn(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                preexec_fn=_die_with_parent, cwd="/")


class OpenVSwitch:
    """The two daemons, their database and their logs."""

    def __init__(self) -> None:
        subprocess.run(["rm", "-rf", str(WORK)], check=True)
        WORK.mkdir(mode=0o700, parents=True)
        RUN_DIR.mkdir(mode=0o755, exist_ok=True)
        self.db = WORK / "conf.db"
        subprocess.run(["ovsdb-tool", "create", str(self.db), SCHEMA], check=True,
                       capture_output=True)
        self.server = _spawn(["ovsdb-server", str(self.db), f"--remote=punix:{DB_SOCKET}",
                              "--no-chdir", f"--unixctl={WORK / 'ovsdb-server.ctl'}",
                              f"--log-file={WORK / 'ovsdb-server.log'}"],
                             WORK / "ovsdb-server.out")
        self.vswitchd: subprocess.Popen[bytes] | None = None
        # --retry: wait for the server's socket (what the server reports, not a clock)
        self.vsctl("--retry", "--no-wait", "init", timeout=60)
        self.vswitchd = _spawn(["ovs-vswitchd", f"unix:{DB_SOCKET}", "--no-chdir",
                                f"--unixctl={WORK / 'ovs-vswitchd.ctl'}",
                                f"--log-file={WORK / 'ovs-vswitchd.log'}"],
                               WORK / "ovs-vswitchd.out")
        # without --no-wait, ovs-vsctl returns once ovs-vswitchd has applied the change
        self.vsctl("set", "Open_vSwitch", ".", "external_ids:nsgate-test=1", timeout=60)

    def vsctl(self, *args: str, timeout: float = 30) -> str:
        result = subprocess.run([VSCTL, f"--timeout={int(timeout)}", *args], capture_output=True,
                                text=True, timeout=timeout + 10, env={"PATH": "/usr/bin"})
        if result.returncode != 0:
            raise AssertionError(f"ovs-vsctl {' '.join(args)}: {result.stderr}\n{self.logs()}")
        return result.stdout

    def add_bridge(self, name: str) -> None:
        """A bridge on the userspace datapath; its internal port is a tap named `name`."""
        self.vsctl("add-br", name, "--", "set", "bridge", name, "datapath_type=netdev")

    def delete_bridge(self, name: str) -> None:
        self.vsctl("--if-exists", "del-br", name)

    def bridges(self) -> list[str]:
        return self.vsctl("list-br").split()

    def ports(self, bridge: str) -> list[str]:
        return self.vsctl("list-ports", bridge).split()

    def add_port(self, bridge: str, port: str) -> None:
        self.vsctl("add-port", bridge, port)

    def commands(self) -> list[str]:
        """Every ovs-vsctl command that changed the database, in order, its arguments as given
        (without the program's path): e.g. `--timeout=5 del-port ovsbr vethX`."""
        out = subprocess.run(["ovsdb-tool", "show-log", str(self.db)], capture_output=True,
                             text=True, check=True).stdout
        return [m[1] for m in re.finditer(r'^record \d+: \S+ \S+ "ovs-vsctl \(invoked by [^)]*\): '
                                          r'\S*ovs-vsctl (.*)"$', out, re.MULTILINE)]

    @contextlib.contextmanager
    def stopped(self, which: str) -> Iterator[int]:
        """`server` or `vswitchd` stopped (SIGSTOP) for a while: a hung daemon, for real. Yields
        its pid."""
        proc = self.server if which == "server" else self.vswitchd
        assert proc is not None
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            yield proc.pid
        finally:
            os.kill(proc.pid, signal.SIGCONT)

    def logs(self) -> str:
        return "".join(f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}"
                       for path in sorted(WORK.glob("*.log")) + sorted(WORK.glob("*.out")))

    def stop(self) -> None:
        for name in self.bridges():
            self.delete_bridge(name)
        for proc, ctl in ((self.vswitchd, "ovs-vswitchd.ctl"), (self.server, "ovsdb-server.ctl")):
            if proc is None:
                continue
            extra = ["--cleanup"] if ctl == "ovs-vswitchd.ctl" else []
            subprocess.run(["ovs-appctl", "-t", str(WORK / ctl), "exit", *extra],
                           capture_output=True, timeout=30)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="session")
def openvswitch(sandbox) -> Iterator[OpenVSwitch]:
    """The daemons, started on first use, stopped at the end of the session."""
    ovs = OpenVSwitch()
    try:
        yield ovs
    finally:
        ovs.stop()
        leftovers = subprocess.run(["ip", "-o", "link", "show", "type", "tun"],
                                   capture_output=True, text=True).stdout
        assert leftovers == "", leftovers  # the bridges' taps went with their bridges
        subprocess.run(["rm", "-rf", str(WORK), str(RUN_DIR)], check=True)


class Bridge:
    """A bridge on the userspace datapath, with ports that are veths of the host (each `name`
    with its peer `name` + "p"), removed with them afterwards."""

    def __init__(self, ovs: OpenVSwitch, name: str, ports: tuple[str, ...] = (),
                 mtu: int | None = None) -> None:
        self.switch = ovs
        self.name = name
        ovs.add_bridge(name)
        if mtu is not None:  # of the bridge's internal port, its netdev
            ovs.vsctl("set", "Interface", name, f"mtu_request={mtu}")
        for port in ports:
            subprocess.run(["ip", "link", "add", port, "type", "veth", "peer", "name", port + "p"],
                           check=True)
            ovs.add_port(name, port)
        self.made = ports
        self._since = len(ovs.commands())

    def ports(self) -> list[str]:
        return self.switch.ports(self.name)

    def calls(self) -> list[str]:
        """The ovs-vsctl commands that changed Open vSwitch since the bridge was set up."""
        return self.switch.commands()[self._since:]

    def remove(self) -> None:
        self.switch.delete_bridge(self.name)
        for port in self.made:
            subprocess.run(["ip", "link", "del", port], stderr=subprocess.DEVNULL)


@pytest.fixture
def ovsbr(openvswitch) -> Iterator[Bridge]:
    """Open vSwitch bridge `ovsbr` with the ports the delete tests' database lines name."""
    bridge = Bridge(openvswitch, "ovsbr", ("vethX", "vethG", "vethB"))
    try:
        yield bridge
    finally:
        bridge.remove()


_EXECVE = re.compile(r'^(?:\[pid +)?(\d+)?\]? *execve\("([^"]*)", (\[.*?\]), (\[.*?\])'
                     r'(?:\) = 0| <unfinished \.\.\.>)$', re.MULTILINE)


def vsctl_execs(trace: str) -> list[tuple[int | None, list[str], list[str]]]:
    """(pid, argv, environment) of every exec of ovs-vsctl in an `strace -f -v -s 4096 -e
    trace=execve` output, in order (a failed one shows `= -1`: not counted)."""
    found = []
    for match in _EXECVE.finditer(trace):
        if match[2].endswith("/ovs-vsctl"):
            found.append((int(match[1]) if match[1] else None, json.loads(match[3]),
                          json.loads(match[4])))
    return found
