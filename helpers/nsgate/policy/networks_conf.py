"""/etc/nsgate/networks.conf (nsgate-networks.conf(5)): the address plan of the private bridges,
and which subnet each user gets. Bytes in, decisions out.

One setting per line, `KEY VALUE...`; a `#` at the start of a field starts a comment. A file
with any line that does not parse is refused whole, naming its line. User number `index` gets
the index-th /prefix of the IPv4 pool and the index-th /64 of the IPv6 pool; the gateway is the
subnet's first address, the DHCP range the rest but the broadcast address.

Allocation `derived`: index = uid - UID_MIN, nothing written. Allocation `recorded`: the record
SUBNET_RECORD (`<uid> <index>` per line) keeps each user's index; a new user takes the lowest
free index, else the lowest one whose owner has no private bridge now.

Only imported when the file exists (ipaddress costs import time on the helper's path).
"""

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from nsgate.errors import Refusal
from nsgate.policy.config import login_defs_value
from nsgate.policy.numbers import UINT32_MAX, parse_decimal

TYPE_CHECKING = False  # typing costs import time on the helper's path
if TYPE_CHECKING:
    from typing import NoReturn

PATH = "/etc/nsgate/networks.conf"
SUBNET_RECORD = "/run/lxc/nsgate-subnets"
LOGIN_DEFS = "/etc/login.defs"
SIZE_LIMIT = 1 << 16  # bytes of the whole file
UID_MIN_DEFAULT, UID_MAX_DEFAULT = 1000, 60000  # shadow's, when login.defs does not say
IPV4_PREFIXES = range(16, 31)
IPV6_PREFIX = 64  # SLAAC needs a /64
UPLINKS = ("nat", "routed", "none")
ALLOCATIONS = ("recorded", "derived")
KEYS = ("ipv4-pool", "ipv6-pool", "uplink", "allocation")
_ADDRESS_CHARS = {4: frozenset("0123456789."),  # no scope id (%eth0), no other spelling
                  6: frozenset("0123456789abcdefABCDEF:.")}
# Addresses no user subnet may take: this host, link-local, multicast, reserved.
_FORBIDDEN = (IPv4Network("0.0.0.0/8"), IPv4Network("127.0.0.0/8"),
              IPv4Network("169.254.0.0/16"), IPv4Network("224.0.0.0/4"),
              IPv4Network("240.0.0.0/4"), IPv6Network("::/8"), IPv6Network("fe80::/10"),
              IPv6Network("ff00::/8"))


class Malformed(Refusal):
    """A networks.conf (or login.defs) nsgate will not use: where (`file`, `line`: None for the
    whole file) and what (`code`, the finding of nsgate check)."""

    def __init__(self, first: str, *details: str, file: str, line: int | None,
                 code: str = "networks-syntax") -> None:
        super().__init__(first, *details)
        self.file = file
        self.line = line
        self.code = code


class Plan:
    """What networks.conf says, checked. `capacity` is the number of user subnets (the smaller
    pool's); `uid_min`..`uid_max` is login.defs' range (derived allocation's users)."""

    __slots__ = ("allocation", "capacity", "ipv4_pool", "ipv4_prefix", "ipv6_pool",
                 "ipv6_prefix", "uid_max", "uid_min", "uplink")

    def __init__(self, ipv4_pool: IPv4Network, ipv4_prefix: int, ipv6_pool: IPv6Network | None,
                 uplink: str = "nat", allocation: str = "recorded", uid_min: int = UID_MIN_DEFAULT,
                 uid_max: int = UID_MAX_DEFAULT) -> None:
        self.ipv4_pool = ipv4_pool
        self.ipv4_prefix = ipv4_prefix
        self.ipv6_pool = ipv6_pool
        self.ipv6_prefix = IPV6_PREFIX
        self.uplink = uplink
        self.allocation = allocation
        self.uid_min = uid_min
        self.uid_max = uid_max
        self.capacity = 1 << (ipv4_prefix - ipv4_pool.prefixlen)
        if ipv6_pool is not None:
            self.capacity = min(self.capacity, 1 << (IPV6_PREFIX - ipv6_pool.prefixlen))

    def _key(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Plan) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return (f"Plan({self.ipv4_pool} /{self.ipv4_prefix}, {self.ipv6_pool}, "
                f"uplink {self.uplink}, allocation {self.allocation}, "
                f"uids {self.uid_min}..{self.uid_max})")


