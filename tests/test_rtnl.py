"""nsgate.system.rtnl against the real kernel.

Every test body runs in `/usr/bin/python3 -I -S` under `unshare --net`: a fresh network namespace
(with only `lo`) that dies with the script, so the host's links are never touched. The script
prints what it observed, through rtnl and through `ip -d -j` in the same netns, as JSON; the
assertions are here. A second netns, where needed, is a `unshare --net sleep` child of the script.
A plain link is one end of a veth pair: loading the dummy or ifb driver would create links
(dummy0, ifb0, ifb1) in the host's namespace.
"""

from __future__ import annotations

import errno
import json
import subprocess
import textwrap
from pathlib import Path

HELPERS = Path(__file__).resolve().parent.parent / "helpers"

PRELUDE = f"""\
import ctypes, json, os, subprocess, sys, traceback
sys.path.insert(0, {str(HELPERS)!r})
from nsgate.system.rtnl import Link, NetlinkError, Rtnl, netns_of_self

out = {{}}


def ip(*args, netns=None):
    argv = ["ip", "-d", "-j", *args]
    if netns is not None:
        argv = ["nsenter", f"--net={{netns}}", *argv]
    proc = subprocess.run(argv, capture_output=True, text=True)
    return json.loads(proc.stdout) if proc.returncode == 0 else None


def ip_names(netns=None):
    return sorted(link["ifname"] for link in ip("link", "show", netns=netns))


def sh(*argv):
    subprocess.run(argv, check=True)


def plain(name):
    \"\"\"One end of a new veth pair (its peer is name + "p"); its kind.\"\"\"
    sh("ip", "link", "add", name, "type", "veth", "peer", "name", name + "p")
    return "veth"


def other_netns():
    \"\"\"A process in a second, fresh netns; its /proc/PID/ns/net path.\"\"\"
    proc = subprocess.Popen(["unshare", "--net", "sh", "-c", "echo ready; exec sleep 600"],
                            stdout=subprocess.PIPE)
    assert proc.stdout.readline() == b"ready\\n"
    return proc, f"/proc/{{proc.pid}}/ns/net"


def view(link):
    if link is None:
        return None
    return {{"index": link.index, "name": link.name, "kind": link.kind, "mtu": link.mtu,
             "master": link.master, "address": link.address.hex(":"), "up": link.up}}


def failure(call, *args, **kwargs):
    try:
        call(*args, **kwargs)
    except NetlinkError as err:
        return {{"errno": err.errno, "message": str(err), "oserror": isinstance(err, OSError)}}
    return None


def in_child(body):
    \"\"\"body() in a forked child; its return value (JSON-able) or the child's traceback.\"\"\"
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        try:
            result = json.dumps({{"ok": body()}})
        except BaseException:
            result = json.dumps({{"error": traceback.format_exc()}})
        os.write(write, result.encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        result = json.loads(pipe.read())
    os.waitpid(pid, 0)
    assert "error" not in result, result["error"]
    return result["ok"]


"""


