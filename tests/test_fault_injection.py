"""Crash consistency of what lxc-user-nic writes (issue 4, fault injection): the helper is killed,
or a system call fails, at every system call of a create, with another user creating at the
same time; afterwards the database always parses, every live interface nsgate made has its
line (so the quota holds), and the next create prunes what is stale and works. On a per-user
bridge (`nsgate-private`) the same holds of the bridges record: a private bridge that exists is
always recorded as the user's, so no fault makes the next create refuse it or adopt another.

Killing and failing are done by strace (`-e inject=all:signal=KILL:when=N` and
`error=EIO`) on the installed helper, as root: its caller could not signal it once it holds the
lock, but the kernel's OOM killer or an administrator can."""

from __future__ import annotations

import re
import subprocess
import threading

import pytest

from tests.support import ALICE, BOB, LASTING_CALLS, write_etc
from tests.usernic_support import DB_DIR, NSGATE_NIC, Proc, clean_db, create, db_lines

QUOTA = 1000
OURS = re.compile(r"veth2300[12]_[0-9A-Za-z]{4}")
PRIVATE = f"nsgu{ALICE.uid}"
BRIDGES_RECORD = DB_DIR / "nsgate-bridges"


def links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    return {m.group(1) for m in re.finditer(r"^\d+: ([^:@]+)", out, re.MULTILINE)}


@pytest.fixture
def world():
    clean_db()
    write_etc("lxc/lxc-usernet", f"nsgt-alice veth brf {QUOTA}\nnsgt-bob veth brf {QUOTA}\n"
                                 f"nsgt-alice veth nsgate-private {QUOTA}\n")
    subprocess.run(["ip", "link", "add", "brf", "type", "bridge"], check=True)
    # nsgate's nftables table in place, as after any first create on a Linux bridge, so every
    # create makes the same system calls (installing it: test_usernic_port_security.py)
    assert create(BOB, Proc.container(BOB).pid, bridge="brf").returncode == 0
    yield
    Proc.stop_all()
    for name in links():
        if OURS.fullmatch(name) or name in ("brf", PRIVATE):
            subprocess.run(["ip", "link", "del", name], stderr=subprocess.DEVNULL)
    clean_db()


