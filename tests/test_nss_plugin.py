"""The NSS `subid:` source (newuidmap.md §6.3, §9, §11 item 13; security-cases A11, A12).

A libsubid plugin written here in C is compiled at test time into a root-owned directory of the
test tmpfs, and put on the system library path only inside the test's mount namespace: a
read-only overlay of <plugin dir> over the multiarch library directory. /etc/nsswitch.conf (in
the test overlay of /etc) then names it. nsgate must consult the plugin instead of the files,
and fail closed (where shadow falls back to the files) when the module cannot be used.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import subprocess
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import ALICE, BOB, SANDBOX, helper, run_as, wait_for, write_etc

pytestmark = pytest.mark.usefixtures("transport")

PLUGIN_C = r"""
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

/* shadow's libsubid/subid.h */
enum subid_type { ID_TYPE_UID = 1, ID_TYPE_GID = 2 };
enum subid_status { SUBID_STATUS_SUCCESS = 0, SUBID_STATUS_UNKNOWN_USER = 1,
                    SUBID_STATUS_ERROR_CONN = 2, SUBID_STATUS_ERROR = 3 };
struct subid_range { unsigned long start; unsigned long count; };

/* GRANTEE holds uids UID_START..+65535 and gids GID_START..+65535; nobody else holds anything.
 * By default nsgt-alice, 500000 and 600000. With FAIL_ALL every question fails as a module
 * whose directory is down does (SUBID_STATUS_ERROR_CONN). */
#ifndef GRANTEE
#define GRANTEE "nsgt-alice"
#define GRANTEE_UID 23001
#endif
#ifndef UID_START
#define UID_START 500000
#define GID_START 600000
#endif

static bool grant(const char *owner, enum subid_type type, struct subid_range *range)
{
    if (owner == NULL || strcmp(owner, GRANTEE) != 0)
        return false;
    range->count = 65536;
    switch (type) {
    case ID_TYPE_UID: range->start = UID_START; return true;
    case ID_TYPE_GID: range->start = GID_START; return true;
    }
    return false;
}

#ifndef OMIT_HAS_RANGE
enum subid_status shadow_subid_has_range(const char *owner, unsigned long start,
                                         unsigned long count, enum subid_type type, bool *result)
{
    struct subid_range range;

    *result = false;
#ifdef FAIL_ALL
    return SUBID_STATUS_ERROR_CONN;
#endif
    *result = grant(owner, type, &range) && start >= range.start && count <= range.count
              && start - range.start <= range.count - count;
    return SUBID_STATUS_SUCCESS;
}
#endif

#ifndef OMIT_LIST_OWNER_RANGES
enum subid_status shadow_subid_list_owner_ranges(const char *owner, enum subid_type type,
                                                 struct subid_range **ranges, int *count)
{
    struct subid_range range;

    *ranges = NULL;
    *count = 0;
#ifdef FAIL_ALL
    return SUBID_STATUS_ERROR_CONN;
#endif
    if (!grant(owner, type, &range))
        return SUBID_STATUS_UNKNOWN_USER;
    *ranges = malloc(sizeof **ranges);
    if (*ranges == NULL)
        return SUBID_STATUS_ERROR;
    **ranges = range;
    *count = 1;
    return SUBID_STATUS_SUCCESS;
}
#endif

enum subid_status shadow_subid_find_subid_owners(unsigned long id, enum subid_type type,
                                                 uid_t **uids, int *count)
{
    struct subid_range range;

    *uids = NULL;
    *count = 0;
    if (!grant(GRANTEE, type, &range) || id < range.start || id - range.start >= range.count)
        return SUBID_STATUS_SUCCESS;
    *uids = malloc(sizeof **uids);
    if (*uids == NULL)
        return SUBID_STATUS_ERROR;
    **uids = GRANTEE_UID;
    *count = 1;
    return SUBID_STATUS_SUCCESS;
}

