"""A delegated cgroup with limits for each user's sessions (issue 11 §4): made at session open,
removed when the user's last session has closed and nothing is left in it.

The host's kind decides how (policy/cgroup_tree.host_kind):
- systemd (/run/systemd/system exists): `systemctl set-property --runtime user-<uid>.slice` with
  the limits as systemd properties; nothing is written to cgroupfs behind systemd's back, and
  user@.service's own delegation gives the user a subtree. Close does nothing (systemd removes
  the slice).
- pure v2 (cgroup2 on /sys/fs/cgroup), v1 and hybrid (v1 hierarchies below /sys/fs/cgroup, and a
  unified one if mounted): in every hierarchy, as LXC's pam_cgfs does,
    <mount>/nsgate/                      root's, 0755, never removed
    <mount>/nsgate/user-<uid>/           root's, 0755: the limits, out of the user's reach
    <mount>/nsgate/user-<uid>/delegate/  the user's: the directory and, v2, cgroup.procs,
                                         cgroup.threads, cgroup.subtree_control (the kernel's
                                         delegation model); v1, tasks and cgroup.procs
  and the session process moved into `delegate` everywhere. In v1 cpuset, cpuset.cpus and
  cpuset.mems are copied down from the parent at each level (a cpuset with none takes no task)
  and `delegate` gets cgroup.clone_children = 1, so the cgroups the user makes inherit them. In
  v2, the controllers a limit needs are enabled top-down (root, nsgate, user-<uid>) where the
  parent offers them; `delegate` receives them too, for the user to pass further down.
  A limit goes to the v1 hierarchy of its controller, else to the unified hierarchy if it has
  the controller, else it is not applied and the returned notes say so (so is a v1 file the
  kernel lacks, e.g. blkio.weight without BFQ, memory.memsw.* without swap accounting).
  Limits are written at every open (a changed policy applies at the next login); a key no longer
  set keeps its value until the tree is removed.

Records: /run/nsgate/sessions/ (root's, 0700) holds `<uid>.lock` (flock, waited for at most
LOCK_SECONDS: opens and closes of a user's sessions run one at a time) and `<uid>.<pid>`, a JSON
record {"pid", "start", "origins"} of the session process: its start time (to know it from a
later process of the same pid) and, per hierarchy key, the cgroup it was in before open.

Close moves out of the user's tree, in every hierarchy where they are inside it:
- when the session process is an ancestor of the caller (the hook runs as its child): it and
  every process on the way down to the caller (the hook's own would keep the tree busy);
- otherwise the caller, and the session process only if its start time is the recorded one: a
  reused pid, maybe a user's process inside the tree, is never moved out of its limits.
They go to the session's recorded cgroup; to the hierarchy's root when there is no record, when
that cgroup is gone, or when it was itself in the user's tree (a nested session: root never
writes into a cgroup the user could have replaced). Then, only if no process is left anywhere in
the user's tree in any hierarchy (another session's, a container's), the tree is removed
bottom-up; else it is kept, with a note. A user's tree over MAX_WALK cgroups is kept. Records of
the user's sessions whose process is gone are dropped.

Failures are a Refusal, after undoing what this open made: processes moved back, cgroups it
created removed, its record deleted.

Each step goes through cgroupfs.py: directory fds proven to be the cgroup file system, names
opened one at a time with O_NOFOLLOW, so a user who owns `delegate` cannot redirect root's
writes. The paths hold the uid only, never a user name.
"""

import json
import posix
from fcntl import LOCK_EX, flock

from nsgate.errors import Refusal
from nsgate.policy import cgroup_limits, cgroup_tree
from nsgate.policy.cgroup_tree import Hierarchy
from nsgate.system import cgroupfs, files, programs

TOP = "nsgate"
DELEGATE = "delegate"
SESSIONS = "/run/nsgate/sessions"
SYSTEMD_RUNNING = "/run/systemd/system"
MOUNTINFO = "/proc/self/mountinfo"
UID_LIMIT = 0xFFFFFFFE  # (uid_t) -1 is no id
LOCK_SECONDS = 30
_V1_DELEGATED = ("tasks", "cgroup.procs")
_V2_DELEGATED = ("cgroup.procs", "cgroup.threads", "cgroup.subtree_control")
_DESCRIBED_V1 = ("pids.max", "memory.limit_in_bytes", "memory.memsw.limit_in_bytes",
                 "cpu.cfs_quota_us", "cpu.cfs_period_us", "cpu.shares", "blkio.weight")
