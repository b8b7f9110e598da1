"""The newuidmap/newgidmap command line: `<pid>|fd:<N> <upper> <lower> <count> ...`, bytes in.

Parsing and every check that needs nothing but the request itself: canonical decimal, the
reference's bounds (newuidmap.md §3.3), zero triples, more than 340 triples, a map of a page or
more, and overlaps that the kernel would refuse with EINVAL (§11 items 3, 4, 5).
"""

from nsgate.errors import Refusal
from nsgate.policy.numbers import is_canonical, parse_decimal

MAX_ID = 4294967294  # (uid_t)-1 is never a valid id
PID_MAX = 2147483647
FD_MAX = 2147483647
MAX_TRIPLES = 340  # the kernel's limit since Linux 4.15
MAX_MAP_BYTES = 4095  # one write, shorter than a page
_TOO_LARGE = 1 << 64  # stands for any longer canonical number: an overflow, not a usage error


class Triple:
    """One line of the map: ids [upper, upper+count) inside map to [lower, lower+count) outside."""

    __slots__ = ("count", "index", "lower", "upper")

    def __init__(self, upper: int, lower: int, count: int, index: int) -> None:
        self.upper = upper
        self.lower = lower
        self.count = count
        self.index = index  # 1-based position on the command line

    def describe(self, kind: str) -> str:
        """The reference's notation: `uid range [0-10) -> [100000-100010)`."""
        return (f"{kind} range [{self.upper}-{self.upper + self.count}) -> "
                f"[{self.lower}-{self.lower + self.count})")

    def argv(self) -> str:
        return f"{self.upper} {self.lower} {self.count}"


class MapRequest:
    """A parsed request: the target, given as a pid or an inherited /proc directory fd."""

    __slots__ = ("fd", "pid", "triples")

    def __init__(self, pid: int | None, fd: int | None, triples: list[Triple]) -> None:
        self.pid = pid
        self.fd = fd
        self.triples = triples

    @property
    def target(self) -> str:
        return f"fd:{self.fd}" if self.fd is not None else str(self.pid)

    def map_text(self) -> bytes:
        """The buffer written in one write(): decimal, one line per triple."""
        return "".join(f"{t.upper} {t.lower} {t.count}\n" for t in self.triples).encode()


def _usage_error(why: str) -> Refusal:
    return Refusal(why, usage=True)


def _parse_target(arg: bytes) -> tuple[int | None, int | None]:
    if arg.startswith(b"fd:") and len(arg) > 3:
        fd = parse_decimal(arg[3:], FD_MAX)
        if fd is None:
            raise _usage_error(f"invalid target {_show(arg)}: fd:N needs a canonical decimal N")
        return None, fd
    pid = parse_decimal(arg, PID_MAX)
    if pid is None or pid < 1:
        raise _usage_error(f"invalid target {_show(arg)}: expected a pid >= 1 in canonical "
                           "decimal, or fd:N")
    return pid, None


def parse(args: list[bytes], kind: str) -> MapRequest:
    """Parse the arguments after the program name; `kind` is "uid" or "gid"."""
    if not args:
        raise _usage_error("no target given")
    pid, fd = _parse_target(args[0])
    fields = args[1:]
    if not fields:
        raise _usage_error(f"no mapping given: at least one <{kind}> <lower{kind}> <count> "
                           "triple is required (nothing was changed)")
    if len(fields) % 3:
        raise _usage_error(f"ranges: {(len(fields) + 2) // 3} is wrong for argc: {len(fields)}")
    if len(fields) // 3 > MAX_TRIPLES:
        raise Refusal(f"{len(fields) // 3} triples given: the kernel accepts at most "
                      f"{MAX_TRIPLES} lines in a map")
    triples = []
    for index in range(len(fields) // 3):
        numbers = []
        for text in fields[3 * index:3 * index + 3]:
            if not is_canonical(text):
                raise _usage_error(f"invalid number {_show(text)} in triple {index + 1}: only "
                                   "canonical decimal is accepted (no sign, space, leading zero "
                                   "or hex)")
            numbers.append(int(text) if len(text) <= 20 else _TOO_LARGE)
        upper, lower, count = numbers
        if upper > MAX_ID or lower > MAX_ID or not 1 <= count <= MAX_ID + 1 - max(upper, lower):
            raise Refusal("subuid overflow detected.", usage=True)
        triples.append(Triple(upper, lower, count, index + 1))
    request = MapRequest(pid, fd, triples)
    if len(request.map_text()) > MAX_MAP_BYTES:
        raise Refusal(f"the map would be {len(request.map_text())} bytes: the kernel accepts one "
                      f"write of at most {MAX_MAP_BYTES} bytes")
    return request


def find_overlap(triples: list[Triple]) -> tuple[Triple, Triple, str] | None:
    """Two triples the kernel would refuse together, and on which side ("upper" or "lower")."""
    for side in ("upper", "lower"):
        ordered = sorted(triples, key=lambda t: getattr(t, side))
        for i in range(len(ordered) - 1):
            before, after = ordered[i], ordered[i + 1]
            if getattr(before, side) + before.count > getattr(after, side):
                first, second = sorted((before, after), key=lambda t: t.index)
                return first, second, side
    return None


def _show(text: bytes) -> str:
    """A caller-supplied string made safe to print: escaped, and cut short."""
    return repr(text[:64])[1:] + ("..." if len(text) > 64 else "")
