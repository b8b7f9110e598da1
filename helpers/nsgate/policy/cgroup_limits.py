"""The cgroup limits a session may get (session.conf's limit keys), checked in their cgroup v2
syntax and translated to what each kind of host understands. Pure: strings in, writes out.

The keys are the cgroup v2 interface files, with their v2 value syntax:
- `pids.max`: `max` or a count (0 .. 4194304, the kernel's PID_MAX_LIMIT);
- `memory.max`, `memory.swap.max`: `max` or bytes, with an optional K, M, G or T suffix (powers
  of 1024, either case, as the kernel's memparse);
- `cpu.max`: `$MAX [$PERIOD]` in microseconds, `$MAX` being `max` or a quota of 1000 .. 2^44-1,
  `$PERIOD` 1000 .. 1000000 (the kernel's bounds; 100000 when left out);
- `cpu.weight`, `io.weight`: 1 .. 10000; `io.weight` also as `default N` (its v2 spelling).

`check_value` gives the reason a value is refused in the words session.conf's messages use
("KEY 'VALUE': reason"), the same as the sessconf branch's minimal version of this module, which
this one replaces (same KEYS, same accepted values, same reasons).

Translations:
- v2: the files themselves, values normalised (bytes as a number, `io.weight` as `default N`).
- v1: `pids.max`; `memory.limit_in_bytes`, and `memory.memsw.limit_in_bytes` = memory + swap
  (v1 limits the two together: without `memory.max` a swap limit has no v1 form and is a note);
  `cpu.cfs_period_us` / `cpu.cfs_quota_us`; `cpu.shares` = weight * 1024 / 100 and
  `blkio.weight` = weight * 500 / 100 (clamped), systemd's own conversions. The writes come in an
  order the kernel accepts whatever the old values were (v1 refuses memory.limit_in_bytes above
  memory.memsw.limit_in_bytes, so memsw is first opened up, then set last).
- systemd: TasksMax, MemoryMax, MemorySwapMax, CPUQuota (+ CPUQuotaPeriodSec when a period is
  given), CPUWeight, IOWeight, for `systemctl set-property --runtime`.
"""

KEYS = ("pids.max", "memory.max", "memory.swap.max", "cpu.max", "cpu.weight", "io.weight")
CONTROLLER = {"pids.max": "pids", "memory.max": "memory", "memory.swap.max": "memory",
              "cpu.max": "cpu", "cpu.weight": "cpu", "io.weight": "io"}
V1_CONTROLLER = {"pids": "pids", "memory": "memory", "cpu": "cpu", "io": "blkio"}

PID_MAX_LIMIT = 4194304
MAX_BYTES = (1 << 63) - 1
QUOTA_MIN = 1000
QUOTA_MAX = (1 << 44) - 1  # the kernel's max_cfs_runtime, in microseconds
PERIOD_MIN, PERIOD_MAX, PERIOD_DEFAULT = 1000, 1000000, 100000
WEIGHT_MIN, WEIGHT_MAX = 1, 10000
_SUFFIX = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_DIGITS = frozenset("0123456789")
UNLIMITED_V1 = "-1"
# What a key left unset means on a cgroup nsgate made: no limit, the default weight. Written at
# every open, so a limit the administrator has since removed from session.conf goes with the
# next login, not only once the user's tree has gone.
NEUTRAL = {"pids.max": "max", "memory.max": "max", "memory.swap.max": "max", "cpu.max": "max",
           "cpu.weight": "100", "io.weight": "100"}


def completed(limits: dict[str, str]) -> dict[str, str]:
    """`limits`, with every key it leaves unset at its neutral value."""
    return {**NEUTRAL, **limits}


def _number(text: str, maximum: int) -> int | None:
    """Canonical decimal (no sign, space or leading zero) at most `maximum`, else None."""
    if not text or len(text) > len(str(maximum)) or not _DIGITS.issuperset(text):
        return None
    if text[0] == "0" and len(text) > 1:
        return None
    value = int(text)
    return value if value <= maximum else None


def _bytes(text: str) -> int | None:
    """`text` as bytes (`max` is None's caller's business): digits and an optional suffix."""
    factor = _SUFFIX.get(text[-1:].lower(), 1)
    digits = text[:-1] if factor != 1 else text
    value = _number(digits, MAX_BYTES)
    if value is None or value * factor > MAX_BYTES:
        return None
    return value * factor


