"""Real clients under no_new_privs (`setpriv --no-new-privs`, as NoNewPrivileges=, docker's and
podman's no-new-privileges and Kubernetes' allowPrivilegeEscalation: false set it): util-linux
`unshare --map-auto`, `podman unshare`, LXC's `lxc-usernsexec`, rootlesskit, and an unprivileged
`lxc-start` with a veth.

The kernel ignores the setuid bit under no_new_privs, so each client succeeds only where nsgated
serves its helpers. Each runs twice (the module-wide `service` fixture: first with the service
up, then stopped):
- served: what the client shows from /proc (the maps) and what the kernel has (links, the nic
  database line) are what the setuid helpers give;
- stopped: the client fails, and the text it passes on names the fix (`systemctl enable --now
  nsgate.socket (or run nsgated)`, the helper's own words) - podman quotes it with its newlines
  escaped, LXC puts it in its log line; nothing is left behind.
nsgate's helpers are first on PATH (and bound over liblxc's lxc-user-nic); the reference tools
are replaced by /usr/bin/false, so nothing can fall through to them.

rootlesskit cannot run under no_new_privs at all, whoever writes its maps: its child re-executes
itself to gain its capabilities in the new user namespace, which no_new_privs forbids (the kernel
grants an exec nothing beyond what the process had; rootlesskit#551). Under no_new_privs the test
shows nsgate's part done (the maps, which rootlesskit reports before that step); the whole of
rootlesskit --net=lxc-user-nic runs with helpers installed for the service only (no setuid bit,
no file capability: nothing but the service can serve them either).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.service_support import listener_inode, shared_nsgated, shared_nsgated_paused
from tests.support import ALICE, NSGATE, SANDBOX, SHADOW, run_as
from tests.test_lxc_real import lxc, nsgate_lxc_user_nic  # noqa: F401 - fixtures
from tests.test_lxc_service_mode import service_only  # noqa: F401 - the fixture
from tests.test_rootlesskit import BRIDGE_ADDR, dhcp_bridge, ports_of, rootlesskit  # noqa: F401
from tests.test_usernic_isolation import network  # noqa: F401 - the fixture
from tests.usernic_support import wait_until

NNP = ("--no-new-privs",)
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
FIX = b"systemctl enable --now nsgate.socket (or run nsgated)"
ALICE_MAPS = [(0, 200000, 65536), (0, 200000, 65536)]  # conftest.clean_config's ranges


@pytest.fixture(scope="module", params=["served", "stopped"])
def service(request) -> Iterator[bool]:
    """nsgated up for the module's tests, then stopped for them (True while it serves)."""
    with shared_nsgated() if request.param == "served" else shared_nsgated_paused():
        assert (listener_inode() is not None) == (request.param == "served")
        yield request.param == "served"


@pytest.fixture
def no_reference(request) -> Iterator[None]:
    """Debian's newuidmap, newgidmap and getsubids replaced by /usr/bin/false, in this mount
    namespace, for the test."""
    mounted = []
    try:
        for name in ("newuidmap", "newgidmap", "getsubids"):
            subprocess.run(["mount", "--bind", "/usr/bin/false", str(SHADOW / name)], check=True)
            mounted.append(str(SHADOW / name))
        yield
    finally:
        for path in reversed(mounted):
            subprocess.run(["umount", path], check=True)


def env_of(home: Path) -> dict[str, str]:
    return {"PATH": f"{NSGATE}:{SYSTEM_PATH}", "LC_ALL": "C", "HOME": str(home),
            "USER": ALICE.name, "LOGNAME": ALICE.name}


def maps(text: bytes) -> list[tuple[int, ...]]:
    return [tuple(int(x) for x in line.split()) for line in text.decode().splitlines()]


NO_NEW_PRIVS = b"no_new_privs is set on the calling process"
NOT_SETUID = b"the launcher is not setuid root and has no file capabilities"