def run_in_netns(body: str) -> dict:
    script = PRELUDE + textwrap.dedent(body) + "\nprint(json.dumps(out))\n"
    proc = subprocess.run(["unshare", "--net", "/usr/bin/python3", "-I", "-S", "-c", script],
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_link_lookup_and_netns_fd() -> None:
    out = run_in_netns("""
        with Rtnl() as rtnl:
            lo = rtnl.link("lo")
            out["lo"] = view(lo)
            out["missing"] = view(rtnl.link("nsg-missing0"))
            out["by_index"] = view(rtnl.link_by_index(lo.index))
            out["missing_index"] = view(rtnl.link_by_index(4242))
            out["cloexec"] = not os.get_inheritable(rtnl.fileno())
        out["ip_lo"] = ip("link", "show", "lo")[0]
        fd = netns_of_self()
        out["fd_is_own_netns"] = os.fstat(fd).st_ino == os.stat("/proc/thread-self/ns/net").st_ino
        out["fd_cloexec"] = not os.get_inheritable(fd)
        out["fd_flags"] = os.O_ACCMODE & int(open(f"/proc/self/fdinfo/{fd}").read()
                                             .split("flags:")[1].split()[0], 8)
    """)
    assert out["lo"] == {"index": out["ip_lo"]["ifindex"], "name": "lo", "kind": None,
                         "mtu": 65536, "master": 0, "address": "00:00:00:00:00:00", "up": False}
    assert out["by_index"] == out["lo"]
    assert out["missing"] is None
    assert out["missing_index"] is None
    assert out["cloexec"]
    assert out["fd_is_own_netns"]
    assert out["fd_cloexec"]
    assert out["fd_flags"] == 0  # O_RDONLY


def test_socket_stays_in_the_netns_it_was_created_in() -> None:
    out = run_in_netns("""
        libc = ctypes.CDLL(None, use_errno=True)
        here = Rtnl()
        other, path = other_netns()
        with open(path) as target:
            assert libc.setns(target.fileno(), 0x40000000) == 0  # CLONE_NEWNET
        there = Rtnl()
        out["there_index"] = there.create_bridge("brthere")
        out["here_names"] = sorted(here.link_names())
        out["there_names"] = sorted(there.link_names())
        out["ip_there"] = ip_names(netns=path)
        here.close(); there.close(); other.kill()
    """)
    assert out["here_names"] == ["lo"]
    assert out["there_names"] == ["brthere", "lo"] == out["ip_there"]


def test_create_bridge_and_link_kinds() -> None:
    out = run_in_netns("""
        with Rtnl() as rtnl:
            out["index"] = rtnl.create_bridge("br0")
            out["bridge"] = view(rtnl.link("br0"))
            out["ip_bridge"] = ip("link", "show", "br0")[0]
            out["plain_kind"] = plain("d0")
            out["plain"] = view(rtnl.link("d0"))
            out["again"] = failure(rtnl.create_bridge, "br0")
            out["bad_name"] = failure(rtnl.create_bridge, "bad/name")
            out["too_long"] = failure(rtnl.create_bridge, "x" * 16)
    """)
    assert out["index"] == out["ip_bridge"]["ifindex"] == out["bridge"]["index"]
    assert out["bridge"]["kind"] == "bridge" == out["ip_bridge"]["linkinfo"]["info_kind"]
    assert out["bridge"]["address"] == out["ip_bridge"]["address"]
    assert out["bridge"]["mtu"] == 1500
    assert out["plain"]["kind"] == out["plain_kind"]
    assert out["again"]["errno"] == errno.EEXIST
    assert out["again"]["oserror"]
    assert "RTM_NEWLINK bridge br0" in out["again"]["message"]
    assert out["bad_name"]["errno"] == errno.EINVAL
    assert out["too_long"]["errno"] in (errno.EINVAL, errno.ERANGE)  # ERANGE: policy length


def test_create_veth_peer_born_in_other_netns() -> None:
    out = run_in_netns("""
        other, path = other_netns()
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        with Rtnl() as rtnl:
            rtnl.create_veth("vh0", "eth%d", fd, 1400)
            out["host"] = view(rtnl.link("vh0"))
            out["names_here"] = sorted(rtnl.link_names())
            out["again"] = failure(rtnl.create_veth, "vh0", "eth%d", fd, 1400)
            out["peer_taken"] = failure(rtnl.create_veth, "vh1", "eth0", fd, 1400)
            out["names_after_failures"] = sorted(rtnl.link_names())
        out["ip_here"] = ip_names()
        out["ip_there"] = ip("link", "show", netns=path)
        other.kill()
    """)
    assert out["host"]["kind"] == "veth"
    assert out["host"]["mtu"] == 1400
    assert out["host"]["up"] is False
    assert out["names_here"] == out["ip_here"] == ["lo", "vh0"]
    peers = {link["ifname"]: link for link in out["ip_there"]}
    assert set(peers) == {"lo", "eth0"}
    assert peers["eth0"]["mtu"] == 1400
    assert peers["eth0"]["linkinfo"]["info_kind"] == "veth"
    assert "UP" not in peers["eth0"]["flags"]
    assert peers["eth0"]["link_index"] == out["host"]["index"]
    assert out["again"]["errno"] == errno.EEXIST
    assert out["peer_taken"]["errno"] == errno.EEXIST
    assert out["names_after_failures"] == ["lo", "vh0"]


def test_create_with_mac_addresses() -> None:
    """A bridge and both ends of a veth made with the MACs asked for; the bridge keeps its own
    when a port with a lower MAC joins (a bridge made without one takes its lowest port's)."""
    out = run_in_netns("""
        other, path = other_netns()
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        with Rtnl() as rtnl:
            fixed = rtnl.create_bridge("br0", b"\\x02\\x11\\x22\\x33\\x44\\x55")
            loose = rtnl.create_bridge("br1")
            rtnl.create_veth("vh0", "eth%d", fd, 1500, host_address=b"\\x02\\0\\0\\0\\0\\1",
                             peer_address=b"\\x0a\\xbb\\xcc\\xdd\\xee\\xff")
            rtnl.create_veth("vh1", "eth%d", fd, 1500, host_address=b"\\x02\\0\\0\\0\\0\\2")
            rtnl.set_link(rtnl.link("vh0").index, master=fixed, up=True)
            rtnl.set_link(rtnl.link("vh1").index, master=loose, up=True)
            out["fixed"] = view(rtnl.link("br0"))
            out["loose"] = view(rtnl.link("br1"))
            out["host"] = view(rtnl.link("vh0"))
            out["bad"] = failure(rtnl.create_bridge, "br2", b"\\x01\\0\\0\\0\\0\\1")
        out["ip_there"] = ip("link", "show", netns=path)
        other.kill()
    """)
    assert out["fixed"]["address"] == "02:11:22:33:44:55"
    assert out["loose"]["address"] == "02:00:00:00:00:02"
    assert out["host"]["address"] == "02:00:00:00:00:01"
    peers = {link["ifname"]: link["address"] for link in out["ip_there"]}
    assert peers["eth0"] == "0a:bb:cc:dd:ee:ff"
    assert peers["eth1"] not in ("0a:bb:cc:dd:ee:ff", "00:00:00:00:00:00")
    assert out["bad"]["errno"] == errno.EADDRNOTAVAIL  # a multicast MAC


def test_addresses() -> None:
    """A link's IPv4 and IPv6 addresses listed, added (the IPv6 one without duplicate address
    detection) and deleted, as `ip address` sees them; the dump is filtered to the link."""
    out = run_in_netns("""
        import socket
        v4 = socket.inet_pton(socket.AF_INET, "10.9.8.1")
        v6 = socket.inet_pton(socket.AF_INET6, "fd00:1::1")

        def shown(found):
            return sorted([family, socket.inet_ntop(family, raw), length]
                          for family, raw, length in found)

        with Rtnl() as rtnl:
            bridge = rtnl.create_bridge("br0")
            other = rtnl.create_bridge("br1")
            out["empty"] = shown(rtnl.addresses(bridge))
            rtnl.set_link(bridge, up=True)
            sh("ip", "address", "add", "192.0.2.7/32", "dev", "br1")
            rtnl.add_address(bridge, socket.AF_INET, v4, 24)
            rtnl.add_address(bridge, socket.AF_INET6, v6, 64)
            out["added"] = shown(rtnl.addresses(bridge))
            out["other"] = shown(rtnl.addresses(other))
            out["lo"] = shown(rtnl.addresses(1))
            out["ip"] = ip("address", "show", "dev", "br0")[0]["addr_info"]
            out["again"] = failure(rtnl.add_address, bridge, socket.AF_INET, v4, 24)
            out["bad_length"] = failure(rtnl.add_address, bridge, socket.AF_INET, v6, 24)
            out["bad_prefix"] = failure(rtnl.add_address, bridge, socket.AF_INET, v4, 33)
            rtnl.delete_address(bridge, socket.AF_INET, v4, 24)
            rtnl.delete_address(bridge, socket.AF_INET6, v6, 64)
            out["deleted"] = shown(rtnl.addresses(bridge))
            out["not_there"] = failure(rtnl.delete_address, bridge, socket.AF_INET, v4, 24)
            out["missing_link"] = failure(rtnl.add_address, 4242, socket.AF_INET, v4, 24)
        out["ip_after"] = ip("address", "show", "dev", "br0")[0]["addr_info"]
    """)
    assert out["empty"] == []
    global_ones = [[2, "10.9.8.1", 24], [10, "fd00:1::1", 64]]
    assert [entry for entry in out["added"] if not entry[1].startswith("fe80:")] == global_ones
    assert out["other"] == [[2, "192.0.2.7", 32]]
    assert out["lo"] == []  # lo is down in a fresh netns: no address
    by_ip = {entry["local"]: entry for entry in out["ip"]}
    assert by_ip["10.9.8.1"]["prefixlen"] == 24 and by_ip["10.9.8.1"]["broadcast"] == "10.9.8.255"
    assert by_ip["fd00:1::1"]["prefixlen"] == 64
    assert by_ip["fd00:1::1"].get("nodad") is True
    assert not by_ip["fd00:1::1"].get("tentative")
    assert out["again"]["errno"] == errno.EEXIST
    assert "RTM_NEWADDR 10.9.8.1/24" in out["again"]["message"]
    assert out["bad_length"]["errno"] == out["bad_prefix"]["errno"] == errno.EINVAL
    assert [entry for entry in out["deleted"] if not entry[1].startswith("fe80:")] == []
    assert out["not_there"]["errno"] == errno.EADDRNOTAVAIL
    assert out["missing_link"]["errno"] == errno.ENODEV
    assert {entry["local"] for entry in out["ip_after"]} <= {
        entry[1] for entry in out["added"] if entry[1].startswith("fe80:")}


def test_set_link() -> None:
    out = run_in_netns("""
        other, path = other_netns()
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        with Rtnl() as rtnl:
            bridge = rtnl.create_bridge("br0")
            rtnl.create_veth("vh0", "eth%d", fd, 1500)
            host = rtnl.link("vh0")
            address = b"\\xfe" + host.address[1:]
            out["address"] = address.hex(":")
            rtnl.set_link(host.index, mtu=1400)
            rtnl.set_link(host.index, address=address)
            rtnl.set_link(host.index, master=bridge, up=True)
            out["set"] = view(rtnl.link("vh0"))
            out["ip_set"] = ip("link", "show", "vh0")[0]
            rtnl.set_link(host.index, up=False)
            out["down"] = view(rtnl.link("vh0"))
            rtnl.set_link(host.index, master=0)
            out["detached"] = view(rtnl.link("vh0"))
            out["ip_detached"] = ip("link", "show", "vh0")[0]
            rtnl.set_link(host.index)
            out["unchanged"] = view(rtnl.link("vh0"))
            out["bad_mtu"] = failure(rtnl.set_link, host.index, mtu=10)
            out["missing"] = failure(rtnl.set_link, 4242, up=True)
            out["bridge"] = bridge
        other.kill()
    """)
    assert out["set"]["mtu"] == 1400 == out["ip_set"]["mtu"]
    assert out["set"]["address"] == out["address"] == out["ip_set"]["address"]
    assert out["set"]["master"] == out["bridge"]
    assert out["ip_set"]["master"] == "br0"
    assert out["set"]["up"] is True
    assert "UP" in out["ip_set"]["flags"]
    assert out["down"]["up"] is False
    assert out["down"]["master"] == out["bridge"]
    assert out["detached"]["master"] == 0
    assert "master" not in out["ip_detached"]
    assert out["detached"]["mtu"] == 1400
    assert out["unchanged"] == out["detached"]
    assert out["bad_mtu"]["errno"] == errno.EINVAL
    assert out["missing"]["errno"] == errno.ENODEV


def test_set_bridge_port() -> None:
    out = run_in_netns("""
        with Rtnl() as rtnl:
            bridge = rtnl.create_bridge("br0")
            plain("d0")
            port = rtnl.link("d0").index
            out["not_a_port"] = failure(rtnl.set_bridge_port, port, isolated=True)
            rtnl.set_link(port, master=bridge)
            rtnl.set_bridge_port(port, isolated=True, learning=False, neigh_suppress=True)
            out["set"] = ip("link", "show", "d0")[0]["linkinfo"]["info_slave_data"]
            rtnl.set_bridge_port(port, isolated=False)
            out["isolation_off"] = ip("link", "show", "d0")[0]["linkinfo"]["info_slave_data"]
            rtnl.set_bridge_port(port, learning=True, neigh_suppress=False)
            out["reset"] = ip("link", "show", "d0")[0]["linkinfo"]["info_slave_data"]
    """)
    assert out["not_a_port"]["errno"] == errno.EOPNOTSUPP
    assert (out["set"]["isolated"], out["set"]["learning"], out["set"]["neigh_suppress"]) \
        == (True, False, True)
    assert (out["isolation_off"]["isolated"], out["isolation_off"]["learning"],
            out["isolation_off"]["neigh_suppress"]) == (False, False, True)
    assert (out["reset"]["isolated"], out["reset"]["learning"],
            out["reset"]["neigh_suppress"]) == (False, True, False)


def test_delete_link() -> None:
    out = run_in_netns("""
        other, path = other_netns()
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        with Rtnl() as rtnl:
            plain("d0")
            index = rtnl.link("d0").index
            rtnl.delete_link(index)
            out["gone"] = view(rtnl.link("d0"))
            out["again"] = failure(rtnl.delete_link, index)
            rtnl.create_veth("vh0", "eth%d", fd, 1500)
            out["peer_before"] = ip_names(netns=path)
            rtnl.delete_link(rtnl.link("vh0").index)
            out["peer_after"] = ip_names(netns=path)
            out["lo"] = failure(rtnl.delete_link, 1)
        out["ip_here"] = ip_names()
        other.kill()
    """)
    assert out["gone"] is None
    assert out["again"]["errno"] == errno.ENODEV
    assert out["peer_before"] == ["eth0", "lo"]
    assert out["peer_after"] == ["lo"]
    assert out["lo"]["errno"] in (errno.EOPNOTSUPP, errno.EINVAL)
    assert out["ip_here"] == ["lo"]


def test_link_names_multipart_dump_and_small_buffer() -> None:
    out = run_in_netns("""
        batch = "".join(f"link add nsg{i} type bridge\\n" for i in range(300))
        subprocess.run(["ip", "-batch", "-"], input=batch, text=True, check=True)
        with Rtnl() as rtnl:
            names = rtnl.link_names()
            links = rtnl.links()
        out["names"] = sorted(names)
        out["kinds"] = sorted({link.kind or "" for link in links})
        out["ip_names"] = ip_names()
        with Rtnl(buffer_size=64) as tiny:  # every datagram is larger: the buffer must grow
            out["tiny_names"] = sorted(tiny.link_names())
            out["tiny_link"] = view(tiny.link("nsg299"))
            out["tiny_buffer"] = len(tiny._socket._reader._buffer)
    """)
    assert len(out["names"]) == 301
    assert out["names"] == out["ip_names"] == out["tiny_names"]
    assert out["kinds"] == ["", "bridge"]
    assert out["tiny_link"]["name"] == "nsg299"
    assert out["tiny_buffer"] > 64


def test_probe_net_admin() -> None:
    out = run_in_netns("""
        def probe(open_euid, send_euid):
            # effective uid changes keep saved uid 0, so the way back to root stays open
            os.setresuid(0, open_euid, 0)
            rtnl = Rtnl()
            os.setresuid(0, 0, 0)
            os.setresuid(0, send_euid, 0)
            return rtnl.probe_net_admin()

        def dropped_for_good():
            os.setresuid(65534, 65534, 65534)
            with Rtnl() as rtnl:
                return rtnl.probe_net_admin()

        def own_user_and_net_namespace():
            os.setresuid(65534, 65534, 65534)
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.unshare(0x10000000 | 0x40000000) != 0:  # CLONE_NEWUSER | CLONE_NEWNET
                return "unshare failed: " + os.strerror(ctypes.get_errno())
            with Rtnl() as rtnl:
                return rtnl.probe_net_admin()

        with Rtnl() as rtnl:
            out["root"] = rtnl.probe_net_admin()
            out["lo_still_there"] = rtnl.link("lo") is not None
        out["dropped"] = in_child(dropped_for_good)
        out["opener_unprivileged"] = in_child(lambda: probe(65534, 0))
        out["sender_unprivileged"] = in_child(lambda: probe(0, 65534))
        out["both_root"] = in_child(lambda: probe(0, 0))
        out["own_netns"] = in_child(own_user_and_net_namespace)
    """)
    assert out["root"] is True
    assert out["lo_still_there"]
    assert out["dropped"] is False
    assert out["opener_unprivileged"] is False
    assert out["sender_unprivileged"] is False
    assert out["both_root"] is True
    assert out["own_netns"] is True


def test_ports_of_a_bridge() -> None:
    out = run_in_netns("""
        sh("ip", "link", "add", "nsgbr0", "type", "bridge")
        sh("ip", "link", "add", "nsgbr1", "type", "bridge")
        for name, bridge in (("nsgp0", "nsgbr0"), ("nsgp1", "nsgbr0"), ("nsgp2", "nsgbr1")):
            plain(name)
            sh("ip", "link", "set", name, "master", bridge)
        with Rtnl() as rtnl:
            out["ports0"] = sorted(l.name for l in rtnl.links(master=rtnl.link("nsgbr0").index))
            out["ports1"] = sorted(l.name for l in rtnl.links(master=rtnl.link("nsgbr1").index))
            sh("ip", "link", "set", "nsgp2", "nomaster")
            out["none"] = rtnl.links(master=rtnl.link("nsgbr1").index)
            out["all"] = len(rtnl.links())
    """)
    assert out["ports0"] == ["nsgp0", "nsgp1"] and out["ports1"] == ["nsgp2"]
    assert out["none"] == [] and out["all"] == 9  # lo, 2 bridges, 3 veth pairs


EVENTS = """
import select, socket, struct
from nsgate.system.link_events import LinkEvents


def readable(sock):
    return bool(select.select([sock], [], [], 0)[0])


def view_of(found):
    return {"links": sorted(found.links.values()), "bridges": sorted(found.bridges),
            "overrun": found.overrun}
"""


def run_with_events(body: str) -> dict:
    return run_in_netns(EVENTS + textwrap.dedent(body))


def test_link_events_report_deletions_and_ports_leaving_a_bridge() -> None:
    out = run_with_events("""
        with LinkEvents() as events, Rtnl() as rtnl:
            sh("ip", "link", "add", "nsgbr0", "type", "bridge")
            plain("nsgv0")
            plain("nsgv1")
            sh("ip", "link", "set", "nsgv0", "master", "nsgbr0")
            sh("ip", "link", "set", "nsgv1", "master", "nsgbr0")
            sh("ip", "link", "set", "nsgbr0", "up")
            out["after_creates"] = readable(events)  # RTM_NEWLINK never gets through
            bridge = rtnl.link("nsgbr0").index
            out["bridge"] = bridge
            sh("ip", "link", "set", "nsgv1", "nomaster")
            sh("ip", "link", "del", "nsgv0")
            out["readable"] = readable(events)
            out["first"] = view_of(events.drain())
            out["empty"] = view_of(events.drain())
    """)
    assert out["after_creates"] is False and out["readable"] is True
    assert out["first"] == {"links": ["nsgv0", "nsgv0p"], "bridges": [out["bridge"]],
                            "overrun": False}
    assert out["empty"] == {"links": [], "bridges": [], "overrun": False}


def test_link_events_overrun_is_reported() -> None:
    out = run_with_events("""
        batch = "".join(f"link add nsg{i} type veth peer name nsg{i}p\\n" for i in range(300))
        subprocess.run(["ip", "-batch", "-"], input=batch, text=True, check=True)
        with LinkEvents() as events:
            batch = "".join(f"link del nsg{i}\\n" for i in range(300))
            subprocess.run(["ip", "-batch", "-"], input=batch, text=True, check=True)
            found = events.drain()
            out["overrun"] = found.overrun
            out["some"] = 0 < len(found.links) < 600
            out["after"] = view_of(events.drain())
    """)
    assert out["overrun"] is True and out["some"] is True
    assert out["after"] == {"links": [], "bridges": [], "overrun": False}


def test_link_events_hear_only_the_kernel() -> None:
    """Without CAP_NET_ADMIN over the namespace's user namespace nothing can be sent to it,
    neither to its port nor to the group; the socket is connected to the kernel, so not even
    root can unicast to it; and what root sends to the group is not believed: it counts as lost
    notifications (a full pass, never a removal)."""
    out = run_with_events("""
        forged = struct.pack("=IHHII", 16 + 16 + 12, 17, 0, 0, 0) + struct.pack(
            "=BxHiII", 0, 1, 42, 0, 0) + struct.pack("=HH", 12, 3) + b"nsgfake0" + bytes(4)

        with LinkEvents() as events:
            port = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
            port.bind((0, 0))

            def unprivileged():
                os.setresgid(65534, 65534, 65534)
                os.setresuid(65534, 65534, 65534)
                sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
                sock.bind((0, 0))
                errors = {}
                for name, address in (("unicast", (events._sock.getsockname()[0], 0)),
                                      ("group", (0, 1))):
                    try:
                        sock.sendto(forged, address)
                        errors[name] = 0
                    except OSError as err:
                        errors[name] = err.errno
                return errors

            out["unprivileged"] = in_child(unprivileged)
            out["after_unprivileged"] = readable(events)
            try:
                port.sendto(forged, (events._sock.getsockname()[0], 0))  # root, to its port
                out["root_unicast"] = 0
            except OSError as err:
                out["root_unicast"] = err.errno
            port.sendto(forged, (0, 1))  # root, to the group
            out["root"] = view_of(events.drain())
    """)
    assert out["unprivileged"] == {"unicast": errno.EPERM, "group": errno.EPERM}
    assert out["after_unprivileged"] is False
    assert out["root_unicast"] == errno.ECONNREFUSED
    assert out["root"] == {"links": [], "bridges": [], "overrun": True}