_SYSTEMD_SHOWN = ("TasksMax", "MemoryMax", "MemorySwapMax", "CPUQuotaPerSecUSec",
                  "CPUQuotaPeriodUSec", "CPUWeight", "IOWeight")


# --- the host ---------------------------------------------------------------------------------

def _read_text(path: str) -> str:
    fd = posix.open(path, posix.O_RDONLY | posix.O_CLOEXEC)
    try:
        return files.read_all(fd).decode("utf-8", "surrogateescape")
    finally:
        posix.close(fd)


def _systemd_running() -> bool:
    try:
        st = posix.lstat(SYSTEMD_RUNNING)
    except FileNotFoundError:
        return False
    return st.st_mode & 0o170000 == 0o040000


def host_kind() -> str:
    """"systemd", "v2", "v1" or "none" (policy/cgroup_tree.host_kind)."""
    return cgroup_tree.host_kind(_read_text(MOUNTINFO), _systemd_running())


def _hierarchies() -> list[Hierarchy]:
    found = cgroup_tree.hierarchies(_read_text(MOUNTINFO))
    if not found:
        raise Refusal("no cgroup hierarchy is mounted at or below /sys/fs/cgroup",
                      "mount the cgroup file systems there (cgroup2, or v1 hierarchies) for "
                      "nsgate to delegate a cgroup to each session's user")
    return found


def _check_ids(uid: int, gid: int = 1) -> None:
    if not (0 < uid < UID_LIMIT and 0 <= gid < UID_LIMIT):
        raise Refusal(f"no delegated cgroup for uid {uid} gid {gid}",
                      "sessions of root (or of no valid id) get none")


# --- processes --------------------------------------------------------------------------------

class _Process:
    """A process read through its /proc directory fd: its start time, parent, cgroups."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.dirfd = posix.open(f"/proc/{pid}", cgroupfs._DIR_FLAGS)
        try:
            stat = cgroupfs.read(self.dirfd, "stat").rsplit(")", 1)[1].split()
            self.ppid = int(stat[1])
            self.start = int(stat[19])
        except BaseException:
            posix.close(self.dirfd)
            raise

    def cgroups(self) -> dict[str, str]:
        """{hierarchy key: path}; BadCgroupFile when it cannot be read reliably."""
        return cgroup_tree.process_cgroups(cgroupfs.read(self.dirfd, "cgroup"))

    def close(self) -> None:
        posix.close(self.dirfd)


def _start_time(pid: int) -> int | None:
    try:
        process = _Process(pid)
    except (OSError, IndexError, ValueError):
        return None
    process.close()
    return process.start


def _process(pid: int) -> _Process:
    try:
        return _Process(pid)
    except (OSError, IndexError, ValueError):
        raise Refusal(f"no session process {pid}", "it exited before its session opened") \
            from None


# --- records ----------------------------------------------------------------------------------

def _sessions_dir() -> int:
    """An fd on /run/nsgate/sessions, made if missing; refused unless root's alone."""
    fd = posix.open("/", cgroupfs._DIR_FLAGS)
    try:
        for name, mode in (("run", 0o755), ("nsgate", 0o755), ("sessions", 0o700)):
            try:
                posix.mkdir(name, mode, dir_fd=fd)
            except FileExistsError:
                pass
            child = posix.open(name, cgroupfs._DIR_FLAGS, dir_fd=fd)
            posix.close(fd)
            fd = child
            st = posix.fstat(fd)
            if st.st_uid != 0 or st.st_mode & (0o077 if name == "sessions" else 0o022):
                raise Refusal(f"refusing to keep session records in {SESSIONS}: a directory on "
                              f"the way ({name}) is owned by uid {st.st_uid} with mode "
                              f"{st.st_mode & 0o7777:04o}",
                              f"it must be root's, {SESSIONS} mode 0700: remove it, nsgate makes "
                              "it again")
    except OSError as err:
        posix.close(fd)
        raise Refusal(f"cannot open {SESSIONS}: {err.strerror}") from None
    except BaseException:
        posix.close(fd)
        raise
    return fd


