"""A real client: Debian's liblxc (lxc 5.0.2) starting an unprivileged container as a test user,
with a veth on a bridge, through nsgate's lxc-user-nic and newuidmap (issue 9 §1 and §9).

liblxc runs lxc-user-nic from its compiled-in path, /usr/libexec/lxc/lxc-user-nic: the test binds
nsgate's installed launcher over it in the session's private mount namespace (the reference runs
when nothing is bound there). newuidmap and newgidmap are nsgate's, first on PATH. Unprivileged
lxc-start without systemd needs cgroups its user may write: the test makes one under each v1
hierarchy and the unified one, delegates it to the user (chown, as systemd would), starts
lxc-start in it, and removes it afterwards. The rootfs is busybox-static; the container's init is
`sleep`, and `lxc-attach -- ping` is the traffic."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support import ALICE, NSGATE, SANDBOX
from tests.test_usernic_isolation import network  # noqa: F401 - the fixture
from tests.usernic_support import REFERENCE_NIC, wait_until

CGROUP_ROOT = Path("/sys/fs/cgroup")
WORLD = SANDBOX / "lxc-real"
SUBID_START = 200000  # alice's ranges in conftest.clean_config
APPLETS = ("sh", "sleep", "ping", "ip", "cat", "ifconfig")


def _hierarchies() -> list[Path]:
    """(mount point / our cgroup) of every hierarchy this process is in."""
    found = []
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        number, controllers, path = line.split(":", 2)
        if number == "0":
            mount = CGROUP_ROOT / "unified"
        else:
            name = controllers.removeprefix("name=")
            mount = CGROUP_ROOT / name
        if mount.is_dir():
            found.append(mount / path.lstrip("/"))
    return found


def _delegate(name: str, uid: int, gid: int) -> list[Path]:
    """A cgroup `name` under ours in every hierarchy, owned by uid:gid with its files."""
    made = []
    for parent in _hierarchies():
        cgroup = parent / name
        cgroup.mkdir()
        made.append(cgroup)
        cpus, mems = parent / "cpuset.cpus", parent / "cpuset.mems"
        if cpus.exists():  # a v1 cpuset cgroup takes no task until it has cpus and mems
            (cgroup / "cpuset.cpus").write_text(cpus.read_text())
            (cgroup / "cpuset.mems").write_text(mems.read_text())
        for path in (cgroup, *cgroup.iterdir()):
            os.chown(path, uid, gid)
    return made


def _remove_cgroups(cgroups: list[Path]) -> None:
    for top in cgroups:
        if not top.exists():
            continue
        for procs in top.rglob("cgroup.procs"):  # any process left: the container's
            for pid in procs.read_text().split():
                subprocess.run(["kill", "-9", pid], capture_output=True)
        dirs = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
        for directory in [*dirs, top]:
            wait_until(lambda d=directory: not (d / "cgroup.procs").read_text().strip(),
                       what=f"{directory} to empty")
            directory.rmdir()


def _rootfs(path: Path) -> None:
    for sub in ("bin", "dev", "proc", "sys", "tmp", "etc", "root"):
        (path / sub).mkdir(parents=True)
    shutil.copy("/bin/busybox", path / "bin" / "busybox")
    for applet in APPLETS:
        (path / "bin" / applet).symlink_to("busybox")
    subprocess.run(["chown", "-hR", f"{SUBID_START}:{SUBID_START}", str(path)], check=True)


def _config(rootfs: Path, hwaddr: str | None) -> str:
    lines = [
        "lxc.uts.name = c1",
        f"lxc.rootfs.path = dir:{rootfs}",
        f"lxc.idmap = u 0 {SUBID_START} 65536",
        f"lxc.idmap = g 0 {SUBID_START} 65536",
        "lxc.net.0.type = veth",
        "lxc.net.0.link = br0",
        "lxc.net.0.flags = up",
        "lxc.net.0.ipv4.address = 10.77.0.2/24",
        "lxc.init.cmd = /bin/sleep 3600",
        "lxc.apparmor.profile = unconfined",
        "lxc.mount.auto = proc:mixed sys:ro",
        "lxc.tty.max = 0",
        "lxc.pty.max = 4",
        "lxc.console.path = none",
    ]
    if hwaddr is not None:
        lines.append(f"lxc.net.0.hwaddr = {hwaddr}")
    return "\n".join(lines) + "\n"


class Lxc:
    """One container of alice's, started by lxc-start in delegated cgroups (`extra`: more
    options for the setpriv that becomes alice)."""

    def __init__(self, name: str, hwaddr: str | None, extra: tuple[str, ...] = ()) -> None:
        self.extra = extra
        self.home = WORLD / name
        shutil.rmtree(self.home, ignore_errors=True)
        self.lxcpath = self.home / "lxc"
        (self.lxcpath / "c1").mkdir(parents=True)
        (self.home / "run").mkdir()
        _rootfs(self.lxcpath / "c1" / "rootfs")
        (self.lxcpath / "c1" / "config").write_text(_config(self.lxcpath / "c1" / "rootfs",
                                                            hwaddr))
        for path in (WORLD, self.home):
            path.chmod(0o755)
        subprocess.run(["chown", f"{ALICE.uid}:{ALICE.gid}", str(self.home),
                        str(self.home / "run"), str(self.lxcpath), str(self.lxcpath / "c1"),
                        str(self.lxcpath / "c1" / "config")], check=True)
        self.log = self.home / "lxc.log"
        self.cgroups = _delegate(f"nsgate-{name}", ALICE.uid, ALICE.gid)
        self.env = {"PATH": f"{NSGATE}:/usr/sbin:/usr/bin:/sbin:/bin",
                    "HOME": str(self.home), "XDG_RUNTIME_DIR": str(self.home / "run"),
                    "USER": ALICE.name, "LOGNAME": ALICE.name}

    def as_alice(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """argv as alice, started inside the delegated cgroups."""
        enter = "; ".join(f"echo $$ > {c}/cgroup.procs" for c in self.cgroups)
        script = (f'{enter}; exec setpriv --reuid={ALICE.uid} --regid={ALICE.gid} '
                  f'--init-groups {" ".join(self.extra)} -- "$@"')
        return subprocess.run(["sh", "-c", script, "sh", *argv], env=self.env,
                              capture_output=True, text=True, timeout=timeout)

    def start(self) -> subprocess.CompletedProcess[str]:
        return self.as_alice("lxc-start", "-P", str(self.lxcpath), "-n", "c1", "-d",
                             "-l", "trace", "-o", str(self.log))

    def attach(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return self.as_alice("lxc-attach", "-P", str(self.lxcpath), "-n", "c1", "--", *argv)

    def replies(self, address: str) -> int:
        out = self.attach("/bin/ping", "-c", "3", "-W", "2", address).stdout
        line = next((x for x in out.splitlines() if "packets received" in x), "")
        return int(line.split(",")[1].split()[0]) if line else 0

    def halt(self) -> subprocess.CompletedProcess[str]:
        return self.as_alice("lxc-stop", "-P", str(self.lxcpath), "-n", "c1", "-k", timeout=60)

    def stop(self) -> None:
        self.halt()
        _remove_cgroups(self.cgroups)
        shutil.rmtree(self.home, ignore_errors=True)


@pytest.fixture
def nsgate_lxc_user_nic():
    """liblxc's compiled-in lxc-user-nic is nsgate's, in this mount namespace, for the test."""
    subprocess.run(["mount", "--bind", str(NSGATE / "lxc-user-nic"), REFERENCE_NIC],
                   check=True)
    yield
    subprocess.run(["umount", REFERENCE_NIC], check=True)


@pytest.fixture
def reference_sees_our_bridges():
    """The reference tells a Linux bridge from an OVS one by /sys/class/net/BR/bridge, and the
    session's /sys belongs to the host's netns: show it this netns's links (sysfs mounted from
    here), in this mount namespace, for the test."""
    fresh = WORLD / "sys"
    fresh.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "sysfs", "nsgate-sysfs", str(fresh)], check=True)
    places = ("class/net", "devices/virtual/net")
    for place in places:
        subprocess.run(["mount", "--bind", str(fresh / place), f"/sys/{place}"], check=True)
    yield
    for place in places:
        subprocess.run(["umount", f"/sys/{place}"], check=True)
    subprocess.run(["umount", str(fresh)], check=True)


@pytest.fixture
def lxc(network):  # noqa: F811
    started: list[Lxc] = []

    def make(name: str, hwaddr: str | None, extra: tuple[str, ...] = ()) -> Lxc:
        started.append(Lxc(name, hwaddr, extra))
        return started[-1]

    yield make
    for container in started:
        container.stop()


def _start_and_ping(lxc, name: str, hwaddr: str | None) -> Lxc:
    container = lxc(name, hwaddr)
    result = container.start()
    log = container.log.read_text() if container.log.exists() else ""
    errors = [line for line in log.splitlines() if " ERROR " in line or " WARN " in line]
    assert result.returncode == 0, "\n".join(errors[-30:])
    link = container.attach("/bin/ip", "link", "show", "eth0").stdout
    if hwaddr is not None:
        assert hwaddr in link, link  # liblxc did apply lxc.net.0.hwaddr
    assert container.replies("10.77.0.1") == 3
    return container


@pytest.mark.parametrize("hwaddr", [None, "00:16:3e:5a:01:02"], ids=["random-mac", "hwaddr"])
def test_lxc_start_with_nsgate_lxc_user_nic_has_network(lxc, nsgate_lxc_user_nic, hwaddr):
    container = _start_and_ping(lxc, "nsgate", hwaddr)
    (line,) = Path("/run/lxc/nics").read_text().splitlines()  # nsgate's database line
    owner, kind, bridge, host = line.split()
    assert (owner, kind, bridge) == (ALICE.name, "veth", "br0")
    assert host.startswith(f"veth{ALICE.uid}_")
    mac = container.attach("/bin/cat", "/sys/class/net/eth0/address").stdout.strip()
    if hwaddr is not None:
        assert mac == hwaddr
    claims = subprocess.run(["nft", "list", "set", "bridge", "nsgate", "port_mac"],
                            capture_output=True, text=True, check=True).stdout
    assert f'"{host}" . {mac}' in claims  # the MAC liblxc set is the one the port may use


@pytest.mark.parametrize("hwaddr", [None, "00:16:3e:5a:01:03"], ids=["random-mac", "hwaddr"])
def test_lxc_start_with_the_reference_lxc_user_nic_has_network(lxc, reference_sees_our_bridges,
                                                              hwaddr):
    _start_and_ping(lxc, "reference", hwaddr)


def test_an_lxc_container_restarted_with_its_hwaddr_has_network_at_once(lxc,
                                                                       nsgate_lxc_user_nic):
    """Its MAC was claimed by its previous port: the next create forgets the claims of ports
    that are gone, so the restarted container is not locked out until they time out."""
    container = _start_and_ping(lxc, "restart", "00:16:3e:5a:01:04")
    assert container.halt().returncode == 0
    result = container.start()
    assert result.returncode == 0, result.stderr
    assert container.replies("10.77.0.1") == 3
