"""rootlesskit 1.1.0 (Debian 12's), a real client nobody here wrote, on nsgate's helpers.

- `--subid-source=dynamic` finds `getsubids` on PATH, asks it by user name and by uid, for uids
  and with -g for gids, and concatenates the answers (clients.md §4); then it asks `newuidmap`
  and `newgidmap` for 0 -> the caller, 1.. -> those ranges one after the other. A getsubids that
  lists a range in both answers makes it ask for overlapping ranges, which the map helpers
  refuse.
- `--net=lxc-user-nic` runs the lxc-user-nic it is given (`create /dev/null dummy PID veth
  BRIDGE eth0`); its child brings eth0 up and asks DHCP for an address, a router and a DNS
  server (served here by busybox udhcpd on the bridge).

rootlesskit runs as the unprivileged test user with nsgate's helpers first on PATH and the
reference tools replaced by /usr/bin/false (a bind mount in the test's private mount namespace),
so only nsgate's can have done the work; what the command inside rootlesskit prints from /proc
is the kernel's record of the maps and of the link."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import ALICE, NSGATE, SANDBOX, SHADOW, as_user, helper, write_etc
from tests.usernic_support import ip, ip_links, master_of, wait_until

SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
SUBUID = "nsgt-alice:200000:65536\nnsgt-bob:300000:65536\n"
SUBGID = "nsgt-alice:400000:65536\nnsgt-bob:300000:65536\n"  # tells the two maps apart
SHOW = ["sh", "-c", "id -u; id -g; cat /proc/self/uid_map /proc/self/gid_map"]
BRIDGE, BRIDGE_ADDR = "nsgtrk0", "10.231.7.1"


@contextlib.contextmanager
def reference_tools_disabled() -> Iterator[None]:
    """/usr/bin/{newuidmap,newgidmap,getsubids} replaced by /usr/bin/false, in this mount
    namespace only: a fall-through to shadow's tools fails rootlesskit."""
    mounted: list[str] = []
    try:
        for name in ("newuidmap", "newgidmap", "getsubids"):
            path = str(SHADOW / name)
            subprocess.run(["mount", "--bind", "/usr/bin/false", path], check=True)
            mounted.append(path)
        yield
    finally:
        for path in reversed(mounted):
            subprocess.run(["umount", path], check=True)


def rootlesskit(state: Path, *args: str, impl: str = "nsgate", timeout: float = 120,
                extra: tuple[str, ...] = (), first: Path | None = None
                ) -> subprocess.CompletedProcess[bytes]:
    """rootlesskit as alice (setpriv's options `extra` too) with nsgate's helpers (those in
    `first`, if given) first on PATH and the reference disabled, or (impl="shadow") with the
    reference's first."""
    argv = ["rootlesskit", f"--state-dir={state}", "--subid-source=dynamic", *args]
    if first is None:
        first = NSGATE if impl == "nsgate" else SHADOW
    env = {"PATH": f"{first}:{SYSTEM_PATH}", "LC_ALL": "C", "HOME": "/"}
    with reference_tools_disabled() if impl == "nsgate" else contextlib.nullcontext():
        return subprocess.run(as_user(ALICE, argv, extra=extra), capture_output=True, env=env,
                              timeout=timeout, stdin=subprocess.DEVNULL)


def maps(output: bytes) -> list[tuple[int, ...]]:
    return [tuple(int(x) for x in line.split()) for line in output.decode().splitlines()]


def test_rootlesskit_is_the_version_these_tests_describe():
    out = subprocess.run(["rootlesskit", "--version"], capture_output=True, check=True).stdout
    assert out.strip() == b"rootlesskit version 1.1.0"


def test_dynamic_subid_source_maps_through_nsgate(user_dir):
    write_etc("subuid", SUBUID)
    write_etc("subgid", SUBGID)
    result = rootlesskit(user_dir / "state", "--net=host", *SHOW)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:2] == [b"0", b"0"]  # root inside
    assert maps(b"\n".join(lines[2:])) == [(0, ALICE.uid, 1), (1, 200000, 65536),
                                           (0, ALICE.gid, 1), (1, 400000, 65536)]


