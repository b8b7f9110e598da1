"""`nsgate check`: one fixture per finding code, each a system with exactly that defect, checked
through the installed command (`--json` for the finding, the human line for `file:line`), a
clean system with no findings, and the exit codes."""

from __future__ import annotations

import os
import pty
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.admin_support import (
    NICS,
    NSGATE_BIN,
    USERNET,
    clean_nic_state,
    ip,
    links,
    nsgate,
    nsgate_json,
    write_nics,
)
from tests.support import ALICE, PREFIX, SANDBOX, write_etc

CLEAN_SUBID = "nsgt-alice:200000:65536\nnsgt-bob:300000:65536\n"


@pytest.fixture(autouse=True)
def clean_world():
    """No lxc-usernet, no nic database; afterwards every link a test made is deleted."""
    clean_nic_state()
    before = links()
    yield
    for name in links() - before:
        subprocess.run(["ip", "link", "del", name], capture_output=True)
    clean_nic_state()


def findings() -> tuple[int, list[dict]]:
    status, report = nsgate_json("check")
    assert report["errors"] == sum(f["severity"] == "error" for f in report["findings"])
    assert report["warnings"] == sum(f["severity"] == "warning" for f in report["findings"])
    return status, report["findings"]


def only_finding(file: str, line: int | None, severity: str, code: str) -> dict:
    """The system has exactly one finding, this one; its human line says file:line."""
    status, found = findings()
    assert [(f["file"], f["line"], f["severity"], f["code"]) for f in found] == [
        (file, line, severity, code)], found
    assert status == (1 if severity == "error" else 0)
    human = nsgate("check")
    where = file if line is None else f"{file}:{line}"
    assert f"{where}: {severity}: " in human.stdout and f"[{code}]" in human.stdout, human
    assert human.returncode == status
    return found[0]


# --- a clean system --------------------------------------------------------------------------


def test_clean_system_has_no_findings():
    status, found = findings()
    assert (status, found) == (0, [])
    result = nsgate("check")
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout == ("/run/nsgate/io.socket: info: nsgated does not listen: the setuid "
                             "helpers serve every request in-process, except for no_new_privs "
                             "callers; start it with systemctl enable --now nsgate.socket "
                             "[service]\nnsgate check: 0 errors, 0 warnings\n")


def test_clean_system_with_every_file():
    ip("link", "add", "nsgtbr0", "type", "bridge")
    ip("link", "add", "nsgtv0", "type", "veth", "peer", "name", "nsgtv0p")
    write_etc("subuid", "# comment\n\nnsgt-alice:200000:65536\n23002:300000:65536\n"
              "nsgt-alias:265536:1000\n")  # the alias and the uid are the same owners
    write_etc("lxc/lxc-usernet", "# who may make nics\nnsgt-alice veth nsgtbr0 2\n"
              "@nsgt-aux veth none 1\nnsgt-bob veth nsgate-private 1\n")
    write_nics(["nsgt-alice veth nsgtbr0 nsgtv0"])
    assert findings() == (0, [])


# --- syntax ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name, content, line", [
    ("subuid", "nsgt-alice:200000:65536\nnsgt-bob:300000\n", 2),
    ("subuid", "nsgt-alice:200000:65536\nnsgt-bob:0x493e0:65536\n", 2),
    ("subgid", "nsgt-alice:200000:65536\n\nnsgt-bob:300000:065536\n", 3),
    ("subuid", "nsgt-alice:200000:65536 \n", 1),
])
def test_syntax_in_subid_files(name, content, line):
    write_etc(name, content)
    found = only_finding(f"/etc/{name}", line, "error", "syntax")
    assert "does not parse" in found["message"] and "OWNER:START:COUNT" in found["message"]


@pytest.mark.parametrize("content, line", [
    ("nsgt-alice veth none 1\nnsgt-alice veth none\n", 2),
    ("# comment\n nsgt-alice veth none 1\n", 2),
])
def test_syntax_in_usernet(content, line):
    write_etc("lxc/lxc-usernet", content)
    only_finding(str(USERNET), line, "error", "syntax")


def test_syntax_in_the_nic_database():
    write_etc("lxc/lxc-usernet", "nsgt-alice veth none 1\n")
    write_nics(["this is not a nic line at all"])
    only_finding(str(NICS), 1, "error", "syntax")


# --- grants-nothing --------------------------------------------------------------------------


@pytest.mark.parametrize("name, line_text, why", [
    ("subuid", "nsgt-bob:300000:0", "count 0"),
    ("subuid", "nsgt-bob:4294967296:65536", "past the last id"),  # shadow: nothing either
    ("subuid", "nsgt-nosuchuser:300000:65536", "no user 'nsgt-nosuchuser'"),
    ("subgid", "nsgt-nosuchuser:300000:65536", "no user 'nsgt-nosuchuser'"),
])
def test_subid_lines_that_grant_nothing(name, line_text, why):
    write_etc(name, f"nsgt-alice:200000:65536\n{line_text}\n")
    found = only_finding(f"/etc/{name}", 2, "warning", "grants-nothing")
    assert why in found["message"]


