"""`nsgate check` for what the lock protocol of the account files leaves in /etc when a writer is
killed while it takes the lock (system/shadow_lock.py, shadow's commonio_lock): `FILE.<pid>`,
the file holding the writer's pid that it links to `FILE.lock`. Names and content in, findings
out."""

from nsgate.policy.findings import Finding
from nsgate.policy.numbers import parse_decimal

# The files shadow's writers (useradd, usermod, vipw, ...) and nsgate subid lock this way.
LOCKED = ("passwd", "group", "shadow", "gshadow", "subuid", "subgid")
PID_MAX = 1 << 22  # the kernel's largest pid_max


def link_file_pid(name: str) -> int | None:
    """The pid in a name `FILE.<pid>` (FILE one of LOCKED, pid canonical decimal), else None."""
    base, dot, digits = name.rpartition(".")
    if not dot or base not in LOCKED:
        return None
    pid = parse_decimal(digits.encode(), PID_MAX)
    return pid if pid else None


def lint_link_file(path: str, pid: int, content: bytes | None, running: bool) -> list[Finding]:
    """A `FILE.<pid>` is a leftover if it holds what the protocol writes into it (the pid, then a
    NUL; nothing yet if the writer died before writing) and process `pid` no longer runs. Any
    other content is not the protocol's (an administrator's copy named by a date), and a
    running pid's file may be in use: neither is reported."""
    pid_text = str(pid).encode()
    if content not in (b"", pid_text, pid_text + b"\0") or running:
        return []
    locked = path.rpartition(".")[0]
    return [Finding(path, None, "lock-leftover",
                    f"{path} is the lock protocol's link file of process {pid}, a writer of "
                    f"{locked} (useradd, usermod, vipw, nsgate subid ...) killed while it took "
                    f"the lock; that process no longer runs and nothing uses the file: remove it "
                    f"(kill -0 {pid} 2>/dev/null || rm -f {path})")]
