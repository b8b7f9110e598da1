"""Every decision goes to syslog (authpriv), caller-supplied text escaped (security-cases C2)."""

import syslog

from nsgate.errors import printable


def record(prog: str, allowed: bool, text: str) -> None:
    _send(prog, syslog.LOG_NOTICE if allowed else syslog.LOG_WARNING,
          ("allowed: " if allowed else "refused: ") + text)


def record_action(prog: str, text: str, *, failed: bool = False) -> None:
    """What nsgate did on its own, no caller asking (the service's nic janitor): `text` says
    what; a failure is a warning, prefixed "failed: "."""
    _send(prog, syslog.LOG_WARNING if failed else syslog.LOG_NOTICE,
          ("failed: " if failed else "") + text)


def _send(prog: str, priority: int, text: str) -> None:
    syslog.openlog(prog, syslog.LOG_PID, syslog.LOG_AUTHPRIV)
    syslog.syslog(priority, printable(text))
    syslog.closelog()
