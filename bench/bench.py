"""nsgate vs the reference (shadow's uidmap package): how long a helper call takes.

Run as root:  /usr/bin/python3 -I bench/bench.py [--prefix /usr/local] [--rounds N]
              [--big-rounds N] [--json FILE]

Cases, all measured in one run and interleaved (each round runs every contestant once, in an
order rotated by one place per round, so drift and warm-up affect every contestant alike):
  (a) `newuidmap PID 0 <uid> 1 1 <start> 65536` on a fresh target (a new user namespace of the
      test user for every call), small /etc/subuid;
  (b) the same with a 1,000,000-line /etc/subuid, the user's line near the end; also the peak
      RSS of the helper;
  (c) the interpreter floor, `/usr/bin/python3 -I -S -c pass`;
  (d) end to end, `unshare --user --map-auto cat /proc/self/uid_map /proc/self/gid_map`, with
      PATH putting one pair of helpers first (util-linux runs newuidmap and newgidmap itself).

How a call is timed: a small timer process runs as the test user (started once through setpriv,
so setpriv's own cost is never timed) and, for every request, measures posix_spawn + wait4 of the
program with perf_counter_ns: the exec of the helper as the user, its whole run and its exit,
nothing else. posix_spawn (vfork-style) keeps the timer's side of the fork tiny and the same for
every contestant; stdin is /dev/null, stdout and stderr go to a memfd read after the timed window.
wait4 also gives the helper's ru_maxrss, with one caveat: the kernel counts in a process's
ru_maxrss the peak of the memory it ran in before its execve, here the timer's (posix_spawn
shares the timer's memory until the exec), so ru_maxrss = max(timer's peak, helper's peak). A
figure above the timer's own peak (its VmHWM) is the helper's exact peak; one at or below it is
only an upper bound, printed "<= N". Every run is checked (exit status, the resulting map)
and the benchmark aborts on the first failure.

Host safety: the script re-execs itself under `unshare --mount --propagation private --pid
--fork --kill-child --mount-proc`, mounts a tmpfs on an empty directory of its own and lays an
overlay over /etc (upper layer on that tmpfs), exactly like tests/conftest.py; the test user and
the subid files live only in the overlay. When the benchmark ends, its pid namespace and mount
namespace end with it: every process it started is killed and every mount is gone.
"""

from __future__ import annotations

import argparse
import grp
import json
import marshal
import os
import platform
import pwd
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
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

TARGETS = {"a_floor_ratio": 1.3, "b_speedup": 10.0, "b_rss_mib": 30.0, "d_floors": 2.0}

# The timer, run as the test user. Requests and answers are length-prefixed marshal frames on
# stdin/stdout: (argv, env) in, (ns, status, maxrss_kb, timer_kb, output) out. marshal, os and
# time are built in: the timer imports nothing, to keep its own memory (see above) small.
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
    argv, env = marshal.loads(read_exactly(int.from_bytes(read_exactly(4), "little")))
    out = os.memfd_create("out")
    actions = [(os.POSIX_SPAWN_DUP2, null, 0), (os.POSIX_SPAWN_DUP2, out, 1),
               (os.POSIX_SPAWN_DUP2, out, 2)]
    start = time.perf_counter_ns()
    pid = os.posix_spawn(argv[0], argv, env, file_actions=actions)
    _, status, usage = os.wait4(pid, 0)
    elapsed = time.perf_counter_ns() - start
    answer = marshal.dumps((elapsed, os.waitstatus_to_exitcode(status), usage.ru_maxrss,
                            own_peak_kb(), os.pread(out, 1 << 16, 0)))
    os.close(out)
    os.write(1, len(answer).to_bytes(4, "little") + answer)
