"""nsgate vs the references (shadow's uidmap, LXC's lxc-user-nic): how long a helper call takes.

Run as root:  /usr/bin/python3 -I bench/bench.py [--prefix /usr/local] [--rounds N]
              [--big-rounds N] [--nic-rounds N] [--concurrent-rounds N] [--f-links N]
              [--json FILE] [--service-only]
Exit status: 0 when every README performance target is met; 1 when one is missed (each missed
target named on stderr, so a regression fails `make bench`) or the benchmark failed.

Cases, all measured in one run and interleaved (each round runs every contestant once, in an
order rotated by one place per round, so drift and warm-up affect every contestant alike):
  (a) `newuidmap PID 0 <uid> 1 1 <start> 65536` on a fresh target (a new user namespace of the
      test user for every call), small /etc/subuid;
  (b) the same with a 1,000,000-line /etc/subuid, the user's line near the end; also the peak
      RSS of the helper;
  (c) the interpreter floor, `/usr/bin/python3 -I -S -c pass`;
  (d) end to end, `unshare --user --map-auto cat /proc/self/uid_map /proc/self/gid_map`, with
      PATH putting one pair of helpers first (util-linux runs newuidmap and newgidmap itself);
  (e) `lxc-user-nic create /dev/null dummy PID veth br0 eth0` on a fresh container (a new
      `unshare --user --map-root-user --net` process of the test user for every call, started
      outside the timed window), an empty /run/lxc/nics, a large quota in /etc/lxc/lxc-usernet;
      nsgate (setuid launcher) vs the reference (Debian's liblxc-common, lxc 5.0.2);
  (f) the same with 10,000 lines of other users in /run/lxc/nics (how they are built: see
      DB_OTHER_LINES below), restored before every call;
  (g) 16 concurrent creates of the test user (16 fresh containers, all 16 helpers spawned at
      once by the timer, timed from the first spawn to the last exit), quota 5: the time, and
      how many nics each tool lets through (anything beyond 5 is a quota violation); as a
      yardstick, 16 floors (c) spawned at once the same way.
  (h) to (k): (a), (d), (f) and (g) again with nsgated running (the same installed launchers,
      which try the service first, against the same references in the same rounds):
      nsgated is started by the benchmark for each of these phases, as root in its sandbox,
      with its default options, listening on the launchers' socket in the benchmark's own
      /run/nsgate, and stopped after it (SIGTERM; it must exit 0 and remove its socket);
      during a phase /usr/bin/python3 is bound over with a script that fails loudly, so a
      launcher that fell back to its in-process path ends the benchmark instead of being timed
      as if served. (k) also checks, after every round, that the test user's database lines
      name exactly the veths that exist;
  (l) nsgated's memory when idle, read at the end of each service phase once its pool is full
      and asleep: the parent's RSS and PSS, and the sum of PSS over the parent and its idle
      workers, the figure judged (a worker shares most pages with its parent: RSS counts them
      once per process, PSS divides them among the processes, so the sum is the memory the
      service holds);
  (m) what the launchers' try of the service costs when nothing listens (so nothing gets
      slower without it): seteuid, socket, connect failing, close, seteuid back, as
      csrc/service_client.c does, timed in Python as the test user in 1,000-call batches
      (an upper bound: the interpreter's call overhead is in it), with no socket file and with
      a stale one nobody listens on; judged against (a).
`--service-only` runs (h) to (m) and the references of (h) to (k), for quick iteration.
(c) runs in the rounds of (a)/(d) and again in those of (e), so both ratios to the floor use a
floor measured alongside. (e) and (g) run on a network namespace holding only lo and br0; (f)'s
filler veths are made after (e) and removed before (g).

How a call is timed: a small timer process runs as the test user (started once through setpriv,
so setpriv's own cost is never timed) and, for every request, measures posix_spawn + wait4 of the
program with perf_counter_ns: the exec of the helper as the user, its whole run and its exit,
nothing else. posix_spawn (vfork-style) keeps the timer's side of the fork tiny and the same for
every contestant; stdin is /dev/null, stdout and stderr go to a memfd read after the timed window.
wait4 also gives the helper's ru_maxrss, with one caveat: the kernel counts in a process's
ru_maxrss the peak of the memory it ran in before its execve, here the timer's (posix_spawn
shares the timer's memory until the exec), so ru_maxrss = max(timer's peak, helper's peak). A
figure above the timer's own peak (its VmHWM) is the helper's exact peak; one at or below it is
only an upper bound, printed "<= N". Every run is checked (exit status, the resulting map; for
lxc-user-nic the exact `eth0:<index>:<host veth>:<index>` line with nothing else on stdout or
stderr, both ends of the pair in the kernel, the host end up on br0 with its MTU, the database
line) and the benchmark aborts on the first failure.

Host safety: the script re-execs itself under `unshare --mount --propagation private --pid
--fork --kill-child --mount-proc`, mounts a tmpfs on an empty directory of its own and lays an
overlay over /etc (upper layer on that tmpfs), exactly like tests/conftest.py; the test user,
the subid files and /etc/lxc/lxc-usernet live only in the overlay. The relaunch also makes a
private network namespace (`--net`, lo brought up) in which the benchmark creates br0, the
filler veths of (f) and every container's veth, remounts sysfs (so /sys/class/net, which the
reference reads, shows that namespace) and mounts a tmpfs on /run/lxc and on /run/nsgate (over
a copy-on-write overlay of /run when the host lacks either directory to mount on). When the
benchmark ends, its pid, mount and network namespaces end with it: every process it started
(nsgated too) is killed, every mount and every link is gone.
"""

from __future__ import annotations

import argparse
import contextlib
import grp
import json
import marshal
import os
import platform
import pwd
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PYTHON = "/usr/bin/python3"
REFERENCE_DIR = Path("/usr/bin")  # Debian's uidmap package
HELPER_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}  # what a direct helper call gets
FLOOR_ARGV = [PYTHON, "-I", "-S", "-c", "pass"]


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int


USER = User("nsgb-user", 23501, 23501)
SUB_START, SUB_COUNT = 300_000, 65_536  # the user's range in the small files

# The 1M-line /etc/subuid: 1,000,000 lines, the user's at line 999,990. 65536 ids per line
# cannot be non-overlapping for a million owners within 32 bits, so the others hold 4096 each
# (u<i>:100000+(i-1)*4096:4096, ending at 4,096,100,000) and the user's range lies above them.
BIG_LINES, BIG_USER_LINE = 1_000_000, 999_990
FILLER_START, FILLER_COUNT = 100_000, 4_096
BIG_START = 4_100_000_000

TARGETS = {"a_floor_ratio": 1.3, "b_speedup": 10.0, "b_rss_mib": 30.0, "d_floors": 2.0,
           "e_floor_ratio": 5.0, "f_ratio": 0.5, "g_ratio": 1.0,
           "h_ratio": 1.0, "i_ratio": 1.1, "j_ratio": 0.25, "k_ratio": 1.0, "l_pss_mib": 40.0,
           "m_share": 0.01}

# lxc-user-nic, (e) to (g).
USERNIC_REFERENCE = Path("/usr/libexec/lxc/lxc-user-nic")  # Debian's liblxc-common (lxc 5.0.2)
BRIDGE, BRIDGE_MTU = "br0", 1500
BIG_QUOTA = 1_000_000  # (e), (f): `nsgb-user veth br0 1000000`, never reached
CONCURRENT, CONCURRENT_QUOTA = 16, 5  # (g)
NIC_DIR = Path("/run/lxc")
NIC_DB = NIC_DIR / "nics"
SERVICE_DIR = Path("/run/nsgate")  # the installed launchers' SOCKET (make install's default)
SERVICE_SOCKET = SERVICE_DIR / "io.socket"
SERVICE_WORKERS = 2  # nsgated's default --workers, as the bench starts it
SERVICE_START_SECONDS = 30.0  # bounds waits on the service (start, settle, stop); never timed
SYS_NET = Path("/sys/class/net")
SETTLE_SECONDS = 2.0  # after stopping many containers: see NicLab.park
FILLER_TEARDOWN_SECONDS = 300.0  # the kernel deleting (f)'s filler veths (10,000: ~1 minute?)

