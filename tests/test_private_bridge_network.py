"""Private bridges with /etc/nsgate/networks.conf (issue 12): the installed lxc-user-nic, run as
the test users through both transports, gives each user's bridge `nsgu<uid>` its subnet's
gateway addresses and a stable MAC, loads the firewall table `inet nsgate` first, and gives the
nics stable MACs; indexes derived from the uid or recorded (sticky, reassigned only when the
pool is full and the owner has no bridge); a malformed file refuses and touches no link; no file
changes nothing (no address, no table). Containers are the users' own `unshare --user --net`
processes; their static addresses reach their own gateway and nothing of another user's.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from nsgate.policy import network_ruleset, networks_conf, nic_macs

from tests.admin_support import clean_nic_state, links
from tests.service_support import keeper_paused
from tests.support import (
    ALICE,
    BOB,
    CAROL,
    User,
    fault_points,
    helper,
    only_transport,
    run_as,
    write_etc,
)
from tests.usernic_support import (
    NET_ADDR_RANDOM,
    NET_ADDR_SET,
    WORK,
    Proc,
    addr_assign_type,
    create,
    create_popen,
    ip_links,
    master_of,
    wait_until,
)

pytestmark = pytest.mark.usefixtures("transport")

NETWORKS = Path("/etc/nsgate/networks.conf")
SUBNETS = Path("/run/lxc/nsgate-subnets")
FORWARDING = Path("/proc/sys/net/ipv4/ip_forward")
PLAN = "ipv4-pool 10.210.0.0/16 24\nipv6-pool fd42:6e73::/48 64\nuplink nat\n"


def bridge(user: User) -> str:
    return f"nsgu{user.uid}"


@pytest.fixture(autouse=True)
def world() -> Iterator[None]:
    """These tests are of what lxc-user-nic (the setuid helper, or the service's worker and
    committer) does with networks.conf: the service's network keeper, which applies the file on
    its own a moment after it changes (test_dhcp_service.py, test_user_networks.py), is held
    still until everything is clean again."""
    with keeper_paused():
        clean_nic_state()
        before = links()
        forwarding = FORWARDING.read_text()
        Path("/etc/nsgate").mkdir(mode=0o755, exist_ok=True)
        write_etc("lxc/lxc-usernet", "".join(f"{user.name} veth nsgate-private 4\n"
                                             for user in (ALICE, BOB, CAROL)))
        yield
        Proc.stop_all()
        for name in links() - before:
            subprocess.run(["ip", "link", "del", name], capture_output=True)
        NETWORKS.unlink(missing_ok=True)
        subprocess.run(["nft", "delete", "table", "inet", "nsgate"], capture_output=True)
        FORWARDING.write_text(forwarding)
        Path("/etc/lxc/lxc-usernet").unlink(missing_ok=True)
        clean_nic_state()


def addresses(name: str) -> list[str]:
    """The addresses of link `name` but IPv6 link-local ones, as ADDRESS/PREFIX, sorted."""
    out = subprocess.run(["ip", "-j", "address", "show", "dev", name], capture_output=True,
                         check=True, text=True).stdout
    return sorted(f"{a['local']}/{a['prefixlen']}" for link in json.loads(out)
                  for a in link["addr_info"] if not a["local"].startswith("fe80:"))


def table() -> str | None:
    """The comment of the loaded `inet nsgate` table (nft 1.0.6's JSON leaves it out); None if
    there is none."""
    found = subprocess.run(["nft", "list", "table", "inet", "nsgate"], capture_output=True,
                           text=True)
    if found.returncode != 0:
        return None
    for line in found.stdout.splitlines():
        if line.strip().startswith("comment "):
            return line.strip()[len("comment "):].strip('"')
    return ""


def nic(user: User, name: str | None = None) -> tuple[Proc, str]:
    """A container of `user` with a nic on its private bridge: (container, host end)."""
    ctr = Proc.container(user)
    result = create(user, ctr.pid, bridge="nsgate-private", name=name)
    assert result.returncode == 0, result.stderr
    return ctr, result.stdout.decode().strip().split(":")[2]


def in_netns(ctr: Proc, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["nsenter", f"--net={ctr.netns}", *argv], capture_output=True,
                          text=True, check=check, timeout=60)


def remove_bridge(user: User) -> None:
    """`user`'s bridge gone, as `nsgate nics gc` (or the service's janitor, once the last port
    went) removes it."""
    subprocess.run(["ip", "link", "del", bridge(user)], capture_output=True)
    wait_until(lambda: bridge(user) not in ip_links(), what=f"{bridge(user)} to go")


def configure(ctr: Proc, address: str, gateway: str) -> None:
    in_netns(ctr, "ip", "address", "add", address, "dev", "eth0")
    in_netns(ctr, "ip", "link", "set", "eth0", "up")
    in_netns(ctr, "ip", "route", "add", "default", "via", gateway)


def reaches(ctr: Proc, address: str, tries: int = 3) -> bool:
    return in_netns(ctr, "ping", "-n", "-c", "1", "-w", str(tries), address,
                    check=False).returncode == 0


def neighbours(ctr: Proc, address: str, tries: int = 3, dev: str = "eth0") -> bool:
    """Whether `address` answers ARP on the container's eth0: the host answers no ping from a
    container (it serves containers only DHCP and DNS), but its gateway address is on the link."""
    return in_netns(ctr, "busybox", "arping", "-c", "1", "-w", str(tries), "-I", dev,
                    address, check=False).returncode == 0


def test_no_networks_conf_no_address_no_table():
    _, host = nic(ALICE)
    assert master_of(ip_links()[host]) == bridge(ALICE)
    assert addresses(bridge(ALICE)) == []
    assert table() is None
    assert not SUBNETS.exists()


def test_recorded_subnets_gateways_mac_and_table():
    write_etc("nsgate/networks.conf", PLAN)
    nic(ALICE)
    nic(BOB)
    assert addresses(bridge(ALICE)) == ["10.210.0.1/24", "fd42:6e73::1/64"]
    assert addresses(bridge(BOB)) == ["10.210.1.1/24", "fd42:6e73:0:1::1/64"]
    assert SUBNETS.read_text() == f"{ALICE.uid} 0\n{BOB.uid} 1\n"
    assert (SUBNETS.stat().st_uid, SUBNETS.stat().st_mode & 0o777) == (0, 0o600)
    hosts = ip_links()
    for user in (ALICE, BOB):
        assert hosts[bridge(user)]["address"] == nic_macs.bridge_mac(user.uid).hex(":")
    assert (table() or "").startswith("nsgate networks 1 ")
    assert FORWARDING.read_text() == "1\n"
    assert Path("/proc/sys/net/ipv6/conf/all/forwarding").read_text() == "1\n"


def test_an_existing_bridge_is_put_right():
    """A bridge made before networks.conf existed (or changed by hand) gets its gateway
    addresses and MAC at the next create; a stray address goes."""
    nic(ALICE)
    subprocess.run(["ip", "address", "add", "192.0.2.9/24", "dev", bridge(ALICE)], check=True)
    write_etc("nsgate/networks.conf", "ipv4-pool 10.210.0.0/16 24\n")
    nic(ALICE)
    assert addresses(bridge(ALICE)) == ["10.210.0.1/24"]
    assert ip_links()[bridge(ALICE)]["address"] == nic_macs.bridge_mac(ALICE.uid).hex(":")


def test_derived_subnets_are_not_recorded():
    login_defs = Path("/etc/login.defs").read_text()
    write_etc("login.defs", login_defs + "\nUID_MIN 23000\nUID_MAX 23255\n")
    write_etc("nsgate/networks.conf",
              "ipv4-pool 10.214.0.0/16 24\nipv6-pool fd42:1::/48 64\nallocation derived\n")
    nic(BOB)
    nic(ALICE)
    assert addresses(bridge(ALICE)) == ["10.214.1.1/24", "fd42:1:0:1::1/64"]
    assert addresses(bridge(BOB)) == ["10.214.2.1/24", "fd42:1:0:2::1/64"]
    assert not SUBNETS.exists()


def test_derived_gives_no_subnet_outside_the_uid_range():
    login_defs = Path("/etc/login.defs").read_text()
    write_etc("login.defs", login_defs + f"\nUID_MIN 23000\nUID_MAX {CAROL.uid - 1}\n")
    write_etc("nsgate/networks.conf", "ipv4-pool 10.214.0.0/16 24\nallocation derived\n")
    before = set(ip_links())
    ctr = Proc.container(CAROL)
    result = create(CAROL, ctr.pid, bridge="nsgate-private")
    assert result.returncode == 1
    assert f"uid {CAROL.uid} is outside UID_MIN..UID_MAX".encode() in result.stderr, \
        result.stderr
    assert set(ip_links()) == before
    assert set(ctr.links()) == {"lo"}
    assert table() is None


def test_recorded_index_is_sticky_and_reassigned_only_when_the_pool_is_full():
    write_etc("nsgate/networks.conf", "ipv4-pool 10.213.0.0/24 25\n")  # two subnets
    alice_ctr, _ = nic(ALICE)
    nic(BOB)
    alice_ctr.stop()
    remove_bridge(ALICE)
    nic(ALICE)  # her bridge went, her index stayed
    assert addresses(bridge(ALICE)) == ["10.213.0.1/25"]
    before = set(ip_links())
    ctr = Proc.container(CAROL)
    full = create(CAROL, ctr.pid, bridge="nsgate-private")
    assert full.returncode == 1
    assert b"the pool is full" in full.stderr, full.stderr
    assert set(ip_links()) == before
    Proc.stop_all()
    remove_bridge(ALICE)
    nic(CAROL)  # alice has no bridge now: her index is carol's
    assert addresses(bridge(CAROL)) == ["10.213.0.1/25"]
    assert sorted(SUBNETS.read_text().splitlines()) == sorted(
        [f"{BOB.uid} 1", f"{CAROL.uid} 0"])


def test_a_malformed_networks_conf_refuses_and_touches_nothing():
    write_etc("nsgate/networks.conf", "ipv4-pool 10.210.0.0/16 24\nuplink sideways\n")
    before = set(ip_links())
    ctr = Proc.container(ALICE)
    result = create(ALICE, ctr.pid, bridge="nsgate-private")
    assert result.returncode == 1
    assert b"/etc/nsgate/networks.conf:2: uplink is 'sideways'" in result.stderr, result.stderr
    assert set(ip_links()) == before
    assert set(ctr.links()) == {"lo"}
    assert table() is None
    assert not SUBNETS.exists()


def test_an_unsafe_networks_conf_refuses():
    write_etc("nsgate/networks.conf", PLAN, mode=0o666)
    ctr = Proc.container(ALICE)
    result = create(ALICE, ctr.pid, bridge="nsgate-private")
    assert result.returncode == 1
    assert b"refusing to trust /etc/nsgate/networks.conf" in result.stderr, result.stderr
    assert bridge(ALICE) not in ip_links()


def test_static_addresses_reach_their_gateway_not_another_user():
    write_etc("nsgate/networks.conf", PLAN)
    alice_ctr, _ = nic(ALICE)
    bob_ctr, _ = nic(BOB)
    configure(alice_ctr, "10.210.0.2/24", "10.210.0.1")
    configure(bob_ctr, "10.210.1.2/24", "10.210.1.1")
    assert neighbours(alice_ctr, "10.210.0.1", tries=20)
    assert neighbours(bob_ctr, "10.210.1.1", tries=20)
    assert not reaches(bob_ctr, "10.210.1.1", tries=1)  # its gateway answers no ping
    assert not reaches(alice_ctr, "10.210.1.2", tries=1)  # bob's container: no forwarding
    assert not reaches(alice_ctr, "10.210.1.1", tries=1)  # bob's gateway: only the own bridge's
    assert not reaches(bob_ctr, "10.210.0.2", tries=1)


def test_stable_macs():
    """Same user, lxcpath, name and nic name: the same MACs after the container went; a second
    such nic at once gets the kernel's random ones, and both work; the bridge keeps its MAC."""
    write_etc("nsgate/networks.conf", "ipv4-pool 10.210.0.0/16 24\n")
    container = nic_macs.container_mac(ALICE.uid, b"/var/lib/lxc", b"c1", b"eth0")
    first, host = nic(ALICE, "eth0")
    assert first.links()["eth0"]["address"] == container.hex(":")
    assert ip_links()[host]["address"] == nic_macs.host_mac(container).hex(":")
    first.stop()
    wait_until(lambda: host not in ip_links(), what=f"{host} to go with its netns")
    again, host = nic(ALICE, "eth0")
    assert again.links()["eth0"]["address"] == container.hex(":")
    assert ip_links()[host]["address"] == nic_macs.host_mac(container).hex(":")
    twin, twin_host = nic(ALICE, "eth0")
    assert addr_assign_type("eth0", twin.pid) == NET_ADDR_RANDOM
    assert addr_assign_type("eth0", again.pid) == NET_ADDR_SET
    assert twin.links()["eth0"]["address"] != container.hex(":")
    assert ip_links()[twin_host]["address"].startswith("fe:")
    assert ip_links()[bridge(ALICE)]["address"] == nic_macs.bridge_mac(ALICE.uid).hex(":")
    configure(again, "10.210.0.2/24", "10.210.0.1")
    configure(twin, "10.210.0.3/24", "10.210.0.1")
    assert neighbours(again, "10.210.0.1", tries=20)
    assert neighbours(twin, "10.210.0.1", tries=20)
    assert reaches(twin, "10.210.0.2")



