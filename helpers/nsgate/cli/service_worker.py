"""One of nsgated's workers: forked in advance with every module imported, it waits for the
connection its parent hands over, serves that one request with the helpers' own code, answers,
and exits. Nothing of one request outlives it.

The order: read the request (bounded in time and size); check the peer (service_io.verify_peer);
take the caller's credential shape (credentials.serve_caller: a setuid-root helper's, real ids
the caller's; getsubids runs as the caller); run the helper with the target
the caller handed over (system/handed.py); answer; exit.
"""

import grp
import posix
import pwd
import select
import socket

from nsgate.cli import entry
from nsgate.errors import Refusal
from nsgate.policy import service_wire
from nsgate.system import credentials, memory, service_io
from nsgate.system.handed import Handed


def run(ctl: socket.socket) -> None:
    """The worker's whole life; never returns."""
    _prepare_while_idle(ctl)
    taken = service_io.take_over(ctl)
    ctl.close()
    if taken is not None:
        conn, peer = taken
        service_io.send_answer(conn, _serve(conn, peer))
    posix._exit(0)


def _prepare_while_idle(ctl: socket.socket) -> None:
    """Copy the pages a request would otherwise copy as it goes (system/memory.py), at the
    lowest priority so a request being served elsewhere keeps the CPU, and only until the
    parent hands this worker a request (one that found no prepared worker: it is served at
    once, copying what it touches; the parent has put this worker back to its own priority,
    service._hurry); then, if it got through, say so."""
    if _handed_over(ctl):
        return  # a request (or the end) came before the preparation began
    idle = posix.sched_param(0)
    posix.sched_setscheduler(0, posix.SCHED_IDLE, idle)
    prepared = memory.own_private_pages(lambda: _handed_over(ctl))
    if prepared:
        _start_name_services()
    posix.sched_setscheduler(0, posix.SCHED_OTHER, idle)
    if not prepared:
        return  # a connection (or the end) is waiting already
    try:
        ctl.send(service_io.READY, socket.MSG_NOSIGNAL)
    except OSError:
        pass  # the parent handed it a connection already, and closed its end


def _handed_over(ctl: socket.socket) -> bool:
    """Whether the parent has handed this worker a connection (or closed its channel)."""
    return bool(select.select([ctl], [], [], 0)[0])


def _start_name_services() -> None:
    """A process's first passwd or group lookup reads nsswitch.conf and sets the sources up;
    done here, in this worker (never in the service: a source's connection must not be shared
    between workers), a request's lookups only look. Root's entries come from the first
    source, as they must."""
    try:
        pwd.getpwuid(0)
        grp.getgrgid(0)
    except KeyError:
        pass


def _serve(conn: socket.socket, peer: service_io.Peer) -> bytes:
    try:
        packet, fds, cut = service_io.read_request(conn)
    except OSError:
        return _refused("nsgated", "no request arrived within "
                        f"{service_io.READ_SECONDS} s of connecting")
    try:
        if cut:
            raise service_wire.WireError("the request is longer than 65536 bytes, carries more "
                                         "than one descriptor or other control data")
        request = service_wire.decode_request(packet, len(fds))
    except service_wire.WireError as err:
        for fd in fds:
            posix.close(fd)
        return _refused("nsgated", str(err))
    prog = request.helper
    try:
        service_io.verify_peer(peer)
    except Refusal as refusal:
        return service_wire.encode_answer(1, b"", refusal.text(prog).encode())
    finally:
        posix.close(peer.pidfd)
    args = [arg.decode("utf-8", "surrogateescape") for arg in request.args]
    handed = Handed(fds[0] if fds else None, request.target)
    if prog == "getsubids":
        _become(peer)
    else:
        credentials.serve_caller(peer.uid, peer.gid, peer.groups)
    status, out, text = entry.serve(prog, args, handed)
    return service_wire.encode_answer(status, out.encode("utf-8", "surrogateescape"),
                                      text.encode("utf-8", "surrogateescape"))


def _become(peer: service_io.Peer) -> None:
    """getsubids is not privileged: it runs as the caller, all privilege gone."""
    posix.setgroups(peer.groups)
    posix.setresgid(peer.gid, peer.gid, peer.gid)
    posix.setresuid(peer.uid, peer.uid, peer.uid)


def _refused(prog: str, why: str) -> bytes:
    return service_wire.encode_answer(1, b"", Refusal(why).text(prog).encode())
