"""The one error type that crosses from policy and system code to the front ends, and the one
way it becomes text."""


def printable(text: str) -> str:
    """`text` with control and non-printable characters escaped as \\xNN."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else f"\\x{ord(c) & 0xFF:02x}" for c in text)


class Refusal(Exception):
    """A request nsgate will not carry out, with everything needed to explain it.

    `first` is the line clients may parse (the reference's wording where one exists), without the
    program prefix; `details` are the precise cause and the fix; `usage` asks for the usage text.
    """

    def __init__(self, first: str, *details: str, usage: bool = False) -> None:
        super().__init__(first)
        self.first = first
        self.details = details
        self.usage = usage

    def text(self, prog: str, usage: str = "") -> str:
        """The message for stderr: `prog: ` and the first line, the same for each detail, then
        `usage` as it is; escaped line by line, so caller-supplied bytes never reach a terminal
        raw (security-cases C2)."""
        lines = "".join(f"{prog}: {line}\n" for line in (self.first, *self.details)) + usage
        return "\n".join(printable(line) for line in lines.split("\n"))
