"""The users and groups NSS knows, as plain data (gathered by system/accounts.py): who an owner
field of /etc/subuid or /etc/subgid denotes, and which real ids a range would swallow."""

import bisect

from nsgate.policy.numbers import UINT32_MAX, parse_decimal


class Accounts:
    def __init__(self, users: list[tuple[bytes, int, int]],
                 groups: list[tuple[bytes, int, list[bytes]]]) -> None:
        """`users`: (name, uid, primary gid); `groups`: (name, gid, member names)."""
        self.uid_of: dict[bytes, int] = {}
        self.gid_of_user: dict[bytes, int] = {}
        self.user_by_uid: dict[int, bytes] = {}
        self.primary_gid_by_uid: dict[int, int] = {}
        for name, uid, gid in users:
            self.uid_of.setdefault(name, uid)
            self.gid_of_user.setdefault(name, gid)
            self.user_by_uid.setdefault(uid, name)
            self.primary_gid_by_uid.setdefault(uid, gid)
        self.gid_of: dict[bytes, int] = {}
        self.group_by_gid: dict[int, bytes] = {}
        self.members: dict[bytes, list[bytes]] = {}
        for name, gid, members in groups:
            self.gid_of.setdefault(name, gid)
            self.group_by_gid.setdefault(gid, name)
            self.members.setdefault(name, list(members))
        self.uids = sorted(self.user_by_uid)
        self.gids = sorted(self.group_by_gid)

    def owner_uid(self, owner: bytes) -> int | None:
        """The uid an owner field denotes: a decimal uid, or a user name NSS knows."""
        uid = parse_decimal(owner, UINT32_MAX)
        return uid if uid is not None else self.uid_of.get(owner)

    def owner_key(self, owner: bytes) -> bytes:
        """One key per owner: a name and the numeric uid of the same user are one owner."""
        uid = self.owner_uid(owner)
        return b"uid:%d" % uid if uid is not None else b"name:" + owner

    def owner_own_id(self, owner: bytes, kind: str) -> int | None:
        """The owner's own uid (subuid) or primary gid (subgid), where known."""
        uid = self.owner_uid(owner)
        if uid is None or kind == "uid":
            return uid
        return self.primary_gid_by_uid.get(uid)

    def known_ids_in(self, kind: str, start: int, end: int) -> list[tuple[int, bytes]]:
        """The ids NSS knows in [start, end), with a name for each."""
        ids, names = ((self.uids, self.user_by_uid) if kind == "uid"
                      else (self.gids, self.group_by_gid))
        low = bisect.bisect_left(ids, start)
        high = bisect.bisect_left(ids, end)
        return [(i, names[i]) for i in ids[low:high]]

    def knowing(self, name: bytes, uid: int, gid: int | None) -> "Accounts":
        """These accounts and user `name` (uid, primary gid where known), for a user NSS
        resolves but does not enumerate (a directory user): its own ids then count as real
        ones and its name as the owner its uid denotes."""
        if self.uid_of.get(name) == uid and (gid is None or uid in self.primary_gid_by_uid):
            return self
        known = Accounts([], [])
        known.uid_of = {**self.uid_of, name: self.uid_of.get(name, uid)}
        known.user_by_uid = {uid: name, **self.user_by_uid}
        known.gid_of_user = dict(self.gid_of_user)
        known.primary_gid_by_uid = dict(self.primary_gid_by_uid)
        if gid is not None:
            known.gid_of_user.setdefault(name, gid)
            known.primary_gid_by_uid.setdefault(uid, gid)
        known.uids = sorted(known.user_by_uid)
        known.gid_of, known.group_by_gid = self.gid_of, self.group_by_gid
        known.members, known.gids = self.members, self.gids
        return known
