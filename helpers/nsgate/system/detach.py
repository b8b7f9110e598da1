"""Out of the caller's reach before waiting on a lock other users need (issue 9 §4).

`credentials.become_unsignalable` stops the caller's signals, but a process also runs where its
cgroups and its scheduling put it, and both came from the caller: a caller could freeze the
helper's cgroup (v2 `cgroup.freeze`, the v1 freezer), starve it (a tiny `cpu.max`, a v1 cpuset,
SCHED_IDLE pinned to a busy CPU) while it holds the nic database lock, and every other user's
lxc-user-nic and `nsgate nics gc` would wait. So, once every id is root (the caller can then no
longer move it back, renice it or change its affinity), the helper:

- moves itself, in every cgroup hierarchy it belongs to (each v1 controller hierarchy and the v2
  unified one), into the root of that hierarchy as its cgroup namespace shows it: the root cannot
  be frozen or limited, and only root can move processes into or out of it. In a container's
  cgroup namespace that root is the container's, which its root and its manager control, not an
  unprivileged caller; it is accepted only as a directory of root's that no one else can write.
  Where the move cannot be made (the hierarchy's root is not mounted in this mount namespace, it
  refuses processes, it is not root's alone), the helper stops with the reason: it never goes on
  stallable (fail closed).
- resets its scheduling: SCHED_OTHER without SCHED_RESET_ON_FORK, nice 0, every CPU its new
  cpuset allows, the default I/O priority, the default timer slack.
"""

import posix

from nsgate.errors import Refusal
from nsgate.system import kernel

CGROUP_SUPER_MAGIC = 0x27E0EB
CGROUP2_SUPER_MAGIC = 0x63677270
INIT_CGROUP_NS_INODE = 0xEFFFFFFB  # PROC_CGROUP_INIT_INO: the initial cgroup namespace
_ALL_CPUS = range(8192)  # NR_CPUS's upper bound; the kernel keeps the ones the cpuset allows
DEFAULT_TIMER_SLACK_NS = 50_000  # the kernel's default for a SCHED_OTHER task
_WHY = ("while it stays there its caller could freeze or throttle it as it holds the lock "
        "every other user's lxc-user-nic waits for")


def from_caller() -> None:
    """Leave the caller's cgroups and scheduling. Call with every id root, before the lock."""
    try:
        _leave_caller_cgroups()
    except OSError as err:  # reading /proc/self: the move itself names its own failures
        raise Refusal(f"cannot leave the caller's cgroups: {err.strerror}", _WHY) from None
    _reset_scheduling()


class _Hierarchy:
    """One line of /proc/self/cgroup: a v1 hierarchy (its controllers, `name=` included) or the
    v2 unified one (no controllers), and this process's cgroup path in it."""

    __slots__ = ("controllers", "path", "v2")

    def __init__(self, line: str) -> None:
        number, controllers, self.path = line.split(":", 2)
        self.v2 = number == "0" and not controllers
        self.controllers = set(controllers.split(",")) if controllers else set()

    @property
    def shown(self) -> str:
        return "the v2 unified hierarchy" if self.v2 else ",".join(sorted(self.controllers))


class _Mount:
    __slots__ = ("device", "fstype", "options", "point", "root")

    def __init__(self, line: str) -> None:
        fields = line.split(" ")
        separator = fields.index("-", 6)
        self.device = fields[2]
        self.root = _unescape(fields[3])
        self.point = _unescape(fields[4])
        self.fstype = fields[separator + 1]
        self.options = set(fields[separator + 3].split(","))

    def holds(self, hierarchy: _Hierarchy) -> bool:
        if hierarchy.v2:
            return self.fstype == "cgroup2"
        return self.fstype == "cgroup" and hierarchy.controllers <= self.options


def _unescape(field: str) -> str:
    """mountinfo's octal escapes (space, tab, newline, backslash)."""
    if "\\" not in field:
        return field
    parts = field.split("\\")
    out = [parts[0]]
    for part in parts[1:]:
        out.append(chr(int(part[:3], 8)) + part[3:])
    return "".join(out)