class _Records:
    """The user's lock (held while this object lives) and records."""

    def __init__(self, uid: int) -> None:
        self.uid = uid
        self.dirfd = _sessions_dir()
        try:
            self.lock = posix.open(f"{uid}.lock", posix.O_RDWR | posix.O_CREAT | posix.O_NOFOLLOW
                                   | posix.O_CLOEXEC, 0o600, dir_fd=self.dirfd)
        except OSError as err:
            posix.close(self.dirfd)
            raise Refusal(f"cannot open {SESSIONS}/{uid}.lock: {err.strerror}") from None
        if not files.wait_for_lock(lambda: flock(self.lock, LOCK_EX), LOCK_SECONDS):
            self.close()
            raise Refusal(f"cannot lock {SESSIONS}/{uid}.lock: still held after "
                          f"{LOCK_SECONDS} s", "another open or close of the user's sessions "
                          "hangs: see which process holds it (/proc/locks)")

    def close(self) -> None:
        posix.close(self.lock)
        posix.close(self.dirfd)

    def save(self, pid: int, start: int, origins: dict[str, str]) -> None:
        data = json.dumps({"pid": pid, "start": start, "origins": origins}).encode()
        name, temporary = f"{self.uid}.{pid}", f".{self.uid}.{pid}.new"
        try:
            fd = posix.open(temporary, posix.O_WRONLY | posix.O_CREAT | posix.O_TRUNC
                            | posix.O_NOFOLLOW | posix.O_CLOEXEC, 0o600, dir_fd=self.dirfd)
            try:
                posix.write(fd, data)
            finally:
                posix.close(fd)
            posix.rename(temporary, name, src_dir_fd=self.dirfd, dst_dir_fd=self.dirfd)
        except OSError as err:
            raise Refusal(f"cannot record the session in {SESSIONS}/{name}: {err.strerror}") \
                from None

    def load(self, pid: int, start: int | None) -> dict[str, str] | None:
        """The origins recorded for this very process, or None."""
        try:
            record = json.loads(cgroupfs.read(self.dirfd, f"{self.uid}.{pid}"))
        except (OSError, ValueError):
            return None
        if not isinstance(record, dict) or record.get("start") != start or start is None:
            return None
        origins = record.get("origins")
        if not isinstance(origins, dict):
            return None
        return {str(k): str(v) for k, v in origins.items()}

    def delete(self, pid: int) -> None:
        try:
            posix.unlink(f"{self.uid}.{pid}", dir_fd=self.dirfd)
        except FileNotFoundError:
            pass

    def forget_dead(self) -> None:
        """Records of this user's processes that are gone (sessions that never closed)."""
        prefix = f"{self.uid}."
        with posix.scandir(self.dirfd) as entries:
            names = [e.name for e in entries if e.name.startswith(prefix)]
        for name in names:
            pid = name[len(prefix):]
            if pid.isdigit() and pid != "lock" and self.load(int(pid), _start_time(int(pid))) \
                    is None:
                self.delete(int(pid))


# --- systemd ----------------------------------------------------------------------------------

def _systemctl(*args: str) -> str:
    """Run systemctl with `args`; its standard output, or a Refusal with its error."""
    path = programs.find("systemctl")
    if path is None:
        raise Refusal("systemctl not found in " + ", ".join(programs.SEARCH_PATH),
                      "systemd runs (/run/systemd/system exists) but its systemctl is missing")
    out_r, out_w = posix.pipe2(posix.O_CLOEXEC)
    null = posix.open("/dev/null", posix.O_RDONLY | posix.O_CLOEXEC)
    try:  # one pipe for both outputs: reading one while the other fills cannot deadlock
        pid = posix.posix_spawn(path, [path, *args], programs.ENVIRONMENT,
                                file_actions=[(posix.POSIX_SPAWN_DUP2, null, 0),
                                              (posix.POSIX_SPAWN_DUP2, out_w, 1),
                                              (posix.POSIX_SPAWN_DUP2, out_w, 2)])
    finally:
        for fd in (null, out_w):
            posix.close(fd)
    out = _drain(out_r)
    _, status = posix.waitpid(pid, 0)
    if not (posix.WIFEXITED(status) and posix.WEXITSTATUS(status) == 0):
        reason = out.strip().splitlines()[:1] or [f"exit status {status}"]
        raise Refusal(f"systemctl {' '.join(args[:3])} failed: {reason[0]}")
    return out


