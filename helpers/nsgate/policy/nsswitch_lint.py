"""`nsgate check` for the `subid:` line of /etc/nsswitch.conf: tokens that are not sources (the
helpers then refuse every request), modules that cannot be loaded (requests that reach them are
refused), sources named twice, and later `subid:` lines that nothing reads. Bytes in, findings
out; whether a module loads is the caller's question, asked through `load_error`."""

from nsgate.policy.config import FILES, is_library_name, subid_line
from nsgate.policy.findings import Finding, text

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable


def lint_subid_line(path: str, data: bytes,
                    load_error: "Callable[[bytes], str | None]") -> list[Finding]:
    found = subid_line(data)
    if found is None:
        return []
    lineno, tokens = found
    findings = []
    invalid = [token for token in tokens if token != FILES and not is_library_name(token)]
    for token in invalid:
        findings.append(Finding(
            path, lineno, "subid-source",
            f"{text(token)!r} is not a subid source (files, or NAME for the NSS module "
            "libsubid_NAME.so: letters, digits, '_' and '-'; NSS actions like [NOTFOUND=return] "
            "are not supported): the helpers refuse every request while this line stands"))
    seen: set[bytes] = set()
    for token in tokens:
        if token in seen:
            findings.append(Finding(
                path, lineno, "subid-duplicate",
                f"the subid source {text(token)} is named twice: it is asked once, at its first "
                "place; remove the second"))
            continue
        seen.add(token)
        if token == FILES or token in invalid:
            continue
        error = load_error(token)
        if error is not None:
            findings.append(Finding(
                path, lineno, "subid-module",
                f"the NSS module libsubid_{text(token)}.so cannot be loaded ({error}): the "
                "helpers refuse every request of a user no earlier source holds ranges for; "
                f"install the module or remove {text(token)} from the line"))
    for later, line in enumerate(data.split(b"\n")[lineno:], lineno + 1):
        if line[:6].lower() == b"subid:" and line[6:].strip():
            findings.append(Finding(
                path, later, "subid-duplicate",
                f"only the first subid: line (line {lineno}) is read; this one is ignored: "
                "merge it into the first"))
    return findings
