"""lxc-user-nic: give a caller's network namespace a veth on a bridge it is granted, within its
quota (lxc-user-nic.md). Drop-in for LXC's helper.

create, in order, each step before any change:
  parse and validate every name; identify the caller; find the applicable grants; check the
  bridge (a Linux bridge, `none`, or another link that Open vSwitch must confirm); open the
  target's netns once, as the caller; prove the caller holds CAP_NET_ADMIN over that very netns,
  as the caller. Then, with every id root so the caller can no longer stop or kill the helper,
  out of the caller's cgroups and scheduling so it cannot freeze or starve it (system/detach.py),
  with only the capabilities the action needs (confine): have Open vSwitch confirm its bridge,
  lock the database, prune stale lines, check the quota, record the nic (system/nic_commit.py:
  a batch of one here, every create waiting at once in nsgated's committer), create the pair
  with the peer born in the netns by fd, set it up, attach it, unlock. Any failure rolls all of
  it back.
  The result line is written after all privilege is dropped, in one write.
"""

import posix

from nsgate.errors import Refusal
from nsgate.policy import nic_batch, nic_macs, nicdb, nicnames, usernet
from nsgate.policy.nic_request import NO_BRIDGE, USAGE, NicRequest, parse
from nsgate.system import (
    audit,
    confine,
    credentials,
    detach,
    files,
    kernel,
    netns,
    network_plan,
    nic_commit,
    nicdb_store,
    ovs,
    port_security,
    ports,
    private_bridge,
    rtnl,
)

TYPE_CHECKING = False  # typing costs import time on every helper run
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import NoReturn

    from nsgate.system import nic_channel
    from nsgate.system.handed import Handed

USERNET = usernet.PATH
DEFAULT_MTU = 1500
# Every capability a run can use, from the start: setns in and out of the target's netns
# (CAP_SYS_ADMIN, until the proof), the credential changes (CAP_SET[UG]ID), leaving the caller's
# scheduling (CAP_SYS_NICE), cutting the bounding set (CAP_SETPCAP) and the action itself.
RUN_CAPS = [kernel.CAP_NET_ADMIN, kernel.CAP_SYS_ADMIN, kernel.CAP_SETUID, kernel.CAP_SETGID,
            kernel.CAP_SYS_NICE, kernel.CAP_SETPCAP]


class Caller:
    """The caller as /etc/lxc/lxc-usernet names it: its user name and the tokens of its groups
    (lxc-user-nic.md §5.2), with its kernel ids (`credentials.CallerIds`)."""

    def __init__(self) -> None:
        import grp
        import pwd

        self.ids = credentials.CallerIds()
        try:
            self.name = pwd.getpwuid(self.ids.uid).pw_name.encode("utf-8", "surrogateescape")
        except KeyError:
            raise Refusal("Failed to get username",
                          f"uid {self.ids.uid} has no passwd entry") from None
        names = []
        for gid in posix.getgroups():
            try:
                names.append(grp.getgrgid(gid).gr_name.encode("utf-8", "surrogateescape"))
            except KeyError:
                continue  # a nameless gid: skipped, the scan goes on (§10 item 7)
        self.tokens = usernet.tokens_of(self.name, names)

    @property
    def shown(self) -> str:
        return self.name.decode("utf-8", "backslashreplace")


def main(argv: list[str], handed: "Handed | None" = None) -> tuple[int, str, str]:
    """The exit status, the text for stdout and the text for stderr."""
    ids = credentials.CallerIds()
    args = [arg.encode("utf-8", "surrogateescape") for arg in argv]
    what = f"caller uid {ids.uid}, lxc-user-nic " + " ".join(
        repr(arg[:40])[2:-1] for arg in args[:8])
    try:
        credentials.harden_process()
        request = parse(args)
        credentials.require_capability(kernel.CAP_NET_ADMIN)
        credentials.limit_capabilities(RUN_CAPS)
        caller = Caller()
        if request.verb == "create":
            line = _create(caller, request, handed)
        else:
            _delete(caller, request, handed)
            line = ""
    except Refusal as refusal:
        credentials.drop_all(ids)
        audit.record("lxc-user-nic", False, f"{what}: {refusal.first}")
        if refusal.usage:
            return 1, "", USAGE  # exactly the reference's text
        return 1, "", refusal.text("lxc-user-nic")
    credentials.drop_all(ids)
    audit.record("lxc-user-nic", True, f"{what}: {line.strip() or 'deleted'}")
    return 0, line, ""


