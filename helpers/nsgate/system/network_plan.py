"""/etc/nsgate/networks.conf as the helpers and the service read it: a trusted file (root's, not
writable by others), parsed by policy/networks_conf.py with login.defs' uid range. No file, no
plan: the private bridges get no address, and nothing of the parser (nor ipaddress) is
imported on the helper's path."""

from nsgate.system import files

TYPE_CHECKING = False  # typing costs import time on every helper run
if TYPE_CHECKING:
    from nsgate.policy.networks_conf import Plan

PATH = "/etc/nsgate/networks.conf"  # networks_conf.PATH, without importing it
LOGIN_DEFS = "/etc/login.defs"


def load() -> "Plan | None":
    """The plan networks.conf describes; None if there is no such file. A Refusal (naming the
    file and line) if it is malformed or cannot be trusted: who acts on it refuses, fail closed."""
    data = files.read_small(PATH)
    if data is None:
        return None
    from nsgate.policy import networks_conf

    return networks_conf.parse(data, files.read_small(LOGIN_DEFS) or b"", PATH)