def _cpu_max(value: str) -> tuple[int | None, int | None] | None:
    """(quota or None for max, period or None when left out), or None if malformed."""
    fields = value.split(" ")
    if not 1 <= len(fields) <= 2:
        return None
    quota = None if fields[0] == "max" else _number(fields[0], QUOTA_MAX)
    if (quota is None) != (fields[0] == "max") or (quota is not None and quota < QUOTA_MIN):
        return None
    period = None
    if len(fields) == 2:
        period = _number(fields[1], PERIOD_MAX)
        if period is None or period < PERIOD_MIN:
            return None
    return quota, period


def _weight(value: str) -> int | None:
    weight = _number(value, WEIGHT_MAX)
    return weight if weight is not None and weight >= WEIGHT_MIN else None


def _why(key: str, value: str) -> str | None:
    if key == "pids.max":
        if value != "max" and _number(value, PID_MAX_LIMIT) is None:
            return f"must be 'max' or a number of processes from 0 to {PID_MAX_LIMIT}"
    elif key in ("memory.max", "memory.swap.max"):
        if value != "max" and _bytes(value) is None:
            return ("must be 'max' or a number of bytes with an optional K, M, G or T suffix "
                    "(either case, e.g. 512M), below 2^63")
    elif key == "cpu.max":
        fields = value.split(" ")
        if not 1 <= len(fields) <= 2:
            return "must be 'MAX' or 'MAX PERIOD' (e.g. '50000 100000', or 'max')"
        if _cpu_max(fields[0]) is None:
            return (f"its MAX must be 'max' or a quota in microseconds from {QUOTA_MIN} to "
                    f"{QUOTA_MAX}")
        if _cpu_max(value) is None:
            return (f"its PERIOD must be a number of microseconds from {PERIOD_MIN} to "
                    f"{PERIOD_MAX}")
    elif key == "cpu.weight":
        if _weight(value) is None:
            return f"must be a weight from {WEIGHT_MIN} to {WEIGHT_MAX}"
    elif _weight(value.removeprefix("default ")) is None:  # io.weight
        return f"must be a weight from {WEIGHT_MIN} to {WEIGHT_MAX}, or 'default' and one"
    return None


def check_value(key: str, value: str) -> str | None:
    """Why `value` is not a valid cgroup v2 value for `key` (the syntax above), else None.
    Fields are separated by one space (as the kernel writes them back); nothing else is
    accepted. The reason reads after "KEY 'VALUE': " (session.conf's messages)."""
    if key not in KEYS:
        return f"{key} is not a limit nsgate knows (one of {', '.join(KEYS)})"
    if not value.isascii() or not value.isprintable() or value != value.strip():
        return "must be plain ASCII with no surrounding blanks"
    return _why(key, value)


def check_all(limits: dict[str, str]) -> list[str]:
    """Every reason a limit of `limits` is invalid (none: all valid)."""
    return [why for key, value in limits.items() if (why := check_value(key, value)) is not None]


def _weight_of(key: str, value: str) -> int:
    weight = _weight(value.removeprefix("default ") if key == "io.weight" else value)
    assert weight is not None, "checked"
    return weight


def _bytes_of(value: str) -> int | None:
    """None for `max`."""
    return None if value == "max" else _bytes(value)


# A write: (policy key it serves, v2 controller, file, value, required). The controller names
# the hierarchy (v1) or the controller that must be enabled (v2) for the file to exist. A write
# not required only prepares the ones after it (v1 opening memsw or the quota up first): where
# its file is missing it is skipped without a note.
Write = tuple[str, str, str, str, bool]


def v2_writes(limits: dict[str, str]) -> list[Write]:
    """The v2 files to write for `limits` (checked), in KEYS order, values normalised."""
    writes: list[Write] = []
    for key in KEYS:
        if key not in limits:
            continue
        value = limits[key]
        if key in ("memory.max", "memory.swap.max"):
            size = _bytes_of(value)
            value = "max" if size is None else str(size)
        elif key == "cpu.max":
            parsed = _cpu_max(value)
            assert parsed is not None, "checked"
            quota, period = parsed
            value = f"{'max' if quota is None else quota} {period or PERIOD_DEFAULT}"
        elif key == "cpu.weight":
            value = str(_weight_of(key, value))
        elif key == "io.weight":
            value = f"default {_weight_of(key, value)}"
        writes.append((key, CONTROLLER[key], key, value, True))
    return writes