class Subnet:
    """User subnet number `index`: its networks, gateways (the bridge's addresses) and the
    IPv4 addresses DHCP hands out."""

    __slots__ = ("dhcp_first", "dhcp_last", "index", "ipv4", "ipv4_gateway", "ipv6",
                 "ipv6_gateway")

    def __init__(self, index: int, ipv4: IPv4Network, ipv6: IPv6Network | None) -> None:
        self.index = index
        self.ipv4 = ipv4
        self.ipv4_gateway: IPv4Address = ipv4.network_address + 1
        self.dhcp_first: IPv4Address = ipv4.network_address + 2
        self.dhcp_last: IPv4Address = ipv4.broadcast_address - 1
        self.ipv6 = ipv6
        self.ipv6_gateway: IPv6Address | None = (
            None if ipv6 is None else ipv6.network_address + 1)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Subnet) and (self.index, self.ipv4, self.ipv6) == (
            other.index, other.ipv4, other.ipv6)

    def __hash__(self) -> int:
        return hash((self.index, self.ipv4, self.ipv6))

    def __repr__(self) -> str:
        return f"Subnet({self.index}, {self.ipv4}, {self.ipv6})"


# --- the file -----------------------------------------------------------------------------------

def parse(data: bytes, login_defs: bytes, path: str = PATH) -> Plan:
    """The plan networks.conf `data` describes; a Refusal naming `path:line` for the first line
    that does not parse, or the file (or login.defs) when the whole does not hold together."""
    if len(data) > SIZE_LIMIT:
        raise Malformed(f"{path}: larger than {SIZE_LIMIT} bytes", f"shorten {path}",
                        file=path, line=None)
    values: dict[str, tuple[int, list[str]]] = {}
    for lineno, raw in enumerate(data.split(b"\n"), 1):
        fields = _fields(raw, path, lineno)
        if not fields:
            continue
        key, args = fields[0], fields[1:]
        if key not in KEYS:
            _refuse(path, lineno, f"unknown setting '{key}'",
                    f"the settings are {', '.join(KEYS)}")
        if key in values:
            _refuse(path, lineno, f"{key} given twice (first on line {values[key][0]})",
                    "keep one of the two lines")
        values[key] = (lineno, args)
    if "ipv4-pool" not in values:
        raise Malformed(f"{path}: no ipv4-pool line",
                        f"add one, e.g. 'ipv4-pool 10.210.0.0/16 24', or remove {path}",
                        file=path, line=None)
    ipv4_pool, ipv4_prefix = _pool(path, *values["ipv4-pool"], version=4)
    ipv6_pool = None
    if "ipv6-pool" in values:
        ipv6_pool = _pool(path, *values["ipv6-pool"], version=6)[0]
    assert isinstance(ipv4_pool, IPv4Network) and not isinstance(ipv6_pool, IPv4Network)
    uplink = _choice(path, values, "uplink", UPLINKS)
    allocation = _choice(path, values, "allocation", ALLOCATIONS)
    uid_min, uid_max = login_uid_range(login_defs)
    plan = Plan(ipv4_pool, ipv4_prefix, ipv6_pool, uplink, allocation, uid_min, uid_max)
    if allocation == "derived":
        _check_derived(plan, path, values["allocation"][0])
    return plan


def login_uid_range(login_defs: bytes) -> tuple[int, int]:
    """UID_MIN..UID_MAX of login.defs (1000..60000 where unset); a Refusal if either is not a
    decimal number or the range is empty."""
    found = []
    for key, default in ((b"UID_MIN", UID_MIN_DEFAULT), (b"UID_MAX", UID_MAX_DEFAULT)):
        raw = login_defs_value(login_defs, key)
        value = default if raw is None else parse_decimal(raw, UINT32_MAX)
        if value is None:
            shown = raw.decode("ascii", "backslashreplace") if raw is not None else ""
            raise Malformed(f"{key.decode()} in {LOGIN_DEFS} is '{shown}', not a decimal "
                            "number", f"fix {LOGIN_DEFS}", file=LOGIN_DEFS, line=None)
        found.append(value)
    if found[0] > found[1]:
        raise Malformed(f"UID_MIN {found[0]} is above UID_MAX {found[1]} in {LOGIN_DEFS}",
                        f"fix {LOGIN_DEFS}", file=LOGIN_DEFS, line=None)
    return found[0], found[1]


