"""Who runs this helper, with which privilege, and the credential changes around each action.

Two install modes reach here (newuidmap.md §8.2): setuid root (real uid = caller, effective and
saved uid 0) and file capabilities (every uid the caller's, the capability carried over by the
launcher as an ambient capability). Every change of credentials nsgate makes is in this module.
"""

import posix

from nsgate.errors import Refusal
from nsgate.system import kernel


class CallerIds:
    """The real ids of the process that ran the helper, and how this process holds privilege:
    what every credential change below starts from. (lxc-user-nic's `Caller` adds the names its
    policy file matches.)"""

    __slots__ = ("gid", "setuid_root", "uid")

    def __init__(self) -> None:
        self.uid = posix.getuid()
        self.gid = posix.getgid()
        self.setuid_root = posix.geteuid() == 0


def serve_caller(uid: int, gid: int, groups: "list[int]") -> None:
    """nsgated's worker takes on a caller: the credentials of a setuid-root helper it ran (real
    ids and groups the caller's, effective and saved uid root), so every step below, each
    credential change and the confinement are the setuid path's own."""
    posix.setgroups(groups)
    posix.setresgid(gid, gid, gid)
    posix.setresuid(uid, 0, 0)


def harden_process() -> None:
    """First thing: no ambient capabilities for anything we might run, no core dumps or ptrace."""
    kernel.prctl(kernel.PR_CAP_AMBIENT, kernel.PR_CAP_AMBIENT_CLEAR_ALL)
    kernel.prctl(kernel.PR_SET_DUMPABLE, 0)


# What serves a caller the helper cannot: nsgated acts with its own privilege (nsgate-protocol(7)).
SERVICE_FIX = ("or start nsgate's service, which serves callers under no_new_privs: "
               "systemctl enable --now nsgate.socket (or run nsgated)")


def require_capability(cap: int) -> None:
    """Fail before any side effect, naming the reason, when `cap` cannot be had (§11 items 6, 7);
    the launcher tried nsgated first and could not reach it: name it where it would help."""
    _, permitted, _ = kernel.capabilities()
    if permitted & kernel.bit(cap):
        return
    name = kernel.CAP_NAMES[cap]
    if kernel.prctl(kernel.PR_GET_NO_NEW_PRIVS) == 1:
        raise Refusal(f"cannot get {name}: no_new_privs is set on the calling process: setuid "
                      "helpers cannot gain privilege under it",
                      "it is set by NoNewPrivileges= (systemd), --security-opt no-new-privileges "
                      "(docker, podman), allowPrivilegeEscalation: false (Kubernetes) or "
                      "setpriv --no-new-privs; run the container runtime without it",
                      SERVICE_FIX)
    if kernel.prctl(kernel.PR_CAPBSET_READ, cap) == 0:
        raise Refusal(f"cannot get {name}: it is not in the capability bounding set of the "
                      "calling process",
                      f"something started this process with {name} dropped from the bounding set "
                      "(a container or a service unit): add it back there")
    raise Refusal(f"cannot get {name}: the launcher is not setuid root and has no file "
                  "capabilities",
                  "the setuid bit or the file capabilities were lost (copied without them, or a "
                  "nosuid file system): reinstall nsgate (make install), or restore them with "
                  "chmod 4755 on the helper",
                  "or, as helpers installed with MODE=service need, start nsgate's service: "
                  "systemctl enable --now nsgate.socket (or run nsgated)")


def limit_capabilities(keep: list[int]) -> None:
    """Effective and permitted cut to `keep` (at most), for good: what the rest of the run
    needs, nothing a bug or a confused step could use beyond it."""
    mask = 0
    for cap in keep:
        mask |= kernel.bit(cap)
    effective, permitted, _ = kernel.capabilities()
    kernel.set_capabilities(effective & mask, permitted & mask, 0)


def has_capability(cap: int) -> bool:
    _, permitted, _ = kernel.capabilities()
    return bool(permitted & kernel.bit(cap))


def act_as_caller(caller: CallerIds) -> None:
    """Effective uid = the caller's, no effective capabilities: the kernel checks the caller."""
    if caller.setuid_root:
        posix.seteuid(caller.uid)  # from 0: clears the effective set, the saved uid keeps 0
    else:
        _, permitted, _ = kernel.capabilities()
        kernel.set_capabilities(0, permitted)


def act_as_root(caller: CallerIds) -> None:
    """Back to full privilege for reading root's files (setuid mode; a no-op with file caps)."""
    if caller.setuid_root:
        posix.seteuid(0)


def become_map_writer(caller: CallerIds, caps: list[int]) -> None:
    """The reference's sequence before opening a map file: euid = caller, and effective =
    permitted = exactly `caps`, nothing inheritable (newuidmap.md §8.2, security-cases A7)."""
    if posix.geteuid() != caller.uid:
        posix.seteuid(caller.uid)
    mask = 0
    for cap in caps:
        mask |= kernel.bit(cap)
    kernel.set_capabilities(mask, mask, 0)


def become_unsignalable(caller: CallerIds) -> None:
    """Every uid root: the caller may signal a process only through its real or saved uid, so
    from here on it can neither stop nor kill the helper (lxc-user-nic.md §10 item 8)."""
    if not caller.setuid_root:
        raise Refusal("this helper must be installed setuid root",
                      "it cannot protect its critical section from its caller otherwise")
    posix.setresuid(0, 0, 0)
    posix.setresgid(0, 0, 0)  # files it creates from here on are root's alone


def drop_all(caller: CallerIds) -> None:
    """Irreversibly become the caller, with no capabilities: before any output is written."""
    try:
        posix.setresgid(caller.gid, caller.gid, caller.gid)
        posix.setresuid(caller.uid, caller.uid, caller.uid)
    except OSError:
        pass  # an id unmapped in this user namespace cannot be set; the capabilities still go
    kernel.set_capabilities(0, 0, 0)


def become_root_alone() -> None:
    """Every uid and gid root's and no supplementary group (a root process a user's su started
    still has the user's gid and groups): what it creates from here on is root's alone."""
    posix.setgroups([])
    posix.setresgid(0, 0, 0)
    posix.setresuid(0, 0, 0)