def _grants(caller: Caller, request: NicRequest) -> list[usernet.Grant]:
    owner = nicnames.private_bridge_uid(request.bridge)
    if owner is not None and owner != caller.ids.uid:
        raise Refusal(f"bridge {request.bridge.decode()} is the private bridge of uid {owner}: "
                      f"it is not granted to {caller.shown}",
                      "a private bridge does not isolate its ports, so nsgate puts only its "
                      f"owner's nics on it; a {USERNET} line granting it to another user or a "
                      "group is a mistake (nsgate check reports it): grant nsgate-private for "
                      "a bridge of the user's own, or a shared bridge")
    data = files.read_small(USERNET)
    if data is None:
        raise Refusal(f"no {USERNET}: the administrator grants nics there",
                      f"a line like '{caller.shown} {request.nic_type.decode()} "
                      f"{request.bridge.decode()} 1' allows one nic")
    grants = usernet.applicable(usernet.parse(data), caller.tokens, request.nic_type,
                                request.bridge)
    if not grants:
        raise Refusal(f"no lxc-usernet entry for user {caller.shown} on bridge "
                      f"{request.bridge.decode()} (type {request.nic_type.decode()})",
                      f"{USERNET} has no line for {caller.shown} or one of its groups with that "
                      "type and bridge")
    return grants


def _check_bridge(net: rtnl.Rtnl, bridge: bytes) -> tuple[ports.Attachment | None, int]:
    """Where to attach and with which MTU; None for the caller's private bridge, which is
    resolved (and made, on first use) under the database lock."""
    if bridge == NO_BRIDGE:
        return ports.Attachment("none"), DEFAULT_MTU
    if bridge == private_bridge.RESERVED_NAME:
        return None, DEFAULT_MTU
    name = bridge.decode()
    link = net.link(name)
    if link is None:
        raise Refusal(f"bridge {name} does not exist")
    if link.kind == "bridge":
        return ports.Attachment(name, link.index), link.mtu
    # Any other link may be an Open vSwitch bridge (kind openvswitch with the kernel datapath, a
    # tap with the userspace one): Open vSwitch says, once the caller's privilege is proven.
    return ports.Attachment(name, link.index, is_ovs=True), link.mtu


def _confirm_ovs_bridge(net: rtnl.Rtnl, attach: ports.Attachment) -> None:
    """Refuse a link Open vSwitch does not know as its bridge (`ovs-vsctl br-exists`, by the
    runner forked after the proof: no root process its caller can signal asks it)."""
    if attach.ovs is not None and attach.ovs.run("br-exists", attach.name):
        return
    link = net.link(attach.name)
    kind = (link.kind if link is not None else None) or "plain"
    raise Refusal(f"{attach.name} is not a bridge (it is a {kind} link)",
                  "nics can be attached only to a Linux bridge or an Open vSwitch bridge "
                  f"(ovs-vsctl br-exists {attach.name} does not confirm it)")


def _prove_net_admin(caller: Caller, target_fd: int, host_fd: int) -> rtnl.Rtnl:
    """Open a netlink socket in the target netns as the caller and prove, with the kernel's own
    check, that the caller holds CAP_NET_ADMIN over it (§10 item 2). The socket is kept for
    read-only queries of that netns."""
    netns.enter(target_fd)
    credentials.act_as_caller(caller.ids)
    try:
        inside = rtnl.Rtnl()
        privileged = inside.probe_net_admin()
    finally:
        credentials.act_as_root(caller.ids)
        netns.enter(host_fd)
    if not privileged:
        inside.close()
        raise Refusal(f"User {caller.shown} may not modify that network namespace",
                      "the caller needs CAP_NET_ADMIN over it: it must belong to a user "
                      "namespace the caller owns (e.g. unshare --user --map-root-user --net)")
    return inside


