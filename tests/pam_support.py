"""A real PAM stack for the session hook's tests (issue 11).

A login is a driver process (`Login`), never the pytest process: the hook moves the session's
process into the user's cgroup, and that process is the driver. The driver is a small Python
program run with the test venv's interpreter, using python-pam as a login program uses libpam:
`authenticate(user, "", service=SERVICE, call_end=False)` (pam_permit), `open_session()`, then
commands run as the user inside the session (a child that sets its gid, the user's groups as
initgroups gives them, then its uid), `close_session()`, `end()`. It takes one JSON request per
line on stdin and answers one JSON line on stdout.

The test service is /etc/pam.d/nsgate-test in the sandbox's /etc overlay, whose session line is
the installed snippet's (PREFIX/share/nsgate/pam.d/nsgate): pam_exec runs the installed
`nsgate session`.

The test users are the hook's own (23201...): cgroupfs is the host's, shared with any other
test run on the machine, and /sys/fs/cgroup/*/nsgate/user-<uid> of these uids is theirs alone.
`remove_user_cgroups` removes what is left of them, processes killed first.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.support import PREFIX, User, wait_for, write_etc

SERVICE = "nsgate-test"
SNIPPET = PREFIX / "share" / "nsgate" / "pam.d" / "nsgate"
CGROUP_ROOT = Path("/sys/fs/cgroup")
SESSION_BOUND = 5.0  # the hook's BOUND_SECONDS: a login never waits longer on it

PAM_USERS = [User(f"nsgt-pam{i}", 23200 + i, 23200 + i) for i in range(1, 5)]
DAVE, ERIN, FRANK, GRACE = PAM_USERS
PAM_GROUP = ("nsgt-pamgroup", 23210)  # DAVE and ERIN are members

DRIVER = r'''
import json, os, subprocess, sys, time
import pam

user, service = sys.argv[1], sys.argv[2]
p = pam.pam()
children = {}

def reply(value):
    sys.stdout.write(json.dumps(value) + "\n")
    sys.stdout.flush()

def as_user(request):
    import pwd
    entry = pwd.getpwnam(user)
    groups = os.getgrouplist(user, entry.pw_gid)
    env = {"PATH": "/usr/bin:/bin", "USER": user, "LOGNAME": user, "HOME": "/"}
    env.update(request.get("env", {}))
    return dict(user=entry.pw_uid, group=entry.pw_gid, extra_groups=groups, env=env,
                cwd=request.get("cwd", "/"))

for line in sys.stdin:
    request = json.loads(line)
    op = request["op"]
    if op == "open":
        started = time.monotonic()
        ok = p.authenticate(user, "", service=service, call_end=False)
        auth = (ok, p.code, str(p.reason))
        for value in request.get("putenv", []):
            p.putenv(value)
        code = p.open_session() if ok else None
        reply({"auth": auth, "code": code, "reason": str(p.reason),
               "seconds": time.monotonic() - started, "pid": os.getpid()})
    elif op == "run":
        result = subprocess.run(request["argv"], capture_output=True, text=True,
                                timeout=request.get("timeout", 120), **as_user(request))
        reply({"status": result.returncode, "stdout": result.stdout, "stderr": result.stderr})
    elif op == "spawn":
        child = subprocess.Popen(request["argv"], stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True, **as_user(request))
        children[child.pid] = child
        reply({"pid": child.pid})
    elif op == "wait":
        child = children.pop(request["pid"])
        out, _ = child.communicate(timeout=request.get("timeout", 120))
        reply({"status": child.returncode, "output": out})
    elif op == "close":
        started = time.monotonic()
        code = p.close_session()
        reply({"code": code, "seconds": time.monotonic() - started})
    elif op == "end":
        reply({"code": p.end()})
        break
'''


def install_service(extra: str = "") -> None:
    """/etc/pam.d/nsgate-test: pam_permit for auth and account, the installed snippet's session
    line (`extra`: more lines before it)."""
    session = [line for line in SNIPPET.read_text().splitlines()
               if line.startswith("session")]
    assert len(session) == 1, session
    write_etc(f"pam.d/{SERVICE}", "auth required pam_permit.so\n"
                                  "account required pam_permit.so\n" + extra + session[0] + "\n")


def add_pam_users() -> None:
    """The hook's test users and their group, in the sandbox's /etc (once a session)."""
    passwd = Path("/etc/passwd").read_text()
    if PAM_USERS[0].name in passwd:
        return
    with open("/etc/passwd", "a") as out:
        for user in PAM_USERS:
            out.write(f"{user.name}:x:{user.uid}:{user.gid}::/nonexistent:/bin/sh\n")
    with open("/etc/group", "a") as out:
        for user in PAM_USERS:
            out.write(f"{user.name}:x:{user.gid}:\n")
        out.write(f"{PAM_GROUP[0]}:x:{PAM_GROUP[1]}:{DAVE.name},{ERIN.name}\n")


class Login:
    """One login of `user` through the test service: the driver process is its session
    process (`pid`)."""

    def __init__(self, user: str, wrap: tuple[str, ...] = ()) -> None:
        """`wrap`: a command line the driver runs under (it must exec it in place)."""
        self.proc = subprocess.Popen([*wrap, sys.executable, "-I", "-c", DRIVER, user, SERVICE],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}, cwd="/")
        self.pid = self.proc.pid
        self.user = user

    def ask(self, **request: object) -> dict:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"the PAM driver of {self.user} ended (status {self.proc.poll()})"
        return json.loads(line)

    def open(self, putenv: tuple[str, ...] = ()) -> dict:
        """authenticate + open_session (`putenv`: PAM environment set in between); asserts
        both succeeded."""
        answer = self.ask(op="open", putenv=list(putenv))
        assert answer["auth"][0], answer
        assert answer["code"] == 0, answer
        return answer

    def run(self, *argv: str, timeout: float = 120, env: dict[str, str] | None = None,
            cwd: str = "/") -> dict:
        """argv as the user, inside the session: its status, stdout, stderr."""
        return self.ask(op="run", argv=list(argv), timeout=timeout, env=env or {}, cwd=cwd)

    def spawn(self, *argv: str) -> int:
        return int(self.ask(op="spawn", argv=list(argv))["pid"])

    def wait(self, pid: int, timeout: float = 120) -> dict:
        return self.ask(op="wait", pid=pid, timeout=timeout)

    def close(self) -> dict:
        answer = self.ask(op="close")
        assert answer["code"] == 0, answer
        return answer

    def end(self) -> None:
        if self.proc.poll() is None:
            try:
                self.ask(op="end")
                self.proc.wait(timeout=30)
            except (AssertionError, OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()


def hook_processes() -> list[int]:
    """The installed hook's processes still running (its workers outlive a login that stopped
    waiting for them)."""
    wanted = f"{PREFIX}/bin/nsgate\0session\0".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if wanted in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


# --- the cgroups the hook makes for these users -------------------------------------------------


def hierarchies() -> list[Path]:
    """The mount point of every cgroup hierarchy mounted under /sys/fs/cgroup."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        fstype = fields[fields.index("-") + 1]
        if fstype in ("cgroup", "cgroup2") and fields[4].startswith(f"{CGROUP_ROOT}/"):
            found.append(Path(fields[4]))
    return found