# (f)'s database: 10,000 lines `nsgbo<j> veth br0 nsgbf<k>` of 1,000 other users (10 lines each)
# naming --f-links filler veths in turn (by default 250: line i names nsgbf<i mod 250>, 40 lines
# per interface). Both tools drop a line whose interface is gone (the reference: no
# /sys/class/net/<dev>; nsgate: not in its RTM_GETLINK dump), and the reference's cull then
# corrupts the file (it truncates without writing back), so every line must name an interface
# that really exists, or the two tools would not read the same database and it would change from
# call to call. So the benchmark makes that many veth pairs after (e) and before (f): host ends
# `nsgbf00000`... in its network namespace (down, on no bridge, like ports of other users'
# stopped containers), peers in one more network namespace standing in for the other
# containers. Neither tool minds a name recorded twice; none of the lines is the test user's,
# so none counts against its quota. Before every timed call the file is rewritten with exactly
# these 10,000 lines (and nics.lock removed); after it, it must hold them plus the one new line.
# Caveat: a real 10,000-line database names 10,000 interfaces, and nsgate's liveness check
# dumps every link of the host namespace, so its cost grows with the number of links, which
# the default understates; `--f-links 10000` measures that (setting up 10,000 veth pairs takes
# ~15 s and ~1 GB of kernel memory, and the kernel tears them down after the run).
DB_OTHER_LINES, DB_OWNERS, DEFAULT_F_LINKS = 10_000, 1_000, 250

# The timer, run as the test user. Requests and answers are length-prefixed marshal frames on
# stdin/stdout: ([argv, ...], env) in, (ns, [(status, maxrss_kb, output), ...], timer_kb) out.
# All the argvs of a request are spawned at once, one after the other, then reaped: ns runs from
# the first spawn to the last exit ((g); every other case sends one argv). marshal, os and time
# are built in: the timer imports nothing, to keep its own memory (see above) small.
TIMER_CODE = r"""
import gc, marshal, os, time
gc.disable()
null = os.open("/dev/null", os.O_RDONLY)

def read_exactly(size):
    data = b""
    while len(data) < size:
        part = os.read(0, size - len(data))
        if not part:
            raise SystemExit(0)
        data += part
    return data

def own_peak_kb():
    fd = os.open("/proc/self/status", os.O_RDONLY)
    text = os.read(fd, 1 << 14)
    os.close(fd)
    return int(text.split(b"VmHWM:")[1].split()[0])

while True:
    argvs, env = marshal.loads(read_exactly(int.from_bytes(read_exactly(4), "little")))
    outs = [os.memfd_create("out") for _ in argvs]
    jobs = [(argv, [(os.POSIX_SPAWN_DUP2, null, 0), (os.POSIX_SPAWN_DUP2, out, 1),
                    (os.POSIX_SPAWN_DUP2, out, 2)]) for argv, out in zip(argvs, outs)]
    start = time.perf_counter_ns()
    pids = [os.posix_spawn(argv[0], argv, env, file_actions=actions) for argv, actions in jobs]
    ends = [os.wait4(pid, 0) for pid in pids]
    elapsed = time.perf_counter_ns() - start
    runs = [(os.waitstatus_to_exitcode(status), usage.ru_maxrss, os.pread(out, 1 << 16, 0))
            for (_, status, usage), out in zip(ends, outs)]
    for out in outs:
        os.close(out)
    answer = marshal.dumps((elapsed, runs, own_peak_kb()))
    os.write(1, len(answer).to_bytes(4, "little") + answer)
"""


class BenchError(Exception):
    """A failed run or an unusable environment: the benchmark stops."""


# ---------------------------------------------------------------------------------------------
# Outside: relaunch in a private mount and pid namespace.


def relaunch(argv: Sequence[str]) -> int:
    """Run this script again inside fresh namespaces, with an empty directory to mount on."""
    outer_mntns = os.readlink("/proc/self/ns/mnt")
    outer_netns = os.readlink("/proc/self/ns/net")
    scratch = tempfile.mkdtemp(prefix="nsgate-bench.")
    try:
        cmd = ["unshare", "--mount", "--propagation", "private", "--net", "--pid", "--fork",
               "--kill-child", "--mount-proc", sys.executable, "-I",
               os.path.abspath(__file__), *argv, "--scratch", scratch,
               "--outer-mntns", outer_mntns, "--outer-netns", outer_netns]
        return subprocess.run(cmd, check=False).returncode
    finally:
        os.rmdir(scratch)  # mounts on it live only in the namespace, which is gone by now


# ---------------------------------------------------------------------------------------------
# Inside: the sandbox.


def run_quiet(argv: list[str]) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise BenchError(f"{' '.join(argv)} failed: {result.stderr.strip()}")


def mount_points() -> dict[str, tuple[str, str]]:
    """Mount point -> (optional fields, file system type), from /proc/self/mountinfo."""
    points = {}
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        before, after = line.split(" - ", 1)
        fields = before.split()
        points[fields[4]] = (" ".join(fields[6:]), after.split()[0])
    return points


def check_isolated(outer_mntns: str, outer_netns: str) -> None:
    """Refuse to mount anything unless this is a private mount namespace of our own, nor to
    make links unless this is a private network namespace."""
    if os.getpid() != 1 or os.readlink("/proc/self/ns/mnt") == outer_mntns:
        raise BenchError("not in a new mount namespace: refusing to touch /etc")
    if os.readlink("/proc/self/ns/net") == outer_netns:
        raise BenchError("not in a new network namespace: refusing to make links")
    shared = [point for point, (tags, _) in mount_points().items() if "shared:" in tags]
    if shared:
        raise BenchError(f"mounts still propagate to the host: {shared[:3]}")


def overlay_etc(scratch: Path) -> None:
    """tests/conftest.py's sandbox: /etc copy-on-write, the upper layer on a tmpfs."""
    run_quiet(["mount", "-t", "tmpfs", "-o", "mode=0755", "nsgate-bench", str(scratch)])
    upper, work = scratch / "etc-upper", scratch / "etc-work"
    for path in (upper, work):
        path.mkdir()
        os.chmod(path, 0o755)
    run_quiet(["mount", "-t", "overlay", "nsgb-etc", "-o",
               f"lowerdir=/etc,upperdir={upper},workdir={work}", "/etc"])
    if mount_points().get("/etc", ("", ""))[1] != "overlay":
        raise BenchError("/etc is not the overlay after mounting it")


def exists(lookup: Callable[[], object]) -> bool:
    try:
        lookup()
    except KeyError:
        return False
    return True


def add_test_user() -> None:
    taken = [what for what, lookup in (
        (f"user {USER.name}", lambda: pwd.getpwnam(USER.name)),
        (f"uid {USER.uid}", lambda: pwd.getpwuid(USER.uid)),
        (f"gid {USER.gid}", lambda: grp.getgrgid(USER.gid))) if exists(lookup)]
    if taken:
        raise BenchError(f"{', '.join(taken)} already exist(s) here: the test user needs them")
    with open("/etc/passwd", "a") as passwd:
        passwd.write(f"{USER.name}:x:{USER.uid}:{USER.gid}::/nonexistent:/bin/sh\n")
    with open("/etc/group", "a") as group:
        group.write(f"{USER.name}:x:{USER.gid}:\n")


def write_etc(name: str, data: bytes) -> None:
    """Replace a file of the overlay's /etc: root-owned, 0644, as the helpers demand."""
    path = Path("/etc") / name
    path.unlink(missing_ok=True)
    path.write_bytes(data)
    os.chown(path, 0, 0)
    os.chmod(path, 0o644)


def small_subid() -> bytes:
    lines = ["nsgb-other:100000:65536", f"{USER.name}:{SUB_START}:{SUB_COUNT}",
             "nsgb-third:500000:65536"]
    return "".join(line + "\n" for line in lines).encode()