def _create(caller: Caller, request: NicRequest, handed: "Handed | None") -> str:
    grants = _grants(caller, request)
    host_fd = rtnl.netns_of_self()
    with rtnl.Rtnl() as net:
        attach, mtu = _check_bridge(net, request.bridge)
        credentials.act_as_caller(caller.ids)
        try:
            target_fd = netns.open_of_pid(request.pid, handed)
        finally:
            credentials.act_as_root(caller.ids)
        inside = _prove_net_admin(caller, target_fd, host_fd)
        with inside:
            peer = _container_name(inside, request.nicname)
            credentials.become_unsignalable(caller.ids)
            if handed is None:  # nsgated's worker runs in the service's cgroups already
                detach.from_caller()
            if attach is not None and attach.is_ovs:
                attach.ovs = ovs.Runner(_host_port_commands(attach.name, caller.ids.uid))
            intent = nic_batch.Intent(caller.ids.uid, request.nic_type, request.bridge, grants,
                                      private=attach is None,
                                      guarded=attach is None or (attach.index > 0
                                                                 and not attach.is_ovs))
            remote = _committer_channel()
            guard = None
            network = None
            try:
                if intent.private and remote is None:
                    network = network_plan.load()  # malformed: refused before any change
                    if network is not None:
                        private_bridge.load_network_modules()
                if intent.guarded and remote is None:
                    guard = port_security.Guard(network)  # nsgate's nftables tables
                confine.confine([kernel.CAP_NET_ADMIN, kernel.CAP_SETUID, kernel.CAP_SETGID],
                                confine.NIC_MAKER)
                if attach is not None and attach.is_ovs:
                    _confirm_ovs_bridge(net, attach)
                session = remote or nic_commit.LocalSession(net, guard, network)
                host, host_index, peer, peer_index = _make_reserved(
                    session, intent, net, inside, target_fd, peer, mtu, attach,
                    (request.lxcpath, request.name, request.nicname or peer))
            finally:
                if remote is not None:
                    remote.close()
                if guard is not None:
                    guard.close()
                if attach is not None and attach.ovs is not None:
                    attach.ovs.close()
    return f"{peer.decode()}:{peer_index}:{host.decode()}:{host_index}\n"


def _host_port_commands(bridge: str, uid: int) -> "Callable[[tuple[str, ...]], bool]":
    """What the OVS runner of a create may do: ask whether this bridge is Open vSwitch's, and
    add or remove, on it, a port named as this caller's host ends are."""
    def allowed(args: tuple[str, ...]) -> bool:
        if args == ("br-exists", bridge):
            return True
        return (args[:-2] in (("add-port",), ("--if-exists", "del-port")) and len(args) >= 3
                and args[-2] == bridge
                and nicnames.is_host_veth_name(uid, args[-1].encode("utf-8", "surrogateescape")))
    return allowed


def _container_name(inside: rtnl.Rtnl, requested: bytes | None) -> bytes:
    """The requested name if free in the container (a template such as net%d as it is: the
    kernel picks the number), else the first free eth%d."""
    if requested is not None and nicnames.valid_ifname_template(requested):
        return requested
    taken = inside.link_names()
    if requested is not None:
        if requested.decode() in taken:
            raise Refusal(f"interface name {requested.decode()} is already taken in the "
                          "container")
        return requested
    for number in range(len(taken) + 1):
        name = f"eth{number}"
        if name not in taken:
            return name.encode()
    raise Refusal("no free eth<N> name in the container")


def _committer_channel() -> "nic_channel.RemoteSession | None":
    """In an nsgated worker, the session with the service's committer; None in the setuid
    helper, which commits its create alone."""
    if nic_commit.CHANNEL is None:
        return None
    from nsgate.system import nic_channel  # nsgated imported it before forking its workers

    channel, nic_commit.CHANNEL = nic_commit.CHANNEL, None
    return nic_channel.RemoteSession(channel)


def _make_reserved(session: "nic_commit.LocalSession | nic_channel.RemoteSession",
                   intent: nic_batch.Intent, net: rtnl.Rtnl, inside: rtnl.Rtnl, target_fd: int,
                   peer: bytes, mtu: int, attach: ports.Attachment | None,
                   identity: tuple[bytes, bytes, bytes]) -> tuple[bytes, int, bytes, int]:
    """(host name, host ifindex, container name, container ifindex) of the new pair, recorded
    (the session decides and records it under the database lock: system/nic_commit.py); the
    container end is found by its ifindex (the host end's IFLA_LINK), so a name template
    reports the name the kernel chose. `identity` (lxcpath, name, nic name) gives the pair its
    stable MACs on a Linux bridge."""
    reserved = session.reserve(intent)
    host = reserved.host
    where = attach if attach is not None else reserved.attach
    try:
        if where is None:
            raise Refusal("internal error: no private bridge came with the reservation")
        host_mac, peer_mac = _stable_macs(net, where, intent.uid, identity)
        net.create_veth(host.decode(), peer.decode(), target_fd, mtu, host_address=host_mac,
                        peer_address=peer_mac)
        if host_mac is not None and not isinstance(session, nic_commit.LocalSession) \
                and _has_twin(net, host_mac):
            # A member of the same batch of nsgated's committer made the same pair meanwhile
            # (the lock is the batch's): this one takes the kernel's random MACs instead.
            twin = net.link(host.decode())
            if twin is not None:
                net.delete_link(twin.index)  # its peer goes with it, at once
            net.create_veth(host.decode(), peer.decode(), target_fd, mtu)
        link = net.link(host.decode())
        peer_link = inside.link_by_index(link.link) if link is not None else None
        if link is None or peer_link is None:
            raise Refusal("the new veth vanished while it was set up")
        ports.set_up_host_end(net, link, where)
    except BaseException:
        try:
            if where is not None:
                _roll_back(net, host, where)
        finally:
            session.finish(False)  # drops the line unless the host end still exists
        raise
    session.finish(True)
    return host, link.index, peer_link.name.encode("utf-8", "surrogateescape"), peer_link.index


