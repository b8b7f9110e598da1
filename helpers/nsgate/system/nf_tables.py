"""nsgate's nftables tables as the kernel has them: one NETLINK_NETFILTER socket (system/netlink.py)
for a table's version (its comment), the keys of a set and their deletion in one transaction; and
`run_nft`, which loads a ruleset's text with `nft -f -`. Used by port_security.py (`bridge nsgate`)
and network_table.py (`inet nsgate`); on the helper's path, so imports stay few."""

import errno
import posix

from nsgate.policy import netlink_codec as codec
from nsgate.system import programs
from nsgate.system.netlink import NetlinkError, NetlinkSocket

# <linux/netfilter.h>, <linux/netfilter/nfnetlink.h>, <linux/netfilter/nf_tables.h>
NFPROTO_INET = 1
NFPROTO_BRIDGE = 7
_NETLINK_NETFILTER = 12
_NFNL_SUBSYS_NFTABLES = 10
_NFNL_MSG_BATCH_BEGIN = 16
_NFNL_MSG_BATCH_END = 17
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


class Nfnl:
    """Queries and one transaction on table `table` of `family` (NFPROTO_*)."""

    def __init__(self, family: int, table: str) -> None:
        self._family = family
        self._table = table
        self._socket = NetlinkSocket(_NETLINK_NETFILTER)

    def close(self) -> None:
        self._socket.close()

    def table_version(self) -> bytes | None:
        """The table's comment (b"" if it has none); None if there is no such table."""
        body = _nfgenmsg(self._family) + codec.string(_NFTA_TABLE_NAME, self._table)
        try:
            answers = self._socket.request(_NFNL_SUBSYS_NFTABLES << 8 | _NFT_MSG_GETTABLE,
                                           codec.NLM_F_ACK, body, f"GETTABLE {self._table}")
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
        body = (_nfgenmsg(self._family) + codec.string(_NFTA_SET_ELEM_LIST_TABLE, self._table)
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
            body = (_nfgenmsg(self._family)
                    + codec.string(_NFTA_SET_ELEM_LIST_TABLE, self._table)
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


def run_nft(nft: str, text: str) -> bytes:
    """b"0" if `nft -f -` loaded `text`, else the first line of its error output (nft applies a
    file as one transaction: on failure nothing changed)."""
    ruleset_out, ruleset_in = posix.pipe2(posix.O_CLOEXEC)
    errors_out, errors_in = posix.pipe2(posix.O_CLOEXEC)
    null = posix.open("/dev/null", posix.O_RDWR | posix.O_CLOEXEC)
    try:
        pid = posix.posix_spawn(nft, [nft, "-f", "-"], programs.ENVIRONMENT,
                                file_actions=[(posix.POSIX_SPAWN_DUP2, ruleset_out, 0),
                                              (posix.POSIX_SPAWN_DUP2, null, 1),
                                              (posix.POSIX_SPAWN_DUP2, errors_in, 2)])
    except OSError:
        for fd in (ruleset_out, ruleset_in, errors_out, errors_in, null):
            posix.close(fd)
        raise
    for fd in (ruleset_out, errors_in, null):
        posix.close(fd)
    data = text.encode()
    try:
        while data:  # nft reads all of it before it writes anything: no deadlock
            data = data[posix.write(ruleset_in, data):]
    except BrokenPipeError:
        pass  # nft stopped reading: its exit status and errors say why
    posix.close(ruleset_in)
    errors = b""
    while chunk := posix.read(errors_out, 4096):
        errors += chunk
    posix.close(errors_out)
    _, status = posix.waitpid(pid, 0)
    if posix.WIFEXITED(status) and posix.WEXITSTATUS(status) == 0:
        return b"0"
    return (errors.strip().split(b"\n", 1)[0] or b"nft failed")[:300]
