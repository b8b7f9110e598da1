"""The test sandbox: real kernel, real setuid helpers, nothing of the host touched.

At session start, as root, the pytest process moves into a private mount namespace and lays a
copy-on-write overlay over /etc (upper layer on a tmpfs), so tests can add users and rewrite
/etc/subuid, /etc/subgid, /etc/login.defs and /etc/nsswitch.conf freely; the host's files never
change, and everything vanishes with the namespace. Helpers run as unprivileged test users through
`setpriv --reuid … --init-groups`, against targets that are those users' own user namespaces.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import (
    ALICE,
    SANDBOX,
    TEST_GROUPS,
    TEST_USERS,
    TRANSPORTS,
    Target,
    set_transport,
)

pytest_plugins = ("tests.ovs_support",)  # real Open vSwitch: fixtures openvswitch, ovsbr

CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000


def _enter_private_namespaces() -> None:
    """A private mount namespace, and a private network namespace: bridges and veths the tests
    make never appear among the host's links."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNS | CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS | CLONE_NEWNET)")
    subprocess.run(["mount", "--make-rprivate", "/"], check=True)
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)


def _overlay_etc() -> None:
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "nsgate-test", str(SANDBOX)],
                   check=True)
    upper, work = SANDBOX / "etc-upper", SANDBOX / "etc-work"
    upper.mkdir(mode=0o755)
    work.mkdir(mode=0o755)
    os.chmod(upper, 0o755)
    subprocess.run(["mount", "-t", "overlay", "nsgate-etc", "-o",
                    f"lowerdir=/etc,upperdir={upper},workdir={work}", "/etc"], check=True)


def _add_test_accounts() -> None:
    with open("/etc/passwd", "a") as passwd:
        for name, uid, gid in TEST_USERS:
            passwd.write(f"{name}:x:{uid}:{gid}::/nonexistent:/bin/sh\n")
    with open("/etc/group", "a") as group:
        for name, gid, members in TEST_GROUPS:
            group.write(f"{name}:x:{gid}:{','.join(members)}\n")


@pytest.fixture(scope="session", autouse=True)
def sandbox() -> None:
    if os.geteuid() != 0:
        pytest.exit("the nsgate tests run as root (they create namespaces and test users)", 2)
    _enter_private_namespaces()
    # The test users' processes inherit the working directory: a checkout under /root or in a
    # 0700 mktemp directory is not theirs to enter (python3 -c then fails on its own sys.path).
    os.chdir("/")
    # A fresh /run of the test's own: nothing the tests make there (the sandbox, /run/lxc)
    # appears on the host, not even an empty mount point.
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "nsgate-run", "/run"], check=True)
    SANDBOX.mkdir(parents=True, exist_ok=True)
    _overlay_etc()
    _add_test_accounts()
    Path("/etc/lxc").mkdir(exist_ok=True)
    Path("/run/lxc").mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "nsgate-lxc", "/run/lxc"],
                   check=True)


def _etc_is_the_sandbox_overlay() -> bool:
    """The last mount on /etc is the session's copy-on-write overlay."""
    etc = [line.split(" - ", 1)[1].split()[:2] for line in
           Path("/proc/self/mountinfo").read_text().splitlines() if line.split()[4] == "/etc"]
    return bool(etc) and etc[-1] == ["overlay", "nsgate-etc"]


@pytest.fixture(autouse=True)
def clean_config() -> None:
    """Every test starts from the same /etc: default subid files, stock login.defs/nsswitch."""
    if not _etc_is_the_sandbox_overlay():  # e.g. a fixture named `sandbox` shadowing ours
        pytest.exit("refusing to write /etc: it is not the session's overlay (conftest.py)", 2)
    Path("/etc/subuid").unlink(missing_ok=True)
    Path("/etc/subgid").unlink(missing_ok=True)
    Path("/etc/subuid").write_text("nsgt-alice:200000:65536\nnsgt-bob:300000:65536\n")
    Path("/etc/subgid").write_text("nsgt-alice:200000:65536\nnsgt-bob:300000:65536\n")
    for name in ("subuid", "subgid"):
        os.chmod(f"/etc/{name}", 0o644)
        os.chown(f"/etc/{name}", 0, 0)
    _restore("/etc/login.defs")
    _restore("/etc/nsswitch.conf")


_originals: dict[str, bytes] = {}


def _restore(path: str) -> None:
    data = _originals.setdefault(path, Path(path).read_bytes())
    Path(path).write_bytes(data)


@pytest.fixture
def user_dir(request) -> Path:
    """A fresh directory alice owns, reachable by her (pytest's tmp_path is under root's 0700)."""
    path = SANDBOX / "users" / request.node.name.replace("/", "_")[:100]
    subprocess.run(["rm", "-rf", str(path)], check=True)
    path.mkdir(parents=True)
    (SANDBOX / "users").chmod(0o755)
    os.chown(path, ALICE.uid, ALICE.gid)
    return path


@pytest.fixture
def targets():
    """Factory: `targets(user)` starts a process of `user` in a new user namespace."""
    started: list[Target] = []

    def start(user=ALICE, *, net: bool = False) -> Target:
        target = Target.start(user, net=net)
        started.append(target)
        return target

    yield start
    for target in started:
        target.stop()


@pytest.fixture
def target(targets) -> Target:
    return targets(ALICE)


def pytest_sessionfinish(session, exitstatus) -> None:
    # Any stray test processes are ours; the mount namespace dies with this process.
    for pid in Target.live_pids():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def nsgated():
    """The installed nsgated, started in the session's sandbox for the module's tests (the one
    the service transport runs, if it does)."""
    from tests.service_support import shared_nsgated

    with shared_nsgated() as service:
        yield service


@pytest.fixture
def fresh_nsgated():
    """A service of the test's own (stopped, if still running, at the end), for tests that kill,
    stop or restart it; the module-wide one, if up, is stopped meanwhile."""
    from tests.service_support import Nsgated, shared_nsgated_paused

    started: list[Nsgated] = []

    def start(*args: str, **kwargs: object) -> Nsgated:
        service = Nsgated(*args, **kwargs)  # type: ignore[arg-type]
        started.append(service)
        return service

    with shared_nsgated_paused():
        yield start
        for service in started:
            if service.proc.poll() is None:
                service.stop()
            else:
                service.proc.communicate()


@pytest.fixture(scope="module", params=TRANSPORTS)
def transport(request) -> Iterator[str]:
    """The module's tests through each transport in turn (tests/support.py): "setuid" with no
    service listening, then "service" with nsgated up and the helpers under no_new_privs."""
    from tests.service_support import listener_inode, shared_nsgated, shared_nsgated_paused

    name = request.param
    with shared_nsgated() if name == "service" else shared_nsgated_paused():
        assert (listener_inode() is not None) == (name == "service")
        set_transport(name)
        try:
            yield name
        finally:
            set_transport("setuid")