def big_subuid() -> bytes:
    def line(i: int) -> str:
        if i == BIG_USER_LINE:
            return f"{USER.name}:{BIG_START}:{SUB_COUNT}\n"
        return f"u{i}:{FILLER_START + (i - 1) * FILLER_COUNT}:{FILLER_COUNT}\n"

    return "".join(line(i) for i in range(1, BIG_LINES + 1)).encode()


# ---------------------------------------------------------------------------------------------
# Processes of the test user: the timer and the targets.


def as_user(argv: list[str]) -> list[str]:
    return ["setpriv", f"--reuid={USER.uid}", f"--regid={USER.gid}", "--init-groups", "--",
            *argv]


@dataclass(frozen=True)
class Sample:
    ms: float
    status: int
    maxrss_kb: int  # max(the timer's peak, the program's peak): see the module's docstring
    timer_kb: int
    out: str


class Timer:
    """The test user's timing process (TIMER_CODE)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(as_user([PYTHON, "-I", "-S", "-c", TIMER_CODE]),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0,
                                     start_new_session=True)  # Ctrl-C is for the orchestrator

    def run(self, argv: list[str], env: dict[str, str]) -> Sample:
        return self.run_together([argv], env)[0]

    def run_together(self, argvs: list[list[str]], env: dict[str, str]) -> list[Sample]:
        """Spawn every argv at once; each Sample's ms is the whole batch's time."""
        assert self.proc.stdin is not None
        request = marshal.dumps((argvs, env))
        self.proc.stdin.write(len(request).to_bytes(4, "little") + request)
        size = int.from_bytes(self._read(4), "little")
        elapsed, runs, timer_kb = marshal.loads(self._read(size))
        return [Sample(elapsed / 1e6, status, maxrss_kb, timer_kb,
                       out.decode("utf-8", "replace")) for status, maxrss_kb, out in runs]

    def _read(self, size: int) -> bytes:
        assert self.proc.stdout is not None
        data = b""
        while len(data) < size:
            part = self.proc.stdout.read(size - len(data))
            if not part:
                raise BenchError(f"the timer process died (status {self.proc.wait()})")
            data += part
        return data

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Target:
    """A process of the test user that has just entered a new user namespace; with `net`, a
    container: `unshare --user --map-root-user --net`, root of its own user namespace and owner
    of a new network namespace."""

    def __init__(self, *, net: bool = False, wait: bool = True) -> None:
        unshare = ["unshare", "--user", *(["--map-root-user", "--net"] if net else [])]
        self.proc = subprocess.Popen(
            as_user([*unshare, "--", "sh", "-c", "echo ready; exec sleep 600"]),
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, start_new_session=True)
        self.pid = self.proc.pid
        if wait:
            self.wait_ready()

    def wait_ready(self) -> None:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line != b"ready\n":
            self.stop()
            raise BenchError(f"the target did not start: {line!r}")

    @classmethod
    def many(cls, count: int, *, net: bool = False) -> list[Target]:
        """`count` targets started at once (their start-ups overlap), all ready."""
        targets = [cls(net=net, wait=False) for _ in range(count)]
        try:
            for target in targets:
                target.wait_ready()
        except BaseException:
            for target in targets:
                target.stop()
            raise
        return targets

    def uid_map(self) -> list[tuple[int, ...]]:
        return parse_map(Path(f"/proc/{self.pid}/uid_map").read_text())

    def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def parse_map(text: str) -> list[tuple[int, ...]]:
    return [tuple(int(x) for x in line.split()) for line in text.splitlines()]


# ---------------------------------------------------------------------------------------------
# One run of each kind, checked.


def require_success(what: str, argv: list[str], sample: Sample) -> None:
    if sample.status != 0:
        raise BenchError(f"{what}: {' '.join(argv)} exited with status {sample.status}:\n"
                         f"{sample.out.rstrip()}")


def map_once(timer: Timer, what: str, helper: Path, start: int) -> Sample:
    """(a), (b): one newuidmap call on a fresh target."""
    target = Target()
    try:
        argv = [str(helper), str(target.pid), "0", str(USER.uid), "1", "1", str(start),
                str(SUB_COUNT)]
        sample = timer.run(argv, HELPER_ENV)
        require_success(what, argv, sample)
        expected = [(0, USER.uid, 1), (1, start, SUB_COUNT)]
        if target.uid_map() != expected:
            raise BenchError(f"{what}: uid_map is {target.uid_map()}, expected {expected}")
        return sample
    finally:
        target.stop()


def floor_once(timer: Timer) -> Sample:
    """(c): the interpreter alone."""
    sample = timer.run(FLOOR_ARGV, HELPER_ENV)
    require_success("(c) floor", FLOOR_ARGV, sample)
    return sample


def floor_together(timer: Timer) -> Sample:
    """(g)'s yardstick: 16 interpreters at once, what any Python helper pays before its work."""
    samples = timer.run_together([FLOOR_ARGV] * CONCURRENT, HELPER_ENV)
    for sample in samples:
        require_success("(g) floor", FLOOR_ARGV, sample)
    return Sample(samples[0].ms, 0, max(s.maxrss_kb for s in samples), samples[0].timer_kb, "")


def auto_once(timer: Timer, what: str, helper_dir: Path) -> Sample:
    """(d): util-linux's unshare finds newuidmap/newgidmap on PATH and maps itself."""
    argv = ["/usr/bin/unshare", "--user", "--map-auto", "cat", "/proc/self/uid_map",
            "/proc/self/gid_map"]
    sample = timer.run(argv, {"PATH": f"{helper_dir}:/usr/bin:/bin"})
    require_success(what, argv, sample)
    expected = [(0, SUB_START, SUB_COUNT)] * 2  # uid_map, then gid_map
    try:
        maps = parse_map(sample.out)
    except ValueError:
        maps = []
    if maps != expected:
        raise BenchError(f"{what}: printed {sample.out!r}, expected uid_map and gid_map "
                         f"'0 {SUB_START} {SUB_COUNT}'")
    return sample


# ---------------------------------------------------------------------------------------------
# lxc-user-nic: the network sandbox and one run of (e), (f), (g), checked.


def write_root_file(path: Path, data: bytes, mode: int) -> None:
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fchown(fd, 0, 0)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def write_usernet(quota: int) -> None:
    write_etc("lxc/lxc-usernet", f"{USER.name} veth {BRIDGE} {quota}\n".encode())


def filler_name(number: int) -> str:
    return f"nsgbf{number:05d}"


def other_users_db(filler_links: int) -> bytes:
    """(f)'s 10,000 lines of other users (see DB_OTHER_LINES)."""
    return "".join(f"nsgbo{i % DB_OWNERS:03d} veth {BRIDGE} {filler_name(i % filler_links)}\n"
                   for i in range(DB_OTHER_LINES)).encode()


def reset_nic_db(content: bytes) -> None:
    """/run/lxc holds exactly `nics` (root's, 0600, as both tools make it) with `content`: no
    nics.lock, no temp file of an earlier run."""
    for entry in NIC_DIR.iterdir():
        entry.unlink()
    write_root_file(NIC_DB, content, 0o600)


def links() -> set[str]:
    """The links of the benchmark's network namespace (sysfs is mounted there)."""
    return set(os.listdir(SYS_NET))


def usernic_argv(helper: Path, pid: int) -> list[str]:
    return [str(helper), "create", "/dev/null", "dummy", str(pid), "veth", BRIDGE, "eth0"]


def read_sys(host: str, name: str) -> str:
    return (SYS_NET / host / name).read_text().strip()