def test_a_table_of_another_version_is_replaced():
    write_etc("nsgate/networks.conf", PLAN)
    nic(ALICE)
    first = table()
    write_etc("nsgate/networks.conf", PLAN.replace("uplink nat", "uplink none"))
    nic(ALICE)
    plan = networks_conf.parse(NETWORKS.read_bytes(), Path("/etc/login.defs").read_bytes())
    assert table() == network_ruleset.version(plan) != first


def test_a_table_that_cannot_be_loaded_refuses_and_attaches_nothing():
    """nft failing (here /usr/bin/false in its place; the port security table is there
    already, so only the network table needs it): a refusal naming the table, no bridge, no
    nic, no table."""
    nic(BOB)  # the port security table, loaded while nft works
    write_etc("nsgate/networks.conf", PLAN)
    before = set(ip_links())
    subprocess.run(["mount", "--bind", "/usr/bin/false", "/usr/sbin/nft"], check=True)
    try:
        ctr = Proc.container(ALICE)
        result = create(ALICE, ctr.pid, bridge="nsgate-private")
    finally:
        subprocess.run(["umount", "/usr/sbin/nft"], check=True)
    assert result.returncode == 1
    assert b"could not set up nftables table inet nsgate" in result.stderr, result.stderr
    assert set(ip_links()) == before
    assert set(ctr.links()) == {"lo"}
    assert table() is None


