"""Deciding a batch of lxc-user-nic creates in one locked section (group commit, issue 10 item
5): which lines of /run/lxc/nics the batch's quotas count, and each create's quota decision in
arrival order, every reservation counted for the creates after it, so quotas are exact however
many creates share the batch. Bytes in, decision out; the side effects are system/nic_commit.py's.
"""

from nsgate.errors import Refusal
from nsgate.policy import nicdb, usernet


class Intent:
    """Everything the locked section needs from one create: the caller's `uid`, the nic's
    `nic_type` and `bridge`, the `grants` that apply (usernet.applicable, in file order),
    whether the bridge is the caller's private one (made under the lock) and whether it is a
    Linux bridge, whose port security (nsgate's nftables table) must be ready."""

    __slots__ = ("bridge", "grants", "guarded", "nic_type", "private", "uid")

    def __init__(self, uid: int, nic_type: bytes, bridge: bytes, grants: list[usernet.Grant],
                 *, private: bool, guarded: bool) -> None:
        self.uid = uid
        self.nic_type = nic_type
        self.bridge = bridge
        self.grants = grants
        self.private = private
        self.guarded = guarded

    def owners(self) -> set[bytes]:
        return {grant.token for grant in self.grants}


def candidates(raw_lines: list[bytes], intents: list[Intent]) -> dict[int, nicdb.NicLine]:
    """The valid lines, by position, of the intents' owners on each intent's type and bridge:
    the lines the batch's quotas count, and the only ones whose staleness is checked and pruned
    (other users' stale lines go when they next create, or with `nsgate nics gc`)."""
    owners: dict[tuple[bytes, bytes], set[bytes]] = {}
    for intent in intents:
        owners.setdefault((intent.nic_type, intent.bridge), set()).update(intent.owners())
    found: dict[int, nicdb.NicLine] = {}
    for (nic_type, bridge), tokens in owners.items():
        found.update(nicdb.lines_of(raw_lines, tokens, nic_type, bridge))
    return found


class Tally:
    """The live nics of the batch's owners, in file order, with the batch's reservations added
    after them as they are decided."""

    def __init__(self, live_lines: list[nicdb.NicLine]) -> None:
        self.lines = list(live_lines)

    def decide(self, intent: Intent) -> usernet.QuotaDecision:
        return usernet.decide(intent.grants,
                              nicdb.nics_by_owner(self.lines, intent.nic_type, intent.bridge))

    def add(self, line: nicdb.NicLine) -> None:
        self.lines.append(line)


def quota_refusal(decision: usernet.QuotaDecision, bridge: bytes) -> Refusal:
    counted = [dev.decode() for devs in decision.used.values() for dev in devs]
    return Refusal(f"quota {decision.capacity} on {bridge.decode()} used"
                   + (f" by {', '.join(counted)}" if counted else ""),
                   "remove one of these nics (stop its container) or ask for a larger quota "
                   f"in {usernet.PATH}")
