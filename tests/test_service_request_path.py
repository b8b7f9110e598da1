"""Neither a fork nor an import on a request's path (issue 10 §4): what the kernel shows the
service doing while it serves, through strace. The parent hands a connection to a worker it
forked before (no clone between the accept and the hand-over while idle workers exist); the
worker, and any child it forks to run a program, reads no module of nsgate's library or of
Python's while it serves (everything was imported before the fork), for each helper and each
kind of answer: done, refused, malformed; on a Linux bridge, a private bridge and Open
vSwitch."""

from __future__ import annotations

import re
import sysconfig
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.ovs_support import Bridge, OpenVSwitch
from tests.service_support import LIBDIR, Nsgated, ask, syscalls, traced
from tests.support import ALICE, BOB, SANDBOX, write_etc
from tests.usernic_support import Proc, add_bridge, clean_db, ip, ip_links

BRIDGE = "nsgtpath0"
STDLIB = sysconfig.get_paths()["stdlib"]  # the interpreter's: /usr/lib/python3.X
Answer = dict[str, object]


def test_a_request_is_handed_to_a_worker_forked_before_it(fresh_nsgated, target):
    service = fresh_nsgated()
    service.settle()
    before = set(service.workers())
    log = SANDBOX / "parent-trace"
    with traced(service.pid, "-e", "trace=accept4,sendmsg,clone,clone3,fork,vfork", log=log):
        answer = ask(ALICE, "newuidmap", [str(target.pid), "0", "23001", "1"])
        service.settle()
    assert answer == {"status": 0, "out": "", "err": ""}
    calls = [(name, line) for name, _, line in syscalls(log)]
    accepted = next(i for i, (name, line) in enumerate(calls)
                    if name == "accept4" and not re.search(r"= -1 ", line))
    handed = next(i for i, (name, _) in enumerate(calls) if name == "sendmsg")
    assert accepted < handed
    assert not [name for name, _ in calls[accepted:handed] if "fork" in name or "clone" in name]
    # the worker that served was one of the pool, which is then refilled (off the path)
    assert len(before - set(service.workers())) == 1
    assert [name for name, _ in calls[handed:]].count("clone") == 1


def module_reads(log: Path) -> list[str]:
    """The paths a `strace -f -e trace=%file` log shows opened or looked at that are Python
    modules: nsgate's library, the standard library, any .py, .pyc or __pycache__."""
    found = []
    for path in re.findall(r'"(/[^"]*)"', log.read_text()):
        if (path.startswith((str(LIBDIR), STDLIB)) or "__pycache__" in path
                or path.endswith((".py", ".pyc"))):
            found.append(path)
    return found


@pytest.fixture
def one_worker(fresh_nsgated) -> Nsgated:
    return fresh_nsgated("--workers", "1")


def served_without_imports(service: Nsgated, request: Callable[[], Answer]) -> Answer:
    """`request`'s answer, asserting that the worker serving it read no module."""
    service.settle()
    (worker,) = service.workers()
    log = SANDBOX / "worker-files"
    with traced(worker, "-f", "-e", "trace=%file,exit_group", log=log) as tracer:
        answer = request()
        tracer.wait()
    assert module_reads(log) == [], answer
    assert re.search(rf"^{worker} +exit_group\(0\)", log.read_text(), re.MULTILINE), \
        "the trace did not follow the worker to its end"
    return answer


def test_the_map_helpers_and_getsubids_import_nothing_while_serving(one_worker, targets):
    mine, bobs = targets(ALICE), targets(BOB)
    requests: list[tuple[Callable[[], Answer], int]] = [
        (lambda: ask(ALICE, "newuidmap", [str(mine.pid), "0", "23001", "1", "1", "200000",
                                          "1000"]), 0),
        (lambda: ask(ALICE, "newgidmap", [str(mine.pid), "0", "23001", "1"]), 0),
        (lambda: ask(ALICE, "newuidmap", [str(bobs.pid), "0", "300000", "1"]), 1),
        (lambda: ask(ALICE, "newuidmap", ["notapid", "0", "1", "1"]), 1),
        (lambda: ask(ALICE, "getsubids", ["nsgt-alice"]), 0),
        (lambda: ask(ALICE, "getsubids", ["-g", "nsgt-alice"]), 0),
        (lambda: ask(ALICE, "getsubids", []), 1),
        (lambda: ask(ALICE, "newuidmap", [], open_target=False, raw="6e736761746501"), 1),
    ]
    for request, status in requests:
        answer = served_without_imports(one_worker, request)
        assert answer["status"] == status, answer


@pytest.fixture
def nics() -> Iterator[Proc]:
    clean_db()
    add_bridge(BRIDGE)
    write_etc("lxc/lxc-usernet", f"nsgt-alice veth {BRIDGE} 1\n"
                                 "nsgt-alice veth nsgate-private 1\nnsgt-alice veth ovsbr 1\n")
    try:
        yield Proc.container(ALICE)
    finally:
        Proc.stop_all()
        for bridge in (BRIDGE, f"nsgu{ALICE.uid}"):  # the Linux one, alice's private one
            if bridge in ip_links():
                ip("link", "del", bridge)
        clean_db()


def nic(container: Proc, verb: str, bridge: str, name: str, host: str = "") -> Answer:
    target = str(container.pid) if verb == "create" else container.netns
    args = ["create", "/var/lib/lxc", "c1", target, "veth", bridge, name]
    if verb == "delete":
        args = ["delete", "x", "x", target, "veth", bridge, host]
    return ask(ALICE, "lxc-user-nic", args)


def test_lxc_user_nic_imports_nothing_while_serving(one_worker, nics, openvswitch: OpenVSwitch):
    """Create (the first on a Linux bridge installs nsgate's nftables table through a forked
    runner), a create over the quota, a delete (refused on a Linux bridge, as LXC's: its port
    goes with the container); a private bridge; Open vSwitch, whose runner execs ovs-vsctl."""
    ovs = Bridge(openvswitch, "ovsbr")
    try:
        for n, bridge in enumerate((BRIDGE, "nsgate-private", "ovsbr")):
            answer = served_without_imports(
                one_worker, lambda b=bridge, n=n: nic(nics, "create", b, f"eth{n}"))
            assert answer["status"] == 0, (bridge, answer)
            host = str(answer["out"]).split(":")[2]
            answer = served_without_imports(
                one_worker, lambda b=bridge, n=n: nic(nics, "create", b, f"over{n}"))
            assert answer["status"] == 1 and "quota" in str(answer["err"]), (bridge, answer)
            answer = served_without_imports(
                one_worker, lambda b=bridge, h=host: nic(nics, "delete", b, "", h))
            assert answer["status"] == (0 if bridge == "ovsbr" else 1), (bridge, answer)
    finally:
        ovs.remove()