def test_two_twins_at_once_never_share_a_mac():
    """Two creates of the same user, lxcpath, name and nic name started together (through the
    service they may be one batch of its committer, which holds the lock for both): both work,
    and the two containers never end up with one MAC."""
    write_etc("nsgate/networks.conf", "ipv4-pool 10.210.0.0/16 24\n")
    nic(ALICE)  # the bridge and the tables exist: the twins race only for their MACs
    twins = [Proc.container(ALICE) for _ in range(2)]
    running = [create_popen(ALICE, ctr.pid, bridge="nsgate-private", name="eth1")
               for ctr in twins]
    for proc in running:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    macs = {ctr.links()["eth1"]["address"] for ctr in twins}
    assert len(macs) == 2
    for number, ctr in enumerate(twins, 2):
        in_netns(ctr, "ip", "address", "add", f"10.210.0.{number}/24", "dev", "eth1")
        in_netns(ctr, "ip", "link", "set", "eth1", "up")
    assert neighbours(twins[0], "10.210.0.1", tries=20, dev="eth1")
    assert neighbours(twins[1], "10.210.0.1", tries=20, dev="eth1")
    assert reaches(twins[0], "10.210.0.3")


# strace's fault injection into the setuid helper's own process (a worker of the service killed
# at every step is the faults suite's, test_service_faults.py).
@only_transport("setuid")
@pytest.mark.parametrize("fault", ["signal=KILL", "error=EIO"])
def test_a_create_that_fails_anywhere_leaves_no_wrong_address_and_no_half_table(fault):
    """Killed or failing at every system call from taking the nic database's lock on (the
    subnet, the network table and the bridge are made under it; before it, see
    test_fault_injection): the network table is the plan's or absent, a bridge left over has
    its gateway addresses or none (never another), a failed create leaves no nic; and the next
    create puts everything right."""
    write_etc("nsgate/networks.conf", PLAN)
    plan = networks_conf.parse(NETWORKS.read_bytes(), Path("/etc/login.defs").read_bytes())
    version = network_ruleset.version(plan)
    gateways = ["10.210.0.1/24", "fd42:6e73::1/64"]
    ctr = Proc.container(ALICE)
    argv = [helper("lxc-user-nic"), "create", "x", "x", str(ctr.pid), "veth", "nsgate-private"]
    log = WORK / "network-trace"
    WORK.mkdir(parents=True, exist_ok=True)

    def reset() -> None:
        subprocess.run(["nft", "delete", "table", "inet", "nsgate"], capture_output=True)
        for name in [bridge(ALICE), *(n for n in ip_links() if n.startswith("veth23001_"))]:
            subprocess.run(["ip", "link", "del", name], capture_output=True)
        FORWARDING.write_text("0\n")

    reset()
    traced = subprocess.run(["strace", "-qq", "-o", str(log), "-u", ALICE.name, *argv],
                            capture_output=True, text=True, timeout=60)
    assert traced.returncode == 0, traced.stderr
    points = fault_points(log.read_text(), fault, start="flock")  # the plan's work is locked
    for name, when in points:
        reset()
        result = subprocess.run(["strace", "-qq", "-o", "/dev/null", "-u", ALICE.name, "-e",
                                 f"inject={name}:{fault}:when={when}", *argv],
                                capture_output=True, text=True, timeout=60)
        assert "Traceback" not in result.stderr
        assert table() in (None, version), (name, when)
        if bridge(ALICE) in ip_links():
            assert addresses(bridge(ALICE)) in ([], ["10.210.0.1/24"], gateways), (name, when)
        if result.returncode != 0 and fault == "error=EIO":
            assert result.returncode == 1 and result.stderr.startswith("lxc-user-nic: "), \
                (name, when, result.stderr)
            if name not in ("capset", "setresuid", "setresgid"):  # see test_fault_injection
                new = {n for n in ip_links() if n.startswith("veth23001_")}
                assert not new, (name, when, new, result.stderr)
    reset()
    assert run_as(ALICE, argv).returncode == 0
    assert table() == version and addresses(bridge(ALICE)) == gateways
    assert FORWARDING.read_text() == "1\n"