@pytest.mark.parametrize("line_text, why", [
    ("nsgt-nosuchuser veth none 1", "no user 'nsgt-nosuchuser'"),
    ("@nsgt-nosuchgroup veth none 1", "no group 'nsgt-nosuchgroup'"),
    ("nsgt-alice veth none 0", "count 0"),
])
def test_usernet_lines_that_grant_nothing(line_text, why):
    write_etc("lxc/lxc-usernet", f"nsgt-bob veth none 1\n{line_text}\n")
    found = only_finding(str(USERNET), 2, "warning", "grants-nothing")
    assert why in found["message"]


# --- overlap and real ids --------------------------------------------------------------------


@pytest.mark.parametrize("name", ["subuid", "subgid"])
def test_overlap_between_owners(name):
    write_etc(name, "nsgt-alice:200000:65536\nnsgt-bob:265535:10\n")
    found = only_finding(f"/etc/{name}", 2, "error", "overlap")
    assert "nsgt-alice:200000:65536 (line 1)" in found["message"]


def test_a_name_and_its_uid_are_one_owner():
    write_etc("subuid", "nsgt-alice:200000:65536\n23001:210000:10\nnsgt-alias:220000:10\n")
    assert findings() == (0, [])
    write_etc("subuid", "nsgt-alice:200000:65536\n23002:210000:10\n")
    only_finding("/etc/subuid", 2, "error", "overlap")


@pytest.mark.parametrize("name, line_text, named", [
    ("subuid", "nsgt-carol:23000:2", "uid 23001 (nsgt-alice)"),
    ("subgid", "nsgt-carol:23010:1", "gid 23010 (nsgt-aux)"),
    ("subuid", "23099:23099:1", "uid 23099 (the owner's own)"),  # no passwd entry: own id only
])
def test_ranges_holding_real_ids(name, line_text, named):
    write_etc(name, f"nsgt-alice:200000:65536\n{line_text}\n")
    found = only_finding(f"/etc/{name}", 2, "error", "contains-real-id")
    assert named in found["message"]


# --- unsafe files ----------------------------------------------------------------------------


def test_group_writable_subuid():
    os.chmod("/etc/subuid", 0o664)
    found = only_finding("/etc/subuid", None, "error", "unsafe-file")
    assert "writable by group" in found["message"] and "chmod go-w" in found["message"]


def test_subgid_owned_by_a_user():
    os.chown("/etc/subgid", ALICE.uid, 0)
    found = only_finding("/etc/subgid", None, "error", "unsafe-file")
    assert f"owned by uid {ALICE.uid}" in found["message"]


def test_symlinked_subuid():
    Path("/etc/subuid.real").write_text(CLEAN_SUBID)
    Path("/etc/subuid").unlink()
    Path("/etc/subuid").symlink_to("/etc/subuid.real")
    try:
        found = only_finding("/etc/subuid", None, "error", "unsafe-file")
        assert "symbolic link" in found["message"]
    finally:
        Path("/etc/subuid.real").unlink()


def test_world_writable_directory_of_usernet():
    write_etc("lxc/lxc-usernet", "nsgt-alice veth none 1\n")
    os.chmod("/etc/lxc", 0o777)
    try:
        found = only_finding(str(USERNET), None, "error", "unsafe-file")
        assert "/etc/lxc" in found["message"]
    finally:
        os.chmod("/etc/lxc", 0o755)


def test_unsafe_login_defs():
    mode = os.stat("/etc/login.defs").st_mode & 0o7777
    os.chmod("/etc/login.defs", 0o666)
    try:
        only_finding("/etc/login.defs", None, "error", "unsafe-file")
    finally:
        os.chmod("/etc/login.defs", mode)


def test_missing_optional_files_are_no_finding():
    Path("/etc/subgid").unlink()
    assert findings() == (0, [])


# --- bridges ---------------------------------------------------------------------------------


def test_bridge_that_does_not_exist():
    write_etc("lxc/lxc-usernet", "nsgt-alice veth nsgtbr9 2\n")
    found = only_finding(str(USERNET), 1, "warning", "no-bridge")
    assert "ip link add nsgtbr9 type bridge" in found["message"]


def test_link_that_is_not_a_bridge():
    ip("link", "add", "nsgtv0", "type", "veth", "peer", "name", "nsgtv0p")
    write_etc("lxc/lxc-usernet", "nsgt-alice veth nsgtv0 2\n")
    found = only_finding(str(USERNET), 1, "error", "not-a-bridge")
    assert "veth link" in found["message"]