def v1_writes(limits: dict[str, str]) -> tuple[list[Write], list[str]]:
    """The v1 files to write for `limits` (checked), in an order the kernel accepts, and the
    notes for limits v1 cannot express. The controller is the v2 name (V1_CONTROLLER maps it)."""
    writes: list[Write] = []
    notes: list[str] = []
    if "pids.max" in limits:
        writes.append(("pids.max", "pids", "pids.max", limits["pids.max"], True))
    if "memory.max" in limits:
        memory = _bytes_of(limits["memory.max"])
        writes.append(("memory.max", "memory", "memory.memsw.limit_in_bytes", UNLIMITED_V1,
                       False))
        writes.append(("memory.max", "memory", "memory.limit_in_bytes",
                       UNLIMITED_V1 if memory is None else str(memory), True))
        if "memory.swap.max" in limits:
            swap = _bytes_of(limits["memory.swap.max"])
            total = None if memory is None or swap is None else memory + swap
            if total is not None and total > MAX_BYTES:
                total = None
            writes.append(("memory.swap.max", "memory", "memory.memsw.limit_in_bytes",
                           UNLIMITED_V1 if total is None else str(total), True))
    elif "memory.swap.max" in limits:
        notes.append("memory.swap.max not applied: cgroup v1 limits memory and swap together "
                     "(memory.memsw.limit_in_bytes = memory.max + memory.swap.max), and "
                     "memory.max is not set")
    if "cpu.max" in limits:
        parsed = _cpu_max(limits["cpu.max"])
        assert parsed is not None, "checked"
        quota, period = parsed
        writes.append(("cpu.max", "cpu", "cpu.cfs_quota_us", UNLIMITED_V1, quota is None))
        writes.append(("cpu.max", "cpu", "cpu.cfs_period_us", str(period or PERIOD_DEFAULT),
                       True))
        if quota is not None:
            writes.append(("cpu.max", "cpu", "cpu.cfs_quota_us", str(quota), True))
    if "cpu.weight" in limits:
        shares = _weight_of("cpu.weight", limits["cpu.weight"]) * 1024 // 100
        writes.append(("cpu.weight", "cpu", "cpu.shares", str(min(max(shares, 2), 262144)),
                       True))
    if "io.weight" in limits:
        blkio = _weight_of("io.weight", limits["io.weight"]) * 500 // 100
        writes.append(("io.weight", "io", "blkio.weight", str(min(max(blkio, 10), 1000)),
                       True))
    return writes, notes


def _percent(quota: int, period: int) -> str:
    """quota/period as systemd's CPUQuota: a percentage with at most two decimals."""
    hundredths = (quota * 10000 + period // 2) // period
    whole, part = divmod(hundredths, 100)
    return f"{whole}%" if part == 0 else f"{whole}.{part:02d}%"


def systemd_properties(limits: dict[str, str]) -> list[str]:
    """`Property=value` arguments of `systemctl set-property` for `limits` (checked)."""
    properties: list[str] = []
    if "pids.max" in limits:
        value = limits["pids.max"]
        properties.append(f"TasksMax={'infinity' if value == 'max' else value}")
    for key, name in (("memory.max", "MemoryMax"), ("memory.swap.max", "MemorySwapMax")):
        if key in limits:
            size = _bytes_of(limits[key])
            properties.append(f"{name}={'infinity' if size is None else size}")
    if "cpu.max" in limits:
        parsed = _cpu_max(limits["cpu.max"])
        assert parsed is not None, "checked"
        quota, period = parsed
        properties.append("CPUQuota=" + ("" if quota is None else
                                         _percent(quota, period or PERIOD_DEFAULT)))
        if period is not None:
            properties.append(f"CPUQuotaPeriodSec={period}us")
    if "cpu.weight" in limits:
        properties.append(f"CPUWeight={_weight_of('cpu.weight', limits['cpu.weight'])}")
    if "io.weight" in limits:
        properties.append(f"IOWeight={_weight_of('io.weight', limits['io.weight'])}")
    return properties
