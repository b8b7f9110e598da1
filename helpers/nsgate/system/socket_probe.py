"""Whether something accepts connections on the service's socket, for `nsgate check`: one
connect, closed at once, nothing sent (a socket-activated service may start for it, and drops
the silent connection)."""

import socket

from nsgate.policy.service_lint import ABSENT, LISTENING, NOT_LISTENING


def state(path: str) -> str:
    """LISTENING, NOT_LISTENING, ABSENT, or the reason a connect failed otherwise."""
    probe = socket.socket(socket.AF_UNIX,
                          socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
    try:
        probe.connect(path)
    except BlockingIOError:
        return LISTENING  # its backlog is full: it listens, and is busy
    except FileNotFoundError:
        return ABSENT
    except ConnectionRefusedError:
        return NOT_LISTENING
    except OSError as err:
        return err.strerror or str(err)
    finally:
        probe.close()
    return LISTENING