void shadow_subid_free(void *ptr)
{
    free(ptr);
}
"""

MODULES = {  # module name -> extra compiler flags
    "nsgtest": [],
    "nsgnohas": ["-DOMIT_HAS_RANGE"],
    "nsgnolist": ["-DOMIT_LIST_OWNER_RANGES"],
    # for several sources (test_nss_sources.py): a directory that knows only nsgt-carol, and
    # one that is down
    "nsgtdir": ['-DGRANTEE="nsgt-carol"', "-DGRANTEE_UID=23003", "-DUID_START=700000",
                "-DGID_START=800000"],
    "nsgtfail": ["-DFAIL_ALL"],
}
UID_RANGE = (500000, 65536)
GID_RANGE = (600000, 65536)
FILES_RANGE = (200000, 65536)  # alice's range in the default /etc/subuid and /etc/subgid

MS_RDONLY = 1
MNT_DETACH = 2
_libc = ctypes.CDLL(None, use_errno=True)


def multiarch_libdir() -> Path:
    triplet = subprocess.run(["gcc", "-print-multiarch"], capture_output=True, text=True,
                             check=True).stdout.strip() or sysconfig.get_config_var("MULTIARCH")
    assert triplet, "no multiarch triplet"
    libdir = Path("/usr/lib") / triplet
    assert (libdir / "libc.so.6").exists(), libdir
    return libdir


LIBDIR = multiarch_libdir()


def _mount(source: str, target: str, fstype: str, flags: int, data: str) -> None:
    if _libc.mount(source.encode(), target.encode(), fstype.encode(), flags, data.encode()) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {fstype} on {target}: {os.strerror(err)}")


def _umount(target: str) -> None:
    # umount2() from this process: an umount(8) child would itself load its libraries through
    # the overlay and keep it busy. EBUSY is waited out: an exiting worker of nsgated has
    # dropped its mappings (nothing left in /proc/PID/maps) a moment before the kernel drops
    # its references to the mapped files.
    outcome: list[int] = []  # 0, or the errno that is not EBUSY

    def settled() -> bool:
        if _libc.umount2(target.encode(), 0) == 0:
            outcome.append(0)
        elif ctypes.get_errno() != errno.EBUSY:
            outcome.append(ctypes.get_errno())
        return bool(outcome)

    try:
        wait_for(settled, f"the overlay on {target} to be no longer busy")
    finally:
        if outcome != [0]:
            _libc.umount2(target.encode(), MNT_DETACH)  # do not leave it behind in any case
    if outcome != [0]:
        raise OSError(outcome[0], f"umount {target}: {os.strerror(outcome[0])} (detached "
                      "lazily instead)")


def _mapping_from(path: Path) -> list[int]:
    """The processes that map a file of the file system mounted at `path`."""
    st = os.stat(path)
    device = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}"
    found = []
    for maps in Path("/proc").glob("[0-9]*/maps"):
        try:
            lines = maps.read_text().splitlines()
        except OSError:  # gone meanwhile
            continue
        if any(len(fields) > 5 and fields[3] == device for fields in map(str.split, lines)):
            found.append(int(maps.parent.name))
    return found


def is_overlay_mountpoint(path: Path) -> bool:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        sep = fields.index("-")
        if fields[4] == str(path) and fields[sep + 1] == "overlay":
            return True
    return False


@pytest.fixture(scope="module")
def plugin_dir() -> Iterator[Path]:
    """Root-owned 0755 directory holding only the compiled plugins."""
    src_dir, lib_dir = SANDBOX / "nss-plugin-src", SANDBOX / "nss-plugin-lib"
    for path in (src_dir, lib_dir):
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(mode=0o755)
        os.chmod(path, 0o755)
    source = src_dir / "plugin.c"
    source.write_text(PLUGIN_C)
    for name, flags in MODULES.items():
        out = lib_dir / f"libsubid_{name}.so"
        subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-Werror",
                        *flags, "-o", str(out), str(source)], check=True)
        os.chmod(out, 0o755)
        st = os.stat(out)
        assert st.st_uid == 0 and not st.st_mode & 0o022
    yield lib_dir
    shutil.rmtree(src_dir)
    shutil.rmtree(lib_dir)


def defined_symbols(path: Path) -> set[str]:
    out = subprocess.run(["nm", "-D", "--defined-only", str(path)], capture_output=True,
                         text=True, check=True).stdout
    return {line.split()[-1] for line in out.splitlines() if line.strip()}


@pytest.fixture
def plugins_on_libpath(plugin_dir: Path) -> Iterator[Path]:
    """The plugins visible as <multiarch libdir>/libsubid_*.so, in this mount namespace only."""
    assert not (LIBDIR / "libsubid_nsgtest.so").exists()
    _mount("nsgate-test-lib", str(LIBDIR), "overlay", MS_RDONLY,
           f"lowerdir={plugin_dir}:{LIBDIR}")
    try:
        assert is_overlay_mountpoint(LIBDIR)
        for name in MODULES:
            assert (LIBDIR / f"libsubid_{name}.so").is_file()
        assert (LIBDIR / "libc.so.6").is_file()
        yield LIBDIR
        # a worker of nsgated that loaded a plugin may still be on its way out
        wait_for(lambda: not _mapping_from(LIBDIR), "no process to map the overlay's files")
    finally:
        _umount(str(LIBDIR))
    assert not is_overlay_mountpoint(LIBDIR)
    assert not (LIBDIR / "libsubid_nsgtest.so").exists()


@pytest.fixture
def nss_targets(plugins_on_libpath, targets):
    """`targets`, set up after (and so stopped before) the overlay: no target process may keep
    libraries mapped from the overlay when it is unmounted."""
    return targets


def use_subid_source(name: str) -> None:
    """/etc/nsswitch.conf as it is, with one `subid:` line naming `name`."""
    lines = Path("/etc/nsswitch.conf").read_text().splitlines()
    kept = [line for line in lines if not line.lower().startswith("subid:")]
    write_etc("nsswitch.conf", "\n".join([*kept, f"subid:          {name}"]) + "\n")
    assert Path("/etc/nsswitch.conf").read_text().count("subid:") == 1


def map_cmd(prog: str, pid: int, *ids: int, impl: str = "nsgate") -> list[str]:
    return [helper(prog, impl), str(pid), *(str(i) for i in ids)]


# --- a working plugin -----------------------------------------------------------------------------

def test_plugin_exports_the_shadow_interface(plugin_dir: Path) -> None:
    """The plugin variants differ only in the symbol each leaves out."""
    full = {"shadow_subid_has_range", "shadow_subid_list_owner_ranges",
            "shadow_subid_find_subid_owners", "shadow_subid_free"}
    assert full <= defined_symbols(plugin_dir / "libsubid_nsgtest.so")
    assert full - defined_symbols(plugin_dir / "libsubid_nsgnohas.so") == {
        "shadow_subid_has_range"}
    assert full - defined_symbols(plugin_dir / "libsubid_nsgnolist.so") == {
        "shadow_subid_list_owner_ranges"}


def test_newuidmap_uses_plugin_range(nss_targets) -> None:
    use_subid_source("nsgtest")
    target = nss_targets(ALICE)
    result = run_as(ALICE, map_cmd("newuidmap", target.pid, 0, ALICE.uid, 1, 1, *UID_RANGE))
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"" and result.stderr == b""
    assert target.uid_map() == [(0, ALICE.uid, 1), (1, *UID_RANGE)]
    # The plugin is a valid shadow plugin: the reference honours it in the same way.
    reference_target = nss_targets(ALICE)
    reference = run_as(ALICE, map_cmd("newuidmap", reference_target.pid, 0, ALICE.uid, 1,
                                      1, *UID_RANGE, impl="shadow"))
    assert reference.returncode == 0, reference.stderr
    assert reference_target.uid_map() == target.uid_map()


def test_newgidmap_uses_plugin_range(nss_targets) -> None:
    use_subid_source("nsgtest")
    target = nss_targets(ALICE)
    result = run_as(ALICE, map_cmd("newgidmap", target.pid, 0, ALICE.gid, 1, 1, *GID_RANGE))
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"" and result.stderr == b""
    assert target.gid_map() == [(0, ALICE.gid, 1), (1, *GID_RANGE)]
    assert target.setgroups() == "allow"
    reference_target = nss_targets(ALICE)
    reference = run_as(ALICE, map_cmd("newgidmap", reference_target.pid, 0, ALICE.gid, 1,
                                      1, *GID_RANGE, impl="shadow"))
    assert reference.returncode == 0, reference.stderr
    assert reference_target.gid_map() == target.gid_map()


def test_plugin_sub_range_is_allowed(nss_targets) -> None:
    use_subid_source("nsgtest")
    target = nss_targets(ALICE)
    result = run_as(ALICE, map_cmd("newuidmap", target.pid, 0, 510000, 100, 100, 565000, 536))
    assert result.returncode == 0, result.stderr
    assert target.uid_map() == [(0, 510000, 100), (100, 565000, 536)]


def test_plugin_does_not_need_the_files(nss_targets) -> None:
    """With a module active the files are not opened at all (newuidmap.md §6.3): their absence
    is no error."""
    use_subid_source("nsgtest")
    Path("/etc/subuid").unlink()
    Path("/etc/subgid").unlink()
    target = nss_targets(ALICE)
    for prog, own, (start, count) in (("newuidmap", ALICE.uid, UID_RANGE),
                                      ("newgidmap", ALICE.gid, GID_RANGE)):
        result = run_as(ALICE, map_cmd(prog, target.pid, 0, own, 1, 1, start, count))
        assert result.returncode == 0, result.stderr
    assert target.uid_map() == [(0, ALICE.uid, 1), (1, *UID_RANGE)]
    assert target.gid_map() == [(0, ALICE.gid, 1), (1, *GID_RANGE)]
    listing = run_as(ALICE, [helper("getsubids"), "nsgt-alice"])
    assert listing.returncode == 0 and listing.stdout == b"0: nsgt-alice 500000 65536\n"


@pytest.mark.parametrize(("prog", "lower", "count"), [
    ("newuidmap", *FILES_RANGE),       # only in /etc/subuid: with a module, the files are unused
    ("newgidmap", *FILES_RANGE),       # only in /etc/subgid
    ("newuidmap", UID_RANGE[0], UID_RANGE[1] + 1),  # one past the plugin's range
    ("newuidmap", UID_RANGE[0] - 1, 2),             # one before it
    ("newuidmap", *GID_RANGE),         # the plugin's gid range is not a uid range
    ("newgidmap", *UID_RANGE),         # and the other way round
], ids=["uid-files-range", "gid-files-range", "uid-one-past", "uid-one-before",
        "uid-asks-gid-range", "gid-asks-uid-range"])
def test_plugin_refuses_outside_its_range(nss_targets, prog: str, lower: int,
                                          count: int) -> None:
    use_subid_source("nsgtest")
    target = nss_targets(ALICE)
    kind = prog[3:6]
    result = run_as(ALICE, map_cmd(prog, target.pid, 0, lower, count))
    assert result.returncode == 1
    assert result.stdout == b""
    lines = result.stderr.decode().splitlines()
    assert lines[0] == (f"{prog}: {kind} range [0-{count}) -> [{lower}-{lower + count}) "
                        "not allowed")
    assert any("libsubid_nsgtest.so" in line for line in lines[1:]), lines
    assert (target.uid_map() if kind == "uid" else target.gid_map()) == []
    assert target.setgroups() == "allow"
    reference = run_as(ALICE, map_cmd(prog, nss_targets(ALICE).pid, 0, lower, count,
                                      impl="shadow"))
    assert reference.returncode == 1  # the reference reads the plugin the same way


def test_getsubids_lists_plugin_ranges(plugins_on_libpath) -> None:
    use_subid_source("nsgtest")
    for args, (start, count) in ((["nsgt-alice"], UID_RANGE), (["-g", "nsgt-alice"], GID_RANGE)):
        result = run_as(ALICE, [helper("getsubids"), *args])
        assert result.returncode == 0, result.stderr
        assert result.stdout == f"0: nsgt-alice {start} {count}\n".encode()
        assert result.stderr == b""
        reference = run_as(ALICE, [helper("getsubids", "shadow"), *args])
        assert reference.returncode == 0 and reference.stdout == result.stdout


@pytest.mark.parametrize("args", [["nsgt-bob"], ["-g", "nsgt-bob"]], ids=["uid", "gid"])
def test_getsubids_does_not_list_files_ranges_under_plugin(plugins_on_libpath,
                                                           args: list[str]) -> None:
    """bob has a range in the files, none in the plugin: with the module active he has none
    (A12: what getsubids lists is what the map helpers honour)."""
    use_subid_source("nsgtest")
    result = run_as(BOB, [helper("getsubids"), *args])
    assert result.returncode == 1
    assert result.stdout == b""
    assert result.stderr == b"Error fetching ranges\n"


def test_bob_cannot_use_his_files_range_under_plugin(nss_targets) -> None:
    use_subid_source("nsgtest")
    target = nss_targets(BOB)
    result = run_as(BOB, map_cmd("newuidmap", target.pid, 0, BOB.uid, 1, 1, 300000, 65536))
    assert result.returncode == 1
    assert result.stderr.splitlines()[0] == (
        b"newuidmap: uid range [1-65537) -> [300000-365536) not allowed")
    assert target.uid_map() == []


# --- modules that cannot be used: nsgate fails closed, shadow falls back to the files -----------

def test_missing_module_fails_closed(nss_targets) -> None:
    use_subid_source("nosuchmodule")
    request = (0, ALICE.uid, 1, 1, *FILES_RANGE)  # allowed by the files
    target = nss_targets(ALICE)
    result = run_as(ALICE, map_cmd("newuidmap", target.pid, *request))
    assert result.returncode == 1
    assert result.stdout == b""
    assert b"libsubid_nosuchmodule.so" in result.stderr.splitlines()[0], result.stderr
    assert all(line.startswith(b"newuidmap: ") for line in result.stderr.splitlines())
    assert target.uid_map() == []

    # The deliberate difference (newuidmap.md §11 item 13): shadow prints a message and then
    # uses the files, so the same request succeeds there.
    reference_target = nss_targets(ALICE)
    reference = run_as(ALICE, map_cmd("newuidmap", reference_target.pid, *request,
                                      impl="shadow"))
    assert reference.returncode == 0, reference.stderr
    assert b"libsubid_nosuchmodule.so" in reference.stderr
    assert reference_target.uid_map() == [(0, ALICE.uid, 1), (1, *FILES_RANGE)]


def test_missing_module_newgidmap_fails_closed_before_setgroups(nss_targets) -> None:
    use_subid_source("nosuchmodule")
    target = nss_targets(ALICE)
    result = run_as(ALICE, map_cmd("newgidmap", target.pid, 0, ALICE.gid, 1))  # self-map only
    assert result.returncode == 1
    assert b"libsubid_nosuchmodule.so" in result.stderr
    assert target.gid_map() == []
    assert target.setgroups() == "allow"  # no side effect at all


def test_missing_module_getsubids_fails_closed(plugins_on_libpath) -> None:
    use_subid_source("nosuchmodule")
    result = run_as(ALICE, [helper("getsubids"), "nsgt-alice"])
    assert result.returncode == 1
    assert result.stdout == b""
    assert b"libsubid_nosuchmodule.so" in result.stderr
    reference = run_as(ALICE, [helper("getsubids", "shadow"), "nsgt-alice"])
    assert reference.returncode == 0  # shadow falls back to the files
    assert reference.stdout == b"0: nsgt-alice 200000 65536\n"


@pytest.mark.parametrize("module", ["nsgnohas", "nsgnolist"])
def test_module_missing_symbol_fails_closed(nss_targets, module: str) -> None:
    use_subid_source(module)
    target = nss_targets(ALICE)
    for request in ((0, ALICE.uid, 1, 1, *FILES_RANGE), (0, ALICE.uid, 1, 1, *UID_RANGE)):
        result = run_as(ALICE, map_cmd("newuidmap", target.pid, *request))
        assert result.returncode == 1, request
        assert f"libsubid_{module}.so".encode() in result.stderr, result.stderr
        assert b"shadow_subid_" in result.stderr  # says what is missing
        assert all(line.startswith(b"newuidmap: ") for line in result.stderr.splitlines())
        assert target.uid_map() == []
    listing = run_as(ALICE, [helper("getsubids"), "nsgt-alice"])
    assert listing.returncode == 1 and listing.stdout == b""
    assert f"libsubid_{module}.so".encode() in listing.stderr
    # shadow reports the missing symbol and then uses the files
    reference_target = nss_targets(ALICE)
    reference = run_as(ALICE, map_cmd("newuidmap", reference_target.pid, 0, ALICE.uid, 1, 1,
                                      *FILES_RANGE, impl="shadow"))
    assert reference.returncode == 0, reference.stderr
    assert f"libsubid_{module}.so did not provide".encode() in reference.stderr
    assert reference_target.uid_map() == [(0, ALICE.uid, 1), (1, *FILES_RANGE)]


@pytest.mark.parametrize("module", ["../evil", "nsgtest/../nsgtest", "nsg.test"])
def test_invalid_module_name_fails_closed(nss_targets, module: str) -> None:
    """A name that is not a plain library name is never turned into a dlopen path."""
    use_subid_source(module)
    target = nss_targets(ALICE)
    result = run_as(ALICE, map_cmd("newuidmap", target.pid, 0, ALICE.uid, 1, 1, *FILES_RANGE))
    assert result.returncode == 1
    assert result.stdout == b""
    first = result.stderr.splitlines()[0]
    assert first.startswith(b"newuidmap: invalid subid source"), result.stderr
    assert module.encode() in first
    assert target.uid_map() == []
    listing = run_as(ALICE, [helper("getsubids"), "nsgt-alice"])
    assert listing.returncode == 1 and listing.stdout == b""
    assert listing.stderr.startswith(b"getsubids: invalid subid source")
    # shadow pastes the name into a dlopen() argument (a relative path here), fails, and then
    # uses the files
    reference_target = nss_targets(ALICE)
    reference = run_as(ALICE, map_cmd("newuidmap", reference_target.pid, 0, ALICE.uid, 1, 1,
                                      *FILES_RANGE, impl="shadow"))
    assert reference.returncode == 0, reference.stderr
    assert f"Error opening libsubid_{module}.so".encode() in reference.stderr
    assert reference_target.uid_map() == [(0, ALICE.uid, 1), (1, *FILES_RANGE)]


def test_files_keyword_means_files(nss_targets) -> None:
    """Control: with `subid: files` the plugin is not consulted and the files grant again."""
    use_subid_source("files")
    allowed, refused = nss_targets(ALICE), nss_targets(ALICE)
    result = run_as(ALICE, map_cmd("newuidmap", allowed.pid, 0, ALICE.uid, 1, 1, *FILES_RANGE))
    assert result.returncode == 0, result.stderr
    assert allowed.uid_map() == [(0, ALICE.uid, 1), (1, *FILES_RANGE)]
    result = run_as(ALICE, map_cmd("newuidmap", refused.pid, 0, ALICE.uid, 1, 1, *UID_RANGE))
    assert result.returncode == 1
    assert refused.uid_map() == []
