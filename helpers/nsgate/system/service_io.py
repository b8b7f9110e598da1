"""nsgated's sockets: the listening socket (its own, or systemd's), the peer's identity as the
kernel recorded it at connect(2), the hand-over of a connection from the parent to a worker,
and one request and one answer on a connection (nsgate-protocol(7))."""

import array
import errno
import posix
import signal
import socket
import struct

from nsgate.errors import Refusal
from nsgate.system.integrity import S_IFDIR, root_only

SO_PEERGROUPS = 59
SO_PEERPIDFD = 77
SD_LISTEN_FDS_START = 3
MAX_PACKET = 65536
MAX_GROUPS = 256  # what getsockopt(2) through Python can return (1024 bytes)
READ_SECONDS = 5
_UCRED = struct.Struct("=iII")
READY = b"r"  # a worker to its parent: prepared, waiting for a connection


class Peer:
    """Who connected, as the kernel recorded it: pid, effective uid and gid, groups, and a pidfd
    of the process (kept so the pid cannot be reused while it is checked)."""

    __slots__ = ("gid", "groups", "pid", "pidfd", "uid")

    def __init__(self, pid: int, uid: int, gid: int, groups: list[int], pidfd: int) -> None:
        self.pid, self.uid, self.gid, self.groups, self.pidfd = pid, uid, gid, groups, pidfd

    def pack(self) -> bytes:
        return _UCRED.pack(self.pid, self.uid, self.gid) + array.array("I", self.groups).tobytes()

    @classmethod
    def unpack(cls, data: bytes, pidfd: int) -> "Peer":
        pid, uid, gid = _UCRED.unpack_from(data)
        groups = array.array("I")
        groups.frombytes(data[_UCRED.size:])
        return cls(pid, uid, gid, list(groups), pidfd)


def peer_of(conn: socket.socket) -> Peer:
    """The peer of an accepted connection; a Refusal if the kernel cannot say who it is."""
    try:
        pid, uid, gid = _UCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                      _UCRED.size))
        raw = conn.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, MAX_GROUPS * 4)
        pidfd = struct.unpack("=i", conn.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD, 4))[0]
    except OSError as err:
        if err.errno == errno.ERANGE:
            raise Refusal(f"the caller is a member of more than {MAX_GROUPS} groups: nsgated "
                          "cannot pass them all on",
                          "use the setuid helpers, or leave some groups") from None
        if err.errno == errno.ENOPROTOOPT:
            raise Refusal("the kernel cannot name the caller's process (SO_PEERPIDFD needs "
                          "Linux 6.5): nsgated cannot serve on it",
                          "use the setuid helpers (make install without MODE=service)") from None
        raise Refusal(f"cannot identify the caller: {err.strerror}",
                      "the caller went away before it could be identified") from None
    groups = array.array("I")
    groups.frombytes(raw[:len(raw) - len(raw) % 4])
    return Peer(pid, uid, gid, list(groups), pidfd)


def activated_socket() -> socket.socket | None:
    """The socket systemd (or our own re-exec) passed, if any: exactly one SOCK_SEQPACKET unix
    socket that listens."""
    environ = posix.environ
    if environ.get(b"LISTEN_PID") != str(posix.getpid()).encode():
        return None
    if environ.get(b"LISTEN_FDS") != b"1":
        raise Refusal("nsgated was passed more or fewer sockets than one",
                      "nsgate.socket defines exactly one ListenSequentialPacket=")
    try:
        sock = socket.socket(fileno=SD_LISTEN_FDS_START)
    except OSError as err:
        raise Refusal(f"nsgated was passed LISTEN_FDS=1 but no socket on fd "
                      f"{SD_LISTEN_FDS_START}: {err.strerror}",
                      "whatever started it must pass the listening socket as fd 3") from None
    if (sock.family != socket.AF_UNIX or sock.type != socket.SOCK_SEQPACKET
            or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)):
        raise Refusal("the socket nsgated was passed is not a listening SOCK_SEQPACKET unix "
                      "socket", "see nsgate.socket: ListenSequentialPacket=")
    sock.set_inheritable(False)
    return sock


def own_socket(path: str) -> socket.socket:
    """Listen on `path` ourselves: in a directory of root's, 0755; the socket 0666 (everyone may
    ask; the kernel says who asks). A socket left by a service that died is replaced; one that
    answers is not."""
    directory = path.rsplit("/", 1)[0] or "/"
    try:
        posix.mkdir(directory, 0o755)
    except FileExistsError:
        pass
    if not root_only(posix.lstat(directory), S_IFDIR):
        raise Refusal(f"refusing to listen in {directory}: it is not root's alone",
                      f"{directory} must be a directory of root's, writable by no one else")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        probe.connect(path)
    except (FileNotFoundError, ConnectionRefusedError):
        pass
    else:
        raise Refusal(f"another nsgated already listens on {path}")
    finally:
        probe.close()
    try:
        posix.unlink(path)
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    old = posix.umask(0o111)
    try:
        sock.bind(path)
    finally:
        posix.umask(old)
    posix.chmod(path, 0o666)
    sock.listen(1024)
    return sock


def hand_over(ctl: socket.socket, conn: socket.socket, peer: Peer) -> None:
    """Give an accepted connection and its peer to an idle worker."""
    fds = array.array("i", [conn.fileno(), peer.pidfd])
    ctl.sendmsg([peer.pack()], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds.tobytes())])


