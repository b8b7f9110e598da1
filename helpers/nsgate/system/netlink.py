"""The netlink transport: one socket connected to the kernel, requests out, whole answers in.
The bytes are built and parsed by policy/netlink_codec.py; the link operations are in rtnl.py.

The socket is bound (the kernel picks its port id) and then connected to port id 0, the kernel:
the kernel then refuses any unicast to it from another port (ECONNREFUSED to the sender), so no
process, even one with CAP_NET_ADMIN in the namespace, can slip a forged answer into it. Every
datagram must also come from port 0 and every message be addressed to our port id.

Namespaces: a netlink socket belongs to the network namespace its creating thread was in when it
was created, for its whole life.
"""

import _socket
import errno
import posix

from nsgate.policy import netlink_codec as codec

TYPE_CHECKING = False  # typing costs import time on every helper run
if TYPE_CHECKING:
    from types import TracebackType

_SOL_NETLINK = 270
_NETLINK_CAP_ACK = 10  # errors do not echo our whole request back
_NETLINK_EXT_ACK = 11  # errors carry the kernel's text (extack)
_KERNEL = (0, 0)  # port id 0, no multicast groups
_BUFFER_SIZE = 65536


class NetlinkError(OSError):
    """The kernel refused a netlink request (errno, what was asked and the kernel's text), or
    its answer could not be read (EBADMSG, EPROTO)."""


class DatagramReader:
    """Whole datagrams off a netlink socket: the true size of the next one is peeked first, so
    none is ever truncated (the buffer grows to fit)."""

    def __init__(self, buffer_size: int = _BUFFER_SIZE) -> None:
        self._buffer = bytearray(buffer_size)

    def receive(self, sock: _socket.socket) -> tuple[bytes, tuple[int, int]]:
        """The next datagram and its sender (port id, multicast groups)."""
        while True:
            size = sock.recv_into(self._buffer, 0, _socket.MSG_PEEK | _socket.MSG_TRUNC)
            if size <= len(self._buffer):
                break
            self._buffer = bytearray(size)
        size, sender = sock.recvfrom_into(self._buffer)
        return bytes(self._buffer[:size]), (int(sender[0]), int(sender[1]))


class NetlinkSocket:
    """One netlink socket of `protocol`, connected to the kernel. Each request waits for its
    complete answer: the kernel's acknowledgement (ask for one with NLM_F_ACK) or the end of a
    dump. A refusal raises NetlinkError."""

    def __init__(self, protocol: int, *, buffer_size: int = _BUFFER_SIZE) -> None:
        sock = _socket.socket(_socket.AF_NETLINK, _socket.SOCK_RAW | _socket.SOCK_CLOEXEC,
                              protocol)
        try:
            sock.setsockopt(_SOL_NETLINK, _NETLINK_CAP_ACK, 1)
            sock.setsockopt(_SOL_NETLINK, _NETLINK_EXT_ACK, 1)
            sock.bind(_KERNEL)  # the kernel picks our port id; no multicast groups
            sock.connect(_KERNEL)  # from now on only the kernel can send to us
            self.port = int(sock.getsockname()[0])
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._reader = DatagramReader(buffer_size)
        self._seq = 0

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        try:
            self._sock.close()
        except OSError:
            pass  # the socket is gone all the same (see files.close_quietly)

    def __enter__(self) -> "NetlinkSocket":
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: "TracebackType | None") -> None:
        self.close()

    def _receive(self, what: str) -> bytes:
        """One whole datagram from the kernel."""
        data, sender = self._reader.receive(self._sock)
        if sender != _KERNEL:  # cannot happen on a connected socket: fail closed
            raise NetlinkError(errno.EPROTO, f"{what}: a datagram from port {sender[0]}, not "
                               "from the kernel")
        return data

    def request(self, kind: int, flags: int, body: bytes, what: str) -> list[bytes]:
        """Send one request; the payloads of the data messages answering it, in order."""
        self._seq = seq = (self._seq + 1) & 0xFFFFFFFF
        message = codec.request(kind, flags, seq, body)
        if self._sock.send(message) != len(message):
            raise NetlinkError(errno.EMSGSIZE, f"{what}: short send")
        answer = codec.Answer(seq, self.port)
        try:
            while not answer.feed(self._receive(what)):
                pass
        except codec.CodecError as err:
            raise NetlinkError(errno.EBADMSG, f"{what}: malformed netlink answer: {err}") from None
        if answer.overrun:
            raise NetlinkError(errno.ENOBUFS, f"{what}: netlink overrun")
        outcome = answer.outcome
        if outcome is not None and outcome.code:
            message_text = f"{what}: {posix.strerror(outcome.code)}"
            if outcome.extack:
                message_text += f" ({outcome.extack})"
            raise NetlinkError(outcome.code, message_text)
        if answer.interrupted:  # what was dumped changed while the dump was running
            raise NetlinkError(errno.EINTR, f"{what}: dump interrupted")
        return answer.payloads

    def batch(self, parts: "list[tuple[int, int, bytes]]", what: str) -> None:
        """Send messages (type, flags, body) in one datagram under one sequence number, as an
        nfnetlink batch is sent; every part that asks for NLM_F_ACK must be acknowledged, and
        the first refusal raises NetlinkError."""
        self._seq = seq = (self._seq + 1) & 0xFFFFFFFF
        data = b"".join(codec.request(kind, flags, seq, body) for kind, flags, body in parts)
        if self._sock.send(data) != len(data):
            raise NetlinkError(errno.EMSGSIZE, f"{what}: short send")
        expected = sum(1 for _, flags, _ in parts if flags & codec.NLM_F_ACK)
        try:
            while expected:
                for msg in codec.split_messages(self._receive(what)):
                    if msg.port != self.port:
                        raise codec.CodecError(f"a message to port {msg.port}, not ours")
                    if msg.seq != seq:
                        continue
                    if msg.kind != codec.NLMSG_ERROR or not expected:
                        raise codec.CodecError(f"unexpected message type {msg.kind}")
                    outcome = codec.parse_outcome(msg)
                    if outcome.code:
                        raise NetlinkError(outcome.code,
                                           f"{what}: {posix.strerror(outcome.code)}")
                    expected -= 1
        except codec.CodecError as err:
            raise NetlinkError(errno.EBADMSG, f"{what}: malformed netlink answer: {err}") from None