def _fields(raw: bytes, path: str, lineno: int) -> list[str]:
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        _refuse(path, lineno, "a byte that is not ASCII", "networks.conf is plain ASCII")
    if not text.replace("\t", " ").isprintable():
        _refuse(path, lineno, "a control character", "networks.conf is plain ASCII")
    fields = []
    for field in text.split():
        if field.startswith("#"):
            break
        fields.append(field)
    return fields


def _refuse(path: str, lineno: int, what: str, fix: str) -> "NoReturn":
    raise Malformed(f"{path}:{lineno}: {what}", f"{fix}; see nsgate-networks.conf(5)",
                    file=path, line=lineno)


def _pool(path: str, lineno: int, args: list[str], version: int
          ) -> tuple[IPv4Network | IPv6Network, int]:
    key = f"ipv{version}-pool"
    example = "10.210.0.0/16 24" if version == 4 else "fd42:6e73::/48 64"
    if len(args) != 2:
        _refuse(path, lineno, f"{key} takes a network and a prefix length",
                f"e.g. '{key} {example}'")
    text, prefix_text = args
    address, slash, length = text.partition("/")
    if not slash or parse_decimal(length.encode(), 128) is None \
            or not _ADDRESS_CHARS[version].issuperset(address):
        _refuse(path, lineno, f"'{text}' is not a network ADDRESS/LENGTH",
                f"e.g. '{key} {example}'")
    kind = IPv4Network if version == 4 else IPv6Network
    try:
        pool: IPv4Network | IPv6Network = kind(text)
    except ValueError as error:
        try:
            kind(text, strict=False)
        except ValueError:
            _refuse(path, lineno, f"'{text}' is not an IPv{version} network ({error})",
                    f"e.g. '{key} {example}'")
        _refuse(path, lineno, f"'{text}' has host bits set",
                f"write the network, {kind(text, strict=False)}")
    for forbidden in _FORBIDDEN:
        if forbidden.version == version and pool.overlaps(forbidden):
            _refuse(path, lineno, f"{pool} overlaps {forbidden}, which no user subnet may use",
                    "choose a private range, e.g. 10.0.0.0/8 or fd00::/8")
    prefix = parse_decimal(prefix_text.encode(), 128)
    if prefix is None:
        _refuse(path, lineno, f"'{prefix_text}' is not a prefix length",
                f"e.g. '{key} {example}'")
    if version == 4 and prefix not in IPV4_PREFIXES:
        _refuse(path, lineno, f"a user's IPv4 prefix must be 16 to 30, not {prefix}",
                f"e.g. '{key} {example}'")
    if version == 6 and prefix != IPV6_PREFIX:
        _refuse(path, lineno, f"a user's IPv6 prefix must be 64 (SLAAC), not {prefix}",
                f"e.g. '{key} {example}'")
    if prefix <= pool.prefixlen:
        _refuse(path, lineno, f"the user prefix /{prefix} is not longer than the pool's "
                f"/{pool.prefixlen}", "give a larger pool or a longer user prefix")
    return pool, prefix


def _choice(path: str, values: dict[str, tuple[int, list[str]]], key: str,
            allowed: tuple[str, ...]) -> str:
    if key not in values:
        return allowed[0]
    lineno, args = values[key]
    if len(args) != 1 or args[0] not in allowed:
        _refuse(path, lineno, f"{key} is '{' '.join(args)}'", f"{key} is one of "
                f"{', '.join(allowed)}")
    return args[0]


def _check_derived(plan: Plan, path: str, lineno: int) -> None:
    users = plan.uid_max - plan.uid_min + 1
    if plan.capacity < users:
        raise Malformed(f"{path}:{lineno}: allocation derived needs {users} subnets (UID_MIN "
                        f"{plan.uid_min} to UID_MAX {plan.uid_max}), the pools hold "
                        f"{plan.capacity}", "give a larger pool or a longer user prefix, or "
                        "use allocation recorded; see nsgate-networks.conf(5)",
                        file=path, line=lineno, code="networks-derived-too-small")


# --- subnets --------------------------------------------------------------------------------------