def take_over(ctl: socket.socket) -> tuple[socket.socket, Peer] | None:
    """In a worker: wait for the connection to serve; None when the parent is gone or retires
    the worker. A worker the parent chose before it said READY may have said it just before the
    parent closed its end: closing with that word unread makes the kernel report ECONNRESET on
    the worker's end, once, before the hand-over still queued there; it is read after it."""
    try:
        data, fds, _flags = _receive(ctl, MAX_PACKET, 2)
    except ConnectionResetError:
        data, fds, _flags = _receive(ctl, MAX_PACKET, 2)
    if not data or len(fds) != 2:
        for fd in fds:
            posix.close(fd)
        return None
    return socket.socket(fileno=fds[0]), Peer.unpack(data, fds[1])


def read_request(conn: socket.socket) -> tuple[bytes, list[int], bool]:
    """One request packet: its bytes, the descriptors it carried, and whether the kernel cut
    anything (a longer packet, more descriptors than two): the caller must refuse it then."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO,
                    struct.pack("=qq", READ_SECONDS, 0))
    return _receive_checked(conn)


def _receive_checked(conn: socket.socket) -> tuple[bytes, list[int], bool]:
    data, fds, flags = _receive(conn, MAX_PACKET + 1, 2)
    cut = bool(flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC)) or len(data) > MAX_PACKET
    return data, fds, cut


def discard_unread(conn: socket.socket) -> None:
    """Drop what the caller sent that no one will read (its request and descriptors), before a
    connection answered without serving it is closed: a unix socket closed with unread data
    resets the connection, and the caller would read ECONNRESET, not the answer queued for it.
    (A request sent after the close meets EPIPE; the answer still waits to be read.)"""
    for _ in range(4):  # the one request, and a little more from a client that sends more
        try:
            _, fds, _ = _receive(conn, MAX_PACKET + 1, 2, socket.MSG_DONTWAIT)
        except OSError:
            return
        for fd in fds:
            posix.close(fd)


def _receive(sock: socket.socket, size: int, max_fds: int,
             how: int = 0) -> tuple[bytes, list[int], int]:
    data, ancillary, flags, _ = sock.recvmsg(size, socket.CMSG_SPACE(max_fds * 4),
                                             socket.MSG_CMSG_CLOEXEC | how)
    fds: list[int] = []
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            received = array.array("i")
            received.frombytes(payload[:len(payload) - len(payload) % 4])
            fds.extend(received)
        else:
            flags |= socket.MSG_CTRUNC  # control data of another kind: refused like a cut one
    return data, fds, flags


def send_answer(conn: socket.socket, packet: bytes) -> None:
    try:
        conn.send(packet, socket.MSG_NOSIGNAL)
    except OSError:
        pass  # the caller went away: it learns nothing, as with a helper killed before writing


def verify_peer(peer: Peer) -> None:
    """Refuse a peer that is not simply a user: another user namespace than ours, real and
    effective ids that differ (a set-id program connecting on someone's behalf), ids changed
    since it connected, or gone. Reads /proc/<pid> and then proves, through the pidfd, that the
    process read is still the peer."""
    try:
        dirfd = posix.open(f"/proc/{peer.pid}", posix.O_RDONLY | posix.O_DIRECTORY
                           | posix.O_CLOEXEC)
    except OSError:
        raise _gone() from None
    try:
        status = _read_status(dirfd)
        theirs = posix.stat("ns/user", dir_fd=dirfd)
    except OSError:
        raise _gone() from None
    finally:
        posix.close(dirfd)
    try:
        signal.pidfd_send_signal(peer.pidfd, 0)
    except OSError:
        raise _gone() from None
    ours = posix.stat("/proc/self/ns/user")
    if (theirs.st_dev, theirs.st_ino) != (ours.st_dev, ours.st_ino):  # its ids are not ours
        raise Refusal("nsgated serves callers of the initial user namespace only",
                      "inside a user namespace, use nsgate's setuid helpers")
    uids, gids = status.get(b"Uid", []), status.get(b"Gid", [])
    if len(uids) < 2 or len(gids) < 2:
        raise _gone()
    if uids[0] != uids[1] or gids[0] != gids[1]:
        raise Refusal(f"refusing a caller whose real and effective ids differ (uids {uids[0]}/"
                      f"{uids[1]}, gids {gids[0]}/{gids[1]})",
                      "a set-id program may not ask on someone's behalf: connect with your own "
                      "ids, as nsgate's helpers do")
    if uids[1] != peer.uid or gids[1] != peer.gid:
        raise Refusal("refusing a caller whose ids changed after it connected",
                      "connect with the ids the request is made with")


def _gone() -> Refusal:
    return Refusal("the caller went away before its request was served")


def _read_status(dirfd: int) -> dict[bytes, list[int]]:
    fd = posix.open("status", posix.O_RDONLY | posix.O_CLOEXEC, dir_fd=dirfd)
    try:
        data = posix.read(fd, 16384)
    finally:
        posix.close(fd)
    ids: dict[bytes, list[int]] = {}
    for line in data.split(b"\n"):
        key, _, value = line.partition(b":")
        if key in (b"Uid", b"Gid"):
            ids[key] = [int(word) for word in value.split()]
    return ids
