"""Every decision goes to syslog (authpriv), caller-supplied text escaped (security-cases C2)."""

import syslog


def printable(text: str) -> str:
    """`text` with control and non-printable characters escaped as \\xNN."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else f"\\x{ord(c) & 0xFF:02x}" for c in text)


def record(prog: str, allowed: bool, text: str) -> None:
    syslog.openlog(prog, syslog.LOG_PID, syslog.LOG_AUTHPRIV)
    syslog.syslog(syslog.LOG_NOTICE if allowed else syslog.LOG_WARNING,
                  ("allowed: " if allowed else "refused: ") + printable(text))
    syslog.closelog()


def printable_lines(text: str) -> str:
    """`printable` for each line of a multi-line text; the newlines stay."""
    return "\n".join(printable(line) for line in text.split("\n"))