def test_dynamic_subid_source_with_a_line_keyed_by_uid_fails_as_with_shadow(user_dir):
    """A line keyed by the uid is in both answers (by name: the name's lines and the uid's; by
    uid: the uid's), so rootlesskit 1.1.0 asks for it twice, and fails, with shadow's tools as
    with nsgate's: nsgate names the overlap, shadow's newuidmap passes the kernel's EINVAL on."""
    write_etc("subuid", f"{ALICE.uid}:200000:65536\n")
    write_etc("subgid", f"{ALICE.uid}:400000:65536\n")
    ours = rootlesskit(user_dir / "ours", "--net=host", "true")
    assert ours.returncode != 0
    assert b"overlap on the host" in ours.stderr, ours.stderr
    assert b"[0 23001 1 1 200000 65536 65537 200000 65536]" in ours.stderr
    theirs = rootlesskit(user_dir / "theirs", "--net=host", "true", impl="shadow")
    assert theirs.returncode != 0
    assert b"[0 23001 1 1 200000 65536 65537 200000 65536]" in theirs.stderr, theirs.stderr
    assert b"newuidmap: write to uid_map failed: Invalid argument" in theirs.stderr


# --- --net=lxc-user-nic -----------------------------------------------------------------------

UDHCPD_CONF = f"""start 10.231.7.100
end 10.231.7.150
interface {BRIDGE}
lease_file {{leases}}
pidfile {{pidfile}}
option subnet 255.255.255.0
option router {BRIDGE_ADDR}
option dns {BRIDGE_ADDR}
option lease 3600
"""


@pytest.fixture
def dhcp_bridge() -> Iterator[str]:
    """A bridge with an address in the test's netns, busybox udhcpd serving it, and a
    lxc-usernet grant of one nic on it for alice."""
    work = SANDBOX / "rootlesskit"
    subprocess.run(["rm", "-rf", str(work)], check=True)
    work.mkdir(parents=True)
    ip("link", "add", BRIDGE, "type", "bridge")
    ip("addr", "add", f"{BRIDGE_ADDR}/24", "dev", BRIDGE)
    ip("link", "set", BRIDGE, "up")
    conf = work / "udhcpd.conf"
    conf.write_text(UDHCPD_CONF.format(leases=work / "leases", pidfile=work / "pid"))
    (work / "leases").touch()
    server = subprocess.Popen(["busybox", "udhcpd", "-f", str(conf)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    write_etc("lxc/lxc-usernet", f"{ALICE.name} veth {BRIDGE} 1\n")
    try:
        yield BRIDGE
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=10)
        ip("link", "del", BRIDGE)
        Path("/etc/lxc/lxc-usernet").unlink(missing_ok=True)
        Path("/run/lxc/nics").unlink(missing_ok=True)


def ports_of(bridge: str) -> list[str]:
    return [name for name, link in ip_links().items() if master_of(link) == bridge]


def test_lxc_user_nic_network_comes_up(user_dir, dhcp_bridge):
    inside = ("ip -j addr show dev eth0; ip -j route show default; "
              f"ping -c 1 -W 10 {BRIDGE_ADDR} >/dev/null && echo ping-ok")
    result = rootlesskit(user_dir / "state", "--net=lxc-user-nic",
                         f"--lxc-user-nic-binary={helper('lxc-user-nic')}",
                         f"--lxc-user-nic-bridge={dhcp_bridge}", "--copy-up=/etc",
                         "--disable-host-loopback", "sh", "-c", inside)
    assert result.returncode == 0, result.stderr
    addr, route, ping = result.stdout.splitlines()
    (link,) = json.loads(addr)
    assert link["ifname"] == "eth0" and "UP" in link["flags"]
    (inet,) = [a for a in link["addr_info"] if a["family"] == "inet"]
    assert inet["prefixlen"] == 24 and inet["local"].startswith("10.231.7.")
    assert [r["gateway"] for r in json.loads(route)] == [BRIDGE_ADDR]
    assert ping == b"ping-ok"
    # The nic was nsgate's (its host end name, its database line), and it went with the netns.
    nics = Path("/run/lxc/nics").read_text().split()
    assert nics[:3] == [ALICE.name, "veth", dhcp_bridge]
    assert nics[3].startswith(f"veth{ALICE.uid}_")
    wait_until(lambda: not ports_of(dhcp_bridge), what="the host end to go with the netns")


def test_lxc_user_nic_refusal_reaches_the_user(user_dir, dhcp_bridge):
    """A grant for another user only: rootlesskit fails, passing nsgate's reason on, and
    nothing is left on the bridge."""
    write_etc("lxc/lxc-usernet", f"nsgt-bob veth {dhcp_bridge} 1\n")
    result = rootlesskit(user_dir / "state", "--net=lxc-user-nic",
                         f"--lxc-user-nic-binary={helper('lxc-user-nic')}",
                         f"--lxc-user-nic-bridge={dhcp_bridge}", "--copy-up=/etc", "true")
    assert result.returncode != 0
    assert f"lxc-user-nic failed: lxc-user-nic: no lxc-usernet entry for user {ALICE.name}"\
        .encode() in result.stderr, result.stderr
    assert ports_of(dhcp_bridge) == []
