"""Port security on Linux bridges, enforced by the kernel: one nftables table of nsgate's
(`bridge nsgate`, RULESET below), no daemon (issue 9 §1).

Every host end nsgate makes is in the interface group GROUP (ports.py). For frames entering a
bridge from such a port, before the bridge learns their source (prerouting, priority -300):
- a multicast or zero source MAC, or one the host or another non-nsgate port sent from in the
  last 10 minutes (`host_mac`), is dropped: a container never takes the host's or the uplink's;
- a MAC this port already uses (`port_mac`) passes, and its claim is refreshed;
- a MAC another nsgate port uses (`mac_in_use`) is dropped: no FDB entry ever moves from one
  container to another;
- any other MAC is a new claim, allowed within the port's budget (`new_mac_budget`: a burst of
  8, then 1 an hour), so no container floods the FDB; beyond it, or if a set is full, dropped.
A claim lapses 10 minutes after the port last sent from that MAC, so a container may change its
MAC at any time (liblxc applies `lxc.net.N.hwaddr` after the helper returns) and what it gave up
becomes free again. Only traffic the kernel sees decides: nothing is read from the caller.

The helper checks the table with one nfnetlink query, installs it with `nft -f -` only when it is
missing or of another version (through a child forked before the helper confines itself, as
ovs.Runner does), and under the database lock removes the claims of ports that no longer exist,
so a restarted container gets its MAC back at once and the sets only hold live ports' claims.
"""

import _struct
import errno
import posix

from nsgate.errors import Refusal
from nsgate.policy import netlink_codec as codec
from nsgate.system import files, netlink, programs, rtnl
from nsgate.system.netlink import NetlinkError

TYPE_CHECKING = False  # typing costs import time on every helper run
if TYPE_CHECKING:
    from collections.abc import Iterable

GROUP = 0x6E73  # "ns": IFLA_GROUP of every host end nsgate makes
TABLE = "nsgate"
VERSION = "nsgate port security 1"

RULESET = f"""\
add table bridge {TABLE}
delete table bridge {TABLE}
table bridge {TABLE} {{
	comment "{VERSION}"
	set host_mac {{ type ether_addr; flags dynamic,timeout; timeout 10m; size 65536; }}
	set port_mac {{ type iface_index . ether_addr; flags dynamic,timeout; timeout 10m;
		size 65536; }}
	set mac_in_use {{ type ether_addr; flags dynamic,timeout; timeout 10m; size 65536; }}
	set new_mac_budget {{ type iface_index; flags dynamic; size 65536; }}
	chain host_out {{
		type filter hook output priority -300; policy accept;
		update @host_mac {{ ether saddr }}
	}}
	chain ports_in {{
		type filter hook prerouting priority -300; policy accept;
		meta iifgroup != {GROUP:#x} update @host_mac {{ ether saddr }}
		meta iifgroup != {GROUP:#x} accept
		ether saddr & 01:00:00:00:00:00 == 01:00:00:00:00:00 drop
		ether saddr 00:00:00:00:00:00 drop
		ether saddr @host_mac drop
		meta iif . ether saddr @port_mac update @port_mac {{ meta iif . ether saddr }} \
update @mac_in_use {{ ether saddr }} accept
		ether saddr @mac_in_use drop
		update @new_mac_budget {{ meta iif limit rate 1/hour burst 8 packets }} \
add @port_mac {{ meta iif . ether saddr }} add @mac_in_use {{ ether saddr }} accept
		drop
	}}
}}
"""

# <linux/netfilter/nfnetlink.h>, <linux/netfilter/nf_tables.h>
_NETLINK_NETFILTER = 12
_NFNL_SUBSYS_NFTABLES = 10
_NFNL_MSG_BATCH_BEGIN = 16
_NFNL_MSG_BATCH_END = 17
_NFPROTO_BRIDGE = 7
_NFT_MSG_GETTABLE = 1
_NFT_MSG_GETSETELEM = 13
_NFT_MSG_DELSETELEM = 14
_NFTA_TABLE_NAME = 1
_NFTA_TABLE_USERDATA = 6
_NFTA_SET_ELEM_LIST_TABLE = 1
_NFTA_SET_ELEM_LIST_SET = 2
_NFTA_SET_ELEM_LIST_ELEMENTS = 3
_NFTA_LIST_ELEM = 1
_NFTA_SET_ELEM_KEY = 1
_NFTA_DATA_VALUE = 1
_NFTNL_UDATA_TABLE_COMMENT = 0  # libnftnl: the table's comment, a NUL-terminated TLV
_U32 = _struct.Struct("=I")


def _nfgenmsg(family: int, res_id: int = 0) -> bytes:
    return bytes((family, 0)) + res_id.to_bytes(2, "big")