def _drain(fd: int) -> str:
    try:
        chunks: list[bytes] = []
        while chunk := posix.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks).decode("utf-8", "replace")
    finally:
        posix.close(fd)


def _slice(uid: int) -> str:
    return f"user-{uid}.slice"


# --- open -------------------------------------------------------------------------------------

class _Undo:
    """What an open did so far, to take back on failure: dirs it made, processes it moved."""

    def __init__(self) -> None:
        self.made: list[tuple[int, str]] = []  # (parent fd, name), in the order made
        self.moved: list[tuple[int, int]] = []  # (origin dir fd, pid)
        self.fds: list[int] = []

    def keep(self, fd: int) -> int:
        self.fds.append(fd)
        return fd

    def rollback(self) -> None:
        for origin, pid in reversed(self.moved):
            try:
                cgroupfs.write(origin, "cgroup.procs", str(pid))
            except OSError:
                pass
        for parent, name in reversed(self.made):
            cgroupfs.remove_dir(parent, name)

    def close(self) -> None:
        for fd in self.fds:
            posix.close(fd)


def _placement(hierarchies: list[Hierarchy], roots: dict[str, int],
               limits: dict[str, str]) -> tuple[dict[str, list[cgroup_limits.Write]], list[str]]:
    """Per hierarchy key, the limit writes it gets; and notes for limits no hierarchy takes.
    Keys `limits` leaves unset are reset to no limit where their files exist (never a note,
    never a controller enabled for them)."""
    full = cgroup_limits.completed(limits)
    v1_writes, _ = cgroup_limits.v1_writes(full)
    notes = cgroup_limits.v1_writes(limits)[1]  # what the limits set cannot do, unmasked
    v2_writes = cgroup_limits.v2_writes(full)
    v1_writes = [w if w[0] in limits else (w[0], w[1], w[2], w[3], False) for w in v1_writes]
    v2_writes = [w if w[0] in limits else (w[0], w[1], w[2], w[3], False) for w in v2_writes]
    by_v1 = {c: h for h in hierarchies if not h.v2 for c in h.controllers}
    unified = next((h for h in hierarchies if h.v2), None)
    offered = set(cgroupfs.read(roots[unified.key], "cgroup.controllers").split()) \
        if unified is not None else set()
    placed: dict[str, list[cgroup_limits.Write]] = {h.key: [] for h in hierarchies}
    for key in full:
        controller = cgroup_limits.CONTROLLER[key]
        v1 = by_v1.get(cgroup_limits.V1_CONTROLLER[controller])
        if v1 is not None:
            placed[v1.key] += [w for w in v1_writes if w[0] == key]
        elif unified is not None and controller in offered:
            placed[unified.key] += [w for w in v2_writes if w[0] == key]
        elif key in limits:
            notes.append(f"{key} not applied: this host has no {controller} controller "
                         "(no v1 hierarchy of it, and the unified hierarchy does not offer it)")
    return placed, notes


def _copy_cpuset(parent: int, child: int) -> None:
    """A v1 cpuset takes no task while its cpus or mems are empty: the parent's, if so."""
    for name in ("cpuset.cpus", "cpuset.mems"):
        if not cgroupfs.read(child, name).strip():
            cgroupfs.write(child, name, cgroupfs.read(parent, name).strip())


def _enable(directory: int, controllers: set[str]) -> None:
    """Enable in a v2 cgroup's subtree_control those of `controllers` it offers and lacks."""
    offered = set(cgroupfs.read(directory, "cgroup.controllers").split())
    enabled = set(cgroupfs.read(directory, "cgroup.subtree_control").split())
    wanted = sorted((controllers & offered) - enabled)
    if wanted:
        cgroupfs.write(directory, "cgroup.subtree_control", " ".join(f"+{c}" for c in wanted))


def _require_roots(hierarchy: Hierarchy, directory: int, shown: str) -> None:
    """The cgroups above the delegated one hold the limits and the user's place: root's alone."""
    st = posix.fstat(directory)
    if st.st_uid != 0 or st.st_mode & 0o022:
        raise Refusal(f"refusing {hierarchy.point}/{shown}: owned by uid {st.st_uid} with mode "
                      f"{st.st_mode & 0o7777:04o}, not root's alone",
                      "it holds users' limits: remove it (empty) and nsgate makes it again")


