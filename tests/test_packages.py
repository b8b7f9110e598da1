"""The distribution packages and the man pages.

The .deb is built with the distribution's tooling (`make deb`), then installed with `dpkg -i` in a
sandbox of its own: a child mount namespace with copy-on-write overlays over /usr and /var (dpkg's
database, diversions and statoverrides live there) whose upper layers are on a tmpfs, and a
private copy of /etc. Nothing reaches the host, nor the rest of the test session. In it: the
installed files and modes, the end-to-end tests against the package's paths, `nsgate-divert`
switching the system's helpers to nsgate and back, removal and purge restoring the originals byte
for byte, and `dpkg-statoverride`. The RPMs (setuid and `--with caps`) are built with rpmbuild and
read back with rpm's queries. The man pages render without warnings and document every option.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import ALICE, PREFIX, SANDBOX, Target, as_user

REPO = Path(__file__).resolve().parents[1]
BUILD = REPO / "build"

HELPERS = ("newuidmap", "newgidmap", "getsubids", "lxc-user-nic")
SETUID = ("newuidmap", "newgidmap", "lxc-user-nic")
MAN_PAGES = ("man1/nsgate-newuidmap.1", "man1/nsgate-newgidmap.1", "man1/nsgate-getsubids.1",
             "man1/nsgate-lxc-user-nic.1", "man5/nsgate-subuid.5", "man5/nsgate-subgid.5",
             "man5/nsgate-lxc-usernet.5", "man5/nsgate-session.conf.5",
             "man5/nsgate-networks.conf.5", "man8/nsgate.8", "man8/nsgated.8")
# The service's files in the .deb: the units where bookworm's debhelper handles them, the OpenRC
# script as an example.
DEB_UNITS = ("/lib/systemd/system/nsgate.socket", "/lib/systemd/system/nsgate.service")
DEB_OPENRC = "/usr/share/doc/nsgate/examples/openrc/nsgated"
PAM_SNIPPET = "/usr/share/nsgate/pam.d/nsgate"  # shipped, never enabled by the package
SOCKET_ENABLED = "/etc/systemd/system/sockets.target.wants/nsgate.socket"
# What nsgate-divert replaces, and the package each original comes from on Debian 12.
DIVERTED = {"/usr/bin/newuidmap": "uidmap", "/usr/bin/newgidmap": "uidmap",
            "/usr/bin/getsubids": "uidmap", "/usr/libexec/lxc/lxc-user-nic": "lxc"}
# Everything of nsgate that must be gone after a purge.
PACKAGE_PATHS = ("/usr/libexec/nsgate", "/usr/lib/nsgate", "/usr/bin/nsgate",
                 "/usr/sbin/nsgate-divert", "/usr/share/doc/nsgate", "/usr/share/nsgate",
                 *DEB_UNITS,
                 SOCKET_ENABLED, *(f"/usr/share/man/{page}.gz" for page in MAN_PAGES))
# The end-to-end tests that run against an installed tree (NSGATE_PREFIX); the side-by-side
# comparisons with the reference are left out (the reference is not what is installed here).
E2E = ("tests/test_smoke.py", "tests/test_newidmap.py", "tests/test_getsubids.py",
       "tests/test_usernic.py")


def make(target: str) -> None:
    """`make deb` / `make rpm` as a user would type it: nothing inherited from a `make test`
    around this run (its command-line variables travel in MAKEFLAGS)."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    result = subprocess.run(["make", "-s", "-C", str(REPO), target], capture_output=True,
                            text=True, timeout=600, env=env)
    assert result.returncode == 0, f"make {target}:\n{result.stdout[-3000:]}{result.stderr[-3000:]}"


@pytest.fixture(scope="session")
def deb() -> Path:
    make("deb")
    debs = sorted(BUILD.glob("nsgate_*.deb"))
    assert len(debs) == 1, debs
    return debs[0]