def _read(path: str) -> str:
    fd = posix.open(path, posix.O_RDONLY | posix.O_CLOEXEC)
    try:
        chunks: list[bytes] = []
        while True:
            chunk = posix.read(fd, 65536)
            if not chunk:
                return b"".join(chunks).decode("utf-8", "surrogateescape")
            chunks.append(chunk)
    finally:
        posix.close(fd)


def _hierarchies() -> list[_Hierarchy]:
    return [_Hierarchy(line) for line in _read("/proc/self/cgroup").splitlines() if line]


def _leave_caller_cgroups() -> None:
    initial = posix.stat("/proc/self/ns/cgroup").st_ino == INIT_CGROUP_NS_INODE
    mounts = [_Mount(line) for line in _read("/proc/self/mountinfo").splitlines() if line]
    for hierarchy in _hierarchies():
        if hierarchy.path == "/" and initial:
            continue  # already in the host's root cgroup, which no one can freeze or limit
        roots = [m for m in mounts if m.root == "/" and m.holds(hierarchy)]
        if not roots:
            raise Refusal(f"cannot leave the caller's cgroup in {hierarchy.shown}: the root of "
                          "that hierarchy is not mounted in this mount namespace", _WHY,
                          "mount it (as the cgroup namespace's root) where lxc-user-nic runs, "
                          "or run lxc-user-nic in the host's cgroup namespace")
        _move_into(roots[0], hierarchy)
    left = [h.shown for h in _hierarchies() if h.path != "/"]
    if left:
        raise Refusal(f"cannot leave the caller's cgroup in {', '.join(left)}", _WHY)


def _move_into(mount: _Mount, hierarchy: _Hierarchy) -> None:
    try:
        fd = posix.open(mount.point, posix.O_RDONLY | posix.O_DIRECTORY | posix.O_NOFOLLOW
                        | posix.O_CLOEXEC)
    except OSError as err:
        raise _cannot_move(hierarchy, mount.point, err.strerror) from None
    try:
        st = posix.fstat(fd)
        kind = kernel.fstatfs_type(fd)
        device = f"{posix.major(st.st_dev)}:{posix.minor(st.st_dev)}"
        if kind not in (CGROUP_SUPER_MAGIC, CGROUP2_SUPER_MAGIC) or device != mount.device:
            raise _cannot_move(hierarchy, mount.point, "something else is mounted over it")
        _require_roots_alone(hierarchy, mount.point, st)
        procs = posix.open("cgroup.procs", posix.O_WRONLY | posix.O_NOFOLLOW | posix.O_CLOEXEC,
                           dir_fd=fd)
        try:
            _require_roots_alone(hierarchy, mount.point + "/cgroup.procs", posix.fstat(procs))
            posix.write(procs, str(posix.getpid()).encode())
        finally:
            posix.close(procs)
    except OSError as err:
        raise _cannot_move(hierarchy, mount.point, err.strerror) from None
    finally:
        posix.close(fd)


def _require_roots_alone(hierarchy: _Hierarchy, path: str, st: posix.stat_result) -> None:
    if st.st_uid != 0 or st.st_mode & 0o022:
        raise _cannot_move(hierarchy, path, f"it is owned by uid {st.st_uid} with mode "
                                            f"{st.st_mode & 0o7777:04o}, not root's alone")


def _cannot_move(hierarchy: _Hierarchy, path: str, reason: str | None) -> Refusal:
    return Refusal(f"cannot leave the caller's cgroup in {hierarchy.shown} for {path}: {reason}",
                   _WHY, "the root of each cgroup hierarchy, as lxc-user-nic's cgroup namespace "
                   "sees it, must be root's and take processes: run it in the host's cgroup "
                   "namespace, or give the container a cgroup root it can join")


def _reset_scheduling() -> None:
    try:
        posix.sched_setscheduler(0, posix.SCHED_OTHER, posix.sched_param(0))  # no RESET_ON_FORK
        posix.setpriority(posix.PRIO_PROCESS, 0, 0)
        posix.sched_setaffinity(0, _ALL_CPUS)
        kernel.ioprio_set_default()
        kernel.prctl(kernel.PR_SET_TIMERSLACK, DEFAULT_TIMER_SLACK_NS)
    except OSError as err:
        raise Refusal(f"cannot reset the scheduling its caller gave it: {err.strerror}",
                      _WHY) from None