def test_real_bridge_none_and_private_are_fine():
    ip("link", "add", "nsgtbr0", "type", "bridge")
    write_etc("lxc/lxc-usernet", "nsgt-alice veth nsgtbr0 2\nnsgt-alice veth none 1\n"
              "nsgt-alice veth nsgate-private 1\n")
    assert findings() == (0, [])


# --- the nic database ------------------------------------------------------------------------


def test_stale_nic():
    ip("link", "add", "nsgtbr0", "type", "bridge")
    write_etc("lxc/lxc-usernet", "nsgt-alice veth nsgtbr0 2\n")
    write_nics(["nsgt-alice veth nsgtbr0 veth23001_gone"])
    found = only_finding(str(NICS), 1, "warning", "stale-nic")
    assert "nsgate nics gc" in found["message"]


def test_foreign_nic():
    ip("link", "add", "nsgtbr0", "type", "bridge")
    ip("link", "add", "nsgtv0", "type", "veth", "peer", "name", "nsgtv0p")
    write_etc("lxc/lxc-usernet", "nsgt-alice veth nsgtbr0 2\n")
    write_nics(["nsgt-alice veth nsgtbr0 nsgtv0p", "nsgt-bob veth nsgtbr0 nsgtv0"])
    found = only_finding(str(NICS), 2, "error", "foreign-nic")
    assert "nsgt-bob holds nsgtv0" in found["message"]


# --- the install -----------------------------------------------------------------------------


SCRATCH = SANDBOX / "admin-prefix"


@pytest.fixture
def scratch_install() -> Path:
    """A copy of the installed tree, and a copy of bin/nsgate that checks it."""
    shutil.rmtree(SCRATCH, ignore_errors=True)
    for part in ("lib/nsgate", "libexec/nsgate"):
        (SCRATCH / part).parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["cp", "-a", str(PREFIX / part), str(SCRATCH / part)], check=True)
    script = NSGATE_BIN.read_text()
    for part in ("lib/nsgate", "libexec/nsgate"):
        script = script.replace(f'"{PREFIX / part}"', f'"{SCRATCH / part}"')
    (SCRATCH / "bin").mkdir()
    (SCRATCH / "bin/nsgate").write_text(script)
    os.chmod(SCRATCH / "bin/nsgate", 0o755)
    yield SCRATCH
    shutil.rmtree(SCRATCH, ignore_errors=True)


def install_findings(prefix: Path) -> tuple[int, list[dict]]:
    status, report = nsgate_json("check", program=prefix / "bin/nsgate")
    return status, [(f["file"], f["line"], f["severity"], f["code"], f["message"])
                    for f in report["findings"]]


def test_scratch_install_is_clean(scratch_install):
    assert install_findings(scratch_install) == (0, [])


def _libexec(prefix: Path, name: str) -> Path:
    return prefix / "libexec/nsgate" / name


@pytest.mark.parametrize("name, breakage, words", [
    ("newuidmap", lambda p: os.chmod(p, 0o755), "neither setuid root"),
    ("newgidmap", lambda p: p.unlink(), "missing"),
    ("lxc-user-nic", lambda p: os.chmod(p, 0o755), "not setuid root"),
    ("lxc-user-nic", lambda p: os.chmod(p, 0o4775), "writable by group"),
    ("getsubids", lambda p: os.chmod(p, 0o4755), "must run without privilege"),
    ("newuidmap", lambda p: os.chown(p, ALICE.uid, 0), "owned by uid 23001"),
])
def test_broken_helper(scratch_install, name, breakage, words):
    path = _libexec(scratch_install, name)
    breakage(path)
    status, found = install_findings(scratch_install)
    assert status == 1
    assert {(f[0], f[1], f[2], f[3]) for f in found} == {(str(path), None, "error", "install")}
    assert any(words in f[4] for f in found), found
    human = nsgate("check", program=scratch_install / "bin/nsgate")
    assert f"{path}: error: " in human.stdout and "[install]" in human.stdout


def test_file_capabilities_stand_in_for_setuid_only_with_the_right_capability(scratch_install):
    path = _libexec(scratch_install, "newuidmap")
    os.chmod(path, 0o755)
    subprocess.run(["setcap", "cap_setuid+ep", str(path)], check=True)
    assert install_findings(scratch_install) == (0, [])
    subprocess.run(["setcap", "cap_setgid+ep", str(path)], check=True)
    status, found = install_findings(scratch_install)
    assert status == 1 and [f[0] for f in found] == [str(path)]
    assert "cap_setuid+ep" in found[0][4]


def test_getsubids_with_capabilities(scratch_install):
    path = _libexec(scratch_install, "getsubids")
    subprocess.run(["setcap", "cap_setuid+ep", str(path)], check=True)
    status, found = install_findings(scratch_install)
    assert status == 1 and [(f[0], f[3]) for f in found] == [(str(path), "install")]


