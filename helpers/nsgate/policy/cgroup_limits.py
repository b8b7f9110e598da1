"""The cgroup limits nsgate applies to a user's delegated cgroup: their keys (cgroup v2 interface
files) and the v2 value syntax each accepts. Text in, a reason out; nothing is written here.

(The `sessconf` branch's minimal version: only what session.conf needs to validate a value.)
"""

from nsgate.policy.numbers import parse_decimal

KEYS = ("pids.max", "memory.max", "memory.swap.max", "cpu.max", "cpu.weight", "io.weight")

PIDS_LIMIT = 4194304  # PID_MAX_LIMIT: the kernel refuses a larger pids.max
BYTES_LIMIT = (1 << 63) - 1  # memory.max is a signed 64-bit count in the kernel
SUFFIXES = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}  # either case
CPU_PERIOD_MIN, CPU_PERIOD_MAX = 1000, 1000000  # microseconds, as the kernel bounds them
CPU_QUOTA_MIN, CPU_QUOTA_MAX = 1000, (1 << 44) - 1  # likewise for the quota
WEIGHT_MIN, WEIGHT_MAX = 1, 10000


def _number(text: str, maximum: int) -> int | None:
    return parse_decimal(text.encode("ascii", "replace"), maximum)


def _bytes(value: str) -> str | None:
    if value == "max":
        return None
    suffix = value[-1:].upper() if value[-1:].upper() in SUFFIXES else ""
    digits = value[:len(value) - len(suffix)]
    number = _number(digits, BYTES_LIMIT)
    if number is None or number * SUFFIXES[suffix] > BYTES_LIMIT:
        return ("must be 'max' or a number of bytes with an optional K, M, G or T suffix "
                "(either case, e.g. 512M), below 2^63")
    return None


def _pids(value: str) -> str | None:
    if value == "max" or _number(value, PIDS_LIMIT) is not None:
        return None
    return f"must be 'max' or a number of processes from 0 to {PIDS_LIMIT}"


def _cpu_max(value: str) -> str | None:
    fields = value.split(" ")
    if not 1 <= len(fields) <= 2:
        return "must be 'MAX' or 'MAX PERIOD' (e.g. '50000 100000', or 'max')"
    quota = fields[0]
    if quota != "max" and (_number(quota, CPU_QUOTA_MAX) or 0) < CPU_QUOTA_MIN:
        return (f"its MAX must be 'max' or a quota in microseconds from {CPU_QUOTA_MIN} to "
                f"{CPU_QUOTA_MAX}")
    if len(fields) == 2 and (_number(fields[1], CPU_PERIOD_MAX) or 0) < CPU_PERIOD_MIN:
        return (f"its PERIOD must be a number of microseconds from {CPU_PERIOD_MIN} to "
                f"{CPU_PERIOD_MAX}")
    return None


def _weight(value: str) -> str | None:
    if (_number(value, WEIGHT_MAX) or 0) < WEIGHT_MIN:
        return f"must be a weight from {WEIGHT_MIN} to {WEIGHT_MAX}"
    return None


def _io_weight(value: str) -> str | None:
    if _weight(value.removeprefix("default ")) is not None:
        return f"must be a weight from {WEIGHT_MIN} to {WEIGHT_MAX}, or 'default' and one"
    return None


_CHECKS = {"pids.max": _pids, "memory.max": _bytes, "memory.swap.max": _bytes,
           "cpu.max": _cpu_max, "cpu.weight": _weight, "io.weight": _io_weight}


def check_value(key: str, value: str) -> str | None:
    """Why `value` is not a valid cgroup v2 value for `key`, else None. Fields are separated by
    one space (as the kernel writes them back); nothing else is accepted."""
    check = _CHECKS.get(key)
    if check is None:
        return f"{key} is not a limit nsgate knows (one of {', '.join(KEYS)})"
    if not value.isascii() or not value.isprintable() or value != value.strip():
        return "must be plain ASCII with no surrounding blanks"
    return check(value)
