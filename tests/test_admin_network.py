"""`nsgate network apply|show` and the `network-table` finding of `nsgate check`, through the
installed command: apply loads the table, turns forwarding on and gives the private bridges
nsgate recorded their gateway addresses, idempotently, and undoes it all when networks.conf
goes; bad input (a pool overlapping the host's addresses or routes, a malformed file, nft
missing or failing, the kernel refusing) is refused with the reason and leaves the loaded
table byte for byte and every link, address and route as they were."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.admin_support import NSGATE_BIN, nsgate, nsgate_json
from tests.firewall_support import (
    BRIDGE_RECORD,
    CONF,
    SUBNET_RECORD,
    WORK,
    addresses,
    apply,
    links_state,
    no_dad,
    remove_table,
    run,
    table,
)
from tests.support import ALICE, wait_for

GOOD = "ipv4-pool 10.210.0.0/16 24\nipv6-pool fd42:6e73::/48 64\nuplink nat\n"
FORWARDING = ("/proc/sys/net/ipv4/ip_forward", "/proc/sys/net/ipv6/conf/all/forwarding")


def write_conf(text: str) -> None:
    CONF.parent.mkdir(mode=0o755, exist_ok=True)
    CONF.unlink(missing_ok=True)
    CONF.write_text(text)
    os.chmod(CONF, 0o644)


@pytest.fixture(autouse=True)
def network() -> Iterator[None]:
    """alice's private bridge nsgu23001, made by hand and recorded as nsgate's (subnet 1);
    a bridge nsgu23002 nsgate did not record, with an address of its own; a veth pair
    nsgtx0/nsgtx1 for "another link of the host". Everything removed afterwards."""
    WORK.mkdir(parents=True, exist_ok=True)
    saved = [Path(path).read_text() for path in FORWARDING]
    with no_dad():
        try:
            run("ip", "link", "add", "nsgu23001", "type", "bridge")
            run("ip", "link", "add", "nsgu23002", "type", "bridge")
            run("ip", "addr", "add", "10.99.0.1/24", "dev", "nsgu23002")
            run("ip", "link", "add", "nsgtx0", "type", "veth", "peer", "name", "nsgtx1")
            for link in ("nsgu23001", "nsgu23002", "nsgtx0", "nsgtx1"):
                run("ip", "link", "set", link, "up")
            BRIDGE_RECORD.write_text("23001 nsgu23001\n")
            SUBNET_RECORD.write_text("23001 1\n")
            yield
        finally:
            for link in ("nsgu23001", "nsgu23002", "nsgtx0"):
                run("ip", "link", "delete", link, check=False)
            remove_table()
            for path in (BRIDGE_RECORD, SUBNET_RECORD):
                path.unlink(missing_ok=True)
            shutil.rmtree(CONF.parent, ignore_errors=True)
            for path, value in zip(FORWARDING, saved, strict=True):
                Path(path).write_text(value)


def table_findings() -> list[str]:
    _, report = nsgate_json("check")
    return [f["message"] for f in report["findings"] if f["code"] == "network-table"]


def test_apply_loads_everything_once_and_undoes_it_without_the_file() -> None:
    for path in FORWARDING:
        Path(path).write_text("0\n")
    assert apply().stdout == ("nothing to change: the host is as it is without "
                              f"{CONF} (no table, no bridge address)\n")
    assert table_findings() == []
    write_conf(GOOD)
    assert table_findings() == ["not loaded, so the private bridges (nsgu23001, nsgu23002) have "
                                "no NAT, isolation or spoofing filter: 'nsgate network apply' "
                                "(as root) loads it"]
    first = apply()
    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()
    assert lines[0].startswith("loaded nftables table inet nsgate (nsgate networks 1 ")
    assert lines[1:] == ["net.ipv4.ip_forward = 1", "net.ipv6.conf.all.forwarding = 1",
                         "nsgu23001: added 10.210.1.1/24", "nsgu23001: added fd42:6e73:0:1::1/64"]
    assert [Path(path).read_text() for path in FORWARDING] == ["1\n", "1\n"]
    assert "10.210.1.1/24" in addresses("nsgu23001")
    assert "fd42:6e73:0:1::1/64" in addresses("nsgu23001")
    assert addresses("nsgu23002") == ["10.99.0.1/24"]  # not nsgate's: left alone
    loaded = table()
    assert loaded is not None
    version = lines[0].split("(")[1].rstrip(")")
    assert f'comment "{version}"' in run("nft", "list", "table", "inet", "nsgate").stdout
    second = apply()
    assert (second.returncode, second.stdout) == (0, f"nothing to change: the host is as {CONF} "
                                                     "asks\n")
    assert table() == loaded
    assert table_findings() == []
    status, shown = nsgate_json("network", "show")
    assert status == 0
    assert shown["table"]["state"].startswith("loaded, current")
    assert shown["plan"]["ipv4_pool"] == "10.210.0.0/16" and shown["plan"]["uplink"] == "nat"
    assert shown["forwarding"] == {"net.ipv4.ip_forward": "1",
                                   "net.ipv6.conf.all.forwarding": "1"}
    # Another plan: the table is replaced, the bridge's addresses follow.
    write_conf("ipv4-pool 10.211.0.0/16 24\nuplink routed\n")
    assert table_findings()[0].startswith("loaded 'nsgate networks 1 ")
    changed = apply()
    assert changed.returncode == 0, changed.stderr
    assert "nsgu23001: added 10.211.1.1/24" in changed.stdout.splitlines()
    assert "nsgu23001: removed fd42:6e73:0:1::1/64" in changed.stdout.splitlines()
    assert addresses("nsgu23001") == ["10.211.1.1/24"]
    assert table() != loaded and table_findings() == []
    # No file: the table goes, the addresses too; forwarding stays (others may route).
    CONF.unlink()
    assert table_findings() == ["no /etc/nsgate/networks.conf, but the table is loaded: "
                                "'nsgate network apply' (as root) removes it"]
    gone = apply()
    assert gone.stdout.splitlines() == ["removed nftables table inet nsgate",
                                        "nsgu23001: removed 10.211.1.1/24"]
    assert table() is None
    assert addresses("nsgu23001") == []
    assert table_findings() == []


def test_apply_on_a_host_that_never_had_the_file_touches_nothing() -> None:
    BRIDGE_RECORD.unlink()
    lock = Path("/run/lxc/nics.lock")
    lock.unlink(missing_ok=True)
    result = apply()
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.startswith("nothing to change")
    assert not lock.exists()


def test_show_without_the_file_and_as_a_user() -> None:
    result = nsgate("network", "show")
    assert result.returncode == 0
    assert f"{CONF}: none" in result.stdout
    assert "table inet nsgate: not loaded (as wanted)" in result.stdout
    write_conf(GOOD)
    as_alice = nsgate("network", "show", user=ALICE)
    assert as_alice.returncode == 0, as_alice.stderr
    assert "table inet nsgate: unknown (run as root to read it)" in as_alice.stdout
    assert "ipv4-pool    10.210.0.0/16" in as_alice.stdout
    checked = nsgate("check", user=ALICE)
    assert ("nsgate: note: cannot read the nftables table inet nsgate (nf_tables answers root "
            "only): it was not checked") in checked.stderr


def test_apply_as_a_user_is_refused() -> None:
    write_conf(GOOD)
    result = nsgate("network", "apply", user=ALICE)
    assert result.returncode == 1
    assert result.stderr.startswith("nsgate: nsgate network apply must run as root\n")
    assert table() is None


def test_usage() -> None:
    for argv in (["network"], ["network", "up"], ["network", "apply", "x"],
                 ["network", "apply", "--json"]):
        assert nsgate(*argv).returncode == 2, argv


# --- bad input: refused, nothing changed ----------------------------------------------------

def _unchanged_after(refused: subprocess.CompletedProcess[str], before: tuple[str | None, str],
                     first_line: str) -> None:
    assert refused.returncode == 1, refused
    assert refused.stderr.splitlines()[0] == f"nsgate: {first_line}", refused.stderr
    assert (table(), links_state()) == before


@pytest.fixture
def loaded() -> tuple[str | None, str]:
    """A good table and addresses in place (the state every bad input must leave as it was)."""
    write_conf(GOOD)
    assert apply().returncode == 0
    return table(), links_state()


def test_a_pool_overlapping_an_address_of_the_host_is_refused(loaded) -> None:
    run("ip", "addr", "add", "10.212.7.1/24", "dev", "nsgtx0")
    before = (table(), links_state())
    write_conf("ipv4-pool 10.212.0.0/16 24\n")
    refused = apply()
    _unchanged_after(refused, before, "the pool 10.212.0.0/16 of networks.conf overlaps the "
                     "address 10.212.7.1/24 on nsgtx0")
    assert "choose another pool" in refused.stderr


def test_a_pool_overlapping_a_route_of_the_host_is_refused(loaded) -> None:
    # A default route split in two (as VPN clients do) is no overlap.
    run("ip", "route", "add", "0.0.0.0/1", "dev", "nsgtx0")
    run("ip", "route", "add", "128.0.0.0/1", "dev", "nsgtx0")
    assert apply().returncode == 0
    run("ip", "-6", "route", "add", "fd43::/16", "dev", "nsgtx0")
    before = (table(), links_state())
    write_conf("ipv4-pool 10.212.0.0/16 24\nipv6-pool fd43:1::/48 64\n")
    _unchanged_after(apply(), before, "the pool fd43:1::/48 of networks.conf overlaps the "
                     "route fd43::/16 on nsgtx0")


def test_a_malformed_file_or_a_pool_too_small_to_derive_is_refused(loaded) -> None:
    before = (table(), links_state())
    write_conf(GOOD + "uplink bridged\n")
    refused = apply()
    assert refused.stderr.startswith(f"nsgate: {CONF}:4: ")
    _unchanged_after(refused, before, refused.stderr.splitlines()[0].removeprefix("nsgate: "))
    write_conf(GOOD + "allocation derived\n")  # 256 subnets for login.defs' 59001 uids
    too_small = apply()
    assert "59001" in too_small.stderr and "256" in too_small.stderr
    _unchanged_after(too_small, before, too_small.stderr.splitlines()[0].removeprefix("nsgate: "))


def _apply_with(nft_replacement: Path) -> subprocess.CompletedProcess[str]:
    """apply, in a mount namespace of its own where /usr/sbin/nft is `nft_replacement`."""
    return subprocess.run(["unshare", "--mount", "--", "sh", "-c",
                           'mount --bind "$1" /usr/sbin/nft && exec "$2" network apply', "-",
                           str(nft_replacement), str(NSGATE_BIN)],
                          capture_output=True, text=True, timeout=60)


def test_nft_missing_or_failing_is_refused(loaded) -> None:
    before = (table(), links_state())
    write_conf("ipv4-pool 10.213.0.0/16 24\n")  # a change: apply must load a table
    fake = WORK / "not-roots-nft"
    fake.write_text("#!/bin/sh\nexit 0\n")
    os.chmod(fake, 0o755)
    os.chown(fake, ALICE.uid, ALICE.gid)  # found, but not trusted: as good as missing
    missing = _apply_with(fake)
    _unchanged_after(missing, before, "cannot load nftables table inet nsgate: nft was not "
                     "found")
    assert "install nftables" in missing.stderr
    failing = _apply_with(Path("/usr/bin/false"))
    _unchanged_after(failing, before, "cannot load nftables table inet nsgate: nft refused it")


def test_the_kernel_refusing_the_table_is_refused(loaded) -> None:
    """Another process owns a table `inet nsgate` (nft's `flags owner`): the kernel refuses
    every change to it."""
    remove_table()
    holder = subprocess.Popen(["nft", "-i"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, text=True)
    try:
        assert holder.stdin is not None
        holder.stdin.write('add table inet nsgate { flags owner; comment "held"; }\n')
        holder.stdin.flush()
        wait_for(lambda: table() is not None, "the held table")
        before = (table(), links_state())
        refused = apply()
        _unchanged_after(refused, before, "cannot load nftables table inet nsgate: nft refused "
                         "it")
        assert "Operation not permitted" in refused.stderr
    finally:
        holder.kill()
        holder.wait()
    wait_for(lambda: table() is None, "the held table gone with its owner")
