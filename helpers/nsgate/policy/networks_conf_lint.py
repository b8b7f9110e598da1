"""`nsgate check` for /etc/nsgate/networks.conf: a file the helper would refuse (its first bad
line, a pool too small for derived allocation, a file or directory others can change). The
parser is policy.networks_conf's, the one the helper uses."""

from nsgate.policy import networks_conf
from nsgate.policy.findings import Finding
from nsgate.policy.install_lint import S_IFLNK, S_IFMT, S_IFREG, Stat, unsafe

REFUSES = "until then lxc-user-nic refuses to make any private bridge (nsgate-private)"
POWER = "decides the addresses and the firewall of every user's private network"


def lint(path: str, data: bytes, login_defs: bytes) -> list[Finding]:
    try:
        networks_conf.parse(data, login_defs, path)
    except networks_conf.Malformed as bad:
        cause = bad.first.removeprefix(f"{path}:{bad.line}: " if bad.line else f"{path}: ")
        fix = "; ".join(bad.details)
        return [Finding(bad.file, bad.line, bad.code, f"{cause}: {fix} ({REFUSES})")]
    return []


def lint_file(file: Stat, ancestors: list[Stat]) -> list[Finding]:
    """The trusted-file rule (files.open_trusted's) for the file and its directories."""
    if not file.exists:
        return []
    assert file.mode is not None
    reasons: list[str | None] = []
    if file.mode & S_IFMT not in (S_IFREG, S_IFLNK):
        reasons.append(f"{file.path} is not a regular file: make it one or remove it")
    reasons.append(unsafe(file, "the file", POWER))
    reasons += [unsafe(directory, "its directory", POWER) for directory in ancestors]
    return [Finding(file.path, None, "networks-unsafe-file", f"{reason} ({REFUSES})")
            for reason in reasons if reason is not None]