@only_transport("setuid")  # the helper's own process is the one traced
def test_without_networks_conf_the_helper_loads_nothing_of_it():
    """No networks.conf: a private-bridge create opens neither the plan's parser nor ipaddress
    (their import cost is only paid where the file exists)."""
    log = WORK / "no-plan-trace"
    WORK.mkdir(parents=True, exist_ok=True)
    ctr = Proc.container(ALICE)
    argv = [helper("lxc-user-nic"), "create", "x", "x", str(ctr.pid), "veth", "nsgate-private"]
    traced = subprocess.run(["strace", "-qq", "-f", "-e", "trace=openat", "-o", str(log), "-u",
                             ALICE.name, *argv], capture_output=True, text=True, timeout=60)
    assert traced.returncode == 0, traced.stderr
    opened = log.read_text()
    assert "/etc/nsgate/networks.conf" in opened  # looked for, and not there
    for module in ("ipaddress", "networks_conf", "bridge_address", "subnet_record",
                   "network_ruleset"):
        assert f"/{module}." not in opened, module


def test_addresses_the_kernel_refuses_roll_back_and_attach_nothing():
    """An existing bridge on which the kernel refuses the IPv6 gateway (IPv6 disabled on it):
    a refusal with the kernel's reason; the IPv4 gateway added meanwhile and the new MAC are
    undone, and no nic is attached."""
    nic(ALICE)
    mac = ip_links()[bridge(ALICE)]["address"]
    Path(f"/proc/sys/net/ipv6/conf/{bridge(ALICE)}/disable_ipv6").write_text("1\n")
    write_etc("nsgate/networks.conf", PLAN)
    before = set(ip_links())
    ctr = Proc.container(ALICE)
    result = create(ALICE, ctr.pid, bridge="nsgate-private")
    assert result.returncode == 1
    assert f"could not give {bridge(ALICE)} the gateway addresses of 10.210.0.0/24".encode() \
        in result.stderr, result.stderr
    assert b"RTM_NEWADDR fd42:6e73" in result.stderr
    assert addresses(bridge(ALICE)) == []
    assert ip_links()[bridge(ALICE)]["address"] == mac
    assert set(ip_links()) == before
    assert set(ctr.links()) == {"lo"}