def _make_dir(undo: _Undo, parent: int, name: str) -> tuple[int, bool]:
    """cgroupfs.make_dir, its fd kept and, if made here, its removal on rollback."""
    directory, made = cgroupfs.make_dir(parent, name)
    undo.keep(directory)
    if made:
        undo.made.append((parent, name))
    return directory, made


def _build(hierarchy: Hierarchy, root: int, uid: int, gid: int,
           writes: list[cgroup_limits.Write], undo: _Undo, notes: list[str]) -> int:
    """Make (or check) the user's tree in one hierarchy and apply its limits; the delegate fd."""
    cpuset = "cpuset" in hierarchy.controllers
    needed = {w[1] for w in writes if w[4]}  # v2: only for limits session.conf sets
    if hierarchy.v2:
        _enable(root, needed)
    top, _ = _make_dir(undo, root, TOP)
    _require_roots(hierarchy, top, TOP)
    if hierarchy.v2:
        _enable(top, needed)
    if cpuset:
        _copy_cpuset(root, top)
    user_name = f"user-{uid}"
    user, _ = _make_dir(undo, top, user_name)
    _require_roots(hierarchy, user, f"{TOP}/{user_name}")
    if cpuset:
        _copy_cpuset(top, user)
    for key, _, name, value, required in writes:
        if not cgroupfs.exists(user, name):
            note = f"{key} not applied in {hierarchy.shown}: the kernel has no {name} there"
            if required and note not in notes:
                notes.append(note)
            continue
        try:
            cgroupfs.write(user, name, value)
        except OSError as err:
            raise Refusal(f"cannot set {key} ({name} = {value}) in {hierarchy.point}/{TOP}/"
                          f"{user_name}: {err.strerror}") from None
    if hierarchy.v2:
        _enable(user, needed)
    delegate, made = _make_dir(undo, user, DELEGATE)
    owner = posix.fstat(delegate).st_uid
    if not made and owner not in (0, uid):
        raise Refusal(f"refusing {hierarchy.point}/{TOP}/{user_name}/{DELEGATE}: owned by uid "
                      f"{owner}, not {uid}", "remove it (empty) and nsgate makes it again")
    if cpuset:
        _copy_cpuset(user, delegate)
        cgroupfs.write(delegate, "cgroup.clone_children", "1")
    cgroupfs.chown(delegate, None, uid, gid)
    for name in _V2_DELEGATED if hierarchy.v2 else _V1_DELEGATED:
        try:
            cgroupfs.chown(delegate, name, uid, gid)
        except FileNotFoundError:
            if name != "cgroup.threads":  # before 4.14 there are no threaded cgroups
                raise
    return delegate


def _open_cgroupfs(uid: int, gid: int, limits: dict[str, str], pid: int) -> list[str]:
    hierarchies = _hierarchies()
    records = _Records(uid)
    undo = _Undo()
    try:
        process = _process(pid)
        try:
            origins = process.cgroups()
        except (OSError, cgroup_tree.BadCgroupFile) as err:
            raise Refusal(f"cannot read the cgroups of session process {pid}: {err}") from None
        finally:
            process.close()
        roots = {h.key: undo.keep(cgroupfs.open_root(h)) for h in hierarchies}
        placed, notes = _placement(hierarchies, roots, limits)
        delegates = {h.key: _build(h, roots[h.key], uid, gid, placed[h.key], undo, notes)
                     for h in hierarchies}
        records.save(pid, process.start, {h.key: origins.get(h.key, "/") for h in hierarchies})
        if _start_time(pid) != process.start:
            raise Refusal(f"no session process {pid}", "it exited before its session opened")
        for h in hierarchies:
            origin = undo.keep(_origin_dir(roots[h.key], origins.get(h.key, "/")))
            cgroupfs.write(delegates[h.key], "cgroup.procs", str(pid))
            undo.moved.append((origin, pid))
        return notes
    except BaseException as err:
        undo.rollback()
        records.delete(pid)
        if isinstance(err, OSError):
            raise Refusal(f"cannot delegate a cgroup to uid {uid}: {err.strerror or err}") \
                from None
        raise
    finally:
        undo.close()
        records.close()


