"""Real clients drive nsgate's helpers: util-linux `unshare` and LXC's `lxc-usernsexec`.

Both find `newuidmap`/`newgidmap` by a PATH search (clients.md §1, §2.4, §2.5), so nsgate is put
first on PATH, ahead of Debian's shadow tools, exactly as an administrator would install it. Each
client runs as the unprivileged test user, and what the client's child prints from
/proc/self/{uid,gid}_map is the kernel's own record of the map.

Proving that nsgate (and not /usr/bin/newuidmap) did the work:
- the successful runs happen with the reference tools replaced by /usr/bin/false (a bind mount in
  the test's private mount namespace), so a fall-through to /usr/bin would fail the client;
- refusals carry nsgate's extra diagnostic lines, which shadow never prints;
- for subid lines shadow 4.13 honours and nsgate ignores (newuidmap.md §11 items 1 and 4) the
  same client succeeds with /usr/bin first on PATH and fails with nsgate first.
The same successful cases also run with /usr/bin first on PATH, and must print identical maps.
Every case runs through both transports: with nsgate first on PATH and the service transport, the
client runs under no_new_privs (the reference, never).
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import subprocess
from collections.abc import Iterator

import pytest

from tests.support import ALICE, NSGATE, SHADOW, run_as, transport_privs, write_etc

pytestmark = pytest.mark.usefixtures("transport")

SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
PATHS = {"nsgate": f"{NSGATE}:{SYSTEM_PATH}", "shadow": f"{SHADOW}:{SYSTEM_PATH}"}
SUBGID_DISTINCT = "nsgt-alice:400000:65536\nnsgt-bob:300000:65536\n"
SHOW_MAPS = ["cat", "/proc/self/uid_map", "/proc/self/gid_map"]
REFUSED_UID = b"newuidmap: uid range [0-10) -> [400000-400010) not allowed"
REFUSED_GID = b"newgidmap: gid range [0-10) -> [500000-500010) not allowed"


def client_env(impl: str) -> dict[str, str]:
    return {"PATH": PATHS[impl], "LC_ALL": "C", "HOME": "/"}


def run_client(impl: str, argv: list[str]) -> subprocess.CompletedProcess[bytes]:
    extra = transport_privs() if impl == "nsgate" else ()
    return run_as(ALICE, argv, env=client_env(impl), timeout=60, extra=extra)


def parse_maps(output: bytes) -> list[tuple[int, ...]]:
    return [tuple(int(x) for x in line.split()) for line in output.decode().splitlines()]


@contextlib.contextmanager
def reference_tools_disabled() -> Iterator[None]:
    """/usr/bin/new[ug]idmap replaced by /usr/bin/false, in this mount namespace only."""
    mounted: list[str] = []
    try:
        for name in ("newuidmap", "newgidmap"):
            path = str(SHADOW / name)
            subprocess.run(["mount", "--bind", "/usr/bin/false", path], check=True)
            mounted.append(path)
            assert not os.stat(path).st_mode & stat.S_ISUID
        assert subprocess.run([str(SHADOW / "newuidmap"), "1", "0", "0", "1"],
                              capture_output=True).returncode == 1
        yield
    finally:
        for path in reversed(mounted):
            subprocess.run(["umount", path], check=True)
    assert os.stat(SHADOW / "newuidmap").st_mode & stat.S_ISUID


def run_both(argv: list[str]) -> dict[str, subprocess.CompletedProcess[bytes]]:
    """The client with nsgate first on PATH (reference disabled), then with /usr/bin first."""
    with reference_tools_disabled():
        nsgate = run_client("nsgate", argv)
    return {"nsgate": nsgate, "shadow": run_client("shadow", argv)}


def assert_succeeded(results: dict[str, subprocess.CompletedProcess[bytes]]) -> None:
    for impl, result in results.items():
        assert result.returncode == 0, (impl, result.stderr)
        assert result.stderr == b"", (impl, result.stderr)


# --- util-linux unshare (2.38: --map-users/--map-groups take outer,inner,count) -------------------

def test_unshare_version_is_238() -> None:
    """The argument order used below is 2.38's (clients.md §2.4); 2.39 changed it."""
    out = subprocess.run(["unshare", "--version"], capture_output=True, check=True).stdout
    assert re.search(rb"util-linux 2\.38(\.\d+)?$", out.strip()), out


def test_unshare_map_auto_uses_nsgate() -> None:
    write_etc("subgid", SUBGID_DISTINCT)  # different ranges tell the two maps apart
    results = run_both(["unshare", "--user", "--map-auto", *SHOW_MAPS])
    assert_succeeded(results)
    assert parse_maps(results["nsgate"].stdout) == [(0, 200000, 65536), (0, 400000, 65536)]
    assert results["nsgate"].stdout == results["shadow"].stdout


