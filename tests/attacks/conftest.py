"""Shared pieces of the attack suite and its report.

Every test here attacks an installed helper as the unprivileged test user alice would, with a
valid-looking request, and asserts on the outcome (security-cases.md part C):
- nothing gained: no map, link, db line or marker file beyond what the request may have;
- nothing partially done: the maps, the links and the nic database are either complete or
  untouched (`Request.outcome`);
- a clear `<prog>: ` message (or the reference's usage text) or success; never a Python
  traceback, never the catch-all "internal error" (save where a test names the one it accepts:
  KeyboardInterrupt after SIGINT, running out of an address space the caller cut down); exit
  status 0 or 1, or death by a signal the caller sent.

`helper` is parametrized over the four helpers (`pytest.mark.helpers(...)` narrows it); each
helper run counts as one probe of the test's attack class (`pytest.mark.attack(...)`). A probe
holds when the assertions on it pass: a passing test holds all its probes, a failing one none,
except where it checks each run on its own and counts the broken ones (`Probes.failed`). At the
end of the session the report prints, per class and helper, how many probes ran and held.
"""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import (
    ALICE,
    PATIENCE,
    SANDBOX,
    Target,
    User,
    as_user,
    helper,
    proc_state,
    transport,
    transport_privs,
    wchan,
)
from tests.usernic_support import (
    DB,
    DB_DIR,
    LOCK,
    Proc,
    add_bridge,
    clean_db,
    db_lines,
    write_db,
)
from tests.usernic_support import USAGE as NIC_USAGE

HELPERS = ("newuidmap", "newgidmap", "getsubids", "lxc-user-nic")
PYTHON = "/usr/bin/python3"
USER_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
USER_ENV = {"PATH": USER_PATH, "HOME": "/nonexistent", "LANG": "C.UTF-8"}
CLEAN_ENV = ["PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL=C.UTF-8"]  # the launcher's
BRIDGE = "nsgtatk0"
MISSING_BRIDGE = "nsgtatk9"
ATTACKS = SANDBOX / "attacks"  # root's: the evil library, scripts; users get subdirectories
MARKERS = ATTACKS / "markers"  # 1777: every payload drops a file here if it ever runs
SUBIDS = b"0: nsgt-alice 200000 65536\n"
GETSUBIDS_USAGE = (b"Usage: getsubids [-g] user\n"
                   b"    list subuid ranges for user\n"
                   b"    pass -g to list subgid ranges\n")
HOST_VETH = re.compile(r"veth\d+_[0-9A-Za-z]{4}")

# The classes in report order (security-cases.md part C).
CLASSES = (
    "C1 argc == 0",
    "C4 fds 0/1/2 closed",
    "C3 environment injection",
    "C3 hostile working directory",
    "C7 rlimits",
    "C7 umask",
    "C13 long and non-UTF-8 arguments",
    "C8 signals from the caller",
    "C8 SIGPIPE on a closed stdout",
    "C15 no_new_privs / missing privilege",
    "C10 PID reuse",
    "C11 symlinks and swaps",
    "S1 hostile service clients",
)


# --- the report -------------------------------------------------------------------------------


class Probes:
    """How many helper runs (probes) the current test made, and how many of them it found
    broken where it checks each run on its own (`failed`); a failing test that does not count
    them has all its probes counted as not held."""

    def __init__(self) -> None:
        self.count = 0
        self.failed = 0


_current: list[Probes] = [Probes()]
_report: dict[tuple[str, str], list[int]] = {}  # -> [probes, probes held, tests, tests failed]
_failed_key = pytest.StashKey[bool]()
_probes_key = pytest.StashKey[Probes]()


def count_probe(n: int = 1) -> None:
    _current[0].count += n


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "attack(name): the hardening class a test attacks")
    config.addinivalue_line("markers", "helpers(*names): the helpers a test applies to")


def pytest_generate_tests(metafunc) -> None:
    if "helper" not in metafunc.fixturenames:
        return
    for mark in metafunc.definition.iter_markers("parametrize"):
        names = mark.args[0]
        names = [n.strip() for n in names.split(",")] if isinstance(names, str) else names
        if "helper" in names:
            return
    only = metafunc.definition.get_closest_marker("helpers")
    metafunc.parametrize("helper", only.args if only else HELPERS)