def subnet(plan: Plan, index: int) -> Subnet:
    """User subnet number `index` (0 <= index < plan.capacity)."""
    if not 0 <= index < plan.capacity:
        raise ValueError(f"subnet index {index} outside 0..{plan.capacity - 1}")
    size4 = 1 << (32 - plan.ipv4_prefix)
    ipv4 = IPv4Network((int(plan.ipv4_pool.network_address) + index * size4, plan.ipv4_prefix))
    ipv6 = None
    if plan.ipv6_pool is not None:
        base = int(plan.ipv6_pool.network_address) + (index << (128 - IPV6_PREFIX))
        ipv6 = IPv6Network((base, IPV6_PREFIX))
    return Subnet(index, ipv4, ipv6)


# --- the record -----------------------------------------------------------------------------------

def record_line(uid: int, index: int) -> bytes:
    return b"%d %d" % (uid, index)


def _record_entry(raw: bytes) -> tuple[int, int] | None:
    uid_text, space, index_text = raw.partition(b" ")
    uid = parse_decimal(uid_text, UINT32_MAX)
    index = parse_decimal(index_text, UINT32_MAX)
    if not space or uid is None or index is None:
        return None
    return uid, index


def parse_record(data: bytes) -> dict[int, int]:
    """uid -> index of the record's well-formed lines (the last line of a uid wins); other
    lines are ignored here and kept by `record_text`."""
    record = {}
    for raw in data.split(b"\n"):
        entry = _record_entry(raw)
        if entry is not None:
            record[entry[0]] = entry[1]
    return record


def record_text(data: bytes, uid: int, index: int) -> bytes:
    """The record `data` with `uid` holding `index`: the well-formed lines of that uid or that
    index are dropped (a reassigned index leaves its old owner), `record_line(uid, index)`
    is appended, every other line kept as it is."""
    kept = []
    for raw in data.split(b"\n"):
        entry = _record_entry(raw)
        if raw and (entry is None or (entry[0] != uid and entry[1] != index)):
            kept.append(raw + b"\n")
    return b"".join(kept) + record_line(uid, index) + b"\n"


def _owned(plan: Plan, uid: int, record: dict[int, int]) -> int | None:
    """The index recorded for `uid` if it is in the pool and no other uid claims it."""
    index = record.get(uid)
    if index is None or index >= plan.capacity:
        return None
    if any(other != uid and held == index for other, held in record.items()):
        return None  # a record at odds with itself: no one keeps that index
    return index


def lookup(plan: Plan, uid: int, record: dict[int, int]) -> int | None:
    """The index `uid` has now, without allocating one: None when it has none."""
    if plan.allocation == "derived":
        return uid - plan.uid_min if plan.uid_min <= uid <= plan.uid_max else None
    return _owned(plan, uid, record)


def index_for(plan: Plan, uid: int, record: dict[int, int],
              live_uids: set[int]) -> tuple[int, bool]:
    """The index `uid`'s private bridge gets and whether the record must be written
    (`record_text`). `live_uids` are the owners of the private bridges that exist now.
    A Refusal when the user can have none."""
    if plan.allocation == "derived":
        index = lookup(plan, uid, record)
        if index is None:
            raise Refusal(f"uid {uid} is outside UID_MIN..UID_MAX ({plan.uid_min}.."
                          f"{plan.uid_max}): allocation derived gives it no subnet",
                          "use allocation recorded in /etc/nsgate/networks.conf, or give "
                          "the user a uid in that range")
        return index, False
    index = _owned(plan, uid, record)
    if index is not None:
        return index, False
    taken = sorted({held for held in record.values() if held < plan.capacity})
    free = _lowest_free(taken)
    if free < plan.capacity:
        return free, True
    owners: dict[int, set[int]] = {}
    for owner, held in record.items():
        owners.setdefault(held, set()).add(owner)
    for candidate in taken:
        if not owners[candidate] & live_uids:
            return candidate, True
    raise Refusal(f"the pool is full: all {plan.capacity} subnets of /etc/nsgate/networks.conf "
                  "belong to users with a private bridge now",
                  "give a larger pool or a longer user prefix, or wait until a user's "
                  "containers stop")


def _lowest_free(taken: list[int]) -> int:
    """The lowest index not in the sorted list `taken`."""
    for position, held in enumerate(taken):
        if held != position:
            return position
    return len(taken)
