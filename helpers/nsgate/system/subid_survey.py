"""The subid sources for the admin command: each source of the `subid:` line asked about a user
(`nsgate explain`), and whether a module can be loaded (`nsgate check`). Kept off the helpers'
path; the asking itself is subid_db's, the very one the helpers use."""

from nsgate.errors import Refusal
from nsgate.system import subid_db


def module_error(source: bytes) -> str | None:
    """For `nsgate check`: why the module `source` names cannot be loaded, or None."""
    try:
        subid_db.load_plugin("uid", source)
    except Refusal as refusal:
        return refusal.details[0]
    return None


class SourceReport:
    """One source of the `subid:` line for `nsgate explain`: what it holds for the user, and
    its role for the helpers: "answers", "passes" (holds nothing, the next is asked), "fails"
    (the helpers refuse there) or "not asked" (an earlier source answered or failed)."""

    __slots__ = ("description", "error", "ranges", "role", "source")

    def __init__(self, source: bytes, description: str) -> None:
        self.source = source
        self.description = description
        self.ranges: list[tuple[int, int]] = []
        self.error: str | None = None
        self.role = "passes"


def survey(kind: str, name: bytes, uid: int, login_defs: bytes,
           nsswitch: bytes | None) -> list[SourceReport]:
    """Every source of the `subid:` line asked about the user, including those the helpers do
    not reach (a Refusal for a line nsgate will not read)."""
    reports = []
    settled = False
    for source in subid_db.sources(nsswitch):
        report = SourceReport(source, subid_db.describe(kind, source))
        reports.append(report)
        try:
            held = subid_db.source_holdings(kind, source, name, uid, login_defs)
            try:
                held.holds_any()
                report.ranges = held.ranges()
            finally:
                held.close()
        except Refusal as refusal:  # its first line, and the cause when a fix follows it
            cause = refusal.details[:1] if len(refusal.details) > 1 else ()
            report.error = ": ".join((refusal.first, *cause))
        if settled:
            report.role = "not asked"
        elif report.error is not None or report.ranges:
            report.role = "fails" if report.error is not None else "answers"
            settled = True
    return reports