def user_cgroups(uid: int) -> list[Path]:
    """nsgate/user-<uid> in every hierarchy where it exists."""
    return [m / "nsgate" / f"user-{uid}" for m in hierarchies()
            if (m / "nsgate" / f"user-{uid}").is_dir()]


def cgroup_of(pid: int) -> dict[str, str]:
    """/proc/PID/cgroup: hierarchy (controllers, or "" for v2) -> path."""
    found = {}
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        found[controllers] = path
    return found


def remove_user_cgroups(uids: list[int]) -> list[Path]:
    """Remove what is left of the hook's cgroups of `uids` (every process in them killed
    first); the list of what was there."""
    left = [c for uid in uids for c in user_cgroups(uid)]
    for top in left:
        for procs in top.rglob("cgroup.procs"):
            for pid in procs.read_text().split():
                subprocess.run(["kill", "-9", pid], capture_output=True)
    for top in left:
        dirs = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
        for directory in [*dirs, top]:
            wait_for(lambda d=directory: not (d / "cgroup.procs").read_text().strip(),
                     f"{directory} to empty")
            directory.rmdir()
    return left


# --- syslog -----------------------------------------------------------------------------------

LOG_AUTHPRIV = 10 << 3
LOG_WARNING, LOG_NOTICE = 4, 5


class Syslog:
    """The datagrams sent to the test's own /dev/log (tests.support.private_dev_log), received
    as they come by a thread, as a syslog daemon does: a queue left full (10 datagrams) would
    hold the hooks' workers in their send, which is the daemon's fault, not the hook's."""

    def __init__(self, sock) -> None:
        self.sock = sock
        self.seen: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        self.sock.settimeout(0.05)
        while not self._stop.is_set():
            try:
                self.seen.append(self.sock.recv(65536))
            except (TimeoutError, BlockingIOError):
                continue
            except OSError:
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _drain(self, wait: float) -> None:
        time.sleep(wait)

    def hook_lines(self) -> list[bytes]:
        self._drain(0.05)
        return [m for m in list(self.seen) if b"nsgate-session[" in m]

    def wait_line(self, *words: bytes, timeout: float = 60) -> bytes:
        """The first line of the hook's holding every word (waiting for it)."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self.hook_lines():
                if all(word in line for word in words):
                    return line
            if time.monotonic() > deadline:
                raise AssertionError(f"no log line with {words}: {self.hook_lines()}")
            self._drain(0.2)


def priority(line: bytes) -> int:
    return int(line[1:line.index(b">")])
