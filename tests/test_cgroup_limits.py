"""The pure side of the session cgroups (issue 11 §4): limit values in their cgroup v2 syntax,
their v1 and systemd translations, and the facts read from mountinfo and /proc/PID/cgroup.
Expected values are written from the kernel's documentation (cgroup-v2.rst, cgroup-v1/*.rst) and
systemd's conversions, not from the code."""

from __future__ import annotations

import pytest
from nsgate.policy import cgroup_limits, cgroup_tree
from nsgate.policy.cgroup_limits import check_value, systemd_properties, v1_writes, v2_writes

VALID = [
    ("pids.max", "max"), ("pids.max", "0"), ("pids.max", "50"), ("pids.max", "4194304"),
    ("memory.max", "max"), ("memory.max", "0"), ("memory.max", "67108864"),
    ("memory.max", "64M"), ("memory.max", "64m"), ("memory.max", "1G"), ("memory.max", "2t"),
    ("memory.max", "512K"), ("memory.swap.max", "0"), ("memory.swap.max", "max"),
    ("memory.swap.max", "8G"),
    ("cpu.max", "max"), ("cpu.max", "max 100000"), ("cpu.max", "50000"),
    ("cpu.max", "50000 100000"), ("cpu.max", "1000 1000"), ("cpu.max", "200000 1000000"),
    ("cpu.weight", "1"), ("cpu.weight", "100"), ("cpu.weight", "10000"),
    ("io.weight", "1"), ("io.weight", "10000"), ("io.weight", "default 100"),
]
INVALID = [
    ("pids.max", ""), ("pids.max", "-1"), ("pids.max", "4194305"), ("pids.max", "050"),
    ("pids.max", "+5"), ("pids.max", " 5"), ("pids.max", "5 "), ("pids.max", "0x10"),
    ("pids.max", "MAX"), ("pids.max", "infinity"),
    ("memory.max", ""), ("memory.max", "M"), ("memory.max", "64MB"), ("memory.max", "64P"),
    ("memory.max", "-1"), ("memory.max", "1.5G"), ("memory.max", "9223372036854775808"),
    ("memory.max", "8388608T"), ("memory.swap.max", "64 M"),
    ("cpu.max", ""), ("cpu.max", "999"), ("cpu.max", "50000 999"),
    ("cpu.max", "50000 1000001"), ("cpu.max", "50000  100000"), ("cpu.max", "max max"),
    ("cpu.max", "50000 100000 1"), ("cpu.max", "50%"), ("cpu.max", "17592186044416"),
    ("cpu.weight", "0"), ("cpu.weight", "10001"), ("cpu.weight", "default 100"),
    ("io.weight", "0"), ("io.weight", "default"), ("io.weight", "8:0 100"),
    ("io.weight", "default  100"), ("io.weight", "10001"),
    ("memory.high", "1G"), ("cpuset.cpus", "0"), ("pids.max\n", "5"),
]


@pytest.mark.parametrize(("key", "value"), VALID)
def test_valid_values_pass(key: str, value: str) -> None:
    assert check_value(key, value) is None


@pytest.mark.parametrize(("key", "value"), INVALID)
def test_invalid_values_say_why(key: str, value: str) -> None:
    why = check_value(key, value)
    assert why is not None
    if key in cgroup_limits.KEYS:  # it reads after "KEY 'VALUE': " in session.conf's message
        assert why.startswith(("must be ", "its MAX must be ", "its PERIOD must be "))
    else:
        assert why.startswith(f"{key} is not a limit nsgate knows")


@pytest.mark.parametrize(("key", "value", "why"), [
    ("pids.max", "lots", "must be 'max' or a number of processes from 0 to 4194304"),
    ("memory.max", "1GB", "must be 'max' or a number of bytes with an optional K, M, G or T "
                          "suffix (either case, e.g. 512M), below 2^63"),
    ("cpu.max", "1 2 3", "must be 'MAX' or 'MAX PERIOD' (e.g. '50000 100000', or 'max')"),
    ("cpu.max", "999", "its MAX must be 'max' or a quota in microseconds from 1000 to "
                       "17592186044415"),
    ("cpu.max", "max 999", "its PERIOD must be a number of microseconds from 1000 to 1000000"),
    ("cpu.weight", "0", "must be a weight from 1 to 10000"),
    ("io.weight", "default 0", "must be a weight from 1 to 10000, or 'default' and one"),
    ("pids.max", " 5", "must be plain ASCII with no surrounding blanks"),
    ("memory.max", "１G", "must be plain ASCII with no surrounding blanks"),
])
def test_reasons(key: str, value: str, why: str) -> None:
    assert check_value(key, value) == why