def assert_names_the_fix(output: bytes, cause: bytes = NO_NEW_PRIVS) -> None:
    assert b"newuidmap: cannot get CAP_SETUID: " + cause in output, output
    assert FIX in output, output


# --- util-linux unshare --------------------------------------------------------------------------


def test_unshare_map_auto(service, no_reference):
    result = run_as(ALICE, ["unshare", "--user", "--map-auto", "cat", "/proc/self/uid_map",
                            "/proc/self/gid_map"], env=env_of(Path("/")), extra=NNP, timeout=60)
    if service:
        assert (result.returncode, result.stderr) == (0, b""), result.stderr
        assert maps(result.stdout) == ALICE_MAPS
    else:  # unshare passes the helper's stderr through as it is
        assert result.returncode != 0 and result.stdout == b""
        assert_names_the_fix(result.stderr)


# --- podman unshare --------------------------------------------------------------------------


@pytest.fixture
def home() -> Iterator[Path]:
    """A directory of alice's at a short path (podman refuses a run root of more than 50
    characters, rootlesskit's state directory holds unix sockets)."""
    home = SANDBOX / "nnp"
    subprocess.run(["rm", "-rf", str(home)], check=True)
    home.mkdir()
    (home / "run").mkdir(mode=0o700)
    for path in (home, home / "run"):
        os.chown(path, ALICE.uid, ALICE.gid)
    yield home
    subprocess.run(["rm", "-rf", str(home)], check=True)


def test_podman_unshare(service, no_reference, home):
    """podman 4.3.1 as alice with its storage and run directories in a directory of hers (vfs:
    nothing to mount; nothing pulled); it runs newuidmap and newgidmap itself."""
    run = home / "run"
    env = {**env_of(home), "XDG_RUNTIME_DIR": str(run),
           "XDG_CONFIG_HOME": str(home / "config")}
    result = run_as(ALICE, ["podman", "--root", str(home / "storage"),
                            "--runroot", str(run / "containers"), "--storage-driver", "vfs",
                            "--cgroup-manager", "cgroupfs", "--events-backend", "file",
                            "unshare", "cat", "/proc/self/uid_map", "/proc/self/gid_map"],
                    env=env, extra=NNP, timeout=120)
    if service:
        assert result.returncode == 0, result.stderr
        assert maps(result.stdout) == [(0, ALICE.uid, 1), (1, 200000, 65536),
                                       (0, ALICE.gid, 1), (1, 200000, 65536)]
    else:  # podman quotes the helper's stderr in its error, newlines escaped
        assert result.returncode != 0 and result.stdout == b""
        assert b"cannot set up namespace using" in result.stderr, result.stderr
        assert_names_the_fix(result.stderr.replace(b"\\n", b"\n"))


# --- LXC: lxc-usernsexec ------------------------------------------------------------------------


def test_lxc_usernsexec(service, no_reference):
    """liblxc runs the helpers because they are setuid root (no_new_privs changes no file)."""
    result = run_as(ALICE, ["lxc-usernsexec", "-m", "b:0:200000:65536", "--", "cat",
                            "/proc/self/uid_map", "/proc/self/gid_map"],
                    env=env_of(Path("/")), extra=NNP, timeout=60)
    if service:
        assert result.returncode == 0, result.stderr
        assert maps(result.stdout) == ALICE_MAPS
    else:  # LXC embeds the helper's whole output in its log line
        assert result.returncode != 0 and result.stdout == b""
        assert b'newuidmap failed to write mapping "newuidmap: ' in result.stderr, result.stderr
        assert_names_the_fix(result.stderr)


# --- rootlesskit --------------------------------------------------------------------------------