"""


class BenchError(Exception):
    """A failed run or an unusable environment: the benchmark stops."""


# ---------------------------------------------------------------------------------------------
# Outside: relaunch in a private mount and pid namespace.


def relaunch(argv: Sequence[str]) -> int:
    """Run this script again inside fresh namespaces, with an empty directory to mount on."""
    outer_mntns = os.readlink("/proc/self/ns/mnt")
    scratch = tempfile.mkdtemp(prefix="nsgate-bench.")
    try:
        cmd = ["unshare", "--mount", "--propagation", "private", "--pid", "--fork",
               "--kill-child", "--mount-proc", sys.executable, "-I",
               os.path.abspath(__file__), *argv, "--scratch", scratch,
               "--outer-mntns", outer_mntns]
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


def check_isolated(outer_mntns: str) -> None:
    """Refuse to mount anything unless this is a private mount namespace of our own."""
    if os.getpid() != 1 or os.readlink("/proc/self/ns/mnt") == outer_mntns:
        raise BenchError("not in a new mount namespace: refusing to touch /etc")
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
        assert self.proc.stdin is not None
        request = marshal.dumps((argv, env))
        self.proc.stdin.write(len(request).to_bytes(4, "little") + request)
        size = int.from_bytes(self._read(4), "little")
        elapsed, status, maxrss_kb, timer_kb, out = marshal.loads(self._read(size))
        return Sample(elapsed / 1e6, status, maxrss_kb, timer_kb,
                      out.decode("utf-8", "replace"))

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
    """A process of the test user that has just entered a new user namespace."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            as_user(["unshare", "--user", "--", "sh", "-c", "echo ready; exec sleep 600"]),
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, start_new_session=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line != b"ready\n":
            self.stop()
            raise BenchError(f"the target did not start: {line!r}")
        self.pid = self.proc.pid

    def uid_map(self) -> list[tuple[int, ...]]:
        return parse_map(Path(f"/proc/{self.pid}/uid_map").read_text())

    def stop(self) -> None:
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
# Interleaving and statistics.


@dataclass(frozen=True)
class Contestant:
    case: str  # "a", "b", "c", "d"
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


def verdicts(stats: dict[tuple[str, str], Stats]) -> list[Verdict]:
    floor = stats["c", "python3"].median_ms
    a_ratio = stats["a", "nsgate"].median_ms / floor
    b_speedup = stats["b", "reference"].median_ms / stats["b", "nsgate"].median_ms
    b_rss = stats["b", "nsgate"]
    d_extra = stats["d", "nsgate"].median_ms - stats["d", "reference"].median_ms
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
    ]


# ---------------------------------------------------------------------------------------------
# The run.

CASE_TITLES = {
    "a": "(a) newuidmap, fresh target",
    "b": "(b) newuidmap, 1M-line /etc/subuid",
    "c": "(c) floor: python3 -I -S -c pass",
    "d": "(d) unshare --map-auto, end to end",
}


def measure(nsgate_dir: Path, rounds: int, big_rounds: int, warmup: int) -> Results:
    results: Results = {}
    timer = Timer()
    try:
        write_etc("subuid", small_subid())
        write_etc("subgid", small_subid())
        small = [
            Contestant("a", "nsgate", lambda t: map_once(
                t, "(a) nsgate", nsgate_dir / "newuidmap", SUB_START)),
            Contestant("a", "reference", lambda t: map_once(
                t, "(a) reference", REFERENCE_DIR / "newuidmap", SUB_START)),
            Contestant("c", "python3", floor_once),
            Contestant("d", "nsgate", lambda t: auto_once(t, "(d) nsgate", nsgate_dir)),
            Contestant("d", "reference", lambda t: auto_once(t, "(d) reference", REFERENCE_DIR)),
        ]
        interleave(timer, small, rounds, warmup, results)
        write_etc("subuid", big_subuid())
        big = [
            Contestant("b", "nsgate", lambda t: map_once(
                t, "(b) nsgate", nsgate_dir / "newuidmap", BIG_START)),
            Contestant("b", "reference", lambda t: map_once(
                t, "(b) reference", REFERENCE_DIR / "newuidmap", BIG_START)),
        ]
        interleave(timer, big, big_rounds, 1, results)
    finally:
        timer.close()
    return results


