"""Issue 9 §1: no process can slip a forged answer into the helper's netlink sockets.

The installed helper's link operations (nsgate.system.rtnl from $PREFIX/lib/nsgate) are attacked
in a fresh network namespace by another process of that namespace that learns the socket's port
id (as anyone can, from /proc/net/netlink) and unicasts forged answers with the sequence number
of the request, before and all through the request. A socket that is merely bound accepts them
(the kernel delivers any unicast to a port id); one connected to the kernel (port id 0) makes the
kernel refuse them with ECONNREFUSED. And the installed lxc-user-nic connects every netlink
socket it opens before it sends on it (strace).
"""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from tests.support import ALICE, PREFIX
from tests.test_usernic import grant, host_baseline, nic_world  # noqa: F401 (fixtures)
from tests.usernic_support import NSGATE_NIC, Proc

ATTACK = """
import errno, json, os, select, socket, struct, sys
sys.path.insert(0, {libdir!r})
from nsgate.system.rtnl import Rtnl

victim = Rtnl()
sock = getattr(victim, "_sock", None) or victim  # the socket's fd, whatever the version
port = socket.socket(fileno=os.dup(sock.fileno())).getsockname()[0]


def message(kind, flags, seq, body):
    return struct.pack("=IHHII", 16 + len(body), kind, flags, seq, port) + body


def attr(kind, payload):
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + bytes(-length % 4)


# A forged dump for the next requests (sequence numbers 1 to 4): one link "forged0", then DONE.
link = (struct.pack("=BxHiII", 0, 1, 1, 0x1, 0) + attr(3, b"forged0\\0")
        + attr(4, struct.pack("=I", 1234)))
forged = b"".join(message(16, 0x2, seq, link) + message(3, 0x2, seq, struct.pack("=i", 0))
                  for seq in range(1, 5))

first_read, first_write = os.pipe()
stop_read, stop_write = os.pipe()
report_read, report_write = os.pipe()
child = os.fork()
if child == 0:
    os.close(first_read); os.close(stop_write); os.close(report_read)
    attacker = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    attacker.bind((0, 0))
    outcomes = {{}}
    sent = 0
    while True:
        try:
            attacker.sendto(forged, socket.MSG_DONTWAIT, (port, 0))
            key = "delivered"
        except OSError as err:
            key = errno.errorcode.get(err.errno, str(err.errno))
        outcomes[key] = outcomes.get(key, 0) + 1
        sent += 1
        if sent == 1:
            os.write(first_write, b"x"); os.close(first_write)
        if select.select([stop_read], [], [], 0)[0] or sent > 100000:
            break
    os.write(report_write, json.dumps(outcomes).encode())
    os._exit(0)
os.close(first_write); os.close(stop_read); os.close(report_write)
assert os.read(first_read, 1) == b"x"  # a forged answer was sent before the request...
links = victim.links()  # ...and more are sent while it is outstanding
os.close(stop_write)
outcomes = json.loads(os.read(report_read, 65536))
os.waitpid(child, 0)
print(json.dumps({{"links": [[link.name, link.mtu] for link in links], "outcomes": outcomes,
                  "lo": [victim.link("lo").mtu]}}))
"""


UNSHARE = {
    # root of a fresh netns
    "root": ["unshare", "--net"],
    # the lxc-user-nic case: a netns owned by a user's own user namespace, where that user
    # holds CAP_NET_ADMIN (the helper's socket in the caller's netns)
    "user-namespace-owner": ["setpriv", f"--reuid={ALICE.uid}", f"--regid={ALICE.gid}",
                             "--clear-groups", "unshare", "--user", "--map-root-user", "--net"],
}


@pytest.mark.parametrize("where", sorted(UNSHARE))
def test_a_forged_answer_is_never_accepted(where: str) -> None:
    """A process with CAP_NET_ADMIN over the socket's netns unicasts forged answers: none gets in
    (without CAP_NET_ADMIN the kernel refuses to send any unicast to a port: EPERM)."""
    script = ATTACK.format(libdir=str(PREFIX / "lib" / "nsgate"))
    proc = subprocess.run([*UNSHARE[where], "/usr/bin/python3", "-I", "-S", "-c", script],
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
                          cwd="/")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["links"] == [["lo", 65536]]
    assert out["lo"] == [65536]
    assert set(out["outcomes"]) == {"ECONNREFUSED"}, out["outcomes"]


NETLINK_SOCKET = re.compile(r"^(?:\[pid +(\d+)\] )?socket\(AF_NETLINK, [^)]*\) = (\d+)$")


def test_every_netlink_socket_of_the_helper_is_connected_to_the_kernel() -> None:
    """The installed lxc-user-nic, run by a user on its own container: each AF_NETLINK socket is
    connected to port id 0 before anything is sent on it (both the host's and the one in the
    caller's netns, where the caller holds CAP_NET_ADMIN)."""
    grant("nsgt-alice veth br0 1")
    ctr = Proc.container(ALICE)
    result = subprocess.run(["strace", "-f", "-qq", "-u", ALICE.name, "-e",
                             "trace=socket,connect,sendto,sendmsg,close", "-e", "signal=none",
                             NSGATE_NIC, "create", "x", "x", str(ctr.pid), "veth", "br0"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    netlink = 0
    for position, line in enumerate(lines):
        match = NETLINK_SOCKET.match(line)
        if not match:
            continue
        netlink += 1
        pid, fd = match[1], match[2]
        prefix = rf"^(?:\[pid +{pid}\] )?" if pid else r"^"
        uses = [later for later in lines[position + 1:]
                if re.match(rf"{prefix}(connect|sendto|sendmsg|close)\({fd}, ", later)]
        assert uses, (line, result.stderr)
        assert re.match(rf"{prefix}connect\({fd}, \{{sa_family=AF_NETLINK, "
                        r"(?:nl_pad=\w+, )?nl_pid=0, "
                        r"nl_groups=00000000\}, 12\) = 0$", uses[0]), (line, uses[0])
    assert netlink >= 2, result.stderr  # the host's and the container's