def check_nic(what: str, out: str, container: Target) -> str:
    """The printed line is `eth0:<index>:<host veth>:<index>\\n` and nothing else (stdout and
    stderr share one buffer, as in liblxc), and it tells the truth: the host end has that index,
    is up on br0 with the bridge's MTU, and its peer has the other index and is the container's
    eth0. Returns the host end's name."""
    fields = out.split(":")
    if (len(fields) != 4 or fields[0] != "eth0" or not fields[1].isdigit() or not fields[2]
            or not out.endswith("\n") or not fields[3][:-1].isdigit()):
        raise BenchError(f"{what}: printed {out!r}, expected 'eth0:<index>:<host veth>:<index>'")
    peer_index, host, host_index = int(fields[1]), fields[2], int(fields[3][:-1])
    try:
        facts = {"ifindex": int(read_sys(host, "ifindex")),
                 "peer": int(read_sys(host, "iflink")), "mtu": int(read_sys(host, "mtu")),
                 "up": bool(int(read_sys(host, "flags"), 16) & 1),
                 "master": os.path.basename(os.readlink(SYS_NET / host / "master"))}
        dev = Path(f"/proc/{container.pid}/net/dev").read_text().splitlines()[2:]
    except (OSError, ValueError) as err:
        raise BenchError(f"{what}: printed {out!r}, but the host end {host!r} cannot be "
                         f"inspected: {err}") from None
    expected = {"ifindex": host_index, "peer": peer_index, "mtu": BRIDGE_MTU, "up": True,
                "master": BRIDGE}
    if facts != expected:
        raise BenchError(f"{what}: printed {out!r}, but the host end is {facts}")
    if "eth0" not in [line.split(":", 1)[0].strip() for line in dev]:
        raise BenchError(f"{what}: printed {out!r}, but the container has no eth0")
    return host


@dataclass(frozen=True)
class QuotaRound:
    """(g), (k), one round: the creates that succeeded, the veths that exist afterwards, the
    test user's lines in the database afterwards, and whether those lines name exactly those
    veths."""
    succeeded: int
    nics: int
    db_lines: int
    consistent: bool = True

    @property
    def over_quota(self) -> int:
        return max(0, self.nics - CONCURRENT_QUOTA)


def is_quota_refusal(out: str) -> bool:
    """The reference says `Quota reached`; nsgate `quota 5 on br0 used by ...`."""
    return "Quota reached" in out or f"quota {CONCURRENT_QUOTA} on {BRIDGE} used" in out


class NicLab:
    """The network side of the sandbox: a private netns with lo up, sysfs of that netns on
    /sys, a tmpfs on /run/lxc, /etc/lxc in the /etc overlay, br0, later (f)'s filler veths.
    `baseline` is the set of links that must be there, and nothing else, between calls."""

    def __init__(self, scratch: Path) -> None:
        run_quiet(["ip", "link", "set", "lo", "up"])
        # The cgroup hierarchies stay reachable under the new sysfs: lxc-user-nic leaves its
        # caller's cgroups through them.
        cgroups = scratch / "cgroup"
        cgroups.mkdir(mode=0o755, exist_ok=True)
        run_quiet(["mount", "--rbind", "/sys/fs/cgroup", str(cgroups)])
        run_quiet(["mount", "-t", "sysfs", "nsgb-sysfs", "/sys"])
        run_quiet(["mount", "--rbind", str(cgroups), "/sys/fs/cgroup"])
        private_run(scratch)
        Path("/etc/lxc").mkdir(mode=0o755, exist_ok=True)  # in the overlay
        run_quiet(["ip", "link", "add", BRIDGE, "type", "bridge"])
        run_quiet(["ip", "link", "set", BRIDGE, "mtu", str(BRIDGE_MTU), "up"])
        self.others: subprocess.Popen[bytes] | None = None
        self.baseline = links()
        self.parked: list[Target] = []

    def add_filler(self, count: int) -> bytes:
        """(f): `count` veth pairs for the database's lines to name (see DB_OTHER_LINES), and
        that database."""
        # The peers' namespace: a root process of our pid namespace, killed with it at the end.
        self.others = subprocess.Popen(
            ["unshare", "--net", "--", "sh", "-c", "echo ready; exec sleep 100000"],
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, start_new_session=True)
        assert self.others.stdout is not None
        if self.others.stdout.readline() != b"ready\n":
            raise BenchError("the filler veths' namespace did not start")
        batch = "".join(f"link add {filler_name(k)} type veth peer name p{k:05d} netns "
                        f"{self.others.pid}\n" for k in range(count))
        result = subprocess.run(["ip", "-batch", "-"], input=batch, capture_output=True,
                                text=True, check=False)
        if result.returncode != 0:
            raise BenchError(f"making the filler veths failed: {result.stderr.strip()}")
        self.baseline = links()
        if len(self.baseline) != count + 2:  # and lo, br0
            raise BenchError(f"expected {count} filler veths, lo and {BRIDGE}; found "
                             f"{len(self.baseline)} links")
        return other_users_db(count)

    def remove_filler(self) -> None:
        """After (f): back to lo and br0 alone, so (g), like (e), runs on a clean namespace.
        Ending the peers' namespace makes the kernel delete every pair, in one batch."""
        if self.others is None:
            return
        self.others.kill()
        self.others.wait()
        if self.others.stdout is not None:
            self.others.stdout.close()
        self.others = None
        self.baseline = {"lo", BRIDGE}
        deadline = time.monotonic() + FILLER_TEARDOWN_SECONDS
        while links() != self.baseline:
            if time.monotonic() > deadline:
                raise BenchError(f"the filler veths are still there after "
                                 f"{FILLER_TEARDOWN_SECONDS:.0f} s")
            time.sleep(0.1)
        time.sleep(SETTLE_SECONDS)

    def park(self, containers: list[Target]) -> None:
        """Keep used containers (by now they hold only lo) until the end of the phase: a killed
        container's network namespace is torn down asynchronously by the kernel, under the rtnl
        lock, which would slow down whichever timed call comes next."""
        self.parked += containers

    def release(self) -> None:
        """Stop the parked containers, and give the kernel time to tear their namespaces down
        before anything else is timed."""
        if self.parked:
            for container in self.parked:
                container.proc.kill()
            for container in self.parked:
                container.stop()
            self.parked = []
            time.sleep(SETTLE_SECONDS)

    def close(self) -> None:
        self.release()
        if self.others is not None:
            self.others.kill()
            self.others.wait()
            if self.others.stdout is not None:
                self.others.stdout.close()
            self.others = None

    def remove_new_links(self) -> None:
        """Delete every link made since the start (a host end takes its peer with it)."""
        for name in sorted(links() - self.baseline):
            subprocess.run(["ip", "link", "del", name], capture_output=True, check=False)

    def check_clean(self, what: str) -> None:
        left = links() - self.baseline
        if left:
            raise BenchError(f"{what}: links left after the cleanup: {sorted(left)}")

    def create_once(self, timer: Timer, what: str, helper: Path, db: bytes) -> Sample:
        """(e), (f): one create on a fresh container, the database holding `db`."""
        reset_nic_db(db)
        container = Target(net=True)
        try:
            argv = usernic_argv(helper, container.pid)
            sample = timer.run(argv, HELPER_ENV)
            require_success(what, argv, sample)
            host = check_nic(what, sample.out, container)
            after = NIC_DB.read_bytes()
            line = f"{USER.name} veth {BRIDGE} {host}\n".encode()
            if after != db + line:
                raise BenchError(f"{what}: /run/lxc/nics has {len(after.splitlines())} lines "
                                 f"after the create, expected the {len(db.splitlines())} before "
                                 f"plus {line!r} (its end: {after[-200:]!r})")
        finally:
            self.remove_new_links()
            self.park([container])
        self.check_clean(what)
        return sample

    def creator(self, what: str, helper: Path, db: bytes) -> Callable[[Timer], Sample]:
        return lambda timer: self.create_once(timer, what, helper, db)

    def concurrent_creator(self, what: str, helper: Path,
                           log: list[QuotaRound]) -> Callable[[Timer], Sample]:
        return lambda timer: self.concurrent_once(timer, what, helper, log)

    def concurrent_once(self, timer: Timer, what: str, helper: Path,
                        log: list[QuotaRound]) -> Sample:
        """(g): 16 creates at once on 16 fresh containers, quota 5, an empty database."""
        reset_nic_db(b"")
        containers = Target.many(CONCURRENT, net=True)
        try:
            argvs = [usernic_argv(helper, container.pid) for container in containers]
            samples = timer.run_together(argvs, HELPER_ENV)
            hosts = set()
            for argv, container, sample in zip(argvs, containers, samples, strict=True):
                if sample.status == 0:
                    hosts.add(check_nic(what, sample.out, container))
                elif sample.status != 1 or not is_quota_refusal(sample.out):
                    raise BenchError(f"{what}: {' '.join(argv)} exited with status "
                                     f"{sample.status}, neither a success nor a quota "
                                     f"refusal:\n{sample.out.rstrip()}")
            made = links() - self.baseline
            if not hosts <= made:
                raise BenchError(f"{what}: reported {sorted(hosts)}, but links are {made}")
            owned = [line.split() for line in NIC_DB.read_bytes().splitlines()
                     if line.split(b" ", 1)[0] == USER.name.encode()]
            named = sorted(fields[3].decode() for fields in owned if len(fields) == 4)
            log.append(QuotaRound(len(hosts), len(made), len(owned),
                                  len(named) == len(owned) and named == sorted(made)))
        finally:
            self.remove_new_links()
            self.park(containers)
        self.check_clean(what)
        return Sample(samples[0].ms, 0, max(s.maxrss_kb for s in samples), samples[0].timer_kb,
                      "")