def _origin_dir(root: int, path: str) -> int:
    """An fd on the cgroup `path` of a hierarchy, or on its root if it is gone or odd."""
    names = cgroup_tree.components(path)
    if names:
        try:
            return cgroupfs.open_path(root, names)
        except OSError:
            pass
    return posix.dup(root)


def open_session(uid: int, gid: int, limits: dict[str, str], pid: int) -> list[str]:
    """Give the user `uid` (group `gid`) a delegated cgroup with `limits` (session.conf's keys,
    v2 syntax) and move the session process `pid` into it. The notes: what was not applied."""
    _check_ids(uid, gid)
    invalid = cgroup_limits.check_all(limits)
    if invalid:
        raise Refusal(f"invalid cgroup limits for uid {uid}", *invalid)
    kind = host_kind()
    if kind == "systemd":
        properties = cgroup_limits.systemd_properties(limits)
        if properties:
            _systemctl("set-property", "--runtime", _slice(uid), *properties)
        return []
    if kind == "none":
        raise Refusal("no cgroup hierarchy is mounted at or below /sys/fs/cgroup",
                      "mount the cgroup file systems there for nsgate to delegate cgroups")
    return _open_cgroupfs(uid, gid, limits, pid)


# --- close ------------------------------------------------------------------------------------

def _ancestry(pid: int) -> list[_Process] | None:
    """This process and its ancestors up to, and with, `pid` (the hook runs as a child of the
    session process); None if `pid` is not an ancestor."""
    chain: list[_Process] = []
    current = posix.getpid()
    try:
        while current > 0 and len(chain) < 64:
            process = _Process(current)
            chain.append(process)
            if current == pid:
                return chain
            current = process.ppid
    except (OSError, IndexError, ValueError):
        pass
    for process in chain:
        process.close()
    return None


def _movers(pid: int, records: _Records) -> tuple[list[_Process], dict[str, str] | None]:
    """The processes close moves out of the user's tree, and where the session process was
    before open (None: no record of it).

    The session process and every process between it and this one (the hook's own, which
    would keep the tree busy), when it is an ancestor: then it is certainly the process that
    opened the session. Otherwise this process, and the process `pid` only if its start time
    is the recorded one: a pid reused by some other process (a user's, inside the tree) is
    never moved out of its limits."""
    chain = _ancestry(pid)
    if chain is not None:
        return chain, records.load(pid, chain[-1].start)
    movers = [_Process(posix.getpid())]
    try:
        session = _Process(pid)
    except (OSError, IndexError, ValueError):
        return movers, None
    origins = records.load(pid, session.start)
    if origins is None:
        session.close()
        return movers, None
    return [*movers, session], origins


def _move_out(hierarchy: Hierarchy, root: int, uid: int, movers: list[_Process],
              origins: dict[str, str] | None) -> None:
    """Each mover inside the user's tree in this hierarchy back where the session process was
    before open (the hook's processes came from there too), or to the root."""
    for process in movers:
        try:
            now = process.cgroups().get(hierarchy.key)
        except cgroup_tree.BadCgroupFile:
            now = None  # unreadable: treated as inside
        except OSError:
            continue  # gone: its pid is no longer its own
        if now is not None and not cgroup_tree.in_user_tree(now, TOP, uid):
            continue
        target = "/"
        if origins is not None:
            recorded = origins.get(hierarchy.key, "/")
            if not cgroup_tree.in_user_tree(recorded, TOP, uid):
                target = recorded
        destination = _origin_dir(root, target)
        try:
            cgroupfs.write(destination, "cgroup.procs", str(process.pid))
        except OSError:
            if target != "/":
                cgroupfs.write(root, "cgroup.procs", str(process.pid))
        finally:
            posix.close(destination)


def _busy(user: int) -> set[int]:
    """The processes in the user's tree (the user's cgroup and all below it)."""
    found = set(cgroupfs.processes(user))
    tree = cgroupfs.subtree(user)
    try:
        for _, _, fd in tree:
            found.update(cgroupfs.processes(fd))
    finally:
        cgroupfs.close_all(tree)
    return found


def _remove_tree(top: int, uid: int) -> bool:
    """Remove the user's tree bottom-up; whether it is all gone."""
    name = f"user-{uid}"
    try:
        user = cgroupfs.open_dir(top, name)
    except FileNotFoundError:
        return True
    try:
        tree = cgroupfs.subtree(user)
        try:
            for parent, child, _ in reversed(tree):
                if not cgroupfs.remove_dir(parent, child):
                    return False
        finally:
            cgroupfs.close_all(tree)
    finally:
        posix.close(user)
    return cgroupfs.remove_dir(top, name)