def package_version(name: str) -> str:
    result = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", name],
                            capture_output=True, text=True, check=False)
    return result.stdout.strip() or "unknown"


def render(stats: dict[tuple[str, str], Stats], checks: list[Verdict], header: list[str]) -> str:
    lines = [*header, "",
             f"{'case':<38} {'impl':<10} {'median ms':>10} {'p90 ms':>9} {'runs':>5} "
             f"{'peak RSS':>14}"]
    for case in "abcd":
        for (key_case, impl), item in stats.items():
            if key_case != case:
                continue
            title = CASE_TITLES[case] if impl in ("nsgate", "python3") else ""
            lines.append(f"{title:<38} {impl:<10} {item.median_ms:>10.2f} {item.p90_ms:>9.2f} "
                         f"{item.runs:>5} {item.rss_text():>14}")
    lines += ["", f"{'target':<26} {'measured':<28} {'goal':<28} verdict"]
    lines += [f"{check.name:<26} {check.measured:<28} {check.target:<28} "
              f"{'PASS' if check.passed else 'MISS'}" for check in checks]
    return "\n".join(lines)


def to_json(stats: dict[tuple[str, str], Stats], checks: list[Verdict],
            info: dict[str, Any]) -> dict[str, Any]:
    cases: dict[str, dict[str, Any]] = {}
    for (case, impl), item in stats.items():
        cases.setdefault(case, {"title": CASE_TITLES[case]})[impl] = {
            "median_ms": round(item.median_ms, 3), "p90_ms": round(item.p90_ms, 3),
            "runs": item.runs, "peak_rss_mib": round(item.peak_rss_mib, 2),
            "peak_rss_exact": item.rss_exact}
    return {**info, "cases": cases,
            "targets": [{"name": c.name, "measured": c.measured, "goal": c.target,
                         "pass": c.passed} for c in checks]}


def bench(args: argparse.Namespace) -> int:
    check_isolated(args.outer_mntns)
    overlay_etc(Path(args.scratch))
    add_test_user()
    nsgate_dir = Path(args.prefix) / "libexec" / "nsgate"
    results = measure(nsgate_dir, args.rounds, args.big_rounds, args.warmup)
    stats = {key: Stats.of(samples) for key, samples in sorted(results.items())}
    checks = verdicts(stats)
    info = {"nsgate": str(nsgate_dir), "reference": f"{REFERENCE_DIR} (uidmap "
            f"{package_version('uidmap')})", "util_linux": package_version("util-linux"),
            "kernel": platform.release(), "cpus": os.cpu_count(), "rounds": args.rounds,
            "big_rounds": args.big_rounds, "warmup_rounds": args.warmup}
    header = [f"nsgate {info['nsgate']} vs reference {info['reference']}; util-linux "
              f"{info['util_linux']}; kernel {info['kernel']}, {info['cpus']} CPUs",
              f"{args.rounds} interleaved rounds (+{args.warmup} warm-up), {args.big_rounds} for "
              f"(b); each figure: posix_spawn+wait4 of the program as {USER.name}"]
    print(render(stats, checks, header))
    if args.json:
        Path(args.json).write_text(json.dumps(to_json(stats, checks, info), indent=2) + "\n")
    return 0


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--prefix", default="/usr/local", help="nsgate's install prefix")
    parser.add_argument("--rounds", type=int, default=100,
                        help="measured rounds of (a), (c), (d) (default 100)")
    parser.add_argument("--big-rounds", type=int,
                        help="measured rounds of (b) (default: half of --rounds)")
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured first rounds")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--scratch", help=argparse.SUPPRESS)
    parser.add_argument("--outer-mntns", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.big_rounds is None:
        args.big_rounds = max(3, args.rounds // 2)
    if args.rounds < 3 or args.big_rounds < 3 or args.warmup < 0:
        parser.error("--rounds and --big-rounds must be at least 3, --warmup at least 0")
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