def private_run(scratch: Path) -> None:
    """Private tmpfs (mode 0755) on /run/lxc (the nics database) and /run/nsgate (nsgated's
    socket). Where the host has no such directory to mount on, a copy-on-write overlay of /run
    (upper layer on the scratch tmpfs) provides it."""
    places = (NIC_DIR, SERVICE_DIR)
    for place in places:
        if place.is_symlink() or (place.exists() and not place.is_dir()):
            raise BenchError(f"{place} is not a directory: the benchmark cannot mount on it")
    if not all(place.exists() for place in places):
        upper, work = scratch / "run-upper", scratch / "run-work"
        for path in (upper, work):
            path.mkdir()
            os.chmod(path, 0o755)
        run_quiet(["mount", "-t", "overlay", "nsgb-run", "-o",
                   f"lowerdir=/run,upperdir={upper},workdir={work}", "/run"])
        for place in places:
            place.mkdir(mode=0o755, exist_ok=True)
    for place in places:
        run_quiet(["mount", "-t", "tmpfs", "-o", "mode=0755", f"nsgb-{place.name}", str(place)])
        if mount_points().get(str(place), ("", ""))[1] != "tmpfs":
            raise BenchError(f"{place} is not the tmpfs after mounting it")


# ---------------------------------------------------------------------------------------------
# nsgated: the service cases (h) to (l), and what the launchers' try of it costs without it (m).


def answers(path: Path) -> bool:
    """Whether something accepts connections on `path`."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        probe.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        probe.close()


@dataclass(frozen=True)
class ServiceMemory:
    """(l): nsgated idle, its pool full and prepared. RSS counts every page a process maps,
    shared or not, so the parent's and its workers' RSS cannot be added up (a worker shares
    pages with its parent); PSS divides each page among the processes that map it, so the sum
    of PSS over the parent and its workers is the memory the service holds, once."""
    parent_rss_kb: int
    parent_pss_kb: int
    workers: int
    pss_sum_kb: int


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise BenchError(f"/proc/{pid}/status has no {field}")


def _pss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    raise BenchError(f"/proc/{pid}/smaps_rollup has no Pss")


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def _children(pid: int) -> list[int]:
    children = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as listing:
            children += [int(child) for child in listing.read().split()]
    return children


class Nsgated:
    """The installed nsgated, started by the benchmark as root in its sandbox (its own
    /run/nsgate, so the installed launchers find it), with its default options, as a system runs
    it; its output goes to a log on the scratch tmpfs, shown if it fails."""

    def __init__(self, nsgate_dir: Path, log: Path) -> None:
        if answers(SERVICE_SOCKET):
            raise BenchError(f"something already listens on {SERVICE_SOCKET}")
        self.log_path = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen([str(nsgate_dir / "nsgated")], stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=out, start_new_session=True)
        deadline = time.monotonic() + SERVICE_START_SECONDS
        while not answers(SERVICE_SOCKET):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise BenchError(f"nsgated did not start listening: {self.log()}")
            time.sleep(0.01)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace").strip() or "(no output)"

    def family(self) -> list[int]:
        """The parent and every descendant (its workers, and whatever else it forked)."""
        family, todo = [], [self.proc.pid]
        while todo:
            pid = todo.pop()
            family.append(pid)
            try:
                todo += _children(pid)
            except FileNotFoundError:
                continue
        return family

    def settle(self) -> None:
        """Wait until the service is idle as a system sees it between requests: the pool
        refilled to its size, every worker asleep, with its pages prepared (no process's RSS
        changed over a tenth of a second)."""
        deadline = time.monotonic() + SERVICE_START_SECONDS
        before: dict[int, int] = {}
        while True:
            if self.proc.poll() is not None:
                raise BenchError(f"nsgated exited with status {self.proc.returncode}: "
                                 f"{self.log()}")
            try:
                family = self.family()
                asleep = all(_state(pid) == "S" for pid in family)  # not a zombie: it has RSS
                now = {pid: _status_kb(pid, "VmRSS") for pid in family} if asleep else {}
            except FileNotFoundError:  # a worker exited between two reads
                now = {}
            if len(now) > SERVICE_WORKERS and now == before:
                return
            if time.monotonic() > deadline:
                raise BenchError(f"nsgated did not settle: {now}")
            before = now
            time.sleep(0.1)

    def memory(self) -> ServiceMemory:
        """(l), once settled."""
        self.settle()
        family = self.family()
        parent = self.proc.pid
        return ServiceMemory(_status_kb(parent, "VmRSS"), _pss_kb(parent), len(family) - 1,
                             sum(_pss_kb(pid) for pid in family))

    def stop(self) -> None:
        """SIGTERM: nsgated stops, removes its socket and exits 0."""
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            status = self.proc.wait(timeout=SERVICE_START_SECONDS)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise BenchError(f"nsgated did not stop on SIGTERM: {self.log()}") from None
        if status != 0:
            raise BenchError(f"nsgated exited with status {status}: {self.log()}")
        if SERVICE_SOCKET.exists():
            raise BenchError(f"nsgated left {SERVICE_SOCKET} behind")


@contextlib.contextmanager
def serving(nsgate_dir: Path, scratch: Path,
            memory: list[ServiceMemory]) -> Iterator[Nsgated]:
    """nsgated runs for the phase, and a launcher cannot fall back to its in-process path
    unnoticed: /usr/bin/python3 is bound over with a script that fails loudly (only a launcher
    that did not reach the service runs it; nsgated, its workers and the timer started their
    interpreters before). At the end of the phase the idle service's memory is read (l)."""
    service = Nsgated(nsgate_dir, scratch / "nsgated.log")
    guard = scratch / "no-fallback"
    guard.write_text("#!/bin/sh\necho 'bench: the launcher fell back to the in-process path: "
                     "nsgated did not serve it' >&2\nexit 99\n")
    guard.chmod(0o755)
    try:
        run_quiet(["mount", "--bind", str(guard), PYTHON])
        try:
            service.settle()
            yield service
            memory.append(service.memory())
        except BenchError as err:
            raise BenchError(f"{err}\nnsgated's output: {service.log()}") from None
        finally:
            run_quiet(["umount", PYTHON])
    finally:
        service.stop()


