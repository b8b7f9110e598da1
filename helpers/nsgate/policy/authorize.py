"""Deciding a map request: which triples are allowed, and what that implies (newuidmap.md §5.3, §7).

Pure: the caller's identity and a way to ask "does the caller own these subordinate ids" come in,
a decision comes out. Nothing here reads a file or makes a system call.
"""

from nsgate.policy.idmap_request import Triple

TYPE_CHECKING = False  # typing costs import time on every helper run
if TYPE_CHECKING:
    from collections.abc import Callable


class Decision:
    """The outcome for a whole request (all or nothing).

    `refused`: the first triple that is not allowed, or None. `allow_setgroups`: some triple was
    granted through the subordinate ids (else newgidmap must write `deny` to setgroups first,
    CVE-2018-7169). `maps_host_root`: host id 0 is mapped (CAP_SETFCAP needed for uid_map).
    """

    __slots__ = ("allow_setgroups", "maps_host_root", "refused")

    def __init__(self, refused: Triple | None, allow_setgroups: bool, maps_host_root: bool):
        self.refused = refused
        self.allow_setgroups = allow_setgroups
        self.maps_host_root = maps_host_root


def is_self_map(triple: Triple, self_id: int) -> bool:
    """The caller's own id, one id long: allowed without any subordinate entry."""
    return triple.count == 1 and triple.lower == self_id


def decide(triples: list[Triple], self_id: int,
           owns: "Callable[[int, int, bool], bool]") -> Decision:
    """`self_id` is the caller's uid (newuidmap) or real gid (newgidmap).

    `owns(start, count, thorough)` says whether the caller's subordinate ids cover
    [start, start + count); with `thorough` false it may skip the slow lookups (entries of other
    names of the same user). As in shadow, the subordinate ids are consulted before the self-map
    rule, so a self-mapped id that is also a subordinate id leaves setgroups alone; for the
    self-mapped id only the quick lookup is made, keeping large files fast.
    """
    through_subids = False
    for triple in triples:
        if owns(triple.lower, triple.count, False):
            through_subids = True
        elif is_self_map(triple, self_id):
            continue
        elif owns(triple.lower, triple.count, True):
            through_subids = True
        else:
            return Decision(triple, through_subids, False)
    return Decision(None, through_subids, any(t.lower == 0 for t in triples))