@pytest.fixture(autouse=True)
def probes(request) -> Iterator[Probes]:
    counter = Probes()
    request.node.stash[_probes_key] = counter
    _current[0] = counter
    yield counter
    _current[0] = Probes()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.failed:
        item.stash[_failed_key] = True
    if report.when == "teardown":
        mark = item.get_closest_marker("attack")
        params = getattr(getattr(item, "callspec", None), "params", {})
        if mark is not None and "helper" in params:
            counter = item.stash.get(_probes_key, Probes())
            failed = item.stash.get(_failed_key, False)
            cell = _report.setdefault((mark.args[0], params["helper"]), [0, 0, 0, 0])
            n = max(counter.count, 1)
            cell[0] += n
            if not failed:
                cell[1] += n
            elif counter.failed:
                cell[1] += max(n - counter.failed, 0)
            cell[2] += 1
            cell[3] += int(failed)
    return report


def pytest_terminal_summary(terminalreporter) -> None:
    if not _report:
        return
    classes = [c for c in CLASSES if any((c, h) in _report for h in HELPERS)]
    classes += sorted({c for c, _ in _report} - set(classes))
    rows = [("attack class", *HELPERS)]
    for cls in classes:
        cells = []
        for name in HELPERS:
            probes, held, _, failed = _report.get((cls, name), (0, 0, 0, 0))
            if probes == 0:
                cells.append("n/a")
            elif failed:
                cells.append(f"{held}/{probes} held, {failed} test{'s' * (failed > 1)} FAILED")
            else:
                cells.append(f"{probes} held")
        rows.append((cls, *cells))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    write = terminalreporter.write_line
    terminalreporter.section("nsgate attack suite: probes per class and helper")
    for i, row in enumerate(rows):
        write(" | ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
        if i == 0:
            write("-+-".join("-" * width for width in widths))
    total = sum(cell[0] for cell in _report.values())
    held = sum(cell[1] for cell in _report.values())
    write(f"{held} of {total} probes held")


# --- running as the attacker ----------------------------------------------------------------


@dataclass
class Result:
    """A finished helper run; `out`/`err` are None where the test did not capture them."""

    rc: int
    out: bytes | None
    err: bytes | None
    elapsed: float = 0.0
    cpu: float = 0.0  # user + system seconds of the run (the kernel's count, not the clock)
    blocked: str | None = None  # with watch=True: the FIFO wait the kernel showed it in

    def __str__(self) -> str:
        return f"exit {self.rc}, stdout {self.out!r}, stderr {self.err!r}"


# Where /proc/PID/wchan shows a process waiting on a FIFO: for a partner to open it, for data.
FIFO_WAITS = ("wait_for_partner", "pipe_read", "anon_pipe_read", "fifo_pipe_read")


def _watch_for_fifo_waits(proc: subprocess.Popen[bytes], seen: list[str]) -> None:
    """Until `proc` ends: if the kernel shows it waiting on a FIFO (where nothing would ever
    wake it), note where and kill it."""
    while proc_state(proc.pid) not in ("Z", "gone"):
        where = wchan(proc.pid)
        if where in FIFO_WAITS:
            seen.append(where)
            proc.kill()
            return
        time.sleep(0.002)


def attack(argv: Sequence[str | bytes], *, user: User = ALICE, extra: Sequence[str] = (),
           env: dict[str, str] | None = None, timeout: float = 60, probe: bool = True,
           watch: bool = False, **kwargs) -> Result:
    """Run argv as `user` (setpriv --reuid … --init-groups) and count it as a probe. `watch`:
    also watch the kernel's wchan of the run for a wait on a FIFO (Result.blocked)."""
    kwargs.setdefault("stdin", subprocess.DEVNULL)
    kwargs.setdefault("stdout", subprocess.PIPE)
    kwargs.setdefault("stderr", subprocess.PIPE)
    data = kwargs.pop("input", None)
    if data is not None:
        kwargs["stdin"] = subprocess.PIPE
    started = time.monotonic()
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    seen: list[str] = []
    with subprocess.Popen(as_user(user, list(argv), extra=tuple(extra)),
                          env=USER_ENV if env is None else env, **kwargs) as proc:
        watcher = threading.Thread(target=_watch_for_fifo_waits, args=(proc, seen))
        if watch:
            watcher.start()
        try:
            out, err = proc.communicate(data, timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        finally:
            if watch:
                watcher.join()
    now = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = now.ru_utime + now.ru_stime - used.ru_utime - used.ru_stime
    if probe:
        count_probe()
    return Result(proc.returncode, out, err, time.monotonic() - started, cpu,
                  seen[0] if seen else None)


def user_env(env: dict[str, str]) -> list[str]:
    """`env -i VAR=… …` to put in front of a command run through setpriv: the hostile
    environment reaches only that command, never setpriv (which runs as root)."""
    return ["/usr/bin/env", "-i", *(f"{k}={v}" for k, v in env.items())]


_CONTROL = re.compile(rb"[\x00-\x09\x0b-\x1f\x7f]")


def assert_clear_error(prog: str, err: bytes, known: Sequence[bytes] = (),
                       allow_internal: Sequence[str] = ()) -> None:
    """A message a person can act on: `<prog>: …` (or the reference's fixed usage text),
    printable UTF-8, bounded, no traceback and no catch-all "internal error"."""
    assert err, "exit 1 without a message"
    assert err.startswith(prog.encode() + b": ") or err in known, err[:2000]
    assert b"Traceback" not in err, err[:2000]
    if b"internal error" in err:
        assert any(f"internal error ({name})".encode() in err for name in allow_internal), err
    assert len(err) < 8192, f"{len(err)} bytes of diagnostics"
    err.decode("utf-8")  # escaped, never raw caller bytes
    assert not _CONTROL.search(err), err[:2000]


# --- requests and their outcome ---------------------------------------------------------------


class Request:
    """One valid-looking (or deliberately refused) request against a fresh target, and a way to
    read what it did. `outcome()` returns "done", "untouched" or None (a helper without state),
    and fails on anything else: a partial action or something beyond the request."""

    prog: str
    args: list[str]
    known: tuple[bytes, ...] = ()

    @property
    def argv(self) -> list[str]:
        return [helper(self.prog), *self.args]

    def outcome(self) -> str | None:
        raise NotImplementedError

    def check_stdout(self, out: bytes) -> None:
        assert out == b"", out

    def close(self) -> None:
        pass


class MapRequest(Request):
    """newuidmap/newgidmap `<pid> 0 <lower> 10` on a fresh user namespace of alice's."""

    def __init__(self, prog: str, lower: int = 200000) -> None:
        self.prog = prog
        self.kind = "uid" if prog == "newuidmap" else "gid"
        self.target = Target.start(ALICE)
        self.pid = self.target.pid
        self.args = [str(self.pid), "0", str(lower), "10"]
        self.expected = [(0, lower, 10)]
        self.known = ()

    def maps(self) -> tuple[list, list, str]:
        def read(name: str) -> list[tuple[int, ...]]:
            text = Path(f"/proc/{self.pid}/{name}").read_text()
            return [tuple(int(x) for x in line.split()) for line in text.splitlines()]
        own, other = (("uid_map", "gid_map") if self.kind == "uid" else ("gid_map", "uid_map"))
        setgroups = Path(f"/proc/{self.pid}/setgroups").read_text().strip()
        return read(own), read(other), setgroups

    def outcome(self) -> str:
        own, other, setgroups = self.maps()
        assert other == [], f"{self.prog} wrote the other map: {other}"
        # the request is authorised through sub{kind}: setgroups is never written (A2)
        assert setgroups == "allow", f"setgroups changed to {setgroups!r}"
        if not own:
            return "untouched"
        assert own == self.expected, f"map {own} is not the request's {self.expected}"
        return "done"

    def close(self) -> None:
        self.target.stop()


class SubidsRequest(Request):
    """getsubids nsgt-alice (it has no state: the listing is the whole outcome)."""

    prog = "getsubids"

    def __init__(self, owner: str = "nsgt-alice") -> None:
        self.args = [owner]
        self.known = (GETSUBIDS_USAGE, b"Error fetching ranges\n")

    def outcome(self) -> None:
        return None

    def check_stdout(self, out: bytes) -> None:
        assert out == SUBIDS, out  # exactly alice's range, nothing more


def net_names(pid: int | None = None) -> set[str]:
    """Link names in the test's netns (or that of `pid`), from /proc/…/net/dev (no fork)."""
    text = Path(f"/proc/{'self' if pid is None else pid}/net/dev").read_text()
    return {line.split(":", 1)[0].strip() for line in text.splitlines()[2:]}


def host_veths() -> set[str]:
    return {name for name in net_names() if HOST_VETH.fullmatch(name)}


def link_detail(name: str, pid: int | None = None) -> dict:
    argv = ["ip", "-d", "-j", "link", "show", "dev", name]
    if pid is not None:
        argv = ["nsenter", f"--net=/proc/{pid}/ns/net", *argv]
    return json.loads(subprocess.run(argv, capture_output=True, check=True, timeout=10).stdout)[0]


def assert_db_files_sound() -> None:
    """The db and its lock are root's 0600 regular files; no temp file is left behind."""
    for path in (DB, LOCK):
        if path.exists():
            st = path.lstat()
            assert (st.st_uid, st.st_gid) == (0, 0), f"{path} owned by {st.st_uid}:{st.st_gid}"
            assert st.st_mode == 0o100600, f"{path} mode {st.st_mode:o}"
    leftovers = [p.name for p in DB_DIR.iterdir() if p not in (DB, LOCK)]
    assert leftovers == [], f"left in {DB_DIR}: {leftovers}"


class NicRequest(Request):
    """lxc-user-nic create on a fresh container of alice's, on the test bridge she is granted."""

    prog = "lxc-user-nic"

    def __init__(self, bridge: str = BRIDGE, name: str | None = None) -> None:
        self.known = (NIC_USAGE,)
        self.bridge = bridge
        self.ctr = Proc.container(ALICE)
        self.pid = self.ctr.pid
        self.args = ["create", "/var/lib/lxc", "c1", str(self.pid), "veth", bridge]
        if name is not None:
            self.args.append(name)
        self.name = name or "eth0"
        self.hosts_before = host_veths()
        self.db_before = db_lines() or []
        self.made: set[str] = set()

    def outcome(self) -> str:
        inside = net_names(self.pid)
        hosts = host_veths()
        new = hosts - self.hosts_before
        self.made |= new
        db = db_lines() or []
        assert_db_files_sound()
        assert all(len(line.split(" ")) == 4 for line in db), db
        added = [line for line in db if line not in self.db_before]
        removed = [line for line in self.db_before if line not in db]
        everything = net_names()
        for line in removed:  # only stale lines of alice's on this bridge may be pruned
            owner, _, bridge, dev = line.split(" ")
            assert (owner, bridge) == ("nsgt-alice", self.bridge) and dev not in everything, \
                f"db line {line!r} removed"
        db_devs = {line.split(" ")[3] for line in db}
        assert hosts <= db_devs, f"host veths without a db line: {hosts - db_devs}"
        if inside == {"lo"}:
            assert not new, f"host veth {new} without its container end"
            assert not added, f"db lines {added} for no interface"
            return "untouched"
        assert inside == {"lo", self.name}, f"container links {inside}"
        assert len(new) == 1, f"host veths {new}"
        host = next(iter(new))
        assert added == [f"nsgt-alice veth {self.bridge} {host}"], added
        assert all(line.split(" ")[3] in everything for line in db
                   if line.startswith(f"nsgt-alice veth {self.bridge} ")), \
            f"stale lines not pruned: {db}"
        detail, peer = link_detail(host), link_detail(self.name, self.pid)
        assert detail.get("master") == self.bridge, detail
        assert "UP" in detail.get("flags", []), detail
        assert detail.get("link_index") == peer["ifindex"], (detail, peer)
        return "done"

    def check_stdout(self, out: bytes) -> None:
        assert re.fullmatch(rb"%s:\d+:veth23001_\w{4}:\d+\n" % self.name.encode(), out), out

    def close(self) -> None:
        for name in self.made | (host_veths() - self.hosts_before):
            subprocess.run(["ip", "link", "del", name], capture_output=True, timeout=10)
        self.ctr.stop()
        if self.ctr in Proc.started:
            Proc.started.remove(self.ctr)


class Scenario:
    """The requests of one helper, each closed at the end of the test."""

    def __init__(self, prog: str) -> None:
        self.prog = prog
        self.opened: list[Request] = []

    def _keep(self, request: Request) -> Request:
        self.opened.append(request)
        return request

    def request(self) -> Request:
        """A fresh valid-looking request the policy allows."""
        if self.prog in ("newuidmap", "newgidmap"):
            return self._keep(MapRequest(self.prog))
        if self.prog == "getsubids":
            return self._keep(SubidsRequest())
        return self._keep(NicRequest())

    def refused(self) -> Request:
        """A fresh request the policy refuses (a range not owned, a user without ranges, a
        bridge that does not exist)."""
        if self.prog in ("newuidmap", "newgidmap"):
            return self._keep(MapRequest(self.prog, lower=100000))
        if self.prog == "getsubids":
            return self._keep(SubidsRequest("nsgt-carol"))
        return self._keep(NicRequest(bridge=MISSING_BRIDGE))

    def close(self, request: Request) -> None:
        request.close()
        if request in self.opened:
            self.opened.remove(request)

    def close_all(self) -> None:
        while self.opened:
            self.opened.pop().close()


@pytest.fixture
def nic_world() -> Iterator[None]:
    """An empty /run/lxc, alice granted 1000 veths on the test bridge; afterwards every
    container stopped and every link the test left deleted."""
    clean_db()
    Path("/etc/lxc").mkdir(exist_ok=True)
    Path("/etc/lxc/lxc-usernet").write_text(f"nsgt-alice veth {BRIDGE} 1000\n")
    os.chmod("/etc/lxc/lxc-usernet", 0o644)
    baseline = net_names()
    add_bridge(BRIDGE)
    yield
    Proc.stop_all()
    for name in net_names() - baseline:
        subprocess.run(["ip", "link", "del", name], capture_output=True, timeout=10)
    Path("/etc/lxc/lxc-usernet").unlink(missing_ok=True)
    clean_db()


@pytest.fixture
def scenario(helper, request) -> Iterator[Scenario]:
    if helper == "lxc-user-nic":
        request.getfixturevalue("nic_world")
    scen = Scenario(helper)
    yield scen
    scen.close_all()


def verify(request: Request, result: Result, *, killed_by: Sequence[int] = (),
           allow_internal: Sequence[str] = ()) -> str:
    """The attack contract on one finished run; "done", "untouched" or "killed"."""
    if transport() == "service":  # served, not refused in-process for want of privilege
        assert b"no_new_privs is set on the calling process" not in (result.err or b""), result
    state = request.outcome()
    for stream in (result.out, result.err):
        assert b"Traceback" not in (stream or b""), result
    if result.rc < 0 and -result.rc in killed_by:
        return state or "killed"
    assert result.rc in (0, 1), f"{request.prog}: {result}"
    if result.rc == 0:
        assert state in (None, "done"), f"exit 0 but {state}: {result}"
        if result.out is not None:
            request.check_stdout(result.out)
        assert result.err in (None, b""), result
        return "done"
    assert state in (None, "untouched"), f"exit 1 but the action was done: {result}"
    assert result.out in (None, b""), result
    if result.err is not None:
        assert_clear_error(request.prog, result.err, request.known, allow_internal)
    return "untouched"


# --- evil payloads ---------------------------------------------------------------------------

EVIL_C = r"""
#include <stdio.h>
#include <fcntl.h>
#include <unistd.h>
static void mark(const char *how)
{
    char path[256];
    snprintf(path, sizeof path, "%s/so.%s.%d.euid%d", MARKERS, how, (int)getpid(), (int)geteuid());
    int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    if (fd >= 0) close(fd);
}
__attribute__((constructor)) static void evil(void) { mark("ctor"); }
/* an LD_AUDIT module, a gconv module and an NSS module all load it */
unsigned int la_version(unsigned int version) { mark("audit"); return version; }
int gconv_init(void *step) { (void)step; mark("gconv"); return 1; }
int gconv(void) { return 1; }
"""


def evil_py(tag: str) -> str:
    """A module body that drops a marker (posix only: it may run before builtins.open)."""
    return ("import posix as _p\n"
            f"_p.close(_p.open({str(MARKERS)!r} + '/py.{tag}.' + str(_p.getpid()) + '.euid' "
            "+ str(_p.geteuid()), _p.O_WRONLY | _p.O_CREAT, 0o644))\n")


@pytest.fixture(scope="session")
def evil_so() -> Path:
    """A shared object whose constructor (and audit/gconv entry points) drop a marker."""
    ATTACKS.mkdir(mode=0o755, exist_ok=True)
    MARKERS.mkdir(exist_ok=True)
    os.chmod(MARKERS, 0o1777)
    source = ATTACKS / "evil.c"
    source.write_text(EVIL_C)
    out = ATTACKS / "evil.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-O1", f'-DMARKERS="{MARKERS}"', "-o", str(out),
                    str(source)], check=True, timeout=60)
    os.chmod(out, 0o755)
    return out