def test_the_keys_are_the_issues() -> None:
    assert cgroup_limits.KEYS == ("pids.max", "memory.max", "memory.swap.max", "cpu.max",
                                  "cpu.weight", "io.weight")


ALL = {"pids.max": "50", "memory.max": "64M", "memory.swap.max": "16M",
       "cpu.max": "50000 200000", "cpu.weight": "200", "io.weight": "default 300"}


def test_v2_writes_normalise() -> None:
    assert [(w[2], w[3]) for w in v2_writes(ALL)] == [
        ("pids.max", "50"), ("memory.max", str(64 << 20)), ("memory.swap.max", str(16 << 20)),
        ("cpu.max", "50000 200000"), ("cpu.weight", "200"), ("io.weight", "default 300")]
    assert [(w[2], w[3]) for w in v2_writes({"cpu.max": "max", "io.weight": "7"})] == [
        ("cpu.max", "max 100000"), ("io.weight", "default 7")]


def test_v1_writes_in_an_order_the_kernel_takes() -> None:
    writes, notes = v1_writes(ALL)
    assert notes == []
    assert [(w[1], w[2], w[3]) for w in writes] == [
        ("pids", "pids.max", "50"),
        # memsw first opened up: v1 refuses limit_in_bytes above memsw.limit_in_bytes
        ("memory", "memory.memsw.limit_in_bytes", "-1"),
        ("memory", "memory.limit_in_bytes", str(64 << 20)),
        ("memory", "memory.memsw.limit_in_bytes", str(80 << 20)),  # memory + swap
        ("cpu", "cpu.cfs_quota_us", "-1"),
        ("cpu", "cpu.cfs_period_us", "200000"),
        ("cpu", "cpu.cfs_quota_us", "50000"),
        ("cpu", "cpu.shares", "2048"),  # 200 * 1024 / 100
        ("io", "blkio.weight", "1000"),  # 300 * 500 / 100 = 1500, clamped to 1000
    ]
    # the opening-up writes are only preparation: no note where their file is missing
    assert [w[4] for w in writes] == [True, False, True, True, False, True, True, True, True]
    assert [w[4] for w in v1_writes({"cpu.max": "max"})[0]] == [True, True]


@pytest.mark.parametrize(("limits", "expected"), [
    ({"memory.max": "max", "memory.swap.max": "1G"},
     [("memory.memsw.limit_in_bytes", "-1"), ("memory.limit_in_bytes", "-1"),
      ("memory.memsw.limit_in_bytes", "-1")]),
    ({"memory.max": "1G", "memory.swap.max": "max"},
     [("memory.memsw.limit_in_bytes", "-1"), ("memory.limit_in_bytes", str(1 << 30)),
      ("memory.memsw.limit_in_bytes", "-1")]),
    ({"memory.max": "1G"},  # v2's default swap.max is max: memsw stays unlimited
     [("memory.memsw.limit_in_bytes", "-1"), ("memory.limit_in_bytes", str(1 << 30))]),
    ({"cpu.max": "max"}, [("cpu.cfs_quota_us", "-1"), ("cpu.cfs_period_us", "100000")]),
    ({"cpu.max": "25000"}, [("cpu.cfs_quota_us", "-1"), ("cpu.cfs_period_us", "100000"),
                            ("cpu.cfs_quota_us", "25000")]),
    ({"cpu.weight": "1"}, [("cpu.shares", "10")]),
    ({"cpu.weight": "10000"}, [("cpu.shares", "102400")]),
    ({"io.weight": "1"}, [("blkio.weight", "10")]),  # 5, clamped to blkio's minimum
    ({"io.weight": "100"}, [("blkio.weight", "500")]),  # v2 default 100 = v1 default 500
    ({"pids.max": "max"}, [("pids.max", "max")]),
])
def test_v1_translations(limits: dict[str, str], expected: list[tuple[str, str]]) -> None:
    writes, notes = v1_writes(limits)
    assert notes == []
    assert [(w[2], w[3]) for w in writes] == expected


def test_swap_alone_has_no_v1_form() -> None:
    writes, notes = v1_writes({"memory.swap.max": "1G"})
    assert writes == []
    assert len(notes) == 1 and notes[0].startswith("memory.swap.max not applied")


def test_systemd_properties() -> None:
    assert systemd_properties(ALL) == [
        "TasksMax=50", f"MemoryMax={64 << 20}", f"MemorySwapMax={16 << 20}", "CPUQuota=25%",
        "CPUQuotaPeriodSec=200000us", "CPUWeight=200", "IOWeight=300"]
    assert systemd_properties({"pids.max": "max", "memory.max": "max", "cpu.max": "max"}) == [
        "TasksMax=infinity", "MemoryMax=infinity", "CPUQuota="]
    assert systemd_properties({"cpu.max": "33333"}) == ["CPUQuota=33.33%"]
    assert systemd_properties({"cpu.max": "250000"}) == ["CPUQuota=250%"]
    assert systemd_properties({"cpu.max": "max 50000"}) == ["CPUQuota=",
                                                           "CPUQuotaPeriodSec=50000us"]
    assert systemd_properties({}) == []