def test_unshare_map_users_and_groups_uses_nsgate() -> None:
    results = run_both(["unshare", "--user", "--map-users=200000,0,65536",
                        "--map-groups=200000,0,65536", *SHOW_MAPS, "/proc/self/setgroups"])
    assert_succeeded(results)
    lines = results["nsgate"].stdout.decode().splitlines()
    assert parse_maps("\n".join(lines[:2]).encode()) == [(0, 200000, 65536), (0, 200000, 65536)]
    assert lines[2:] == ["allow"]  # not a self-map only: setgroups is left alone
    assert results["nsgate"].stdout == results["shadow"].stdout


def test_unshare_partial_range_uses_nsgate() -> None:
    """A sub-range in the middle of the grant, and only a uid map (the gid map stays empty)."""
    results = run_both(["unshare", "--user", "--map-users=210000,1000,500", *SHOW_MAPS])
    assert_succeeded(results)
    assert parse_maps(results["nsgate"].stdout) == [(1000, 210000, 500)]
    assert results["nsgate"].stdout == results["shadow"].stdout


def test_unshare_refusal_passes_nsgate_message_through() -> None:
    with reference_tools_disabled():
        result = run_client("nsgate", ["unshare", "--user", "--map-users=400000,0,10",
                                       *SHOW_MAPS])
    assert result.returncode != 0
    assert result.stdout == b""  # cat never ran
    lines = result.stderr.splitlines()
    assert lines[0] == REFUSED_UID
    # nsgate's explanation (newuidmap.md §11 item 11); shadow prints only the first line
    assert lines[1:] == [
        b"newuidmap: nsgt-alice (uid 23001) owns in /etc/subuid: 200000-265535 (line 1)",
        b"newuidmap: not covered: 400000-400009",
    ]
    reference = run_client("shadow", ["unshare", "--user", "--map-users=400000,0,10",
                                      *SHOW_MAPS])
    assert reference.returncode != 0
    assert reference.stderr.splitlines() == [REFUSED_UID]


def test_unshare_refused_gid_map_passes_nsgate_message_through() -> None:
    """The uid map is fine, the gid map is not: unshare must still fail, with newgidmap's text."""
    with reference_tools_disabled():
        result = run_client("nsgate", ["unshare", "--user", "--map-users=200000,0,65536",
                                       "--map-groups=500000,0,10", *SHOW_MAPS])
    assert result.returncode != 0
    assert result.stdout == b""
    lines = result.stderr.splitlines()
    assert lines[0] == REFUSED_GID
    assert b"newgidmap: nsgt-alice (uid 23001) owns in /etc/subgid: 200000-265535 (line 1)" \
        in lines


@pytest.mark.parametrize(("subuid", "mapping", "why"), [
    ("nsgt-alice:+200000:65536\n", (200000, 0, 65536),
     "start and count must be canonical decimal numbers below 4294967296"),
    ("nsgt-alice:0:0\n", (700000, 0, 10), "count 0 grants nothing"),
], ids=["non-canonical-start", "count-zero"])
def test_unshare_where_nsgate_and_shadow_differ(subuid: str, mapping: tuple[int, int, int],
                                                why: str) -> None:
    """Lines shadow 4.13 honours and nsgate ignores (newuidmap.md §11 items 1 and 4): the very
    same client command succeeds with /usr/bin first on PATH, and fails with nsgate first."""
    write_etc("subuid", subuid)
    outer, inner, count = mapping
    argv = ["unshare", "--user", f"--map-users={outer},{inner},{count}", *SHOW_MAPS]

    reference = run_client("shadow", argv)
    assert reference.returncode == 0, reference.stderr  # documents shadow 4.13's leniency
    assert parse_maps(reference.stdout) == [(inner, outer, count)]

    result = run_client("nsgate", argv)  # the reference stays installed: PATH order decides
    assert result.returncode != 0
    assert result.stdout == b""
    lines = result.stderr.splitlines()
    assert lines[0] == (f"newuidmap: uid range [{inner}-{inner + count}) -> "
                        f"[{outer}-{outer + count}) not allowed").encode()
    assert f"newuidmap: line 1 of /etc/subuid is ignored: {why}".encode() in lines


# --- LXC: lxc-usernsexec (lxc_map_ids runs the tools through /bin/sh -c) ------------------------

LXC_SHOW = ["sh", "-c", "cat /proc/self/uid_map /proc/self/gid_map /proc/self/setgroups; id"]
LXC_ID = b"uid=0(root) gid=0(root) groups=0(root)"


