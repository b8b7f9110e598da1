"""Every decision goes to syslog (authpriv), caller-supplied text escaped (security-cases C2)."""

import syslog

from nsgate.errors import printable


def record(prog: str, allowed: bool, text: str) -> None:
    syslog.openlog(prog, syslog.LOG_PID, syslog.LOG_AUTHPRIV)
    syslog.syslog(syslog.LOG_NOTICE if allowed else syslog.LOG_WARNING,
                  ("allowed: " if allowed else "refused: ") + printable(text))
    syslog.closelog()

