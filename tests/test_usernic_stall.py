"""A caller cannot stall other users through its own lxc-user-nic (issue 9 §4, §5).

The helper makes every id root before the database lock, so its caller cannot signal it; these
tests attack what the caller still had: the helper's cgroups (a v1 freezer cgroup or a v2
cgroup delegated to the caller, frozen while the helper waits for the lock) and its scheduling
(SCHED_IDLE, nice 19, the idle I/O class, a huge timer slack, pinned to one busy CPU). Each test
holds the database lock itself, sees alice's helper blocked on it in /proc/locks, reads where the
kernel has put that helper (/proc/PID/cgroup, /proc/PID/sched, /proc/PID/status), attacks, then
releases the lock: alice's helper and bob's create both finish although alice's cgroup is
frozen. And while it waits, the helper holds only the action's capabilities.

Through the service (transport "service") the same facts hold of the worker that serves alice
and of the service's nic committer, which waits on the lock for the worker's create: neither
ever was in her cgroups nor had her scheduling; only her client is in her reach: frozen with her
cgroup, it stalls neither the service nor bob, and gets its answer once thawed.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.service_support import (
    acting_pids,
    creates_waiting_for_the_lock,
    is_committer,
    module_service,
)
from tests.support import ALICE, BOB, SANDBOX, only_transport, transport, write_etc
from tests.usernic_support import (
    DB_DIR,
    LOCK,
    NSGATE_NIC,
    Proc,
    add_bridge,
    clean_db,
    create,
    db_entries,
    ip,
    ip_links,
    setpriv,
    wait_until,
)

pytestmark = pytest.mark.usefixtures("transport")


CAP_SETGID, CAP_SETUID, CAP_NET_ADMIN = 6, 7, 12
CREATE_CAPS = 1 << CAP_SETGID | 1 << CAP_SETUID | 1 << CAP_NET_ADMIN
DELETE_CAPS = 1 << CAP_SETGID | 1 << CAP_SETUID
FREEZER = Path("/sys/fs/cgroup/freezer")
UNIFIED = Path("/sys/fs/cgroup/unified")
TIMEOUT = 60  # generous: the machine is shared; nothing here decides on time


@pytest.fixture(autouse=True)
def nic_world() -> Iterator[None]:
    baseline = set(ip_links())
    clean_db()
    write_etc("lxc/lxc-usernet", "nsgt-alice veth br0 10\nnsgt-bob veth br0 10\n"
                                 "nsgt-alice veth nsgtovs0 1\n")
    add_bridge("br0")
    yield
    Proc.stop_all()
    for name in set(ip_links()) - baseline:
        try:
            ip("link", "del", name)
        except subprocess.CalledProcessError:
            pass
    Path("/etc/lxc/lxc-usernet").unlink(missing_ok=True)
    clean_db()


class HeldLock:
    """The nic database lock, held by the test as lxc-user-nic or `nsgate nics gc` hold it."""

    def __init__(self) -> None:
        DB_DIR.mkdir(mode=0o755, exist_ok=True)
        self.fd = os.open(LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def waits_on_lock(pid: int) -> bool:
    """Whether the kernel lists `pid` as blocked on a lock (/proc/locks, `->` lines)."""
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if len(fields) > 5 and fields[1] == "->" and fields[5] == str(pid):
            return True
    return False


def lock_waiting(proc: subprocess.Popen[bytes]) -> list[int]:
    """What waits on the lock for the helper started as `proc`, the helper first: the helper
    itself; through the service, the worker serving it, and for a create the service's nic
    committer, which waits on the lock while the worker, confined, waits for the committer."""
    if transport() == "setuid":
        return [proc.pid] if waits_on_lock(proc.pid) else []
    service = module_service().pid
    blocked = {pid for pid in acting_pids(proc.pid) if waits_on_lock(pid)}
    committers = sorted(pid for pid in blocked if is_committer(pid))
    workers = sorted(creates_waiting_for_the_lock(service) | (blocked - set(committers)))
    return [*workers, *committers] if workers else []


def wait_for_the_lock(proc: subprocess.Popen[bytes]) -> list[int]:
    """lock_waiting(proc), once the kernel shows the helper waiting."""
    wait_until(lambda: lock_waiting(proc) or proc.poll() is not None, TIMEOUT,
               "alice's helper blocked on the database lock")
    assert proc.poll() is None, proc.communicate()
    return lock_waiting(proc)


def cgroups_of(pid: int) -> dict[str, str]:
    """controllers (`` for v2) -> path, from /proc/PID/cgroup."""
    lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    return {line.split(":", 2)[1]: line.split(":", 2)[2] for line in lines}


def sched_policy(pid: int) -> int:
    for line in Path(f"/proc/{pid}/sched").read_text().splitlines():
        if line.startswith("policy"):
            return int(line.split(":")[1])
    raise AssertionError("no policy line in /proc/PID/sched")


def status_field(pid: int, name: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no {name} in /proc/PID/status")


def nice_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])


def all_cpus() -> str:
    return Path("/sys/devices/system/cpu/online").read_text().strip()


def start_helper(argv: list[str], preexec: object = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, preexec_fn=preexec)  # type: ignore[arg-type]


def alice_create_argv(pid: int, name: str) -> list[str]:
    return setpriv(ALICE, [NSGATE_NIC, "create", "/var/lib/lxc", "c1", str(pid), "veth", "br0",
                           name])


def assert_out_of_alice_reach(pid: int) -> None:
    """Kernel facts of a helper waiting for the lock: in the root cgroup of every hierarchy
    (a worker of the service: in the service's cgroups, root's, which it never left), SCHED_OTHER
    at nice 0 on every CPU."""
    if transport() == "service":
        assert cgroups_of(pid) == cgroups_of(module_service().pid), cgroups_of(pid)
    else:
        assert cgroups_of(pid) == dict.fromkeys(cgroups_of(pid), "/"), cgroups_of(pid)
    assert sched_policy(pid) == 0  # SCHED_OTHER
    assert nice_of(pid) == 0
    assert status_field(pid, "Cpus_allowed_list") == all_cpus()


def finish(proc: subprocess.Popen[bytes]) -> tuple[int, bytes, bytes]:
    out, err = proc.communicate(timeout=TIMEOUT)
    return proc.returncode, out, err


def assert_both_create(proc: subprocess.Popen[bytes], bob_ctr: Proc) -> None:
    """alice's helper finishes, her cgroup frozen all along; bob's create succeeds too."""
    status, out, err = finish(proc)
    assert status == 0, err
    assert out.startswith(b"a0:"), out
    if "b0" not in bob_ctr.links():
        result = create(BOB, bob_ctr.pid, name="b0", timeout=TIMEOUT)
        assert result.returncode == 0, result.stderr
    assert "b0" in bob_ctr.links()
    assert sorted(owner for owner, *_ in db_entries()) == ["nsgt-alice", "nsgt-bob"]


# --- a frozen cgroup ---------------------------------------------------------------------------


@pytest.fixture
def alice_cgroup(request) -> Iterator[Path]:
    """A cgroup delegated to alice (directory and files hers, as systemd's Delegate= does), in
    the v1 freezer hierarchy or the v2 unified one; thawed and removed afterwards."""
    top = FREEZER if request.param == "v1" else UNIFIED
    path = top / f"nsgt-alice-{os.getpid()}"
    path.mkdir()
    for entry in [path, *path.iterdir()]:
        os.chown(entry, ALICE.uid, ALICE.gid)
    try:
        yield path
    finally:
        thaw(path)
        for pid in (path / "cgroup.procs").read_text().split():
            (top / "cgroup.procs").write_text(pid)
        path.rmdir()


def thaw(cgroup: Path) -> None:
    control = ("freezer.state", "THAWED") if cgroup.is_relative_to(FREEZER) else \
        ("cgroup.freeze", "0")
    (cgroup / control[0]).write_text(control[1])


def freeze_as_alice(cgroup: Path) -> None:
    """alice freezes her own cgroup, and the kernel reports it frozen."""
    if cgroup.is_relative_to(FREEZER):
        control, value = cgroup / "freezer.state", "FROZEN"
        def frozen() -> bool:
            return (cgroup / "freezer.state").read_text().strip() == "FROZEN"
    else:
        control, value = cgroup / "cgroup.freeze", "1"
        def frozen() -> bool:
            return "frozen 1" in (cgroup / "cgroup.events").read_text().splitlines()
    subprocess.run(setpriv(ALICE, ["sh", "-c", f'echo {value} > "$1"', "sh", str(control)]),
                   check=True, timeout=TIMEOUT)
    wait_until(frozen, TIMEOUT, "alice's cgroup frozen")


@pytest.mark.parametrize("alice_cgroup", ["v1", "v2"], indirect=True)
def test_a_frozen_cgroup_stalls_nobody(alice_cgroup):
    """alice runs her helper in a cgroup she controls and freezes it while the helper waits for
    the lock: the helper has left it for the hierarchy's root, so it takes the lock and
    finishes while her cgroup stays frozen, and bob's create goes through."""
    alice_ctr, bob_ctr = Proc.container(ALICE), Proc.container(BOB)
    procs = alice_cgroup / "cgroup.procs"
    lock = HeldLock()
    try:
        proc = start_helper(alice_create_argv(alice_ctr.pid, "a0"),
                            lambda: procs.write_text(str(os.getpid())))
        assert str(proc.pid) in procs.read_text().split()  # started in alice's cgroup
        for waiting in wait_for_the_lock(proc):
            assert_out_of_alice_reach(waiting)
            assert str(waiting) not in procs.read_text().split()
        freeze_as_alice(alice_cgroup)
    finally:
        lock.release()
    if transport() == "service":  # her frozen client waits for its answer; nobody else does
        wait_until(lambda: "a0" in alice_ctr.links(), TIMEOUT, "alice's nic, her client frozen")
        assert proc.poll() is None  # her client: still frozen
        bob = create(BOB, bob_ctr.pid, name="b0", timeout=TIMEOUT)
        assert bob.returncode == 0, bob.stderr
        thaw(alice_cgroup)
    assert_both_create(proc, bob_ctr)
    assert "a0" in alice_ctr.links()


# --- the caller's scheduling -------------------------------------------------------------------


def test_idle_scheduling_pinned_to_a_busy_cpu_stalls_nobody():
    """alice starts her helper under SCHED_IDLE with SCHED_RESET_ON_FORK, nice 19, the idle I/O
    class and a huge timer slack, pinned to CPU 0, which a busy loop keeps busy: while it waits
    for the lock the kernel reports it SCHED_OTHER, nice 0, on every CPU, best-effort I/O."""
    alice_ctr, bob_ctr = Proc.container(ALICE), Proc.container(BOB)
    hog = subprocess.Popen(["taskset", "-c", "0", "sh", "-c", "while :; do :; done"])
    lock = HeldLock()
    try:
        argv = ["taskset", "-c", "0", "nice", "-n", "19", "ionice", "-c", "3",
                "chrt", "--idle", "--reset-on-fork", "0",
                *alice_create_argv(alice_ctr.pid, "a0")]
        proc = start_helper(argv)
        for waiting in wait_for_the_lock(proc):
            assert_out_of_alice_reach(waiting)
            ionice = subprocess.run(["ionice", "-p", str(waiting)], capture_output=True,
                                    text=True, check=True).stdout
            assert ionice.startswith("none") or ionice.startswith("best-effort"), ionice
    finally:
        lock.release()
    try:
        assert_both_create(proc, bob_ctr)
    finally:
        hog.kill()
        hog.wait()


# --- least privilege while it waits --------------------------------------------------------------


@pytest.mark.parametrize("verb", ["create", "delete"])
def test_the_helper_holds_only_the_actions_capabilities(verb):
    """§5: after setresuid(0, 0, 0) the helper's effective, permitted and bounding sets are the
    action's: CAP_NET_ADMIN (create only), CAP_SETUID and CAP_SETGID (the final drop); never
    CAP_SYS_ADMIN, CAP_DAC_OVERRIDE or the others, read while it waits on the lock."""
    alice_ctr = Proc.container(ALICE)
    if verb == "create":
        argv, caps = alice_create_argv(alice_ctr.pid, "a0"), CREATE_CAPS
    else:  # an Open vSwitch delete: nsgtovs0 is no Linux bridge, so it goes to the lock
        argv = setpriv(ALICE, [NSGATE_NIC, "delete", "x", "x", alice_ctr.netns, "veth",
                               "nsgtovs0", "veth23001_abcd"])
        caps = DELETE_CAPS
    lock = HeldLock()
    try:
        proc = start_helper(argv)
        helper = wait_for_the_lock(proc)[0]  # the helper, or the worker serving it
        assert status_field(helper, "Uid").split() == ["0"] * 4
        for field in ("CapEff", "CapPrm", "CapBnd"):
            assert int(status_field(helper, field), 16) == caps, field
        assert int(status_field(helper, "CapInh"), 16) == 0
        assert int(status_field(helper, "CapAmb"), 16) == 0
    finally:
        lock.release()
    status, _, err = finish(proc)
    if verb == "create":
        assert status == 0, err
    else:  # nothing recorded for alice there
        assert status == 1 and b"not allowed to delete" in err, err


# --- where the move is impossible ---------------------------------------------------------------
# The helper's own cgroups in-process; the service's worker never was in the caller's.


@only_transport("setuid")
@pytest.mark.parametrize("alice_cgroup", ["v1"], indirect=True)
def test_a_cgroup_namespace_rooted_in_the_callers_cgroup_is_refused(alice_cgroup):
    """Fail closed: the helper runs in a cgroup namespace whose root is alice's own freezer
    cgroup, and that root is mounted nowhere in its mount namespace (the mount shows the
    hierarchy above it). The helper cannot leave alice's reach, so it refuses before the lock
    and creates nothing."""
    alice_ctr = Proc.container(ALICE)
    procs = alice_cgroup / "cgroup.procs"
    proc = start_helper(["unshare", "--cgroup", *alice_create_argv(alice_ctr.pid, "a0")],
                        lambda: procs.write_text(str(os.getpid())))
    status, out, err = finish(proc)
    assert status == 1 and out == b""
    assert err.startswith(b"lxc-user-nic: cannot leave the caller's cgroup in freezer: the root "
                          b"of that hierarchy is not mounted in this mount namespace\n"), err
    assert b"freeze or throttle" in err
    assert set(alice_ctr.links()) == {"lo"}
    assert db_entries() == []


def _into_root_cgroups_then(cgroup: Path) -> None:
    """In the child, as root: the root cgroup of every hierarchy, then `cgroup` (freezer)."""
    pid = str(os.getpid())
    for procs in Path("/sys/fs/cgroup").glob("*/cgroup.procs"):
        procs.write_text(pid)
    (cgroup / "cgroup.procs").write_text(pid)


@only_transport("setuid")
@pytest.mark.parametrize("owner", ["root", "alice"])
def test_a_containers_cgroup_namespace_root_is_joined_when_it_is_roots(owner):
    """A container's cgroup namespace, rooted at freezer cgroup R, with its own cgroupfs mounted
    (as a container's runtime does): the helper of a user inside leaves its cgroups for R, the
    root it can see, when R is root's alone (its root and manager control it, not the caller);
    when R was delegated to the caller, the helper refuses before the lock."""
    container_root = FREEZER / f"nsgt-ns-{os.getpid()}"
    container_root.mkdir()
    if owner == "alice":
        for entry in [container_root, *container_root.iterdir()]:
            os.chown(entry, ALICE.uid, ALICE.gid)
    alice_ctr = Proc.container(ALICE)
    script = ('mkdir -p "$0" && mount -t cgroup -o freezer nsgt-freezer "$0" && exec "$@"')
    argv = ["unshare", "--cgroup", "--mount", "--propagation", "private", "sh", "-c", script,
            str(SANDBOX / f"freezer-{os.getpid()}"), *alice_create_argv(alice_ctr.pid, "a0")]
    lock = HeldLock()
    try:
        proc = start_helper(argv, lambda: _into_root_cgroups_then(container_root))
        if owner == "root":
            wait_until(lambda: waits_on_lock(proc.pid) or proc.poll() is not None, TIMEOUT,
                       "alice's helper blocked on the database lock")
            assert proc.poll() is None, proc.communicate()
            seen = cgroups_of(proc.pid)  # as the initial cgroup namespace sees it
            assert seen["freezer"] == "/" + container_root.name, seen
            assert all(path == "/" for name, path in seen.items() if name != "freezer"), seen
    finally:
        lock.release()
    try:
        status, out, err = finish(proc)
        if owner == "root":
            assert status == 0 and out.startswith(b"a0:"), err
        else:
            assert status == 1 and out == b""
            assert err.startswith(f"lxc-user-nic: cannot leave the caller's cgroup in freezer "
                                  f"for {SANDBOX}/freezer-{os.getpid()}: it is owned by uid "
                                  f"{ALICE.uid} with mode 0755, not root's alone\n".encode()), err
            assert set(alice_ctr.links()) == {"lo"}
    finally:
        container_root.rmdir()
        (SANDBOX / f"freezer-{os.getpid()}").rmdir()


@only_transport("service")
@pytest.mark.parametrize("alice_cgroup", ["v1"], indirect=True)
def test_through_the_service_the_callers_cgroup_namespace_does_not_matter(alice_cgroup):
    """The caller of the refused case above, served: the worker acts from the service's
    cgroups, out of her reach, so nothing needs refusing."""
    alice_ctr = Proc.container(ALICE)
    procs = alice_cgroup / "cgroup.procs"
    proc = start_helper(["unshare", "--cgroup", *alice_create_argv(alice_ctr.pid, "a0")],
                        lambda: procs.write_text(str(os.getpid())))
    status, out, err = finish(proc)
    assert (status, err) == (0, b"") and out.startswith(b"a0:"), (out, err)
    assert "a0" in alice_ctr.links()
    assert [owner for owner, *_ in db_entries()] == ["nsgt-alice"]