def traced_create(container: Proc, bridge: str, inject: str) -> subprocess.CompletedProcess[str]:
    argv = ["strace", "-qq", "-o", "/dev/null", "-u", ALICE.name, "-e", f"inject={inject}"]
    argv += [NSGATE_NIC, "create", "x", "x", str(container.pid), "veth", bridge, "eth0"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def syscall_trace(container: Proc, bridge: str) -> list[str]:
    """The system calls of one successful create, in order (on a private bridge, the first
    create: the one that makes the bridge)."""
    log = "/run/nsgate-test/fault-trace"
    result = subprocess.run(["strace", "-qq", "-o", log, "-u", ALICE.name, NSGATE_NIC, "create",
                             "x", "x", str(container.pid), "veth", bridge, "eth0"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    with open(log) as trace:
        return [line.split("(", 1)[0] for line in trace if "(" in line and line[0].isalpha()]


def injection_points(calls: list[str], before_lock: bool, *,
                     kill: bool = False) -> list[tuple[str, int]]:
    """(system call, its n-th invocation) for every call from taking the lock on (where the
    database and the links change), and with `before_lock` for every eighth call before it
    (start-up and checks, where an error in the dynamic loader is not nsgate's to report). To
    `kill`, only the lock's and the first call after each of LASTING_CALLS (with `before_lock`
    before the lock too): a kill anywhere between two of those leaves the same world."""
    seen: dict[str, int] = {}
    points = []
    locked = calls.index("flock")
    for position, name in enumerate(calls):
        seen[name] = seen.get(name, 0) + 1
        after_lasting = position == locked or calls[position - 1] in LASTING_CALLS
        if kill and not after_lasting:
            continue
        if position >= locked or (before_lock and (kill or position % 8 == 0)):
            points.append((name, seen[name]))
    return points


def check_consistent() -> None:
    # Links first: a line is written before its interface is created, so every interface seen
    # now has its line in the database read after it, even while bob is creating.
    present = links()
    live = {name for name in present if OURS.fullmatch(name)}
    lines = db_lines() or []
    for line in lines:
        assert re.fullmatch(r"nsgt-(alice veth (brf|nsgate-private)|bob veth brf) "
                            r"veth2300[12]_[0-9A-Za-z]{4}", line), lines
    recorded = {line.split(" ")[3] for line in lines}
    assert live <= recorded, f"live interfaces without their line: {live - recorded}"
    # The same order for the bridge: its record is written before the bridge is made.
    records = BRIDGES_RECORD.read_text().splitlines() if BRIDGES_RECORD.exists() else []
    assert set(records) <= {f"{ALICE.uid} {PRIVATE}"}, records
    if PRIVATE in present:
        assert records, "a private bridge exists without its record"


def start_over(bridge: str) -> None:
    """Before each faulted create on the private bridge: no bridge and no record, so that every
    run goes through making them (alice's interfaces on it go with the bridge)."""
    if bridge == "nsgate-private":
        subprocess.run(["ip", "link", "del", PRIVATE], stderr=subprocess.DEVNULL)
        BRIDGES_RECORD.unlink(missing_ok=True)


@pytest.mark.parametrize("bridge", ["brf", "nsgate-private"])
@pytest.mark.parametrize("fault", ["signal=KILL", "error=EIO"])
def test_every_system_call_of_a_create_is_a_safe_place_to_fail(world, fault, bridge):
    start_over(bridge)
    points = injection_points(syscall_trace(Proc.container(ALICE), bridge),
                              fault == "signal=KILL", kill=fault == "signal=KILL")
    stop = threading.Event()
    bob_results: list[int] = []

    def bob_creates() -> None:  # a concurrent writer, all along
        while not stop.is_set():
            bob_results.append(create(BOB, Proc.container(BOB).pid, bridge="brf").returncode)

    racer = threading.Thread(target=bob_creates)
    racer.start()
    outcomes = {"killed": 0, "failed": 0, "done": 0}
    try:
        for name, when in points:
            start_over(bridge)
            alice_before = {n for n in links() if n.startswith("veth23001_")}  # bob's: 23002
            result = traced_create(Proc.container(ALICE), bridge, f"{name}:{fault}:when={when}")
            assert "Traceback" not in result.stderr
            if result.returncode == 0:
                outcomes["done"] += 1
            elif fault == "signal=KILL":
                outcomes["killed"] += 1
            else:
                outcomes["failed"] += 1
                assert result.returncode == 1, result
                assert result.stderr.startswith(("lxc-user-nic: ", "nsgate: ")) or \
                    result.stderr == "", result.stderr
                # A create that fails undoes its nic: only a failure to drop privileges once
                # it has succeeded (the helper then writes nothing to the caller's stdout, and
                # the nic goes with its container) leaves one.
                if name not in ("capset", "setresuid", "setresgid"):
                    new = {n for n in links() if n.startswith("veth23001_")} - alice_before
                    assert not new, (name, when, new, result.stderr)
            check_consistent()
    finally:
        stop.set()
        racer.join()
    # The faults did hit: killed runs never finish, and few errors are ones a create may shrug
    # off (closing an fd, cancelling its lock timer).
    assert outcomes["done"] <= (2 if fault == "signal=KILL" else len(points) // 4), outcomes
    assert bob_results and all(code == 0 for code in bob_results), bob_results
    # The next create prunes whatever the failures left stale, and works (on the private
    # bridge: whatever the last fault left of the bridge and its record, it is adopted or made).
    result = create(ALICE, Proc.container(ALICE).pid, bridge=bridge)
    assert result.returncode == 0, result.stderr
    check_consistent()
    if bridge == "nsgate-private":
        assert PRIVATE in links()
    live = {name for name in links() if OURS.fullmatch(name)}
    alice_recorded = {line.split(" ")[3] for line in db_lines() or []
                      if line.startswith("nsgt-alice ")}
    assert alice_recorded <= live  # her stale lines were pruned by that create