def _close_cgroupfs(uid: int, pid: int) -> list[str]:
    hierarchies = _hierarchies()
    records = _Records(uid)
    fds: list[int] = []
    movers: list[_Process] = []
    try:
        movers, origins = _movers(pid, records)
        tops: dict[str, int] = {}
        for hierarchy in hierarchies:
            root = cgroupfs.open_root(hierarchy)
            fds.append(root)
            try:
                tops[hierarchy.key] = cgroupfs.open_dir(root, TOP)
            except FileNotFoundError:
                continue
            fds.append(tops[hierarchy.key])
            _move_out(hierarchy, root, uid, movers, origins)
        records.delete(pid)
        records.forget_dead()
        left: set[int] = set()
        for top in tops.values():
            try:
                user = cgroupfs.open_dir(top, f"user-{uid}")
            except FileNotFoundError:
                continue
            try:
                left |= _busy(user)
            finally:
                posix.close(user)
        if left:
            return [f"kept the cgroups of uid {uid}: {len(left)} process(es) still in them"]
        kept = [h.shown for h in hierarchies
                if h.key in tops and not _remove_tree(tops[h.key], uid)]
        if kept:
            return [f"kept the cgroups of uid {uid} in {', '.join(kept)}: they did not empty"]
        return []
    except cgroupfs.TooBig:
        return [f"kept the cgroups of uid {uid}: more than {cgroupfs.MAX_WALK} of them"]
    except OSError as err:
        raise Refusal(f"cannot close the cgroups of uid {uid}: {err.strerror or err}") from None
    finally:
        for process in movers:
            process.close()
        for fd in fds:
            posix.close(fd)
        records.close()


def close_session(uid: int, pid: int) -> list[str]:
    """The session process `pid` of user `uid` closes: moved back out of the user's tree, which
    is removed if nothing is left in it. The notes: what was kept, and why."""
    _check_ids(uid)
    kind = host_kind()
    if kind in ("systemd", "none"):
        return []
    return _close_cgroupfs(uid, pid)


# --- explain ----------------------------------------------------------------------------------

def _describe_systemd(uid: int) -> list[dict[str, object]]:
    out = _systemctl("show", _slice(uid), *(f"--property={p}" for p in _SYSTEMD_SHOWN))
    shown = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    return [{"hierarchy": "systemd", "path": _slice(uid), "delegate": f"user@{uid}.service",
             "owner": uid, "limits": shown, "processes": None}]


def describe(uid: int) -> list[dict[str, object]]:
    """The user's cgroups, per hierarchy: {"hierarchy", "path" (the user's cgroup, root's),
    "delegate" (the user's), "owner" (of the delegate), "limits" (file: value as the kernel
    reads it back), "processes" (in the whole tree)}. Empty if the user has none."""
    kind = host_kind()
    if kind == "systemd":
        return _describe_systemd(uid)
    if kind == "none":
        return []
    found: list[dict[str, object]] = []
    for hierarchy in _hierarchies():
        try:
            root = cgroupfs.open_root(hierarchy)
        except OSError:
            continue
        try:
            user = cgroupfs.open_path(root, [TOP, f"user-{uid}"])
        except OSError:
            posix.close(root)
            continue
        try:
            files = cgroup_limits.KEYS if hierarchy.v2 else _DESCRIBED_V1
            limits = {name: cgroupfs.read(user, name).strip() for name in files
                      if cgroupfs.exists(user, name)}
            try:
                owner: int | None = posix.stat(DELEGATE, dir_fd=user,
                                               follow_symlinks=False).st_uid
            except FileNotFoundError:
                owner = None
            try:
                processes: int | None = len(_busy(user))
            except cgroupfs.TooBig:
                processes = None
            path = f"{hierarchy.point}{cgroup_tree.user_cgroup(TOP, uid)}"
            found.append({"hierarchy": hierarchy.shown, "path": path,
                          "delegate": f"{path}/{DELEGATE}", "owner": owner, "limits": limits,
                          "processes": processes})
        finally:
            posix.close(user)
            posix.close(root)
    return found
