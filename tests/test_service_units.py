"""The service's init files as `make install` installs them: nsgate.socket and nsgate.service
(systemd) and the OpenRC script, filled in with the install's paths; systemd's own checks of the
units (`systemd-analyze verify`, and `security` for the exposure figure the README and
nsgated(8) quote); and the installed nsgated serving every helper under exactly the unit's
capability bounding set and no_new_privs (systemd is not PID 1 here: setpriv applies the same
two kernel restrictions), through a minimal client of nsgate-protocol(7) run as the test user."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.admin_support import ip
from tests.support import ALICE, PREFIX, SANDBOX, run_as, wait_for, write_etc

REPO = Path(__file__).resolve().parents[1]
UNITS = PREFIX / "lib" / "systemd" / "system"
OPENRC = PREFIX / "share" / "nsgate" / "openrc" / "nsgated"
NSGATED = PREFIX / "libexec" / "nsgate" / "nsgated"
EXPOSURE = "3.0"


def unit(name: str) -> dict[str, list[str]]:
    """key -> every value it is given, across sections."""
    values: dict[str, list[str]] = {}
    for line in (UNITS / name).read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            values.setdefault(key, []).append(value)
    return values


def test_units_are_installed_filled_in():
    for name in ("nsgate.socket", "nsgate.service"):
        st = (UNITS / name).stat()
        assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o644, 0), name
        assert "@LIBEXECDIR@" not in (UNITS / name).read_text(), name
    sock = unit("nsgate.socket")
    assert sock["ListenSequentialPacket"] == ["/run/nsgate/io.socket"]
    assert (sock["SocketMode"], sock["DirectoryMode"], sock["RemoveOnStop"]) == (
        ["0666"], ["0755"], ["yes"])
    assert int(sock["Backlog"][0]) >= 1024  # 1000 concurrent connects wait, none refused
    assert sock["WantedBy"] == ["sockets.target"]
    service = unit("nsgate.service")
    assert service["ExecStart"] == [f"{NSGATED} --idle-exit 60"]
    assert os.access(NSGATED, os.X_OK)
    assert service["NoNewPrivileges"] == ["yes"] and service["PrivateNetwork"] == ["no"]
    assert service["RuntimeDirectory"] == ["lxc"] and service["RuntimeDirectoryPreserve"] == ["yes"]


def test_systemd_accepts_the_units_without_a_warning():
    result = subprocess.run(["systemd-analyze", "verify", "--man=no",
                             str(UNITS / "nsgate.socket"), str(UNITS / "nsgate.service")],
                            capture_output=True, text=True, cwd=UNITS, timeout=60)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_exposure_is_the_figure_the_documentation_gives():
    result = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager",
                             str(UNITS / "nsgate.service")], capture_output=True, text=True,
                            cwd=UNITS, timeout=60)
    figure = re.search(r"Overall exposure level for nsgate\.service: (\d+\.\d)", result.stdout)
    assert figure, result.stdout[-2000:] + result.stderr
    assert figure.group(1) == EXPOSURE
    for page in (REPO / "README.md", REPO / "man" / "nsgated.8.scd"):
        assert f"{EXPOSURE} OK" in page.read_text(), page


def test_openrc_script_is_installed_filled_in():
    st = OPENRC.stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o755, 0)
    text = OPENRC.read_text()
    assert text.startswith("#!/sbin/openrc-run\n") and "@LIBEXECDIR@" not in text
    assert f'command="{NSGATED}"' in text and 'supervisor="supervise-daemon"' in text
    assert "checkpath --directory --owner root:root --mode 0755 /run/nsgate" in text
    assert subprocess.run(["sh", "-n", str(OPENRC)]).returncode == 0


# --- the service under the unit's kernel restrictions ----------------------------------------

CLIENT = """
import array, os, socket, sys
sys.path.insert(0, sys.argv[1])
from nsgate.policy import service_wire as wire
path, helper, args = sys.argv[2], sys.argv[3], [a.encode() for a in sys.argv[4:]]
fd, target = None, wire.NOT_TRIED
index = wire.target_argument(helper, args)
if index is not None:
    name = args[index].decode()
    name = f"/proc/{name}" if helper != "lxc-user-nic" else f"/proc/{name}/ns/net"
    flags = os.O_DIRECTORY | os.O_NOFOLLOW if helper != "lxc-user-nic" else 0
    fd, target = os.open(name, os.O_RDONLY | os.O_CLOEXEC | flags), 0
conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
conn.connect(path)
rights = [] if fd is None else [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))]
conn.sendmsg([wire.encode_request(helper, args, target)], rights)
status, out, err = wire.decode_answer(conn.recv(70000))
sys.stdout.buffer.write(out)
sys.stderr.buffer.write(err)
sys.exit(status)
"""
SOCKET = SANDBOX / "units-io.socket"


def bounding_set() -> str:
    """The unit's CapabilityBoundingSet= as setpriv takes it."""
    [caps] = unit("nsgate.service")["CapabilityBoundingSet"]
    return "-all," + ",".join("+" + cap.removeprefix("CAP_").lower() for cap in caps.split())


@pytest.fixture
def confined_service() -> Iterator[subprocess.Popen[bytes]]:
    SOCKET.unlink(missing_ok=True)
    proc = subprocess.Popen(["setpriv", f"--bounding-set={bounding_set()}", "--no-new-privs",
                             str(NSGATED), "--socket", str(SOCKET)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_for(lambda: SOCKET.is_socket() or proc.poll() is not None, "nsgated's socket")
    status = Path(f"/proc/{proc.pid}/status").read_text()
    assert "NoNewPrivs:\t1" in status
    yield proc
    proc.terminate()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert not SOCKET.exists()


def ask(*args: str) -> subprocess.CompletedProcess[bytes]:
    return run_as(ALICE, ["/usr/bin/python3", "-I", "-c", CLIENT, str(PREFIX / "lib/nsgate"),
                          str(SOCKET), *args], timeout=60)


def test_the_units_capabilities_and_no_new_privs_serve_every_helper(confined_service, targets):
    ip("link", "add", "nsgtunit0", "type", "bridge")
    write_etc("lxc/lxc-usernet", "nsgt-alice veth nsgtunit0 1\n")
    try:
        userns = targets(ALICE)
        result = ask("newuidmap", str(userns.pid), "0", "200000", "65536")
        assert (result.returncode, result.stderr) == (0, b"")
        assert userns.uid_map() == [(0, 200000, 65536)]
        container = targets(ALICE, net=True)
        result = ask("lxc-user-nic", "create", "x", "y", str(container.pid), "veth",
                     "nsgtunit0", "eth0")
        assert (result.returncode, result.stderr) == (0, b"")
        peer, _, host, _ = result.stdout.decode().strip().split(":")
        assert peer == "eth0" and host.startswith("veth23001_")
        [link] = json.loads(subprocess.run(["ip", "-j", "link", "show", host],
                                           capture_output=True, check=True).stdout)
        assert link["master"] == "nsgtunit0"
        result = ask("getsubids", "nsgt-alice")
        assert (result.returncode, result.stdout) == (0, b"0: nsgt-alice 200000 65536\n")
        result = ask("newgidmap", str(userns.pid), "0", "200000", "65536")
        assert (result.returncode, result.stderr) == (0, b""), result.stderr.decode()
        assert userns.gid_map() == [(0, 200000, 65536)]
    finally:
        ip("link", "del", "nsgtunit0")
