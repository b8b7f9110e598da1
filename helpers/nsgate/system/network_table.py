"""The firewall table of the per-user networks, `inet nsgate` (policy/network_ruleset.py), as the
kernel has it: its version (one nfnetlink query) and loading a new one with `nft -f -` (one
transaction: on failure the table the kernel had stays as it was)."""

from nsgate.errors import Refusal
from nsgate.policy.network_ruleset import FAMILY, TABLE
from nsgate.system import nf_tables, programs

NAME = f"{FAMILY} {TABLE}"


def loaded_version() -> str | None:
    """The comment of the loaded table ("" if it has none); None if no such table is loaded."""
    try:
        nfnl = nf_tables.Nfnl(nf_tables.NFPROTO_INET, TABLE)
    except OSError as err:
        raise _no_nf_tables(err) from None
    try:
        version = nfnl.table_version()
    except OSError as err:
        raise _no_nf_tables(err) from None
    finally:
        nfnl.close()
    return None if version is None else version.decode("utf-8", "backslashreplace")


def load(text: str) -> None:
    """Load `text` (network_ruleset.ruleset) with nft; a Refusal with nft's first line if it
    cannot, and then nothing changed."""
    nft = programs.find("nft")
    if nft is None:
        raise Refusal(f"cannot load nftables table {NAME}: nft was not found",
                      "nsgate's per-user networks are an nftables table, and nft was not found "
                      "in " + ", ".join(programs.SEARCH_PATH) + " (as a file only root can "
                      "change): install nftables")
    try:
        answer = nf_tables.run_nft(nft, text)
    except OSError as err:
        raise Refusal(f"cannot load nftables table {NAME}: {nft} did not run ({err.strerror})",
                      "install nftables") from None
    if answer != b"0":
        raise Refusal(f"cannot load nftables table {NAME}: nft refused it",
                      f"nft: {answer.decode('utf-8', 'backslashreplace')}",
                      "nothing was changed; the kernel needs nf_tables with the inet family, "
                      "fib, conntrack, nat and masquerade (nft_fib_inet, nft_ct, nft_nat, "
                      "nft_masq)")


def _no_nf_tables(err: OSError) -> Refusal:
    return Refusal(f"cannot read nftables table {NAME}",
                   f"the kernel's nf_tables answered: {err}",
                   "the per-user networks need nf_tables in the kernel")