def _comment(userdata: bytes) -> bytes | None:
    offset = 0
    while offset + 2 <= len(userdata):
        kind, length = userdata[offset], userdata[offset + 1]
        value = userdata[offset + 2:offset + 2 + length]
        if kind == _NFTNL_UDATA_TABLE_COMMENT:
            return value.split(b"\0", 1)[0]
        offset += 2 + length
    return None


class _Nfnl:
    """Queries and one transaction on nsgate's table, over a NETLINK_NETFILTER socket
    connected to the kernel (system/netlink.py)."""

    def __init__(self) -> None:
        self._socket = netlink.NetlinkSocket(_NETLINK_NETFILTER)

    def close(self) -> None:
        self._socket.close()

    def table_version(self) -> bytes | None:
        """The comment of table `bridge nsgate`; None if there is no such table."""
        body = _nfgenmsg(_NFPROTO_BRIDGE) + codec.string(_NFTA_TABLE_NAME, TABLE)
        try:
            answers = self._socket.request(_NFNL_SUBSYS_NFTABLES << 8 | _NFT_MSG_GETTABLE,
                                           codec.NLM_F_ACK, body, f"GETTABLE bridge {TABLE}")
        except NetlinkError as err:
            if err.errno == errno.ENOENT:
                return None
            raise
        for payload in answers:
            attrs = _attrs(payload, 4)
            return _comment(attrs.get(_NFTA_TABLE_USERDATA, b"")) or b""
        return None

    def keys(self, set_name: str) -> list[bytes]:
        """The keys of the live elements of set `set_name` of the table."""
        body = (_nfgenmsg(_NFPROTO_BRIDGE) + codec.string(_NFTA_SET_ELEM_LIST_TABLE, TABLE)
                + codec.string(_NFTA_SET_ELEM_LIST_SET, set_name))
        answers = self._socket.request(_NFNL_SUBSYS_NFTABLES << 8 | _NFT_MSG_GETSETELEM,
                                       codec.NLM_F_DUMP, body, f"GETSETELEM {set_name}")
        keys = []
        for payload in answers:
            elements = _attrs(payload, 4).get(_NFTA_SET_ELEM_LIST_ELEMENTS, b"")
            for _, element in _iter_attrs(elements):
                key = _attrs(_attrs(element).get(_NFTA_SET_ELEM_KEY, b""))
                if _NFTA_DATA_VALUE in key:
                    keys.append(key[_NFTA_DATA_VALUE])
        return keys

    def delete_keys(self, doomed: "dict[str, list[bytes]]") -> None:
        """Delete these elements (set name -> keys) in one transaction."""
        batch_header = _nfgenmsg(0, _NFNL_SUBSYS_NFTABLES)
        parts = []
        for set_name, keys in doomed.items():
            if not keys:
                continue
            elements = b"".join(codec.nested(_NFTA_LIST_ELEM, codec.nested(
                _NFTA_SET_ELEM_KEY, codec.attr(_NFTA_DATA_VALUE, key))) for key in keys)
            body = (_nfgenmsg(_NFPROTO_BRIDGE) + codec.string(_NFTA_SET_ELEM_LIST_TABLE, TABLE)
                    + codec.string(_NFTA_SET_ELEM_LIST_SET, set_name)
                    + codec.nested(_NFTA_SET_ELEM_LIST_ELEMENTS, elements))
            parts.append((_NFNL_SUBSYS_NFTABLES << 8 | _NFT_MSG_DELSETELEM, codec.NLM_F_ACK, body))
        if parts:
            self._socket.batch([(_NFNL_MSG_BATCH_BEGIN, 0, batch_header), *parts,
                                (_NFNL_MSG_BATCH_END, 0, batch_header)], "DELSETELEM")


def _attrs(data: bytes, offset: int = 0) -> dict[int, bytes]:
    try:
        return codec.parse_attrs(data, offset)
    except codec.CodecError as err:
        raise NetlinkError(errno.EBADMSG, f"nf_tables: malformed answer: {err}") from None


def _iter_attrs(data: bytes) -> list[tuple[int, bytes]]:
    try:
        return codec.iter_attrs(data)
    except codec.CodecError as err:
        raise NetlinkError(errno.EBADMSG, f"nf_tables: malformed answer: {err}") from None


class _Installer:
    """A child forked before the helper confines itself, which on request runs `nft -f -` with
    RULESET and nothing else; it ends when the helper closes the pipe."""

    def __init__(self, nft: str) -> None:
        def serve(requests: int, answers: int) -> None:
            if posix.read(requests, 1) == b"1":
                posix.write(answers, _run_nft(nft))

        self._pid, self._request, self._answer = programs.fork_server(serve)

    def install(self) -> str:
        """The first line nft wrote on failure; "" on success."""
        answer = b""
        try:
            posix.write(self._request, b"1")
            while chunk := posix.read(self._answer, 4096):
                answer += chunk
        except OSError as err:
            return f"the process that runs nft is gone ({err.strerror})"
        if answer == b"0":
            return ""
        return answer.decode("utf-8", "backslashreplace") or "the process that runs nft died"

    def close(self) -> None:
        if self._pid:
            files.close_quietly(self._request)
            files.close_quietly(self._answer)
            try:
                posix.waitpid(self._pid, 0)
            except OSError:
                pass  # not reaped: it ends with the pipe, and init reaps it after we exit
            self._pid = 0