# (m): what a launcher pays, nothing listening, before its in-process path: one round of the
# try is what use_service_if_running does then (csrc/service_client.c): seteuid to the caller,
# socket, connect (failing), close, seteuid back. Timed in Python as the test user, so each
# figure is an upper bound (the interpreter's call overhead is in it); the setuid launcher's
# seteuid(0) back is a seteuid to the user's own uid here, the same kernel path.
TRY_CODE = r"""
import os, socket, sys, time
path, rounds, calls = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
uid = os.getuid()
for _ in range(rounds):
    start = time.perf_counter_ns()
    for _ in range(calls):
        os.seteuid(uid)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            s.connect(path)
        except OSError:
            pass
        s.close()
        os.seteuid(uid)
    print((time.perf_counter_ns() - start) / calls)
"""
TRY_CALLS = 1000


def service_try(scratch: Path, rounds: int, results: Results) -> None:
    """(m): the try with no socket file (ENOENT: the service was never installed or started)
    and with a socket nobody listens on (ECONNREFUSED: one left by a service that died)."""
    stale = scratch / "stale.socket"
    left = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    left.bind(str(stale))
    left.close()  # bound, never listening: what remains of a service killed with SIGKILL
    os.chmod(stale, 0o666)
    try:
        for impl, path in (("no socket", SERVICE_SOCKET), ("stale socket", stale)):
            if answers(path):
                raise BenchError(f"(m): something listens on {path}")
            result = subprocess.run(
                as_user([PYTHON, "-I", "-S", "-c", TRY_CODE, str(path), str(rounds),
                         str(TRY_CALLS)]), capture_output=True, text=True, check=False)
            if result.returncode != 0:
                raise BenchError(f"(m) {impl}: the timing process failed: {result.stderr}")
            results[("m", impl)] = [Sample(float(line) / 1e6, 0, 0, 0, "")
                                    for line in result.stdout.split()]
    finally:
        stale.unlink()


# ---------------------------------------------------------------------------------------------
# Interleaving and statistics.


@dataclass(frozen=True)
class Contestant:
    case: str  # "a" to "g"
    impl: str  # "nsgate", "reference", "python3"
    run: Callable[[Timer], Sample]

    @property
    def key(self) -> tuple[str, str]:
        return self.case, self.impl


Results = dict[tuple[str, str], list[Sample]]


def interleave(timer: Timer, contestants: list[Contestant], rounds: int, warmup: int,
               results: Results) -> None:
    """Every round runs each contestant once, the order rotated by one place per round."""
    for number in range(-warmup, rounds):
        shift = number % len(contestants)
        for contestant in contestants[shift:] + contestants[:shift]:
            sample = contestant.run(timer)
            if number >= 0:
                results.setdefault(contestant.key, []).append(sample)


@dataclass(frozen=True)
class Stats:
    median_ms: float
    p90_ms: float
    runs: int
    peak_rss_mib: float
    rss_exact: bool  # False: the peak is hidden under the timer's, peak_rss_mib is a bound

    @classmethod
    def of(cls, samples: list[Sample]) -> Stats:
        times = [sample.ms for sample in samples]
        peak = max(sample.maxrss_kb for sample in samples)
        return cls(statistics.median(times),
                   statistics.quantiles(times, n=10, method="inclusive")[8],
                   len(samples), peak / 1024, peak > max(s.timer_kb for s in samples))

    def rss_text(self) -> str:
        return f"{'' if self.rss_exact else '<= '}{self.peak_rss_mib:.1f} MiB"


@dataclass(frozen=True)
class Verdict:
    name: str
    measured: str
    target: str
    passed: bool


Quota = dict[tuple[str, str], list[QuotaRound]]  # (case, impl) -> rounds of (g) or (k)


@dataclass
class Extras:
    """What a run measures besides timed samples: the quota rounds of (g) and (k), and the idle
    service's memory (l), read at the end of every service phase."""
    quota: Quota
    memory: list[ServiceMemory]

    @classmethod
    def empty(cls) -> Extras:
        return cls({(case, impl): [] for case in "gk" for impl in ("nsgate", "reference")}, [])


def ratio_verdict(stats: dict[tuple[str, str], Stats], case: str, goal: float) -> Verdict:
    ratio = stats[case, "nsgate"].median_ms / stats[case, "reference"].median_ms
    return Verdict(f"({case}) nsgate / reference", f"{ratio:.2f}x", f"<= {goal}x",
                   ratio <= goal)


def quota_verdict(case: str, rounds: list[QuotaRound]) -> Verdict:
    over = sum(item.over_quota for item in rounds)
    astray = sum(not item.consistent for item in rounds)
    measured = f"{over} nics in {len(rounds)} rounds"
    if astray:
        measured += f", db != links in {astray}"
    return Verdict(f"({case}) nsgate over quota", measured, "0", over == 0 and not astray)


def verdicts(stats: dict[tuple[str, str], Stats], extras: Extras) -> list[Verdict]:
    """Every target whose figures the run has (--service-only runs (h) to (m) alone)."""
    checks = []
    if ("a", "nsgate") in stats:
        checks += without_service_verdicts(stats, extras.quota)
    if ("h", "nsgate") in stats:
        checks += [ratio_verdict(stats, "h", TARGETS["h_ratio"]),
                   ratio_verdict(stats, "i", TARGETS["i_ratio"]),
                   ratio_verdict(stats, "j", TARGETS["j_ratio"]),
                   ratio_verdict(stats, "k", TARGETS["k_ratio"]),
                   quota_verdict("k", extras.quota["k", "nsgate"])]
    if extras.memory:
        idle = max(extras.memory, key=lambda item: item.pss_sum_kb)
        checks.append(Verdict("(l) nsgated idle PSS", f"{idle.pss_sum_kb / 1024:.1f} MiB",
                              f"<= {TARGETS['l_pss_mib']:.0f} MiB",
                              idle.pss_sum_kb <= TARGETS["l_pss_mib"] * 1024))
    if ("m", "no socket") in stats and ("a", "nsgate") in stats:
        tried = max(stats["m", impl].median_ms for impl in ("no socket", "stale socket"))
        share = tried / stats["a", "nsgate"].median_ms
        checks.append(Verdict("(m) the try / (a)", f"{tried * 1000:.1f} us = {share:.2%}",
                              f"<= {TARGETS['m_share']:.0%}", share <= TARGETS["m_share"]))
    return checks


def without_service_verdicts(stats: dict[tuple[str, str], Stats],
                             quota: Quota) -> list[Verdict]:
    floor = stats["c", "python3"].median_ms
    a_ratio = stats["a", "nsgate"].median_ms / floor
    b_speedup = stats["b", "reference"].median_ms / stats["b", "nsgate"].median_ms
    b_rss = stats["b", "nsgate"]
    d_extra = stats["d", "nsgate"].median_ms - stats["d", "reference"].median_ms
    e_ratio = stats["e", "nsgate"].median_ms / floor
    f_ratio = stats["f", "nsgate"].median_ms / stats["f", "reference"].median_ms
    g_ratio = stats["g", "nsgate"].median_ms / stats["g", "reference"].median_ms
    g_over = sum(item.over_quota for item in quota["g", "nsgate"])
    return [
        Verdict("(a) nsgate / floor", f"{a_ratio:.2f}x", f"<= {TARGETS['a_floor_ratio']}x",
                a_ratio <= TARGETS["a_floor_ratio"]),
        Verdict("(b) reference / nsgate", f"{b_speedup:.1f}x", f">= {TARGETS['b_speedup']:.0f}x",
                b_speedup >= TARGETS["b_speedup"]),
        Verdict("(b) nsgate peak RSS", b_rss.rss_text(), f"< {TARGETS['b_rss_mib']:.0f} MiB",
                b_rss.peak_rss_mib < TARGETS["b_rss_mib"]),
        Verdict("(d) nsgate - reference", f"{d_extra:+.1f} ms = {d_extra / floor:+.2f} floors",
                f"<= {TARGETS['d_floors']:.0f} floors ({TARGETS['d_floors'] * floor:.1f} ms)",
                d_extra <= TARGETS["d_floors"] * floor),
        Verdict("(e) nsgate / floor", f"{e_ratio:.2f}x", f"<= {TARGETS['e_floor_ratio']:.0f}x",
                e_ratio <= TARGETS["e_floor_ratio"]),
        Verdict("(f) nsgate / reference", f"{f_ratio:.2f}x", f"<= {TARGETS['f_ratio']}x",
                f_ratio <= TARGETS["f_ratio"]),
        Verdict("(g) nsgate / reference", f"{g_ratio:.2f}x", f"<= {TARGETS['g_ratio']:.1f}x",
                g_ratio <= TARGETS["g_ratio"]),
        Verdict("(g) nsgate over quota", f"{g_over} nics in {len(quota['g', 'nsgate'])} rounds",
                "0", g_over == 0),
    ]