def lxc(*args: str) -> list[str]:
    return ["lxc-usernsexec", *args, "--", *LXC_SHOW]


def check_lxc_output(output: bytes, uid_map: tuple[int, ...], gid_map: tuple[int, ...]) -> None:
    lines = output.splitlines()
    assert parse_maps(b"\n".join(lines[:2])) == [uid_map, gid_map], output
    assert lines[2:] == [b"allow", LXC_ID], output


def test_lxc_sees_nsgate_as_privileged() -> None:
    """LXC uses the tools only if the first ones on PATH are setuid root or carry file
    capabilities (clients.md §2.5); otherwise it writes the maps itself, which an unprivileged
    user cannot do for these ranges: the LXC tests below succeed only through a privileged tool."""
    for name, cap in (("newuidmap", "cap_setuid"), ("newgidmap", "cap_setgid")):
        path = NSGATE / name
        st = os.stat(path)
        caps = subprocess.run(["getcap", str(path)], capture_output=True).stdout.decode()
        assert (st.st_uid == 0 and st.st_mode & stat.S_ISUID) or (
            cap in caps and "ep" in caps), (name, oct(st.st_mode), caps)
        found = subprocess.run(["sh", "-c", f"command -v {name}"], capture_output=True,
                               env=client_env("nsgate"), check=True).stdout.strip()
        assert found == str(path).encode()


def test_lxc_usernsexec_explicit_map_uses_nsgate() -> None:
    results = run_both(lxc("-m", "b:0:200000:65536"))
    assert_succeeded(results)
    check_lxc_output(results["nsgate"].stdout, (0, 200000, 65536), (0, 200000, 65536))
    assert results["nsgate"].stdout == results["shadow"].stdout


def test_lxc_usernsexec_separate_maps_use_nsgate() -> None:
    results = run_both(lxc("-m", "u:0:200000:65536", "-m", "g:0:210000:1000"))
    assert_succeeded(results)
    check_lxc_output(results["nsgate"].stdout, (0, 200000, 65536), (0, 210000, 1000))
    assert results["nsgate"].stdout == results["shadow"].stdout


def test_lxc_usernsexec_default_map_uses_nsgate() -> None:
    """Without -m, LXC builds the map from the first matching lines of /etc/subuid and /etc/subgid
    itself, then asks the tools to write it."""
    write_etc("subgid", SUBGID_DISTINCT)
    results = run_both(lxc())
    assert_succeeded(results)
    check_lxc_output(results["nsgate"].stdout, (0, 200000, 65536), (0, 400000, 65536))
    assert results["nsgate"].stdout == results["shadow"].stdout


def test_lxc_refusal_shows_nsgate_message() -> None:
    with reference_tools_disabled():
        result = run_client("nsgate", ["lxc-usernsexec", "-m", "b:0:400000:10", "--", "true"])
    assert result.returncode != 0
    output = result.stdout + result.stderr
    # LXC embeds the helper's whole output (stdout and stderr share one pipe) in its log line
    match = re.search(rb'newuidmap failed to write mapping "(.*?)": newuidmap (\d+) 0 400000 10\n',
                      output, re.DOTALL)
    assert match, output
    assert match.group(1).split(b"\n") == [
        REFUSED_UID,
        b"newuidmap: nsgt-alice (uid 23001) owns in /etc/subuid: 200000-265535 (line 1)",
        b"newuidmap: not covered: 400000-400009",
    ]
    reference = run_client("shadow", ["lxc-usernsexec", "-m", "b:0:400000:10", "--", "true"])
    assert reference.returncode != 0
    assert re.search(rb'newuidmap failed to write mapping "' + re.escape(REFUSED_UID)
                     + rb'": newuidmap \d+ 0 400000 10\n', reference.stdout + reference.stderr)


def test_lxc_where_nsgate_and_shadow_differ() -> None:
    """A non-canonical subuid line: shadow 4.13 honours it, nsgate ignores it and says so."""
    write_etc("subuid", "nsgt-alice:+200000:65536\n")
    argv = lxc("-m", "u:0:200000:65536", "-m", "g:0:200000:65536")
    reference = run_client("shadow", argv)
    assert reference.returncode == 0, reference.stderr
    check_lxc_output(reference.stdout, (0, 200000, 65536), (0, 200000, 65536))

    result = run_client("nsgate", argv)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert b'newuidmap failed to write mapping "newuidmap: uid range [0-65536) -> ' \
           b'[200000-265536) not allowed\n' in output, output
    assert b"newuidmap: line 1 of /etc/subuid is ignored: start and count must be canonical " \
           b"decimal numbers" in output, output
