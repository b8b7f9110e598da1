"""The hand-over of a connection from nsgated's parent to a worker (system/service_io.py), on
real unix sockets: the kernel's behaviour the worker must cope with, and that it does."""

from __future__ import annotations

import os
import socket

import pytest
from nsgate.system import service_io


def _handed_over_after_an_unread_ready() -> tuple[socket.socket, socket.socket]:
    """A worker's control socket as the race leaves it: the worker said READY, the parent
    (which had chosen it already) handed a connection over and closed its end without reading
    READY. Returns the worker's end and the caller's end of the handed connection."""
    parent_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    caller, accepted = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    worker_end.send(service_io.READY)
    pidfd = os.pidfd_open(os.getpid())
    try:
        service_io.hand_over(parent_end, accepted, service_io.Peer(
            os.getpid(), os.getuid(), os.getgid(), os.getgroups(), pidfd))
    finally:
        os.close(pidfd)
        accepted.close()
        parent_end.close()
    return worker_end, caller


def test_the_kernel_reports_a_reset_before_the_queued_hand_over():
    """Why take_over retries: the first receive fails although a message waits."""
    worker_end, caller = _handed_over_after_an_unread_ready()
    with worker_end, caller:
        with pytest.raises(ConnectionResetError):
            worker_end.recvmsg(service_io.MAX_PACKET, socket.CMSG_SPACE(8))
        data, ancillary, _, _ = worker_end.recvmsg(service_io.MAX_PACKET, socket.CMSG_SPACE(8))
        assert data and ancillary
        for _, _, payload in ancillary:
            for fd in memoryview(payload).cast("i"):
                os.close(fd)


def test_a_worker_chosen_before_it_said_ready_still_takes_its_connection():
    worker_end, caller = _handed_over_after_an_unread_ready()
    with worker_end, caller:
        taken = service_io.take_over(worker_end)
        assert taken is not None
        conn, peer = taken
        with conn:
            os.close(peer.pidfd)
            assert (peer.pid, peer.uid, peer.gid) == (os.getpid(), os.getuid(), os.getgid())
            caller.send(b"request")
            assert conn.recv(100) == b"request"
            conn.send(b"answer")
            assert caller.recv(100) == b"answer"


def test_a_retired_worker_still_sees_the_end():
    """The parent closing an idle worker's channel (no hand-over) still ends it, reset or not."""
    parent_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    worker_end.send(service_io.READY)
    parent_end.close()
    with worker_end:
        assert service_io.take_over(worker_end) is None
