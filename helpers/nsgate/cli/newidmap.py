"""newuidmap / newgidmap: write the map of a user namespace the caller owns, within the ids the
subordinate-id database grants (newuidmap.md). Drop-in for shadow's helpers.

The order: parse the request, check privilege, identify the caller, open and check the target as
the caller, gather the caller's subordinate ids, decide; only then the side effects: setgroups
`deny` (newgidmap, as the caller), then the map, opened after the credentials are cut down to
the one capability the kernel checks. Every message is written after privilege is dropped.
"""

import posix
import pwd

from nsgate.errors import Refusal
from nsgate.policy.authorize import decide, is_self_map
from nsgate.policy.config import login_defs_flag
from nsgate.policy.idmap_request import MapRequest, Triple, find_overlap, parse
from nsgate.system import (
    audit,
    confine,
    credentials,
    files,
    kernel,
    procfs,
    subid_db,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from nsgate.system.handed import Handed

USAGE = {
    "uid": "usage: newuidmap [<pid>|fd:<pidfd>] <uid> <loweruid> <count> "
           "[ <uid> <loweruid> <count> ] ... \n",
    "gid": "usage: newgidmap [<pid|fd:<pidfd>] <gid> <lowergid> <count> "
           "[ <gid> <lowergid> <count> ] ... \n",
}
SET_ID_CAP = {"uid": kernel.CAP_SETUID, "gid": kernel.CAP_SETGID}


def main(prog: str, argv: list[str], handed: "Handed | None" = None) -> tuple[int, str]:
    """Returns the exit status and the text for stderr (empty on success)."""
    kind = "uid" if prog == "newuidmap" else "gid"
    caller = credentials.CallerIds()
    args = [arg.encode("utf-8", "surrogateescape") for arg in argv]
    what = f"caller uid {caller.uid} gid {caller.gid}, {prog} " + " ".join(
        repr(arg[:32])[2:-1] for arg in args[:1 + 3 * 8])
    try:
        credentials.harden_process()
        request = parse(args, kind)
        credentials.require_capability(SET_ID_CAP[kind])
        done = _map(kind, caller, request, handed)
    except Refusal as refusal:
        credentials.drop_all(caller)
        audit.record(prog, False, f"{what}: {refusal.first}")
        return 1, refusal.text(prog, USAGE[kind] if refusal.usage else "")
    credentials.drop_all(caller)
    audit.record(prog, True, f"{what}: {done}")
    return 0, ""


def _map(kind: str, caller: credentials.CallerIds, request: MapRequest,
         handed: "Handed | None") -> str:
    """Write the map; what was done, for the log."""
    map_file = f"{kind}_map"
    self_id = caller.uid if kind == "uid" else caller.gid
    _refuse_overlap(request.triples, kind, self_id)
    try:
        entry = pwd.getpwuid(caller.uid)
    except KeyError:
        raise Refusal("Cannot determine your user name.",
                      f"uid {caller.uid} has no passwd entry") from None
    login_defs = files.read_small("/etc/login.defs") or b""

    credentials.act_as_caller(caller)
    dirfd = procfs.open_target(request.pid, request.fd, handed)
    _check_owner(dirfd, caller, entry, login_defs_flag(login_defs, b"GRANT_AUX_GROUP_SUBIDS"))
    procfs.check_target_state(dirfd, map_file)
    credentials.act_as_root(caller)

    held = subid_db.holdings(kind, entry.pw_name.encode("utf-8", "surrogateescape"), caller.uid,
                             login_defs, files.read_small("/etc/nsswitch.conf"))
    try:
        decision = decide(request.triples, self_id, held.owns)
        if decision.refused is not None:
            raise Refusal(f"{decision.refused.describe(kind)} not allowed",
                          *_why_not(decision.refused, kind, self_id, held))
    finally:
        held.close()
    caps = [SET_ID_CAP[kind]]
    if kind == "uid" and decision.maps_host_root:
        if not credentials.has_capability(kernel.CAP_SETFCAP):
            raise Refusal("Could not set caps: CAP_SETFCAP is needed to map host uid 0, and this "
                          "helper does not have it",
                          "a file-capabilities install (make install CAPS=1) carries only "
                          "cap_setuid, like shadow's --with-fcaps builds; install setuid root to "
                          "map host uid 0")
        caps.append(kernel.CAP_SETFCAP)
    confine.confine(caps, confine.MAP_WRITER)

    if kind == "gid" and not decision.allow_setgroups:
        credentials.act_as_caller(caller)
        procfs.deny_setgroups(dirfd)
    credentials.become_map_writer(caller, caps)
    procfs.write_map(dirfd, map_file, request.map_text())
    posix.close(dirfd)
    return f"target {request.target} owned by {entry.pw_name} ({caller.uid})"


def _refuse_overlap(triples: list[Triple], kind: str, self_id: int) -> None:
    overlap = find_overlap(triples)
    if overlap is None:
        return
    first, second, side = overlap
    where = "inside the namespace" if side == "upper" else "on the host"
    details = [f"triple {first.index} ({first.argv()}) and triple {second.index} "
               f"({second.argv()}) overlap {where}: the kernel would refuse the map "
               "(Invalid argument); nothing was changed"]
    own = [t for t in (first, second) if is_self_map(t, self_id)]
    if side == "lower" and own:
        other = second if own[0] is first else first
        return_text = (f"{kind} {self_id} is inside your subordinate range "
                       f"{other.lower}-{other.lower + other.count - 1}: it is mapped twice, as "
                       "your own id and as a subordinate id")
        raise Refusal(return_text, *details,
                      f"ask the administrator to move your range in /etc/sub{kind} so it does "
                      f"not contain your own {kind} {self_id}")
    raise Refusal(f"overlapping ranges: {first.describe(kind)} and {second.describe(kind)}",
                  *details)


def _check_owner(dirfd: int, caller: credentials.CallerIds, entry: pwd.struct_passwd,
                 grant_aux: bool) -> None:
    """The reference's ownership rule (newuidmap.md §5.2): only your own processes, root too."""
    st_uid, st_gid = procfs.owner_ids(dirfd)
    reasons = []
    if caller.gid != entry.pw_gid and not grant_aux:
        reasons.append(f"your real gid {caller.gid} is not your primary gid {entry.pw_gid} "
                       "(newgrp, sg or runuser -g?); GRANT_AUX_GROUP_SUBIDS yes in "
                       "/etc/login.defs allows this")
    if st_uid != entry.pw_uid:
        reasons.append(f"the target runs with effective uid {st_uid}, not yours ({caller.uid}): "
                       "you can map only your own processes")
    if st_gid != caller.gid:
        reasons.append(f"the target runs with effective gid {st_gid}, not your real gid "
                       f"{caller.gid}")
    if reasons:
        raise Refusal("Target process is owned by a different user: "
                      f"uid:{caller.uid} pw_uid:{entry.pw_uid} st_uid:{st_uid}, "
                      f"gid:{caller.gid} pw_gid:{entry.pw_gid} st_gid:{st_gid}", *reasons)


def _why_not(triple: Triple, kind: str, self_id: int, held: subid_db.Holdings) -> list[str]:
    details = held.explain(triple.lower, triple.count)
    if triple.count == 1:
        own = "uid" if kind == "uid" else "real gid"
        details.append(f"a single id needs no entry only when it is your own {own} {self_id}")
    return details
