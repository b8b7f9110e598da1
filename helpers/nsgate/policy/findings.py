"""What `nsgate check` reports: one finding per defect, with a stable code (nsgate(8) lists them).

A finding names its file, its line (None for the file as a whole), its severity and a message
that says the cause and the fix. Errors make `nsgate check` exit 1; warnings do not.
"""

ERROR = "error"
WARNING = "warning"

# code -> severity; the codes are an interface (scripts match them), never renamed.
CODES = {
    "syntax": ERROR,
    "grants-nothing": WARNING,
    "shadow-grants": ERROR,
    "overlap": ERROR,
    "contains-real-id": ERROR,
    "unsafe-file": ERROR,
    "no-bridge": WARNING,
    "not-a-bridge": ERROR,
    "stale-nic": WARNING,
    "foreign-nic": ERROR,
    "private-bridge": ERROR,
    "install": ERROR,
    "lock-leftover": WARNING,
    "service-socket": ERROR,
    "service-down": ERROR,
    "subid-source": ERROR,
    "subid-module": ERROR,
    "subid-duplicate": WARNING,
    "unknown-who": WARNING,
    "duplicate-setting": WARNING,
    "shadowed-setting": ERROR,
    "limit-without-cgroup": ERROR,
    "networks-syntax": ERROR,
    "networks-derived-too-small": ERROR,
    "networks-unsafe-file": ERROR,
    "network-table": ERROR,
}


class Finding:
    __slots__ = ("code", "file", "line", "message", "severity")

    def __init__(self, file: str, line: int | None, code: str, message: str) -> None:
        self.file = file
        self.line = line
        self.code = code
        self.severity = CODES[code]
        self.message = message

    @property
    def where(self) -> str:
        return self.file if self.line is None else f"{self.file}:{self.line}"

    def as_dict(self) -> dict[str, object]:
        return {"file": self.file, "line": self.line, "severity": self.severity,
                "code": self.code, "message": self.message}


def count(findings: list[Finding], severity: str) -> int:
    return sum(1 for finding in findings if finding.severity == severity)


def text(data: bytes) -> str:
    """File content quoted in a message: printable, never a terminal escape."""
    shown = data.decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in shown)