@pytest.mark.parametrize("relative, mode", [
    ("nsgate/policy/subid.py", 0o664),
    ("nsgate/system", 0o777),
])
def test_writable_library_path(scratch_install, relative, mode):
    path = scratch_install / "lib/nsgate" / relative
    os.chmod(path, mode)
    status, found = install_findings(scratch_install)
    assert status == 1
    assert [(f[0], f[1], f[2], f[3]) for f in found] == [(str(path), None, "error", "install")]
    assert "writable by group or others" in found[0][4]


def test_library_file_owned_by_a_user(scratch_install):
    path = scratch_install / "lib/nsgate/nsgate/cli/admin/check.py"
    os.chown(path, ALICE.uid, ALICE.gid)
    status, found = install_findings(scratch_install)
    assert status == 1 and [f[0] for f in found] == [str(path)]


# --- exit codes, unprivileged use, colour ----------------------------------------------------


def test_exit_codes():
    assert nsgate("check").returncode == 0
    write_etc("subuid", "nsgt-bob:300000:0\n")  # a warning only
    assert nsgate("check").returncode == 0
    write_etc("subuid", "nsgt-bob:300000\n")  # an error
    assert nsgate("check").returncode == 1
    for argv in (["check", "extra"], ["check", "--bogus"], ["frobnicate"], []):
        result = nsgate(*argv)
        assert result.returncode == 2 and result.stderr.startswith("nsgate: "), argv
        assert "Try 'nsgate help'" in result.stderr


def test_help_and_version():
    result = nsgate("--help")
    assert result.returncode == 0 and "nsgate check [--json]" in result.stdout
    assert nsgate("help").stdout == result.stdout
    assert nsgate("subid", "add", "--help").stdout == result.stdout
    assert nsgate("--version").stdout.startswith("nsgate ")


def test_unprivileged_check_notes_what_it_could_not_read():
    write_etc("subuid", "nsgt-alice:200000:65536\nnsgt-bob:265535:10\n")
    write_etc("lxc/lxc-usernet", "nsgt-alice veth none 1\n")
    write_nics(["nsgt-alice veth none veth23001_gone"])  # 0600: root's only
    status, report = nsgate_json("check", user=ALICE)
    assert status == 1
    assert [(f["file"], f["code"]) for f in report["findings"]] == [("/etc/subuid", "overlap")]
    result = nsgate("check", user=ALICE)
    assert "nsgate: note: cannot read /run/lxc/nics (permission denied)" in result.stderr


def _on_a_terminal(env: dict[str, str]) -> bytes:
    leader, follower = pty.openpty()
    try:
        subprocess.run([str(NSGATE_BIN), "check"], stdout=follower, stderr=subprocess.DEVNULL,
                       env=env, timeout=30)
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(leader)


def test_colour_only_on_a_terminal_without_no_color():
    write_etc("subuid", "nsgt-bob:300000\n")
    path = {"PATH": os.environ["PATH"], "TERM": "xterm"}
    assert b"\x1b[1;31merror\x1b[0m" in _on_a_terminal(path)
    assert b"\x1b[" not in _on_a_terminal({**path, "NO_COLOR": "1"})
    assert "\x1b[" not in nsgate("check").stdout


@pytest.mark.parametrize("how", ["straight", "through-user-link", "to-a-directory",
                                 "writable-target", "dangling"])
def test_library_link_follows_the_helpers_rule(scratch_install, user_dir, how):
    """The link packages put in the library directory: clean exactly when the helpers'
    integrity check would follow it (test_install.py attacks the helpers the same way)."""
    backend = next((scratch_install / "lib/nsgate").glob("_cffi_backend*.so"))
    store = SANDBOX / "admin-link-store"
    shutil.rmtree(store, ignore_errors=True)
    store.mkdir(mode=0o755)
    kept = store / backend.name
    shutil.move(backend, kept)
    target: Path = kept
    if how == "through-user-link":
        target = user_dir / "hop"
        target.symlink_to(kept)
        os.lchown(target, ALICE.uid, ALICE.gid)
    elif how == "to-a-directory":
        target = store
    elif how == "writable-target":
        kept.chmod(0o666)
    elif how == "dangling":
        target = store / "missing.so"
    backend.symlink_to(target)
    try:
        status, found = install_findings(scratch_install)
        if how == "straight":
            assert (status, found) == (0, [])
        else:
            assert status == 1
            assert {f[3] for f in found} == {"install"}
            message = " ".join(f[4] for f in found)
            assert {"through-user-link": "through another symbolic link",
                    "to-a-directory": "not a regular file",
                    "writable-target": "writable by group or others",
                    "dangling": "a link to nothing"}[how] in message, found
    finally:
        shutil.rmtree(store)
