"""The install: layout and modes, file-capabilities mode, and the Python side's refusal to run
code that anyone but root could have changed."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from tests.support import ALICE, PREFIX, SANDBOX, Target, helper, run_as, write_etc

REPO = Path(__file__).resolve().parents[1]


def make_install(prefix: Path, *extra: str, destdir: Path | None = None) -> None:
    args = ["make", "-s", "-C", str(REPO), "install", f"PREFIX={prefix}", *extra]
    if destdir is not None:
        args.append(f"DESTDIR={destdir}")
    result = subprocess.run(args, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module", autouse=True)
def reinstall_default_prefix():
    """These tests build launchers for other prefixes; leave the build as `make test` made it."""
    yield
    make_install(PREFIX)


@pytest.fixture(scope="module")
def caps_prefix() -> Path:
    prefix = SANDBOX / "caps"
    make_install(prefix, "CAPS=1")
    return prefix


def test_installed_layout_and_modes():
    destdir = SANDBOX / "destdir"
    make_install(Path("/usr/local"), destdir=destdir)
    libexec = destdir / "usr/local/libexec/nsgate"
    for name, mode in (("newuidmap", 0o4755), ("newgidmap", 0o4755), ("getsubids", 0o755),
                       ("lxc-user-nic", 0o4755)):
        st = (libexec / name).stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 0, mode), name
    libdir = destdir / "usr/local/lib/nsgate"
    for path in [libdir, *libdir.rglob("*")]:
        st = path.lstat()
        assert st.st_uid == 0 and not st.st_mode & 0o022, path
    assert list((libdir / "nsgate/cli/__pycache__").glob("newidmap.cpython-*.pyc"))
    assert list(libdir.glob("_nsgate_sys*.so")) and list(libdir.glob("_cffi_backend*.so"))


def test_caps_install_has_file_capabilities_and_no_setuid(caps_prefix):
    for name, cap in (("newuidmap", "cap_setuid=ep"), ("newgidmap", "cap_setgid=ep")):
        path = caps_prefix / "libexec/nsgate" / name
        assert not path.stat().st_mode & stat.S_ISUID
        assert subprocess.run(["getcap", str(path)], capture_output=True,
                              text=True).stdout.split()[-1] == cap


def test_caps_install_maps_ranges(caps_prefix, target):
    tool = str(caps_prefix / "libexec/nsgate/newuidmap")
    result = run_as(ALICE, [tool, str(target.pid), "0", "23001", "1", "1", "200000", "65536"])
    assert result.returncode == 0, result.stderr
    assert target.uid_map() == [(0, 23001, 1), (1, 200000, 65536)]


def test_caps_install_gid_map_and_setgroups(caps_prefix, target):
    tool = str(caps_prefix / "libexec/nsgate/newgidmap")
    assert run_as(ALICE, [tool, str(target.pid), "0", "23001", "1"]).returncode == 0
    assert target.setgroups() == "deny" and target.gid_map() == [(0, 23001, 1)]


def test_caps_install_cannot_map_host_root_and_says_why(caps_prefix, targets):
    """As shadow's --with-fcaps build: no CAP_SETFCAP, so host uid 0 cannot be mapped; nsgate
    names the missing capability where the reference says only `Could not set caps`."""
    write_etc("subuid", "nsgt-alice:0:10\n")
    reference = SANDBOX / "newuidmap-shadow-fcaps"
    shutil.copyfile("/usr/bin/newuidmap", reference)
    os.chmod(reference, 0o755)
    subprocess.run(["setcap", "cap_setuid+ep", str(reference)], check=True)
    ours, theirs = targets(), targets()
    result = run_as(ALICE, [str(caps_prefix / "libexec/nsgate/newuidmap"), str(ours.pid),
                            "0", "0", "10"])
    assert result.returncode == 1
    assert result.stderr.startswith(b"newuidmap: Could not set caps: CAP_SETFCAP is needed to "
                                    b"map host uid 0")
    assert ours.uid_map() == []
    shadow = run_as(ALICE, [str(reference), str(theirs.pid), "0", "0", "10"])
    # Debian 12's build says `write to uid_map failed: Operation not permitted`, HEAD says
    # `Could not set caps`: neither names the capability.
    assert shadow.returncode == 1 and b"CAP_SETFCAP" not in shadow.stderr
    assert theirs.uid_map() == []


def test_setuid_install_maps_host_root_with_cap_setfcap(target):
    write_etc("subuid", "nsgt-alice:0:10\n")
    result = run_as(ALICE, [helper("newuidmap"), str(target.pid), "0", "0", "10"])
    assert result.returncode == 0, result.stderr
    assert target.uid_map() == [(0, 0, 10)]


@pytest.fixture(scope="module")
def tamper_prefix() -> Path:
    prefix = SANDBOX / "tamper"
    make_install(prefix)
    return prefix


@pytest.mark.parametrize("victim", ["lib/nsgate/nsgate/policy/subid.py",
                                    "lib/nsgate/nsgate/cli/__pycache__",
                                    "lib/nsgate/_nsgate_sys.cpython-311-x86_64-linux-gnu.so",
                                    "lib/nsgate", "lib"])
@pytest.mark.parametrize("how", ["world-writable", "group-writable", "user-owned"])
def test_code_anyone_else_could_change_is_refused(tamper_prefix, victim, how):
    path = tamper_prefix / victim
    before = path.stat()
    if how == "user-owned":
        os.chown(path, ALICE.uid, -1)
    else:
        os.chmod(path, before.st_mode | (0o002 if how == "world-writable" else 0o020))
    target = Target.start(ALICE)
    try:
        result = run_as(ALICE, [str(tamper_prefix / "libexec/nsgate/newuidmap"),
                                str(target.pid), "0", "200000", "10"])
        assert result.returncode == 1
        assert result.stderr.startswith(b"newuidmap: refusing to run: " + bytes(path))
        assert b"Traceback" not in result.stderr
        assert target.uid_map() == []
    finally:
        target.stop()
        os.chown(path, before.st_uid, before.st_gid)
        os.chmod(path, stat.S_IMODE(before.st_mode))


@pytest.mark.parametrize("victim", ["lib/nsgate/nsgate/policy/usernet.py",
                                    "lib/nsgate/_nsgate_sys.cpython-311-x86_64-linux-gnu.so"])
@pytest.mark.parametrize("prog", ["lxc-user-nic", "getsubids"])
def test_every_helper_refuses_code_anyone_else_could_change(tamper_prefix, victim, prog):
    """The same rule for lxc-user-nic and getsubids (checked at start-up by every helper, and
    again by `confine` before the first side effect)."""
    path = tamper_prefix / victim
    before = path.stat()
    os.chown(path, ALICE.uid, -1)
    try:
        args = (["create", "x", "x", "1", "veth", "br0"] if prog == "lxc-user-nic"
                else ["nsgt-alice"])
        result = run_as(ALICE, [str(tamper_prefix / "libexec/nsgate" / prog), *args])
        assert result.returncode == 1 and result.stdout == b""
        assert result.stderr.startswith(f"{prog}: refusing to run: {path} is owned by uid "
                                        f"{ALICE.uid}".encode()), result.stderr
    finally:
        os.chown(path, before.st_uid, before.st_gid)


def test_untampered_sandbox_install_works(tamper_prefix, target):
    result = run_as(ALICE, [str(tamper_prefix / "libexec/nsgate/newuidmap"), str(target.pid),
                            "0", "200000", "10"])
    assert result.returncode == 0, result.stderr
    assert target.uid_map() == [(0, 200000, 10)]


# --- a link in the library directory (the distribution packages' link to their cffi) ---------

BACKEND = "_cffi_backend.cpython-311-x86_64-linux-gnu.so"


@pytest.mark.parametrize("how", ["straight", "relative", "writable-target", "target-in-user-dir",
                                 "through-user-link", "to-a-directory", "dangling",
                                 "user-owned-link", "deeper-in-the-tree"])
def test_a_library_link_is_followed_only_to_a_file_only_root_controls(tamper_prefix, user_dir,
                                                                       how):
    """integrity._check_link: a root-owned link directly in the library directory is accepted
    when what it reaches, by its text alone, is a regular file that only root could change;
    anything another user could redirect or replace is refused before any of it is loaded."""
    libdir = tamper_prefix / "lib" / "nsgate"
    real = libdir / BACKEND
    store = SANDBOX / "link-store"
    shutil.rmtree(store, ignore_errors=True)
    store.mkdir(mode=0o755)
    kept = store / BACKEND
    shutil.move(real, kept)
    link = libdir / ("nsgate/policy/cffi_link.so" if how == "deeper-in-the-tree" else BACKEND)
    text: Path | str = kept
    if how == "relative":
        text = os.path.relpath(kept, libdir)
    elif how == "writable-target":
        kept.chmod(0o666)
    elif how == "target-in-user-dir":
        text = user_dir / BACKEND
        shutil.copy2(kept, text)
    elif how == "through-user-link":
        hop = user_dir / "hop"
        hop.symlink_to(kept)
        os.lchown(hop, ALICE.uid, ALICE.gid)
        text = hop
    elif how == "to-a-directory":
        text = store
    elif how == "dangling":
        text = store / "missing.so"
    if how == "deeper-in-the-tree":
        shutil.copy2(kept, real)
    link.symlink_to(text)
    if how == "user-owned-link":
        os.lchown(link, ALICE.uid, ALICE.gid)
    target = Target.start(ALICE)
    try:
        result = run_as(ALICE, [str(tamper_prefix / "libexec/nsgate/newuidmap"),
                                str(target.pid), "0", "200000", "10"])
        assert b"Traceback" not in result.stderr
        if how in ("straight", "relative"):
            assert result.returncode == 0, result.stderr
            assert target.uid_map() == [(0, 200000, 10)]
        else:
            assert result.returncode == 1
            assert result.stderr.startswith(b"newuidmap: refusing to run: "), result.stderr
            assert target.uid_map() == []
    finally:
        target.stop()
        link.unlink()
        real.unlink(missing_ok=True)
        kept.chmod(0o644)
        shutil.move(kept, real)
        shutil.rmtree(store)


IMPORT_CHECK = """
import sys
before = set(sys.modules)
sys.path.insert(0, {libdir!r})
import nsgate.cli.entry, nsgate.cli.getsubids, nsgate.cli.newidmap, nsgate.cli.usernic
from nsgate.system import confine, nicdb_store, ovs, ports, private_bridge
for name in sorted(set(sys.modules) - before):
    print(name, getattr(sys.modules[name], "__file__", None) or "-")
"""


def test_helpers_import_no_python_module_beyond_their_own():
    """Start-up cost is per container start: besides nsgate's own package, the helpers load only
    modules compiled into the interpreter or C extensions, never a pure-Python stdlib module
    (typing alone costs several ms: annotations that need it stay under TYPE_CHECKING)."""
    code = IMPORT_CHECK.format(libdir=str(PREFIX / "lib" / "nsgate"))
    result = subprocess.run(["/usr/bin/python3", "-I", "-S", "-c", code], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr
    loaded = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    assert "nsgate.cli.usernic" in loaded
    foreign = {name: path for name, path in loaded.items()
               if name != "nsgate" and not name.startswith("nsgate.")
               and path != "-" and not path.endswith(".so")}
    assert foreign == {}