def exit_status(checks: list[Verdict]) -> tuple[int, list[str]]:
    """1 when any README target is missed (a regression shows in `make bench`'s status), with
    one line per missed target; 0 and nothing when all are met."""
    missed = [f"bench: target missed: {check.name}: {check.measured}, goal {check.target}"
              for check in checks if not check.passed]
    return (1 if missed else 0), missed


def quota_summary(rounds: list[QuotaRound]) -> str:
    """(g), (k): what a tool let through, over all rounds."""
    def spread(values: list[int]) -> str:
        low, high = min(values), max(values)
        return f"{low}" if low == high else f"{low}..{high}"

    over = sum(item.over_quota for item in rounds)
    astray = sum(not item.consistent for item in rounds)
    return (f"{spread([r.succeeded for r in rounds])} of {CONCURRENT} creates succeeded, "
            f"{spread([r.nics for r in rounds])} veths and {spread([r.db_lines for r in rounds])} "
            f"db lines per round; {over} nics over quota in {len(rounds)} rounds; the db named "
            f"exactly the veths made in {len(rounds) - astray} of them")


def memory_summary(samples: list[ServiceMemory]) -> str:
    """(l): the largest of the idle readings, with what the parent alone holds."""
    idle = max(samples, key=lambda item: item.pss_sum_kb)
    return (f"(l) nsgated idle (largest of {len(samples)} readings, one at the end of each "
            f"service phase): parent RSS {idle.parent_rss_kb / 1024:.1f} MiB (PSS "
            f"{idle.parent_pss_kb / 1024:.1f} MiB); parent and its {idle.workers} idle children "
            f"together PSS {idle.pss_sum_kb / 1024:.1f} MiB (the target is judged on this sum: "
            "RSS counts every shared page once per process, PSS divides it among them)")


# ---------------------------------------------------------------------------------------------
# The run.

IMPL_ORDER = ("nsgate", "reference", "python3", "no socket", "stale socket")
CASE_TITLES = {
    "a": "(a) newuidmap, fresh target",
    "b": "(b) newuidmap, 1M-line /etc/subuid",
    "c": "(c) floor: python3 -I -S -c pass",
    "d": "(d) unshare --map-auto, end to end",
    "e": "(e) lxc-user-nic create, empty nics db",
    "f": "(f) lxc-user-nic, 10,000-line nics db",
    "g": f"(g) {CONCURRENT} concurrent creates, quota {CONCURRENT_QUOTA}",
    "h": "(h) nsgated: newuidmap, fresh target",
    "i": "(i) nsgated: unshare --map-auto",
    "j": "(j) nsgated: lxc-user-nic, 10,000 lines",
    "k": f"(k) nsgated: {CONCURRENT} concurrent creates",
    "m": "(m) no nsgated: the launchers' try",
}


def measure(nsgate_dir: Path, lab: NicLab, args: argparse.Namespace, extras: Extras) -> Results:
    """Every phase runs its contestants interleaved; a service phase (h to k) starts nsgated
    before its rounds and stops it after them (see `serving`), and the reference runs in the
    same rounds."""
    rounds, warmup, every = args.rounds, args.warmup, not args.service_only
    scratch, quota = Path(args.scratch), extras.quota
    results: Results = {}
    timer = Timer()
    try:
        write_etc("subuid", small_subid())
        write_etc("subgid", small_subid())
        if every:
            small = [
                Contestant("a", "nsgate", lambda t: map_once(
                    t, "(a) nsgate", nsgate_dir / "newuidmap", SUB_START)),
                Contestant("a", "reference", lambda t: map_once(
                    t, "(a) reference", REFERENCE_DIR / "newuidmap", SUB_START)),
                Contestant("c", "python3", floor_once),
                Contestant("d", "nsgate", lambda t: auto_once(t, "(d) nsgate", nsgate_dir)),
                Contestant("d", "reference", lambda t: auto_once(
                    t, "(d) reference", REFERENCE_DIR)),
            ]
            interleave(timer, small, rounds, warmup, results)
        service_try(scratch, rounds, results)
        served_small = [
            Contestant("h", "nsgate", lambda t: map_once(
                t, "(h) nsgate", nsgate_dir / "newuidmap", SUB_START)),
            Contestant("h", "reference", lambda t: map_once(
                t, "(h) reference", REFERENCE_DIR / "newuidmap", SUB_START)),
            Contestant("i", "nsgate", lambda t: auto_once(t, "(i) nsgate", nsgate_dir)),
            Contestant("i", "reference", lambda t: auto_once(t, "(i) reference", REFERENCE_DIR)),
        ]
        with serving(nsgate_dir, scratch, extras.memory):
            interleave(timer, served_small, rounds, warmup, results)
        if every:
            write_etc("subuid", big_subuid())
            big = [
                Contestant("b", "nsgate", lambda t: map_once(
                    t, "(b) nsgate", nsgate_dir / "newuidmap", BIG_START)),
                Contestant("b", "reference", lambda t: map_once(
                    t, "(b) reference", REFERENCE_DIR / "newuidmap", BIG_START)),
            ]
            interleave(timer, big, args.big_rounds, 1, results)
        nsgate_nic, reference_nic = nsgate_dir / "lxc-user-nic", USERNIC_REFERENCE
        write_usernet(BIG_QUOTA)
        if every:
            empty = [
                Contestant("e", "nsgate", lambda t: lab.create_once(
                    t, "(e) nsgate", nsgate_nic, b"")),
                Contestant("e", "reference", lambda t: lab.create_once(
                    t, "(e) reference", reference_nic, b"")),
                Contestant("c", "python3", floor_once),
            ]
            interleave(timer, empty, args.nic_rounds, warmup, results)
            lab.release()
        big_db = lab.add_filler(args.f_links)
        for case in ("f", "j") if every else ("j",):
            with serving(nsgate_dir, scratch, extras.memory) if case == "j" \
                    else contextlib.nullcontext():
                interleave(timer, [
                    Contestant(case, impl, lab.creator(f"({case}) {impl}", helper, big_db))
                    for impl, helper in (("nsgate", nsgate_nic), ("reference", reference_nic))
                ], args.nic_rounds, warmup, results)
            lab.release()
        lab.remove_filler()
        write_usernet(CONCURRENT_QUOTA)
        for case in ("g", "k") if every else ("k",):
            together = [
                Contestant(case, impl, lab.concurrent_creator(f"({case}) {impl}", helper,
                                                              quota[case, impl]))
                for impl, helper in (("nsgate", nsgate_nic), ("reference", reference_nic))]
            if case == "g":
                together.append(Contestant("g", "python3", floor_together))
            # The quota tally keeps the warm-up round too: every round is a test of the quota.
            with serving(nsgate_dir, scratch, extras.memory) if case == "k" \
                    else contextlib.nullcontext():
                interleave(timer, together, args.concurrent_rounds, 1, results)
            lab.release()
    finally:
        timer.close()
        lab.release()
    return results


def package_version(name: str) -> str:
    result = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", name],
                            capture_output=True, text=True, check=False)
    return result.stdout.strip() or "unknown"


def ms_text(ms: float) -> str:
    return f"{ms:.2f}" if ms >= 0.1 else f"{ms:.4f}"  # (m) is microseconds


