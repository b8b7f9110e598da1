"""`nsgate check` for the service, nsgated(8): its socket and the directory holding it, whether
something listens there, and whether the helpers can serve anyone without it. Facts (stat
results, the outcome of one connect, the helpers' privilege) in, findings and a status out."""

from nsgate.policy.findings import Finding
from nsgate.policy.install_lint import S_IFDIR, S_IFMT, S_ISUID, Stat

SOCKET = "/run/nsgate/io.socket"
SOCKET_DIR = "/run/nsgate"
S_IFSOCK = 0o140000
START = "systemctl enable --now nsgate.socket"

# What a connect to SOCKET found: something accepts connections, a socket nobody listens on,
# no socket at all, or another failure (its text, e.g. permission denied).
LISTENING, NOT_LISTENING, ABSENT = "listening", "not-listening", "absent"


def _bits(mode: int) -> str:
    return f"{mode & 0o7777:04o}"


def privileged(st: Stat, capabilities: int, need: int | None) -> bool:
    """Whether a helper can act by itself: setuid root, or the file capability `need`
    (None: only setuid root will do)."""
    if st.mode is None or st.uid is None:
        return False
    if st.mode & S_ISUID and st.uid == 0:
        return True
    return need is not None and bool(capabilities & (1 << need))


def service_only(helpers: list[tuple[Stat, bool]]) -> bool:
    """An install for the service only (make install MODE=service): every privileged helper
    present and none of them with a setuid bit or file capabilities. `helpers`: each privileged
    helper's Stat and whether it is `privileged`."""
    return bool(helpers) and all(st.exists and not able for st, able in helpers)


def lint_socket(directory: Stat, socket: Stat) -> list[Finding]:
    """The directory must be root's alone and searchable by everyone, the socket root's and
    connectable by everyone: whoever could put a socket there instead would answer every
    helper's requests."""
    def finding(path: str, message: str) -> Finding:
        return Finding(path, None, "service-socket", message)

    if directory.mode is None or directory.uid is None:
        return []
    if directory.mode & S_IFMT != S_IFDIR:
        return [finding(directory.path, f"{directory.path} is not a directory: remove it; "
                        "the service makes it (root's, 0755) when it starts")]
    found = []
    if directory.uid != 0 or directory.mode & 0o022:
        found.append(finding(directory.path, f"{directory.path} is owned by uid {directory.uid} "
                             f"with mode {_bits(directory.mode)}, not root's alone: whoever can "
                             "write there can put a socket of theirs where the helpers send "
                             f"their requests; chown root:root {directory.path}; chmod 0755 "
                             f"{directory.path}"))
    elif directory.mode & 0o005 != 0o005:
        found.append(finding(directory.path, f"{directory.path} has mode "
                             f"{_bits(directory.mode)}: users cannot reach the socket in it; "
                             f"chmod 0755 {directory.path}"))
    if socket.mode is None or socket.uid is None:
        return found
    if socket.mode & S_IFMT != S_IFSOCK:
        found.append(finding(socket.path, f"{socket.path} is not a socket: remove it, then "
                             f"start the service ({START})"))
    elif socket.uid != 0:
        found.append(finding(socket.path, f"{socket.path} is owned by uid {socket.uid}, not by "
                             "root: it is not the service's; stop whatever made it, remove it, "
                             f"then start the service ({START})"))
    elif socket.mode & 0o002 == 0:
        found.append(finding(socket.path, f"{socket.path} has mode {_bits(socket.mode)}: users "
                             "cannot connect to it (the service makes it 0666); restart the "
                             "service"))
    return found


def lint_reachable(state: str, helpers_need_it: bool) -> list[Finding]:
    """With helpers that cannot act by themselves, a service that does not listen is an error:
    every request fails."""
    if not helpers_need_it or state == LISTENING:
        return []
    why = {NOT_LISTENING: "nothing listens on it", ABSENT: "it does not exist"}.get(
        state, f"it cannot be reached ({state})")
    return [Finding(SOCKET, None, "service-down",
                    "the helpers are installed for the service only (no setuid bit, no file "
                    f"capabilities: make install MODE=service), and the service's socket {SOCKET} "
                    f"is down: {why}, so every newuidmap, newgidmap, getsubids and lxc-user-nic "
                    f"request fails; start the service: {START} (OpenRC: rc-service nsgated "
                    "start), or install the helpers setuid (make install)")]


def status(state: str, helpers_need_it: bool) -> str:
    """One line for people: what serves the helpers' requests."""
    if state == LISTENING:
        return ("nsgated listens: the helpers hand their requests to it (no_new_privs callers "
                "included)")
    if helpers_need_it:
        return "nsgated does not listen, and the helpers cannot work without it"
    return ("nsgated does not listen: the setuid helpers serve every request in-process, except "
            f"for no_new_privs callers; start it with {START}")