# --- mountinfo and /proc/PID/cgroup -----------------------------------------------------------

HYBRID = """\
25 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset,clone_children
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate
50 25 0:32 / /mnt/memory-again rw,relatime - cgroup cgroup rw,memory
51 25 0:36 /sub /sys/fs/cgroup/elsewhere rw,relatime - cgroup cgroup rw,pids
"""


def test_hybrid_hierarchies() -> None:
    found = cgroup_tree.hierarchies(HYBRID)
    assert [(h.point, h.device, h.v2, h.key) for h in found] == [
        ("/sys/fs/cgroup/cpu,cpuacct", "0:29", False, "cpu,cpuacct"),
        ("/sys/fs/cgroup/cpuset", "0:31", False, "cpuset"),
        ("/sys/fs/cgroup/memory", "0:32", False, "memory"),
        ("/sys/fs/cgroup/pids", "0:36", False, "pids"),
        ("/sys/fs/cgroup/systemd", "0:37", False, "name=systemd"),
        ("/sys/fs/cgroup/unified", "0:38", True, ""),
    ]
    assert cgroup_tree.host_kind(HYBRID, False) == "v1"
    assert cgroup_tree.host_kind(HYBRID, True) == "systemd"


def test_a_later_mount_on_sys_fs_cgroup_hides_the_v1_ones() -> None:
    """The pure-v2 test's namespace: unified bound over /sys/fs/cgroup."""
    overmounted = HYBRID + "60 31 0:38 / /sys/fs/cgroup rw,relatime - cgroup2 cgroup2 rw\n"
    found = cgroup_tree.hierarchies(overmounted)
    assert [(h.point, h.v2) for h in found] == [("/sys/fs/cgroup", True)]
    assert cgroup_tree.host_kind(overmounted, False) == "v2"
    hidden = HYBRID + "60 31 0:99 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw\n"
    assert cgroup_tree.hierarchies(hidden) == []
    assert cgroup_tree.host_kind(hidden, False) == "none"


def test_escaped_mount_points() -> None:
    info = "41 31 0:38 / /sys/fs/cgroup/uni\\040fied rw - cgroup2 cgroup2 rw\n"
    assert [h.point for h in cgroup_tree.hierarchies(info)] == ["/sys/fs/cgroup/uni fied"]


def test_process_cgroups() -> None:
    text = ("9:name=systemd:/\n4:memory:/a/b\n1:cpuacct,cpu:/x\n0::/nsgate/user-23001/"
            "delegate\n")
    assert cgroup_tree.process_cgroups(text) == {
        "name=systemd": "/", "memory": "/a/b", "cpu,cpuacct": "/x",
        "": "/nsgate/user-23001/delegate"}


@pytest.mark.parametrize("text", [
    "4:memory:/a\n4:memory:/b\n",  # a forged second line for a hierarchy
    "4:memory:/a\n3:cpu:/evil\n3:cpu:/b\n",
    "4:memory:/a\nrest-of-a-name\n",
    "0:memory:/a\n", "1::/a\n", "4:memory:relative\n", "x:memory:/a\n",
])
def test_process_cgroups_refuses_what_does_not_parse(text: str) -> None:
    with pytest.raises(cgroup_tree.BadCgroupFile):
        cgroup_tree.process_cgroups(text)


def test_user_tree_paths() -> None:
    assert cgroup_tree.user_cgroup("nsgate", 23001) == "/nsgate/user-23001"
    assert cgroup_tree.delegated_cgroup("nsgate", 23001) == "/nsgate/user-23001/delegate"
    assert cgroup_tree.in_user_tree("/nsgate/user-23001", "nsgate", 23001)
    assert cgroup_tree.in_user_tree("/nsgate/user-23001/delegate/c", "nsgate", 23001)
    assert not cgroup_tree.in_user_tree("/nsgate/user-230011/delegate", "nsgate", 23001)
    assert not cgroup_tree.in_user_tree("/nsgate", "nsgate", 23001)
    assert not cgroup_tree.in_user_tree("/", "nsgate", 23001)
    assert cgroup_tree.components("/") == []
    assert cgroup_tree.components("/a/b") == ["a", "b"]
    for odd in ("", "a/b", "/a//b", "/a/../b", "/./a", "/a/"):
        assert cgroup_tree.components(odd) is None