def markers() -> list[str]:
    return sorted(p.name for p in MARKERS.iterdir()) if MARKERS.exists() else []


def clear_markers() -> None:
    for path in MARKERS.iterdir():
        path.unlink()


@pytest.fixture
def marker_dir(evil_so) -> Iterator[Path]:
    """The marker directory, empty at the start; the test fails if anything is left in it."""
    clear_markers()
    yield MARKERS
    left = markers()
    clear_markers()
    assert left == [], f"a payload ran: {left}"


@pytest.fixture
def evil_dir(request) -> Path:
    """A fresh directory alice owns, for her payloads."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", request.node.name)[:120]
    path = ATTACKS / "users" / name
    subprocess.run(["rm", "-rf", str(path)], check=True)
    ATTACKS.mkdir(mode=0o755, exist_ok=True)
    (ATTACKS / "users").mkdir(mode=0o755, exist_ok=True)
    path.mkdir()
    os.chown(path, ALICE.uid, ALICE.gid)
    return path


def chown_tree(path: Path, user: User = ALICE) -> None:
    for item in [path, *path.rglob("*")]:
        os.lchown(item, user.uid, user.gid)


def tree_listing(path: Path) -> list[tuple[str, int, int]]:
    """(relative path, owner, size) of everything under `path`: what a run may not change."""
    return sorted((str(p.relative_to(path)), p.lstat().st_uid, p.lstat().st_size)
                  for p in path.rglob("*"))


# --- signals from a process of the user's ------------------------------------------------------

SIGNALLER = r"""
import json, os, signal, subprocess, sys, time
def stat(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return "gone", "gone"
    return text.rsplit(")", 1)[1].split()[0], text.split("(", 1)[1].rsplit(")", 1)[0]
def state(pid):
    return stat(pid)[0]
for line in sys.stdin:
    req = json.loads(line)
    started = time.monotonic()
    proc = subprocess.Popen(req["argv"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    if req.get("anchor"):  # the launcher has exec'd the interpreter: its comm changes
        while time.monotonic() - started < 2 and stat(proc.pid)[1] not in (req["anchor"],
                                                                           "gone"):
            pass
        started = time.monotonic()
    sent, states = [], []
    for sig, at in req["plan"]:
        delay = started + at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        try:
            os.kill(proc.pid, sig)
            sent.append("sent")
        except PermissionError:
            sent.append("eperm")
        except ProcessLookupError:
            sent.append("gone")
        if sig == signal.SIGSTOP and sent[-1] == "sent":  # it lands: wait for the kernel to
            deadline = time.monotonic() + 60  # show it, however loaded the machine is
            while state(proc.pid) not in ("T", "Z", "gone") and time.monotonic() < deadline:
                time.sleep(0.001)
        else:
            time.sleep(0.002)
        states.append(state(proc.pid))
    out, err = proc.communicate(timeout=30)
    print(json.dumps({"rc": proc.returncode, "out": None if out is None else out.hex(),
                      "err": err.hex(), "sent": sent, "states": states,
                      "elapsed": time.monotonic() - started}), flush=True)
"""


class Signaller:
    """A process of alice's that starts a helper and signals it on a plan: [(signal, seconds
    after the start), …], as alice could from her shell."""

    def __init__(self, user: User = ALICE) -> None:
        self.proc = subprocess.Popen(as_user(user, [PYTHON, "-I", "-c", SIGNALLER],
                                             extra=transport_privs()),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     env=USER_ENV)

    def run(self, argv: list[str], plan: Sequence[tuple[int, float]],
            anchor: str | None = None) -> tuple[Result, dict]:
        """`anchor`: count the plan's times from when the helper's comm becomes this name
        (`python3`: the launcher has exec'd the interpreter), which alice can watch."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        request = {"argv": argv, "plan": [(int(s), t) for s, t in plan], "anchor": anchor}
        self.proc.stdin.write(json.dumps(request).encode() + b"\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, "the signaller died"
        answer = json.loads(line)
        count_probe()
        out = None if answer["out"] is None else bytes.fromhex(answer["out"])
        return Result(answer["rc"], out, bytes.fromhex(answer["err"]), answer["elapsed"]), answer

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def signaller() -> Iterator[Signaller]:
    sender = Signaller()
    yield sender
    sender.close()


# --- a private /run, for states of /run/lxc the session's mount cannot take ---------------------

PRIVATE_RUN = r"""
import json, os, subprocess, sys
cfg = json.loads(sys.argv[1])
subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "nsgate-attack-run", "/run"],
               check=True)
subprocess.run(["sh", "-ec", cfg["setup"]], check=True)
proc = subprocess.run(cfg["argv"], capture_output=True, stdin=subprocess.DEVNULL,
                      env=cfg["env"], timeout=30)
listing = []
for top, dirs, files in os.walk("/run"):
    for name in sorted(dirs + files):
        path = os.path.join(top, name)
        st = os.lstat(path)
        link = os.readlink(path) if os.path.islink(path) else None
        content = None
        if os.path.isfile(path) and not link and st.st_size <= 65536:
            with open(path, "rb") as f:
                content = f.read().hex()
        listing.append([path, st.st_mode, st.st_uid, st.st_gid, st.st_size, link, content])
print(json.dumps({"rc": proc.returncode, "out": proc.stdout.hex(), "err": proc.stderr.hex(),
                  "listing": listing}))
"""


def with_private_run(setup: str, argv: list[str], *, umask: int | None = None
                     ) -> tuple[Result, dict[str, tuple]]:
    """Run argv as alice in a child mount namespace whose /run is a fresh tmpfs prepared by the
    root shell script `setup` (the session's /run/lxc is a mount point and cannot be replaced
    in place). The result and what /run holds afterwards: path -> (mode, uid, gid, size, link
    target, content of a small regular file as hex)."""
    inner = list(argv) if umask is None else ["/bin/sh", "-c", f'umask {umask:o}; exec "$@"',
                                              "sh", *argv]
    cfg = {"setup": setup, "argv": as_user(ALICE, inner), "env": USER_ENV}
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "--", PYTHON, "-I",
                           "-c", PRIVATE_RUN, json.dumps(cfg)], capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    answer = json.loads(proc.stdout)
    count_probe()
    listing = {path: tuple(rest) for path, *rest in answer["listing"]}
    return Result(answer["rc"], bytes.fromhex(answer["out"]), bytes.fromhex(answer["err"])), listing


# --- small helpers shared by several modules -----------------------------------------------------


def wait_for(predicate: Callable[[], bool], timeout: float = PATIENCE, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        time.sleep(0.01)


def fill_db(lines: int) -> list[str]:
    """A database of `lines` lines of other users' (never pruned by alice's create)."""
    content = [f"nsgt-bob veth {BRIDGE} vethb{i:05d}" for i in range(lines)]
    write_db(content)
    return content