@pytest.fixture(scope="session")
def rpms() -> dict[str, Path]:
    make("rpm")
    found = {"setuid": sorted(BUILD.glob("nsgate-*.rpm")),
             "caps": sorted((BUILD / "caps").glob("nsgate-*.rpm")),
             "service": sorted((BUILD / "service").glob("nsgate-*.rpm"))}
    assert all(len(packages) == 1 for packages in found.values()), found
    return {variant: packages[0] for variant, packages in found.items()}


class DpkgSandbox:
    """A process in a mount namespace of its own where /usr and /var are overlays (upper layers
    on a tmpfs) and /etc a private copy; `run` executes a command in that namespace. A copy of
    /etc rather than an overlay: the session's /etc is already an overlay, and the end-to-end
    tests lay one more over it, deeper than overlayfs stacks."""

    def __init__(self, top: Path) -> None:
        assert os.path.ismount(SANDBOX), "not inside the session's sandbox (conftest.py)"
        top.mkdir(parents=True, exist_ok=True)
        script = f"""set -e
mount -t tmpfs -o mode=0755 nsgate-pkg {top}
for dir in usr var; do
    mkdir {top}/$dir-upper {top}/$dir-work
    mount -t overlay nsgate-pkg-$dir \
        -o lowerdir=/$dir,upperdir={top}/$dir-upper,workdir={top}/$dir-work /$dir
done
mkdir {top}/etc && cp -a /etc/. {top}/etc/ && mount --bind {top}/etc /etc
# the suite's own `make install` under /usr/local is not the system the package lands on (its
# units there would shadow the package's for deb-systemd-helper)
if [ -d /usr/local/lib/systemd ]; then mount -t tmpfs nsgate-pkg-local /usr/local/lib/systemd; fi
rm -f /var/lib/man-db/auto-update   # no mandb run on every dpkg call
echo ready
exec sleep 3600
"""
        self.proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline() == b"ready\n", "the dpkg sandbox did not start"

    def argv(self, argv: list[str], cwd: Path = Path("/")) -> list[str]:
        return ["nsenter", f"--target={self.proc.pid}", "--mount", f"--wd={cwd}", "--", *argv]

    def run(self, *argv: str, check: bool = True, timeout: float = 120,
            env: dict[str, str] | None = None, cwd: Path | None = None,
            ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(self.argv(list(argv), cwd or Path("/")), capture_output=True,
                                text=True, timeout=timeout, env=env)
        if check:
            assert result.returncode == 0, f"{argv}: {result.stdout}{result.stderr}"
        return result

    def sh(self, script: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run("sh", "-c", script, check=check)

    def stat(self, path: str) -> os.stat_result | None:
        """lstat inside the sandbox: (mode, uid, gid) through stat(1)."""
        result = self.run("stat", "-c", "%f %u %g", path, check=False)
        if result.returncode != 0:
            return None
        mode, uid, gid = result.stdout.split()
        return os.stat_result((int(mode, 16), 0, 0, 0, int(uid), int(gid), 0, 0, 0, 0))

    def exists(self, path: str) -> bool:
        return self.stat(path) is not None

    def sha256(self, path: str) -> str:
        return self.run("sha256sum", path).stdout.split()[0]

    def diversions(self) -> str:
        return self.run("dpkg-divert", "--list").stdout

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def dpkg_box(request) -> Iterator[DpkgSandbox]:
    box = DpkgSandbox(SANDBOX / "dpkg" / request.node.name)
    yield box
    box.close()


@pytest.fixture
def installed(dpkg_box: DpkgSandbox, deb: Path) -> DpkgSandbox:
    dpkg_box.run("dpkg", "-i", str(deb))
    return dpkg_box


def originals(box: DpkgSandbox) -> dict[str, str]:
    """The sha256 of each original the diversion replaces; every one must be there to compare."""
    for path, package in DIVERTED.items():
        assert box.exists(path), f"{path} is missing: the test needs Debian's {package} package"
    return {path: box.sha256(path) for path in DIVERTED}


def assert_originals(box: DpkgSandbox, before: dict[str, str]) -> None:
    for path, digest in before.items():
        st = box.stat(path)
        assert st is not None and stat.S_ISREG(st.st_mode), f"{path} is not a regular file"
        assert box.sha256(path) == digest, f"{path} differs from the original"
        assert not box.exists(path + ".distrib")
    assert "nsgate" not in box.diversions()


# --- the .deb ---------------------------------------------------------------------------------

def test_deb_metadata_names_distribution_dependencies(deb: Path):
    fields = subprocess.run(["dpkg-deb", "-f", str(deb), "Package", "Depends", "Recommends"],
                            capture_output=True, text=True, check=True).stdout
    assert "Package: nsgate" in fields
    assert "Recommends: dnsmasq-base" in fields  # nsgated's DHCP on private bridges
    for dependency in ("python3-cffi-backend", "python3-cffi-backend-api-min",
                       "python3 (>= 3.", "python3 (<< 3.", "libseccomp2", "nftables"):
        assert dependency in fields, fields
    listing = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True,
                             check=True).stdout
    assert "/usr/lib/nsgate/cffi/" not in listing  # the distribution's cffi, not a bundled one
    assert "/usr/local" not in listing


def test_deb_installs_helpers_setuid_and_the_library_root_owned(installed: DpkgSandbox):
    box = installed
    for name in HELPERS:
        st = box.stat(f"/usr/libexec/nsgate/{name}")
        assert st is not None, name
        expected = 0o4755 if name in SETUID else 0o755
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (expected, 0, 0), name
    listing = box.run("find", "/usr/lib/nsgate", "-printf", "%u %g %m %y %p\n").stdout
    for line in listing.splitlines():
        owner, group, mode, kind, _path = line.split(" ", 4)
        assert (owner, group) == ("root", "root"), line
        assert kind == "l" or int(mode, 8) & 0o022 == 0, line
    # The cffi backend is the distribution's, reached through one link in the library directory.
    backend = box.sh("readlink -f /usr/lib/nsgate/_cffi_backend.*.so").stdout.strip()
    assert backend.startswith("/usr/lib/python3/dist-packages/_cffi_backend.")
    assert "python3-cffi-backend" in box.run("dpkg", "-S", backend).stdout
    for page in MAN_PAGES:
        assert box.exists(f"/usr/share/man/{page}.gz"), page
    assert box.exists("/usr/bin/nsgate") and box.exists("/usr/sbin/nsgate-divert")
    st = box.stat(PAM_SNIPPET)
    assert st is not None and (stat.S_IMODE(st.st_mode), st.st_uid) == (0o644, 0)
    assert "pam_exec.so quiet seteuid /usr/bin/nsgate session" in box.run("cat", PAM_SNIPPET).stdout
    assert not box.exists("/etc/pam.d/nsgate")  # the admin enables it, never the package
    assert box.run("grep", "-rlx", "@include nsgate", "/etc/pam.d", check=False).stdout == ""
    assert box.run("dpkg-query", "-W", "-f=${Status}", "nsgate").stdout == \
        "install ok installed"


def test_deb_ships_the_service_and_enables_its_socket(installed: DpkgSandbox):
    """nsgated, its units (nsgate.socket enabled by deb-systemd-helper, as Debian enables a
    package's services; nothing started here, systemd is not running) and the OpenRC example."""
    box = installed
    st = box.stat("/usr/libexec/nsgate/nsgated")
    assert st is not None and (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o755, 0, 0)
    for path in DEB_UNITS:
        st = box.stat(path)
        assert st is not None and (stat.S_IMODE(st.st_mode), st.st_uid) == (0o644, 0), path
    service = box.run("cat", DEB_UNITS[1]).stdout
    assert "\nExecStart=/usr/libexec/nsgate/nsgated --idle-exit 60\n" in service
    assert "\nListenSequentialPacket=/run/nsgate/io.socket\n" in box.run("cat", DEB_UNITS[0]).stdout
    assert box.run("readlink", SOCKET_ENABLED).stdout.strip() == DEB_UNITS[0]
    assert 'command="/usr/libexec/nsgate/nsgated"' in box.run("cat", DEB_OPENRC).stdout
    box.run("dpkg", "--purge", "nsgate")
    for path in (*DEB_UNITS, SOCKET_ENABLED, DEB_OPENRC):
        assert not box.exists(path), f"{path} left after purge"


def test_statoverride_gives_a_service_only_install(dpkg_box: DpkgSandbox, deb: Path):
    """The Debian way to a system without setuid helpers (packaging/README.md): 0755 for the
    three privileged helpers by dpkg-statoverride, set before the install (or with --update
    after it), kept across upgrades. nsgate check then calls it an install for the service
    only, an error while nothing listens."""
    box = dpkg_box
    for name in SETUID:
        box.run("dpkg-statoverride", "--add", "root", "root", "0755",
                f"/usr/libexec/nsgate/{name}")
    box.run("dpkg", "-i", str(deb))
    for name in HELPERS:
        st = box.stat(f"/usr/libexec/nsgate/{name}")
        assert st is not None and stat.S_IMODE(st.st_mode) == 0o755, name
    result = box.run("/usr/bin/nsgate", "check", "--json", check=False)
    report = json.loads(result.stdout)
    codes = [f["code"] for f in report["findings"]]
    assert "install" not in codes and "service-down" in codes, report["findings"]
    assert report["service"]["helpers_need_service"] is True
    assert result.returncode == 1


def test_nsgate_check_finds_the_package_install_sound(installed: DpkgSandbox):
    """The admin's first command after installing: no `install` finding for the package's
    layout (setuid launchers, root-owned library, the link to the distribution's cffi)."""
    result = installed.run("/usr/bin/nsgate", "check", "--json", check=False)
    report = json.loads(result.stdout)
    install = [f for f in report["findings"] if f["code"] == "install"]
    assert install == [], install
    assert result.returncode == (1 if report["errors"] else 0)


def test_end_to_end_suite_against_the_installed_package(installed: DpkgSandbox):
    """The helpers' own end-to-end tests, with NSGATE_PREFIX=/usr: the package's launchers (with
    /usr/lib/nsgate compiled in), its library and the distribution's cffi backend."""
    env = {**os.environ, "NSGATE_PREFIX": "/usr", "PYTHONDONTWRITEBYTECODE": "1"}
    result = installed.run(sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-x", *E2E, "-k", "not reference", env=env, cwd=REPO, timeout=600)
    summary = result.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"\d+ passed, \d+ deselected in .*", summary), result.stdout[-3000:]
    assert int(summary.split()[0]) >= 100, summary


def refused_map(box: DpkgSandbox, newuidmap: str) -> subprocess.CompletedProcess[str]:
    """Alice asks for host ids she does not own, through `newuidmap` as the sandbox has it."""
    target = Target.start(ALICE)
    try:
        return box.run(*as_user(ALICE, [newuidmap, str(target.pid), "0", "100", "1"]),
                       check=False)
    finally:
        target.stop()


def test_divert_makes_nsgate_the_provider_and_purge_restores_the_originals(
        installed: DpkgSandbox):
    box = installed
    before = originals(box)
    shadow_text = refused_map(box, "/usr/bin/newuidmap").stderr
    assert shadow_text == "newuidmap: uid range [0-1) -> [100-101) not allowed\n"

    out = box.run("/usr/sbin/nsgate-divert", "enable").stdout
    for path in DIVERTED:
        assert f"{path}: nsgate" in out, out
        helper = f"/usr/libexec/nsgate/{path.rsplit('/', 1)[1]}"
        assert box.run("readlink", path).stdout.strip() == helper
        assert box.run("dpkg-divert", "--listpackage", path).stdout.strip() == "nsgate"
        assert box.sha256(path + ".distrib") == before[path]
    assert box.run("/usr/sbin/nsgate-divert", "status").stdout.count(": nsgate\n") == 4

    # Behaviourally nsgate's: the same refusal now names what alice owns and where.
    result = refused_map(box, "/usr/bin/newuidmap")
    assert result.returncode == 1
    assert result.stderr.startswith("newuidmap: uid range [0-1) -> [100-101) not allowed\n")
    assert "nsgt-alice (uid 23001) owns in /etc/subuid: 200000-265535 (line 1)" in result.stderr
    assert result.stderr != shadow_text
    # A permitted map goes through the diverted path too, and the kernel shows it.
    target = Target.start(ALICE)
    try:
        box.run(*as_user(ALICE, ["/usr/bin/newuidmap", str(target.pid),
                                 "0", "200000", "65536"]))
        assert target.uid_map() == [(0, 200000, 65536)]
    finally:
        target.stop()
    nic = box.run(*as_user(ALICE, ["/usr/libexec/lxc/lxc-user-nic", "create", "x", "y", "1",
                                   "veth", "bad/name"]), check=False)
    assert nic.returncode == 1 and nic.stderr.startswith("lxc-user-nic: invalid bridge name")
    getsubids = box.run(*as_user(ALICE, ["/usr/bin/getsubids", "nsgt-alice"]))
    assert getsubids.stdout == "0: nsgt-alice 200000 65536\n"

    # disable gives back exactly the originals; enable again, then purge does the same.
    box.run("/usr/sbin/nsgate-divert", "disable")
    assert_originals(box, before)
    assert box.run("/usr/sbin/nsgate-divert", "status").stdout.count(": original\n") == 4
    box.run("/usr/sbin/nsgate-divert", "enable")
    assert box.run("dpkg-divert", "--list").stdout.count("by nsgate") == 4
    box.run("dpkg", "--purge", "nsgate")
    assert_originals(box, before)
    for path in PACKAGE_PATHS:
        assert not box.exists(path), f"{path} left after purge"
    assert box.run("dpkg", "-S", "/usr/libexec/nsgate", check=False).returncode == 1
    assert box.run("dpkg-query", "-W", "nsgate", check=False).returncode != 0
    assert refused_map(box, "/usr/bin/newuidmap").stderr == shadow_text


def test_removal_restores_the_originals_even_without_the_divert_script(
        installed: DpkgSandbox):
    """postrm is the second net: the diversions are undone although prerm had no script to run."""
    box = installed
    before = originals(box)
    box.run("/usr/sbin/nsgate-divert", "enable")
    box.run("rm", "/usr/sbin/nsgate-divert")
    box.run("dpkg", "--remove", "nsgate")
    assert_originals(box, before)
    assert not box.exists("/usr/libexec/nsgate/newuidmap")


def test_upgrade_of_the_original_while_diverted_lands_beside_it(installed: DpkgSandbox):
    """The diversion routes a newer uidmap to newuidmap.distrib; disabling brings that back."""
    box = installed
    originals(box)
    box.run("/usr/sbin/nsgate-divert", "enable")
    # What dpkg does when uidmap is upgraded: the diverted file is replaced at the .distrib path.
    box.sh("cp /usr/bin/newuidmap.distrib /tmp/n && printf x >> /tmp/n && "
           "mv /tmp/n /usr/bin/newuidmap.distrib")
    upgraded = box.sha256("/usr/bin/newuidmap.distrib")
    box.run("dpkg", "--purge", "nsgate")
    assert box.sha256("/usr/bin/newuidmap") == upgraded
    assert "nsgate" not in box.diversions()


def test_enable_leaves_an_absent_original_alone(installed: DpkgSandbox):
    box = installed
    box.run("rm", "-f", "/usr/libexec/lxc/lxc-user-nic")  # as if lxc were not installed
    out = box.run("/usr/sbin/nsgate-divert", "enable").stdout
    assert "/usr/libexec/lxc/lxc-user-nic: skipped, it does not exist" in out
    assert not box.exists("/usr/libexec/lxc/lxc-user-nic")
    assert box.run("dpkg-divert", "--listpackage",
                   "/usr/libexec/lxc/lxc-user-nic").stdout.strip() == ""
    assert "/usr/libexec/lxc/lxc-user-nic: absent" in \
        box.run("/usr/sbin/nsgate-divert", "status").stdout
    box.run("dpkg", "--purge", "nsgate")
    assert "nsgate" not in box.diversions()


def test_divert_refuses_a_path_it_did_not_make(installed: DpkgSandbox):
    """disable never deletes a file it did not put there."""
    box = installed
    box.run("/usr/sbin/nsgate-divert", "enable")
    box.sh("rm /usr/bin/newgidmap && echo admin > /usr/bin/newgidmap")
    result = box.run("/usr/sbin/nsgate-divert", "disable", check=False)
    assert result.returncode == 1
    assert "/usr/bin/newgidmap is not nsgate's link" in result.stderr
    assert box.run("cat", "/usr/bin/newgidmap").stdout == "admin\n"
    assert box.run("dpkg-divert", "--listpackage", "/usr/bin/newgidmap").stdout.strip() == "nsgate"
    assert box.run("dpkg-divert", "--listpackage", "/usr/bin/newuidmap").stdout.strip() == ""
    assert box.run("/usr/sbin/nsgate-divert", "frobnicate", check=False).returncode == 2


def test_statoverride_set_before_install_wins(dpkg_box: DpkgSandbox, deb: Path):
    box = dpkg_box
    box.run("dpkg-statoverride", "--add", "root", "nsgt-aux", "4750",
            "/usr/libexec/nsgate/lxc-user-nic")
    box.run("dpkg-statoverride", "--add", "root", "root", "0755",
            "/usr/libexec/nsgate/newuidmap")
    box.run("dpkg", "-i", str(deb))
    nic = box.stat("/usr/libexec/nsgate/lxc-user-nic")
    assert nic is not None and (stat.S_IMODE(nic.st_mode), nic.st_uid, nic.st_gid) == \
        (0o4750, 0, 23010)
    uidmap = box.stat("/usr/libexec/nsgate/newuidmap")
    assert uidmap is not None and stat.S_IMODE(uidmap.st_mode) == 0o755
    gidmap = box.stat("/usr/libexec/nsgate/newgidmap")
    assert gidmap is not None and stat.S_IMODE(gidmap.st_mode) == 0o4755
    # Reinstalling (an upgrade's unpack) keeps honouring the overrides.
    box.run("dpkg", "-i", str(deb))
    uidmap = box.stat("/usr/libexec/nsgate/newuidmap")
    assert uidmap is not None and stat.S_IMODE(uidmap.st_mode) == 0o755


# --- the RPMs ---------------------------------------------------------------------------------

def rpm_query(package: Path, *args: str) -> str:
    return subprocess.run(["rpm", "-qp", *args, str(package)], capture_output=True, text=True,
                          check=True).stdout


def rpm_eval(macro: str) -> str:
    return subprocess.run(["rpm", "--eval", macro], capture_output=True, text=True,
                          check=True).stdout.strip()


def rpm_files(package: Path) -> dict[str, tuple[int, str, str]]:
    """path -> (mode, user, group), from --dump."""
    files = {}
    for line in rpm_query(package, "--dump").splitlines():
        path, _size, _mtime, _digest, mode, user, group = line.split(" ")[:7]
        files[path] = (int(mode, 8), user, group)
    return files


@pytest.mark.parametrize("variant", ["setuid", "caps", "service"])
def test_rpm_layout_modes_and_capabilities(rpms: dict[str, Path], variant: str):
    package = rpms[variant]
    libexec = rpm_eval("%{_libexecdir}") + "/nsgate"
    files = rpm_files(package)
    caps = dict(line.split("\t", 1) for line in rpm_query(package, "--filecaps").splitlines())
    for name in HELPERS:
        path = f"{libexec}/{name}"
        mode, user, group = files[path]
        assert (user, group) == ("root", "root")
        if name == "getsubids" or variant == "service":
            assert (stat.S_IMODE(mode), caps[path]) == (0o755, ""), name
        elif name == "lxc-user-nic" or variant == "setuid":
            assert (stat.S_IMODE(mode), caps[path]) == (0o4755, ""), name
        else:
            want = "cap_setuid=ep" if name == "newuidmap" else "cap_setgid=ep"
            assert (stat.S_IMODE(mode), caps[path]) == (0o755, want), name
    assert stat.S_IMODE(files[f"{libexec}/nsgated"][0]) == 0o755
    unitdir = "/usr/lib/systemd/system"  # %{_unitdir}, or the spec's fallback to it
    for name in ("nsgate.socket", "nsgate.service"):
        assert files[f"{unitdir}/{name}"][:2] == (0o100644, "root"), name
    assert f"{rpm_eval('%{_datadir}')}/nsgate/openrc/nsgated" in files
    assert files[f"{rpm_eval('%{_datadir}')}/nsgate/pam.d/nsgate"][:2] == (0o100644, "root")
    assert not any(p.startswith("/etc/pam.d") for p in files)
    mandir = rpm_eval("%{_mandir}")
    for page in MAN_PAGES:
        assert any(p.startswith(f"{mandir}/{page}") for p in files), page
    libdir = [p for p in files if p.endswith("/nsgate/nsgate/cli/entry.py")]
    assert len(libdir) == 1
    assert not any("/nsgate/cffi/" in p for p in files)  # not bundled
    backend = [p for p in files if "/nsgate/_cffi_backend." in p]
    assert len(backend) == 1 and stat.S_ISLNK(files[backend[0]][0])
    requires = rpm_query(package, "--requires")
    assert "python3-cffi" in requires and "python(abi) = 3." in requires
    assert "nftables" in requires.split()  # port security on Linux bridges (port_security.py)
    assert "dnsmasq" in rpm_query(package, "--recommends").split()  # nsgated's DHCP


# --- the man pages ----------------------------------------------------------------------------

def test_an_unprivileged_packaging_build_stages_the_install(rpms: dict[str, Path],
                                                            user_dir: Path):
    """rpmbuild in mock (and any DESTDIR staging) runs as an ordinary user: `make install`
    then sets no owner (the package's %attr does) but every mode, setuid bits included."""
    source = user_dir / "src"
    version = rpm_query(rpms["setuid"], "--qf", "%{VERSION}")
    subprocess.run(["cp", "-r", str(BUILD / "pkg" / f"nsgate-{version}"), str(source)],
                   check=True)
    subprocess.run(["chown", "-R", f"{ALICE.uid}:{ALICE.gid}", str(source)], check=True)
    stage = user_dir / "stage"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(user_dir)}
    result = subprocess.run(as_user(ALICE, ["make", "-s", "-C", str(source), "install",
                                            "PREFIX=/usr", "SYSTEM_CFFI=1", f"DESTDIR={stage}"]),
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    for name in HELPERS:
        st = (stage / "usr/libexec/nsgate" / name).lstat()
        assert st.st_uid == ALICE.uid
        assert stat.S_IMODE(st.st_mode) == (0o4755 if name in SETUID else 0o755), name
    assert (stage / "usr/bin/nsgate").stat().st_mode & 0o777 == 0o755
    assert (stage / "usr/lib/nsgate/nsgate/cli/entry.py").stat().st_uid == ALICE.uid


@pytest.mark.parametrize("page", MAN_PAGES)
def test_man_page_is_installed_and_renders_without_warnings(page: str):
    path = PREFIX / "share" / "man" / page
    assert path.is_file(), path
    result = subprocess.run(["man", "--warnings", "-l", str(path)], capture_output=True,
                            text=True, env={**os.environ, "MANWIDTH": "80"})
    assert result.returncode == 0
    assert result.stderr == ""
    assert len(result.stdout.splitlines()) > 20
    name = Path(page).stem
    text = rendered(page)
    assert f"NAME {name} - " in text
    if name not in ("nsgate", "nsgated"):  # says which page it is not
        assert "conflict" in text


def rendered(page: str) -> str:
    result = subprocess.run(["man", "-l", str(PREFIX / "share" / "man" / page)],
                            capture_output=True, text=True, check=True,
                            env={**os.environ, "MANWIDTH": "1000"})
    return re.sub(r"\s+", " ", result.stdout.replace("\u2010", "-").replace("\u2011", "-"))


def usage_of(helper: str, *args: str) -> str:
    result = subprocess.run([str(PREFIX / "libexec" / "nsgate" / helper), *args],
                            capture_output=True, text=True)
    assert result.returncode == 1
    return result.stderr


@pytest.mark.parametrize(("page", "usage_args"), [
    ("man1/nsgate-newuidmap.1", ("newuidmap",)),
    ("man1/nsgate-newgidmap.1", ("newgidmap",)),
    ("man1/nsgate-getsubids.1", ("getsubids", "-h")),
    ("man1/nsgate-lxc-user-nic.1", ("lxc-user-nic",)),
])
def test_helper_page_documents_its_command_line(page: str, usage_args: tuple[str, ...]):
    """Every option and verb the helper's own usage text names appears in its page."""
    usage = usage_of(*usage_args)
    words = set(re.findall(r"(?<![\w-])(-[a-z]|fd:|create|delete)(?![\w-])", usage))
    assert words, usage
    text = rendered(page)
    for word in words:
        assert word in text, f"{page} does not mention {word}"


def test_nsgate_page_documents_every_command_option_and_finding_code():
    helptext = subprocess.run([str(PREFIX / "bin" / "nsgate"), "--help"], capture_output=True,
                              text=True)
    assert helptext.returncode == 0, helptext.stderr
    text = rendered("man8/nsgate.8")
    options = set(re.findall(r"(?<![\w-])--?[a-z][a-z-]*", helptext.stdout))
    assert {"--json", "--count"} <= options, helptext.stdout
    for option in options:
        assert option in text, f"nsgate(8) does not mention {option}"
    for command in ("check", "explain", "subid add", "subid remove", "subid allocate",
                    "nics list", "nics gc", "session", "help", "--version"):
        assert f"nsgate {command}" in text, command
    for code in ("syntax", "grants-nothing", "shadow-grants", "overlap", "contains-real-id",
                 "unsafe-file", "no-bridge", "not-a-bridge", "stale-nic", "foreign-nic",
                 "private-bridge", "lock-leftover", "install", "service-socket",
                 "service-down", "unknown-who", "duplicate-setting", "shadowed-setting",
                 "limit-without-cgroup"):
        assert f"{code} (" in text, code
    for status in ("0 Success", "1 Errors were found", "2 Usage error"):
        assert status in text, status


def test_subid_file_pages_describe_nsgates_differences():
    subuid = rendered("man5/nsgate-subuid.5")
    assert "canonical decimal" in subuid and "count 0" in subuid
    usernet = rendered("man5/nsgate-lxc-usernet.5")
    for phrase in ("nsgate-private", "nsgu", "per type and per bridge", "/run/lxc/nics",
                   "isolated"):
        assert phrase in usernet, phrase


def test_session_conf_page_describes_the_policy():
    text = rendered("man5/nsgate-session.conf.5")
    for phrase in ("WHO KEY VALUE", "the first in the file wins", "refuses the whole file",
                   "UID_MIN", "pids.max", "memory.swap.max", "cpu.max", "io.weight",
                   "initgroups", "limit-without-cgroup"):
        assert phrase in text, phrase


def test_nothing_leaks_out_of_the_dpkg_sandboxes():
    """The session itself never saw the package: no nsgate in dpkg's database, no diversion, the
    system's helpers untouched."""
    assert subprocess.run(["dpkg-query", "-W", "nsgate"], capture_output=True).returncode != 0
    assert "nsgate" not in subprocess.run(["dpkg-divert", "--list"], capture_output=True,
                                          text=True).stdout
    for path in DIVERTED:
        assert not Path(path).is_symlink() and not Path(path + ".distrib").exists(), path
    assert not Path("/usr/lib/nsgate").exists() or Path("/usr") == PREFIX