def _run_nft(nft: str) -> bytes:
    """b"0" if `nft -f -` installed RULESET, else the first line of its error output."""
    ruleset_out, ruleset_in = posix.pipe2(posix.O_CLOEXEC)
    errors_out, errors_in = posix.pipe2(posix.O_CLOEXEC)
    null = posix.open("/dev/null", posix.O_RDWR | posix.O_CLOEXEC)
    pid = posix.posix_spawn(nft, [nft, "-f", "-"], programs.ENVIRONMENT,
                            file_actions=[(posix.POSIX_SPAWN_DUP2, ruleset_out, 0),
                                          (posix.POSIX_SPAWN_DUP2, null, 1),
                                          (posix.POSIX_SPAWN_DUP2, errors_in, 2)])
    for fd in (ruleset_out, errors_in, null):
        posix.close(fd)
    posix.write(ruleset_in, RULESET.encode())  # far below a pipe's capacity
    posix.close(ruleset_in)
    errors = b""
    while chunk := posix.read(errors_out, 4096):
        errors += chunk
    posix.close(errors_out)
    _, status = posix.waitpid(pid, 0)
    if posix.WIFEXITED(status) and posix.WEXITSTATUS(status) == 0:
        return b"0"
    return (errors.strip().split(b"\n", 1)[0] or b"nft failed")[:300]


class Guard:
    """The table for one create: checked now, before the helper confines itself; installed if
    needed and cleaned of vanished ports' claims later, under the database lock (`ready`)."""

    def __init__(self) -> None:
        try:
            self._nfnl = _Nfnl()
        except OSError as err:
            raise _no_nf_tables(err) from None
        try:
            version = self._nfnl.table_version()
        except OSError as err:
            self._nfnl.close()
            raise _no_nf_tables(err) from None
        self._installer: _Installer | None = None
        try:
            if version != VERSION.encode():
                nft = programs.find("nft")
                if nft is None:
                    raise Refusal("nftables is needed to attach a nic to a Linux bridge",
                                  "nsgate's port security is a table of nftables, and nft was "
                                  "not found in " + ", ".join(programs.SEARCH_PATH)
                                  + ": install nftables")
                self._installer = _Installer(nft)
        except BaseException:
            self.close()
            raise

    def ready(self, net: "rtnl.Rtnl") -> None:
        """The current table is in place and holds no claim of a port that is gone."""
        try:
            if self._nfnl.table_version() != VERSION.encode():
                failure = self._installer.install() if self._installer else "it vanished"
                if failure or self._nfnl.table_version() != VERSION.encode():
                    raise Refusal(f"could not set up nftables table bridge {TABLE} (port "
                                  "security)", failure or "nft exited 0 but no table is there",
                                  "the kernel needs nf_tables with the bridge family")
            for attempt in range(3):
                try:
                    self._forget_vanished_ports(net)
                    return
                except NetlinkError as err:  # ENOENT: an element timed out meanwhile
                    if err.errno != errno.ENOENT or attempt == 2:
                        raise
        except NetlinkError as err:
            raise _no_nf_tables(err) from None

    def _forget_vanished_ports(self, net: "rtnl.Rtnl") -> None:
        claims = self._nfnl.keys("port_mac")
        budgets = self._nfnl.keys("new_mac_budget")
        indexes = {_U32.unpack_from(key)[0] for key in (*claims, *budgets) if len(key) >= 4}
        gone = _vanished(net, indexes)
        if gone:
            self._nfnl.delete_keys({
                "port_mac": [key for key in claims if _U32.unpack_from(key)[0] in gone],
                "mac_in_use": [key[4:10] for key in claims if _U32.unpack_from(key)[0] in gone],
                "new_mac_budget": [key for key in budgets if _U32.unpack_from(key)[0] in gone]})

    def close(self) -> None:
        if self._installer is not None:
            self._installer.close()
        self._nfnl.close()


def _no_nf_tables(err: OSError) -> Refusal:
    return Refusal(f"could not use nftables table bridge {TABLE} (port security)",
                   f"the kernel's nf_tables answered: {err}",
                   "a nic is attached to a Linux bridge only with nsgate's port security: the "
                   "kernel needs nf_tables with the bridge family")


def _vanished(net: "rtnl.Rtnl", indexes: "Iterable[int]") -> set[int]:
    wanted = set(indexes)
    if len(wanted) > 8:
        live = {link.index for link in net.links()}
        return wanted - live
    return {index for index in wanted if net.link_by_index(index) is None}
