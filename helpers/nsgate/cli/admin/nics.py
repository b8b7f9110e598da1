"""nsgate nics list|gc: the nic database with liveness, and pruning it under lxc-user-nic's lock
(stale lines, and private bridges with no port left: system/nic_gc.py), and the DHCP leases of
the bridges that went."""

from nsgate.cli.admin.common import NICS, Args, Out, link_kinds, require_root
from nsgate.errors import Refusal
from nsgate.policy import nicdb
from nsgate.policy.findings import text


def _read_nics() -> bytes:
    from nsgate.system import file_facts

    try:
        return file_facts.read(NICS) or b""
    except PermissionError:
        raise Refusal(f"cannot read {NICS}: permission denied",
                      "lxc-user-nic keeps the database readable by root only: run "
                      "'nsgate nics list' as root") from None


def list_nics(out: Out, args: Args) -> int:
    raw_lines = nicdb.split_lines(_read_nics())
    live = set(link_kinds([]) or {})
    nics: list[dict[str, object]] = []
    unparsed: list[dict[str, object]] = []
    for lineno, raw in enumerate(raw_lines, 1):
        if not raw.strip():
            continue
        line = nicdb.NicLine(raw)
        if not line.valid:
            unparsed.append({"line": lineno, "text": text(raw)})
            continue
        dev = line.dev.decode("utf-8", "surrogateescape")
        nics.append({"line": lineno, "owner": text(line.owner), "type": text(line.nic_type),
                     "bridge": text(line.bridge), "interface": text(line.dev),
                     "live": dev in live})
    if args.json:
        out.json({"file": NICS, "nics": nics, "unparsed": unparsed})
        return 0
    if not nics and not unparsed:
        out.say(f"{NICS}: no nics recorded")
        return 0
    rows = [[str(n["line"]), str(n["owner"]), str(n["type"]), str(n["bridge"]),
             str(n["interface"]), "live" if n["live"] else "stale"]
            for n in nics]
    rows += [[str(u["line"]), "?", "", "", "", f"unreadable: {u['text']}"] for u in unparsed]
    out.table(["LINE", "OWNER", "TYPE", "BRIDGE", "INTERFACE", "STATE"],
              sorted(rows, key=lambda r: int(r[0])), indent="", highlight={"stale": "33"})
    stale = sum(1 for n in nics if not n["live"])
    if stale:
        out.say(f"{stale} stale line{'s' * (stale != 1)}: 'nsgate nics gc' (as root) removes "
                f"{'them' if stale != 1 else 'it'}")
    return 0


def gc(out: Out) -> int:
    require_root("nsgate nics gc")
    from nsgate.system import nic_gc, rtnl

    with rtnl.Rtnl() as net:
        collected = nic_gc.collect(net)
        kept_because = ""
        try:
            leases = nic_gc.prune_leases(net)
        except Refusal as refusal:  # (networks.conf: `nsgate check` tells more)
            leases, kept_because = [], refusal.first
    removed = collected.lines
    if not removed:
        out.say(f"{NICS}: no stale lines")
    else:
        out.say(f"removed {len(removed)} stale line{'s' * (len(removed) != 1)} from {NICS}:")
        for raw in removed:
            out.say(f"  {text(raw)}")
    for name in collected.bridges:
        out.say(f"removed private bridge {text(name)}: no port left")
    if leases is None:
        out.say("DHCP leases: the service runs, and prunes them itself")
    if kept_because:
        out.say(f"DHCP leases left as they are: {kept_because}")
    for raw in leases or []:
        out.say(f"removed DHCP lease '{text(raw)}': no bridge has its subnet")
    return 0
