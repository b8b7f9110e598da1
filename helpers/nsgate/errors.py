"""The one error type that crosses from policy and system code to the front ends."""


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