def test_rootlesskit(service, no_reference, user_dir):
    """Under no_new_privs: served, the maps are written (rootlesskit's child reports the
    parent's second message, sent once newuidmap and newgidmap succeeded), then rootlesskit
    fails at its own step, its child without capabilities after re-executing itself; stopped,
    it fails at newuidmap, passing the helper's text on."""
    result = rootlesskit(user_dir / "state", "--debug", "--net=host", "true", extra=NNP)
    assert result.returncode != 0
    if service:
        assert b"child: got msg from parent: {Stage:1 " in result.stderr, result.stderr
        assert b"[rootlesskit:child ] error: failed to share mount point: /: operation not " \
               b"permitted" in result.stderr, result.stderr
    else:
        assert b"failed to setup UID/GID map: newuidmap " in result.stderr, result.stderr
        assert_names_the_fix(result.stderr.replace(b"\\n", b"\n"))


def test_rootlesskit_with_lxc_user_nic_from_a_service_only_install(
        service, service_only, home, dhcp_bridge):  # noqa: F811
    """rootlesskit's getsubids, newuidmap, newgidmap and lxc-user-nic (its network driver), all
    without privilege of their own: served, its child has eth0 on the bridge with a DHCP lease
    and reaches the bridge; stopped, the first helper that needs privilege (newuidmap) fails it,
    naming the fix, and nothing is on the bridge."""
    inside = ("cat /proc/self/uid_map; ip -j addr show dev eth0; "
              f"ping -c 1 -W 10 {BRIDGE_ADDR} >/dev/null && echo ping-ok")
    result = rootlesskit(home / "state", "--net=lxc-user-nic",
                         f"--lxc-user-nic-binary={service_only / 'lxc-user-nic'}",
                         f"--lxc-user-nic-bridge={dhcp_bridge}", "--copy-up=/etc",
                         "--disable-host-loopback", "sh", "-c", inside, first=service_only)
    if service:
        assert result.returncode == 0, result.stderr
        *uid_map, addr, ping = result.stdout.splitlines()
        assert maps(b"\n".join(uid_map)) == [(0, ALICE.uid, 1), (1, 200000, 65536)]
        (link,) = json.loads(addr)
        assert link["ifname"] == "eth0" and "UP" in link["flags"]
        assert any(a["family"] == "inet" and a["local"].startswith("10.231.7.")
                   for a in link["addr_info"]), link
        assert ping == b"ping-ok"
        # the nic went with rootlesskit's netns, and nsgated's janitor takes its line with it
        wait_until(lambda: not ports_of(dhcp_bridge), what="the host end to go with the netns")
        wait_until(lambda: not Path("/run/lxc/nics").read_text().split(),
                   what="the janitor to remove the nic's line")
    else:
        assert result.returncode != 0
        assert_names_the_fix(result.stderr.replace(b"\\n", b"\n"), NOT_SETUID)
        assert ports_of(dhcp_bridge) == []


# --- LXC: an unprivileged lxc-start ---------------------------------------------------------------


def test_lxc_start(service, lxc, nsgate_lxc_user_nic):  # noqa: F811
    """lxc-start as alice in cgroups delegated to her (tests/test_lxc_real.py): served, the
    container runs with its veth on br0 and answers pings through it; stopped, lxc-start fails
    and its log names the fix."""
    container = lxc("nnp", None, NNP)
    result = container.start()
    log = container.log.read_text() if container.log.exists() else ""
    if service:
        errors = [line for line in log.splitlines() if " ERROR " in line]
        assert result.returncode == 0, "\n".join(errors[-30:])
        uid_map = container.attach("/bin/cat", "/proc/self/uid_map").stdout
        assert maps(uid_map.encode()) == [(0, 200000, 65536)]
        (line,) = Path("/run/lxc/nics").read_text().splitlines()
        owner, kind, bridge, host = line.split()
        assert (owner, kind, bridge) == (ALICE.name, "veth", "br0")
        assert host.startswith(f"veth{ALICE.uid}_")
        assert container.replies("10.77.0.1") == 3
    else:  # lxc-start says only that it failed; its log has the helper's words
        assert result.returncode != 0
        assert_names_the_fix(log.encode())
        assert not Path("/run/lxc/nics").exists() or Path("/run/lxc/nics").read_text() == ""