def _stable_macs(net: rtnl.Rtnl, where: ports.Attachment, uid: int,
                 identity: tuple[bytes, bytes, bytes]) -> tuple[bytes | None, bytes | None]:
    """(host end, container end) MACs of a new pair on a Linux bridge: the same for the same
    uid, lxcpath, name and nic name (policy/nic_macs.py), so a restarted container keeps its
    DHCP lease. If a port of the bridge has that host MAC already (a second container of the
    same lxcpath and name, e.g. two rootlesskit instances), (None, None): the kernel's random
    ones, as nowhere else (Open vSwitch, `none`)."""
    if where.is_ovs or not where.index:
        return None, None
    container = nic_macs.container_mac(uid, *identity)
    host = nic_macs.host_mac(container)
    if any(port.address == host for port in net.links(master=where.index)):
        return None, None
    return host, container


def _has_twin(net: rtnl.Rtnl, host_mac: bytes) -> bool:
    """Whether another link here has the MAC just given to a new host end."""
    return sum(1 for link in net.links() if link.address == host_mac) > 1


def _roll_back(net: rtnl.Rtnl, host: bytes, attach: ports.Attachment) -> None:
    link = net.link(host.decode())
    if attach.ovs is not None:
        attach.ovs.run("--if-exists", "del-port", attach.name, host.decode())
    if link is not None:
        net.delete_link(link.index)  # takes the peer in the container with it


def _delete(caller: Caller, request: NicRequest, handed: "Handed | None") -> None:
    """Remove an Open vSwitch port the caller owns (§8.2); Linux bridge ports go away with the
    container's netns."""
    credentials.act_as_caller(caller.ids)
    try:
        target_fd = netns.open_path(request.netns_path, handed)
    finally:
        credentials.act_as_root(caller.ids)
    host_fd = rtnl.netns_of_self()
    _prove_net_admin(caller, target_fd, host_fd).close()
    dev = request.nicname or b""
    with rtnl.Rtnl() as net:
        bridge = net.link(request.bridge.decode()) if request.bridge != NO_BRIDGE else None
        if bridge is not None and bridge.kind == "bridge":
            raise Refusal("Deletion of non ovs type network devices not implemented",
                          "a Linux bridge port goes away with the container's netns")
        data = files.read_small(USERNET) or b""
        tokens = {g.token for g in usernet.applicable(usernet.parse(data), caller.tokens,
                                                       request.nic_type, request.bridge)}
    if not tokens:  # only lines of owners granted this type and bridge (§8.2)
        _refuse_delete(caller, request, dev)
    credentials.become_unsignalable(caller.ids)
    if handed is None:
        detach.from_caller()
    command = ("del-port", request.bridge.decode(), dev.decode())
    with ovs.Runner(lambda args: args == command) as runner:
        confine.confine([kernel.CAP_SETUID, kernel.CAP_SETGID], confine.NIC_MAKER)
        lock = nicdb_store.Locked()
        try:
            lines = nicdb.lines_of(nicdb.split_lines(nicdb_store.read()), tokens,
                                   request.nic_type, request.bridge)
            owned = nicdb.find(list(lines.values()), tokens, request.nic_type,
                               request.bridge, dev)
        finally:
            lock.release()
        if owned is None:
            _refuse_delete(caller, request, dev)
        if not runner.run(*command):
            raise Refusal(f'Failed to remove port "{dev.decode()}" from openvswitch bridge '
                          f'"{request.bridge.decode()}"')


def _refuse_delete(caller: Caller, request: NicRequest, dev: bytes) -> "NoReturn":
    raise Refusal(f'Caller is not allowed to delete network device "{dev.decode()}"',
                  f"{nicdb_store.DB_PATH} records no {request.nic_type.decode()} nic of "
                  f"{caller.shown} or its groups named so on {request.bridge.decode()}")
