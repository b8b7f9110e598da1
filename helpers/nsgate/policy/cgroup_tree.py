"""Where a user's delegated cgroups live, from what the kernel shows: the cgroup hierarchies in
/proc/self/mountinfo and a process's cgroups in /proc/PID/cgroup. Pure: text in, facts out.

Only hierarchies mounted at /sys/fs/cgroup (a pure v2 host) or directly below it (v1 and hybrid
hosts) count, each by the root of the hierarchy (mountinfo's root field `/`), the last mount of a
place winning: a later mount on /sys/fs/cgroup hides every earlier one at or below it, as the
kernel's path walk does. A hierarchy mounted twice counts once (by device).

A user's tree in each hierarchy is `/<top>/user-<uid>` (the limits, root's) and
`/<top>/user-<uid>/delegate` (the user's): built from the uid alone, never from a name.
"""

CGROUP_ROOT = "/sys/fs/cgroup"
V1_CONTROLLERS = frozenset({"cpu", "cpuacct", "cpuset", "memory", "devices", "freezer",
                            "net_cls", "blkio", "perf_event", "net_prio", "hugetlb", "pids",
                            "rdma", "misc", "debug"})


class Hierarchy:
    """A mounted cgroup hierarchy: `key` names it as /proc/PID/cgroup does (its controllers,
    sorted, `name=` included; "" for the v2 unified one)."""

    __slots__ = ("controllers", "device", "key", "point", "v2")

    def __init__(self, point: str, device: str, v2: bool, controllers: frozenset[str]) -> None:
        self.point = point
        self.device = device
        self.v2 = v2
        self.controllers = controllers
        self.key = ",".join(sorted(controllers))

    @property
    def shown(self) -> str:
        return "unified" if self.v2 else self.key

    def __repr__(self) -> str:
        return f"Hierarchy({self.point!r}, {self.device!r}, {self.shown!r})"


def _unescape(field: str) -> str:
    """mountinfo's octal escapes (space, tab, newline, backslash)."""
    if "\\" not in field:
        return field
    parts = field.split("\\")
    out = [parts[0]]
    for part in parts[1:]:
        out.append(chr(int(part[:3], 8)) + part[3:])
    return "".join(out)


def _covers(outer: str, inner: str) -> bool:
    return inner == outer or inner.startswith(outer.rstrip("/") + "/")


def hierarchies(mountinfo: str) -> list[Hierarchy]:
    """The cgroup hierarchies visible at or directly below /sys/fs/cgroup, in mount order."""
    visible: list[tuple[str, Hierarchy | None]] = []
    for line in mountinfo.splitlines():
        fields = line.split(" ")
        if "-" not in fields[6:]:
            continue
        separator = fields.index("-", 6)
        point = _unescape(fields[4])
        visible = [(p, h) for p, h in visible if not _covers(point, p)]
        fstype = fields[separator + 1]
        root = _unescape(fields[3])
        at_place = point == CGROUP_ROOT or point.rsplit("/", 1)[0] == CGROUP_ROOT
        if fstype not in ("cgroup", "cgroup2") or root != "/" or not at_place:
            visible.append((point, None))  # hides what is below it, is no hierarchy of ours
            continue
        options = set(fields[separator + 3].split(","))
        controllers = frozenset(o for o in options
                                if o in V1_CONTROLLERS or o.startswith("name="))
        if fstype == "cgroup" and not controllers:
            visible.append((point, None))
            continue
        visible.append((point, Hierarchy(point, fields[2], fstype == "cgroup2",
                                         controllers if fstype == "cgroup" else frozenset())))
    found: list[Hierarchy] = []
    devices = set()
    for _, hierarchy in visible:
        if hierarchy is not None and hierarchy.device not in devices:
            devices.add(hierarchy.device)
            found.append(hierarchy)
    return found


def host_kind(mountinfo: str, systemd_running: bool) -> str:
    """"systemd" (systemd is the init: it owns the cgroups), "v2" (cgroup2 on /sys/fs/cgroup),
    "v1" (v1 hierarchies below it, with or without a unified one: hybrid) or "none"."""
    if systemd_running:
        return "systemd"
    found = hierarchies(mountinfo)
    if any(h.v2 and h.point == CGROUP_ROOT for h in found):
        return "v2"
    return "v1" if any(not h.v2 for h in found) else "none"


class BadCgroupFile(ValueError):
    """A /proc/PID/cgroup that does not read as one line per hierarchy (a cgroup name holding a
    newline can forge lines: the kernel prints names unescaped)."""


def process_cgroups(text: str) -> dict[str, str]:
    """/proc/PID/cgroup as {hierarchy key: path}; BadCgroupFile if any line is malformed or a
    hierarchy appears twice."""
    found: dict[str, str] = {}
    for line in text.split("\n")[:-1] if text.endswith("\n") else text.split("\n"):
        fields = line.split(":", 2)
        if len(fields) != 3 or not fields[0].isdigit() or not fields[2].startswith("/"):
            raise BadCgroupFile(f"malformed line {line[:80]!r}")
        number, controllers, path = fields
        if (number == "0") != (controllers == ""):
            raise BadCgroupFile(f"malformed line {line[:80]!r}")
        key = ",".join(sorted(controllers.split(","))) if controllers else ""
        if key in found:
            raise BadCgroupFile(f"hierarchy {key or 'unified'} listed twice")
        found[key] = path
    return found


def user_cgroup(top: str, uid: int) -> str:
    """The user's cgroup (root's, with the limits), as a path inside each hierarchy."""
    return f"/{top}/user-{uid}"


def delegated_cgroup(top: str, uid: int) -> str:
    return f"{user_cgroup(top, uid)}/delegate"


def in_user_tree(path: str, top: str, uid: int) -> bool:
    """Whether the cgroup `path` is the user's cgroup or below it."""
    return _covers(user_cgroup(top, uid), path)


def components(path: str) -> list[str] | None:
    """The names of a cgroup path from its hierarchy's root, or None if it is not a plain
    absolute path (empty, `.` or `..` components)."""
    if not path.startswith("/"):
        return None
    names = path.split("/")[1:]
    if names == [""]:
        return []
    if any(name in ("", ".", "..") for name in names):
        return None
    return names
