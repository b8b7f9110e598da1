"""Issue 9 §3: a requested container name with a kernel template (`net%d`) is passed to the
kernel, as the reference does, and the result line reports the name the kernel chose (read back
by the new link's ifindex). Side by side with the reference (Debian's lxc 5.0.2)."""

from __future__ import annotations

import subprocess

import pytest

from tests.support import ALICE
from tests.test_usernic import (  # noqa: F401 (fixtures)
    Snapshot,
    assert_created,
    grant,
    host_baseline,
    netns_sysfs,
    nic_world,
)
from tests.usernic_support import Proc, clean_db, create, db_lines, ip_links, liblxc_parse

pytestmark = pytest.mark.usefixtures("transport")


def _in_container(ctr: Proc, *args: str) -> None:
    subprocess.run(["nsenter", f"--net={ctr.netns}", "ip", *args], check=True, timeout=10)


@pytest.mark.usefixtures("netns_sysfs")
@pytest.mark.parametrize("impl", ["nsgate", "reference"])
@pytest.mark.parametrize(("template", "taken", "chosen"), [
    ("net%d", [], "net0"),
    ("net%d", ["net0", "net1"], "net2"),
    ("%dx", ["0x"], "1x"),
])
def test_a_name_template_is_expanded_by_the_kernel(impl, template, taken, chosen):
    grant("nsgt-alice veth br0 1")
    ctr = Proc.container(ALICE)
    for name in taken:
        _in_container(ctr, "link", "add", name, "type", "veth", "peer", "name", name + "p")
    result = create(ALICE, ctr.pid, name=template, impl=impl)
    assert result.returncode == 0, (impl, result)
    name, index, host, host_index = liblxc_parse(result.stdout)
    assert result.stdout == f"{chosen}:{index}:{host}:{host_index}\n".encode(), (impl, result)
    inside, hosts = ctr.links(), ip_links()
    assert inside[chosen]["ifindex"] == index and inside[chosen]["link_index"] == host_index
    assert hosts[host]["ifindex"] == host_index and hosts[host]["link_index"] == index
    assert template not in inside
    assert db_lines() == [f"nsgt-alice veth br0 {host}"]
    if impl == "nsgate":
        assert_created(result, ctr, chosen)


@pytest.mark.parametrize("name", ["net%d%d", "net%s", "net%", "%", "abcdefghijklmn%d"])
def test_what_the_kernel_would_refuse_is_refused_before_anything(name):
    """More than one `%`, another conversion, or a name the kernel would refuse: refused in the
    argument check, nothing created on either side (the reference creates the pair first and
    fails at the rename)."""
    grant("nsgt-alice veth br0 1")
    ctr = Proc.container(ALICE)
    before = Snapshot(ctr)
    result = create(ALICE, ctr.pid, name=name)
    assert result.returncode == 1 and result.stdout == b"", result
    assert result.stderr.startswith(b"lxc-user-nic: invalid interface name "), result.stderr
    before.assert_unchanged()
    clean_db()