def render(stats: dict[tuple[str, str], Stats], checks: list[Verdict], header: list[str],
           notes: list[str]) -> str:
    lines = [*header, "",
             f"{'case':<41} {'impl':<12} {'median ms':>10} {'p90 ms':>9} {'runs':>5} "
             f"{'peak RSS':>14}"]
    for case, case_title in CASE_TITLES.items():
        title = case_title
        for impl in IMPL_ORDER:
            item = stats.get((case, impl))
            if item is None:
                continue
            rss = item.rss_text() if item.peak_rss_mib else ""
            lines.append(f"{title:<41} {impl:<12} {ms_text(item.median_ms):>10} "
                         f"{ms_text(item.p90_ms):>9} {item.runs:>5} {rss:>14}")
            title = ""
    lines += ["", f"{'target':<26} {'measured':<30} {'goal':<28} verdict"]
    lines += [f"{check.name:<26} {check.measured:<30} {check.target:<28} "
              f"{'PASS' if check.passed else 'MISS'}" for check in checks]
    return "\n".join([*lines, "", *notes])


def to_json(stats: dict[tuple[str, str], Stats], checks: list[Verdict], extras: Extras,
            info: dict[str, Any]) -> dict[str, Any]:
    cases: dict[str, dict[str, Any]] = {}
    for (case, impl), item in stats.items():
        cases.setdefault(case, {"title": CASE_TITLES[case]})[impl] = {
            "median_ms": round(item.median_ms, 5), "p90_ms": round(item.p90_ms, 5),
            "runs": item.runs, "peak_rss_mib": round(item.peak_rss_mib, 2),
            "peak_rss_exact": item.rss_exact}
    for (case, impl), rounds in extras.quota.items():
        if rounds:
            cases[case].setdefault("quota_rounds", {})[impl] = [
                {"succeeded": r.succeeded, "nics": r.nics, "db_lines": r.db_lines,
                 "over_quota": r.over_quota, "db_names_the_veths": r.consistent}
                for r in rounds]
    if extras.memory:
        cases["l"] = {"title": "(l) nsgated idle memory", "readings_kib": [
            {"parent_rss": m.parent_rss_kb, "parent_pss": m.parent_pss_kb, "workers": m.workers,
             "pss_sum": m.pss_sum_kb} for m in extras.memory]}
    return {**info, "cases": cases,
            "targets": [{"name": c.name, "measured": c.measured, "goal": c.target,
                         "pass": c.passed} for c in checks]}


def bench(args: argparse.Namespace) -> int:
    check_isolated(args.outer_mntns, args.outer_netns)
    overlay_etc(Path(args.scratch))
    add_test_user()
    lab = NicLab(Path(args.scratch))
    nsgate_dir = Path(args.prefix) / "libexec" / "nsgate"
    extras = Extras.empty()
    try:
        results = measure(nsgate_dir, lab, args, extras)
    finally:
        lab.close()
    stats = {key: Stats.of(samples) for key, samples in sorted(results.items())}
    checks = verdicts(stats, extras)
    info = {"nsgate": str(nsgate_dir), "reference": f"{REFERENCE_DIR} (uidmap "
            f"{package_version('uidmap')})", "util_linux": package_version("util-linux"),
            "reference_usernic": f"{USERNIC_REFERENCE} (liblxc-common "
            f"{package_version('liblxc-common')})",
            "kernel": platform.release(), "cpus": os.cpu_count(), "rounds": args.rounds,
            "big_rounds": args.big_rounds, "nic_rounds": args.nic_rounds,
            "concurrent_rounds": args.concurrent_rounds, "warmup_rounds": args.warmup,
            "service_only": args.service_only,
            "f_database": f"{DB_OTHER_LINES} lines of {DB_OWNERS} other users naming "
            f"{args.f_links} existing veths in turn"}
    header = [f"nsgate {info['nsgate']} vs reference {info['reference']}; util-linux "
              f"{info['util_linux']}; kernel {info['kernel']}, {info['cpus']} CPUs",
              f"lxc-user-nic: nsgate {nsgate_dir / 'lxc-user-nic'} vs reference "
              f"{info['reference_usernic']}; (f), (j) db: {info['f_database']}",
              f"{args.rounds} interleaved rounds (+{args.warmup} warm-up) for (a) (c) (d) (h) "
              f"(i) (m), {args.big_rounds} for (b), {args.nic_rounds} for (e) (with (c) again) "
              f"(f) (j), {args.concurrent_rounds} (+1) for (g) (k); each figure: "
              f"posix_spawn+wait4 of the program as {USER.name}",
              "(a) to (g), (m): nothing listens on nsgated's socket (the launchers' try fails); "
              "(h) to (l): nsgated runs, started by the benchmark"
              + (" (--service-only: (a) to (g) not run)" if args.service_only else "")]
    notes = [f"({case}) {impl}: {quota_summary(rounds)}"
             for (case, impl), rounds in extras.quota.items() if rounds]
    if extras.memory:
        notes.append(memory_summary(extras.memory))
    print(render(stats, checks, header, notes))
    if args.json:
        Path(args.json).write_text(
            json.dumps(to_json(stats, checks, extras, info), indent=2) + "\n")
    status, missed = exit_status(checks)
    for line in missed:
        print(line, file=sys.stderr)
    return status


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--prefix", default="/usr/local", help="nsgate's install prefix")
    parser.add_argument("--rounds", type=int, default=100,
                        help="measured rounds of (a), (c), (d) (default 100)")
    parser.add_argument("--big-rounds", type=int,
                        help="measured rounds of (b) (default: half of --rounds)")
    parser.add_argument("--nic-rounds", type=int,
                        help="measured rounds of (e), (f) (default: half of --rounds)")
    parser.add_argument("--concurrent-rounds", type=int,
                        help="measured rounds of (g) (default: a tenth of --rounds, at least 3)")
    parser.add_argument("--f-links", type=int, default=DEFAULT_F_LINKS,
                        help="veths the 10,000 lines of (f) name in turn (default "
                        f"{DEFAULT_F_LINKS}; 10000: one per line, see the comment on "
                        "DB_OTHER_LINES)")
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured first rounds")
    parser.add_argument("--service-only", action="store_true",
                        help="only the cases of nsgated, (h) to (m), with their references")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--scratch", help=argparse.SUPPRESS)
    parser.add_argument("--outer-mntns", help=argparse.SUPPRESS)
    parser.add_argument("--outer-netns", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.big_rounds is None:
        args.big_rounds = max(3, args.rounds // 2)
    if args.nic_rounds is None:
        args.nic_rounds = max(3, args.rounds // 2)
    if args.concurrent_rounds is None:
        args.concurrent_rounds = max(3, args.rounds // 10)
    if min(args.rounds, args.big_rounds, args.nic_rounds, args.concurrent_rounds) < 3 \
            or args.warmup < 0:
        parser.error("--rounds, --big-rounds, --nic-rounds and --concurrent-rounds must be at "
                     "least 3, --warmup at least 0")
    if not 1 <= args.f_links <= DB_OTHER_LINES:
        parser.error(f"--f-links must be 1 to {DB_OTHER_LINES}")
    if args.json:
        args.json = os.path.abspath(args.json)
    return args


def check_host(prefix: Path) -> None:
    if os.geteuid() != 0:
        raise BenchError("run as root: the benchmark creates namespaces and a test user")
    for directory in (prefix / "libexec" / "nsgate", REFERENCE_DIR):
        for name in ("newuidmap", "newgidmap"):
            if not os.access(directory / name, os.X_OK):
                raise BenchError(f"{directory / name} is missing (make install? apt install "
                                 "uidmap?)")
    for path, hint in ((prefix / "libexec" / "nsgate" / "lxc-user-nic", "make install?"),
                       (prefix / "libexec" / "nsgate" / "nsgated", "make install?"),
                       (USERNIC_REFERENCE, "apt install lxc?")):
        if not os.access(path, os.X_OK):
            raise BenchError(f"{path} is missing ({hint})")


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    try:
        if args.scratch is None:
            check_host(Path(args.prefix))
            return relaunch(argv)
        return bench(args)
    except BenchError as err:
        print(f"bench: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
