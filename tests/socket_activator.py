"""A socket activator for the tests, doing what systemd does for nsgate.socket + nsgate.service:
it owns the listening socket (SOCK_SEQPACKET, 0666, in a directory of root's), starts the service
when a connection is waiting and none runs, and starts it again after it exits (killed, crashed or
idle), each time with the socket as fd 3 and LISTEN_FDS=1, LISTEN_PID=<the service's pid>,
LISTEN_FDNAMES=nsgate.socket. While no service runs, connections wait in the socket's backlog.

    python3 -I socket_activator.py SOCKET LOG -- PROGRAM ARGS...

It appends "start PID" and "exit PID STATUS" (the wait status as os.waitstatus_to_exitcode gives
it) to LOG. As systemd, it reaps what the service leaves behind (a child subreaper: the workers
of a service that died finish and exit as its children), and gives up (closes the socket,
exits 1) after five starts in a row that failed (exited with a status other than 0; a service
killed by a signal does not count: the tests kill it on purpose). SIGTERM stops the service
(SIGTERM), removes the socket, exits 0.
"""

import ctypes
import os
import select
import signal
import socket
import sys

PR_SET_CHILD_SUBREAPER = 36

START_LIMIT = 5
stopping = False
service = 0


def on_term(_signum, _frame):
    global stopping
    stopping = True
    if service:
        os.kill(service, signal.SIGTERM)


def listen(path):
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.bind(path)
    os.chmod(path, 0o666)
    sock.listen(1024)
    return sock


def start(sock, argv):
    pid = os.fork()
    if pid == 0:  # as systemd's exec step: the socket on fd 3, nothing else open but stdio
        try:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            if sock.fileno() == 3:
                os.set_inheritable(3, True)
            else:
                os.dup2(sock.fileno(), 3)  # the new descriptor is inheritable
            os.closerange(4, 65536)
            null = os.open("/dev/null", os.O_RDONLY)
            os.dup2(null, 0)
            env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LISTEN_FDS": "1",
                   "LISTEN_PID": str(os.getpid()), "LISTEN_FDNAMES": "nsgate.socket"}
            os.execve(argv[0], argv, env)
        finally:
            os._exit(127)
    return pid


def reap_orphans():
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        pass


def wait_service(pid):
    """The service's exit code; the orphans that exit meanwhile are reaped."""
    while True:
        done, status = os.waitpid(-1, 0)
        if done == pid:
            return os.waitstatus_to_exitcode(status)


def main():
    global service
    path, log, dashes, *argv = sys.argv[1:]
    assert dashes == "--" and argv
    if ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        sys.exit("cannot become a child subreaper")
    signal.signal(signal.SIGTERM, on_term)
    sock = listen(path)
    failures = 0
    with open(log, "a", buffering=1) as events:
        while not stopping:
            ready, _, _ = select.select([sock], [], [], 0.2)
            reap_orphans()
            if not ready or stopping:
                continue
            pid = service = start(sock, argv)
            events.write(f"start {pid}\n")
            code = wait_service(pid)
            service = 0
            events.write(f"exit {pid} {code}\n")
            failures = failures + 1 if code > 0 else 0  # a kill is not a failed start
            if failures >= START_LIMIT:
                events.write("start-limit-hit\n")
                sock.close()
                os.unlink(path)
                sys.exit(1)
    sock.close()
    os.unlink(path)


if __name__ == "__main__":
    main()
