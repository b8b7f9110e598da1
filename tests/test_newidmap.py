"""newuidmap / newgidmap end to end: the installed setuid launcher run by an unprivileged test
user against real user namespaces; assertions on the kernel's maps and setgroups. Every case runs
through both transports (tests/support.py): in-process, and served by nsgated to a caller under
no_new_privs."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.service_support import service_traced
from tests.support import (
    ALICE,
    AUX_GID,
    BOB,
    NOBODY_UID,
    SANDBOX,
    Target,
    User,
    helper,
    only_transport,
    run_as,
    transport,
    transport_privs,
    wait_for,
    write_etc,
)

pytestmark = pytest.mark.usefixtures("transport")

USAGE_UID = (b"usage: newuidmap [<pid>|fd:<pidfd>] <uid> <loweruid> <count> "
             b"[ <uid> <loweruid> <count> ] ... \n")


def newuidmap(user: User, *args: str | int, **kwargs) -> subprocess.CompletedProcess[bytes]:
    return run_as(user, [helper("newuidmap"), *map(str, args)], **kwargs)


def newgidmap(user: User, *args: str | int, **kwargs) -> subprocess.CompletedProcess[bytes]:
    return run_as(user, [helper("newgidmap"), *map(str, args)], **kwargs)


def assert_refused(result: subprocess.CompletedProcess[bytes], first: bytes) -> None:
    assert result.returncode == 1, result
    assert result.stdout == b""
    assert result.stderr.startswith(first), result.stderr
    assert b"Traceback" not in result.stderr


# --- allowed maps -------------------------------------------------------------------------


def test_self_map_and_subordinate_range(target):
    result = newuidmap(ALICE, target.pid, 0, ALICE.uid, 1, 1, 200000, 65536)
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")
    assert target.uid_map() == [(0, ALICE.uid, 1), (1, 200000, 65536)]


def test_pure_uid_self_map_needs_no_entry(target):
    write_etc("subuid", "")
    assert newuidmap(ALICE, target.pid, 0, ALICE.uid, 1).returncode == 0
    assert target.uid_map() == [(0, ALICE.uid, 1)]


def test_newgidmap_subordinate_range_leaves_setgroups_allow(target):
    result = newgidmap(ALICE, target.pid, 0, ALICE.gid, 1, 1, 200000, 10)
    assert result.returncode == 0, result.stderr
    assert target.gid_map() == [(0, ALICE.gid, 1), (1, 200000, 10)]
    assert target.setgroups() == "allow"


def test_newgidmap_pure_self_map_denies_setgroups_first(target):
    """CVE-2018-7169: with no subgid triple, setgroups reads deny once gid_map is written."""
    result = newgidmap(ALICE, target.pid, 0, ALICE.gid, 1)
    assert result.returncode == 0, result.stderr
    assert target.setgroups() == "deny"
    assert target.gid_map() == [(0, ALICE.gid, 1)]


def test_setgroups_already_deny_is_not_written_again(target):
    subprocess.run(["sh", "-c", f"echo deny > /proc/{target.pid}/setgroups"], check=True)
    assert newgidmap(ALICE, target.pid, 0, ALICE.gid, 1).returncode == 0
    assert target.setgroups() == "deny"


def test_adjacent_entries_chain(target):
    write_etc("subuid", "nsgt-alice:200000:65536\nnsgt-alice:265536:65536\n")
    assert newuidmap(ALICE, target.pid, 0, 200000, 131072).returncode == 0
    assert target.uid_map() == [(0, 200000, 131072)]


@pytest.mark.parametrize("owner", ["23001", "nsgt-alias"])
def test_owner_by_uid_or_by_another_name_of_the_same_uid(target, owner):
    write_etc("subuid", f"nsgt-bob:400000:10\n{owner}:400000:10\n")
    assert newuidmap(ALICE, target.pid, 0, 400000, 10).returncode == 0
    assert target.uid_map() == [(0, 400000, 10)]


def test_last_line_without_newline_is_accepted(target):
    """A11: shadow 4.19/4.20 reject the whole file; nsgate reads the last line."""
    write_etc("subuid", "nsgt-bob:300000:65536\nnsgt-alice:200000:65536")
    assert newuidmap(ALICE, target.pid, 0, 200000, 65536).returncode == 0


def test_fd_form_with_an_inherited_proc_directory(target):
    script = f'exec 5</proc/{target.pid} && exec {helper("newuidmap")} fd:5 0 200000 10'
    result = run_as(ALICE, ["sh", "-c", script])
    assert result.returncode == 0, result.stderr
    assert target.uid_map() == [(0, 200000, 10)]


def test_320_single_id_triples_fit_in_one_write(target):
    args = [x for i in range(320) for x in (i, 200000 + 2 * i, 1)]
    assert newuidmap(ALICE, target.pid, *args).returncode == 0
    assert len(target.uid_map()) == 320


# --- refused requests touch nothing -------------------------------------------------------


def test_range_not_owned_is_refused_with_the_reason(target):
    result = newuidmap(ALICE, target.pid, 0, 400000, 10)
    assert_refused(result, b"newuidmap: uid range [0-10) -> [400000-400010) not allowed\n")
    assert b"nsgt-alice (uid 23001) owns in /etc/subuid: 200000-265535 (line 1)" in result.stderr
    assert target.uid_map() == []


def test_partly_owned_range_names_the_gap(target):
    result = newuidmap(ALICE, target.pid, 0, 260000, 10000)
    assert_refused(result, b"newuidmap: uid range [0-10000) -> [260000-270000) not allowed")
    assert b"not covered: 265536-269999" in result.stderr
    assert target.uid_map() == []


def test_another_users_range_is_refused(target):
    assert_refused(newuidmap(ALICE, target.pid, 0, 300000, 10), b"newuidmap: uid range")
    assert target.uid_map() == []


def test_all_or_nothing(target):
    result = newuidmap(ALICE, target.pid, 0, 200000, 10, 10, 400000, 10)
    assert_refused(result, b"newuidmap: uid range [10-20) -> [400000-400010) not allowed")
    assert target.uid_map() == []


def test_another_users_target_is_refused(targets):
    bobs = targets(BOB)
    result = newuidmap(ALICE, bobs.pid, 0, 200000, 10)
    assert_refused(result, b"newuidmap: Target process is owned by a different user: "
                           b"uid:23001 pw_uid:23001 st_uid:23002, gid:23001 pw_gid:23001 "
                           b"st_gid:23002\n")
    assert bobs.uid_map() == []


def test_root_can_map_only_its_own_processes(target):
    """A9: root gets no exemption."""
    result = subprocess.run(["setpriv", *transport_privs(), helper("newuidmap"), str(target.pid),
                             "0", "23001", "1"], capture_output=True)
    assert_refused(result, b"newuidmap: Target process is owned by a different user")
    assert target.uid_map() == []


def test_caller_without_passwd_entry(target):
    result = subprocess.run(["setpriv", f"--reuid={NOBODY_UID}", f"--regid={NOBODY_UID}",
                             "--clear-groups", *transport_privs(), helper("newuidmap"),
                             str(target.pid), "0", str(NOBODY_UID), "1"], capture_output=True)
    assert_refused(result, b"newuidmap: Cannot determine your user name.\n")
    assert target.uid_map() == []


def test_target_in_the_callers_own_namespace(targets):
    proc = subprocess.Popen(["setpriv", f"--reuid={ALICE.uid}", f"--regid={ALICE.gid}",
                             "--init-groups", "sleep", "60"])
    try:
        # until it has exec'd sleep it is setpriv after its setresuid: not dumpable, its /proc
        # files root's, and refused for that first
        wait_for(lambda: os.stat(f"/proc/{proc.pid}").st_uid == ALICE.uid,
                 "the target to exec sleep as alice")
        result = newuidmap(ALICE, proc.pid, 0, 200000, 10)
        assert_refused(result, b"newuidmap: target is not in a new user namespace\n")
    finally:
        proc.kill()
        proc.wait()


def test_map_already_written(target):
    assert newuidmap(ALICE, target.pid, 0, 200000, 10).returncode == 0
    result = newuidmap(ALICE, target.pid, 0, 200010, 10)
    assert_refused(result, b"newuidmap: uid_map already written")
    assert target.uid_map() == [(0, 200000, 10)]


def test_gid_map_already_written_with_setgroups_allow(target):
    assert newgidmap(ALICE, target.pid, 0, 200000, 10).returncode == 0
    assert target.setgroups() == "allow"
    result = newgidmap(ALICE, target.pid, 0, ALICE.gid, 1)
    assert_refused(result, b"newgidmap: gid_map already written")
    assert target.setgroups() == "allow"


def test_non_dumpable_target_is_named(tmp_path):
    """§11 item 10: the reference says only EACCES at open."""
    code = ("import ctypes,sys;libc=ctypes.CDLL(None);"
            "assert libc.unshare(0x10000000)==0;assert libc.prctl(4,0,0,0,0)==0;"
            "print('ready',flush=True);sys.stdin.read()")
    proc = subprocess.Popen(["setpriv", f"--reuid={ALICE.uid}", f"--regid={ALICE.gid}",
                             "--init-groups", "/usr/bin/python3", "-c", code],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        result = newuidmap(ALICE, proc.pid, 0, 200000, 10)
        assert_refused(result, b"newuidmap: target is not dumpable")
        assert Path(f"/proc/{proc.pid}/uid_map").read_text() == ""
    finally:
        proc.kill()
        proc.wait()


# --- A1, A3, A4, A6: numbers, bounds and the subid file's traps ---------------------------


@pytest.mark.parametrize("args", [
    ("0", "-1", "1"), ("-1", "0", "1"), ("0", "200000", "-1"),
])
def test_negative_numbers_are_usage_errors(target, args):
    result = newuidmap(ALICE, target.pid, *args)
    assert_refused(result, b"newuidmap: invalid number")
    assert result.stderr.endswith(USAGE_UID)
    assert target.uid_map() == []


@pytest.mark.parametrize("args", [
    ("4294967294", "200000", "2"), ("0", "4294967295", "1"), ("4294967295", "4294967295", "10"),
    ("0", "200000", "0"), ("0", "18446744073709551616", "1"),
])
def test_overflow_is_refused_before_any_lookup(target, args):
    result = newuidmap(ALICE, target.pid, *args)
    assert_refused(result, b"newuidmap: subuid overflow detected.\n")
    assert result.stderr.endswith(USAGE_UID)
    assert target.uid_map() == []


@pytest.mark.parametrize("pid", ["0", "-1", "-5", "+1", " 1", "01", "1x", "", "fd:", "-h"])
def test_bad_pids_are_usage_errors(pid):
    result = newuidmap(ALICE, pid, 0, 200000, 10)
    assert result.returncode == 1
    assert result.stderr.endswith(USAGE_UID), result.stderr


@pytest.mark.parametrize("entry", ["nsgt-alice:0:0", "nsgt-alice:0:00"])
def test_count_zero_entry_grants_nothing(target, entry):
    """A3: shadow 4.13 let `u:0:0` map host uid 0."""
    write_etc("subuid", entry + "\n")
    assert_refused(newuidmap(ALICE, target.pid, 0, 0, 1), b"newuidmap: uid range [0-1)")
    assert target.uid_map() == []


@pytest.mark.parametrize("entry", ["nsgt-alice:1:18446744073709551615",
                                   "nsgt-alice:4294967295:10", "nsgt-alice:4294967296:1"])
def test_out_of_range_entry_grants_nothing(target, entry):
    write_etc("subuid", entry + "\n")
    assert_refused(newuidmap(ALICE, target.pid, 0, 1, 10), b"newuidmap: uid range")
    assert target.uid_map() == []


@pytest.mark.parametrize(("entry", "reason"), [
    ("nsgt-alice:0200000:65536", b"must be canonical decimal"),
    ("nsgt-alice:200000:65536 ", b"trailing white space"),
    ("nsgt-alice: 200000:65536", b"must be canonical decimal"),
    ("nsgt-alice:0x30d40:65536", b"must be canonical decimal"),
    ("nsgt-alice:200000:65536:x", b"4 ':'-separated fields"),
])
def test_invalid_lines_are_ignored_and_named_on_refusal(target, entry, reason):
    """§11 items 4 and 11: never reinterpreted; the refusal says which line was ignored."""
    write_etc("subuid", "nsgt-bob:300000:65536\n" + entry + "\n")
    result = newuidmap(ALICE, target.pid, 0, 200000, 10)
    assert_refused(result, b"newuidmap: uid range [0-10) -> [200000-200010) not allowed")
    assert b"newuidmap: line 2 of /etc/subuid is ignored: " in result.stderr
    assert reason in result.stderr.split(b"is ignored: ", 1)[1]
    assert target.uid_map() == []


@pytest.mark.parametrize("field", ["010", "0x10", "+10", " 10", "10 ", "1e3", "١٠"])
def test_non_canonical_numbers_in_argv(target, field):
    result = newuidmap(ALICE, target.pid, 0, 200000, field)
    assert_refused(result, b"newuidmap: invalid number")
    assert target.uid_map() == []


def test_prefix_named_and_other_users_lines_do_not_count(target):
    write_etc("subuid", "nsgt-alicex:400000:10\nxnsgt-alice:400000:10\nnsgt-bob:400000:10\n")
    assert_refused(newuidmap(ALICE, target.pid, 0, 400000, 10), b"newuidmap: uid range")


def test_symlinked_subuid_is_refused_with_the_reason(target):
    write_etc("real-subuid", "nsgt-alice:200000:65536\n")
    write_etc("subuid", "")
    import os
    os.unlink("/etc/subuid")
    os.symlink("/etc/real-subuid", "/etc/subuid")
    result = newuidmap(ALICE, target.pid, 0, 200000, 10)
    assert_refused(result, b"newuidmap: cannot open /etc/subuid: Too many levels of symbolic "
                           b"links\n")
    assert b"is a symbolic link" in result.stderr
    assert target.uid_map() == []


def test_missing_subuid_fails_even_a_self_map(target):
    import os
    os.unlink("/etc/subuid")
    result = newuidmap(ALICE, target.pid, 0, ALICE.uid, 1)
    assert_refused(result, b"newuidmap: cannot open /etc/subuid: No such file or directory\n")


def test_missing_subuid_with_sub_uid_count_0_allows_self_map(target):
    import os
    os.unlink("/etc/subuid")
    with open("/etc/login.defs", "a") as defs:
        defs.write("\nSUB_UID_COUNT 0\n")
    assert newuidmap(ALICE, target.pid, 0, ALICE.uid, 1).returncode == 0
    assert target.uid_map() == [(0, ALICE.uid, 1)]


def test_group_or_world_writable_subuid_is_not_trusted(target):
    write_etc("subuid", "nsgt-alice:200000:65536\n", mode=0o666)
    result = newuidmap(ALICE, target.pid, 0, 200000, 10)
    assert_refused(result, b"newuidmap: refusing to trust /etc/subuid: owner uid 0, mode 0666")
    assert target.uid_map() == []


# --- A2 and §11 item 3: zero triples -------------------------------------------------------


def test_zero_triples_is_a_usage_error_and_setgroups_stays(target):
    result = newgidmap(ALICE, target.pid)
    assert_refused(result, b"newgidmap: no mapping given")
    assert target.setgroups() == "allow"
    assert target.gid_map() == []


def test_wrong_arity_uses_the_reference_wording(target):
    result = newuidmap(ALICE, target.pid, 0, 200000)
    assert_refused(result, b"newuidmap: ranges: 1 is wrong for argc: 2\n")


# --- §11 item 5: overlaps and kernel limits, before the kernel says EINVAL ----------------


def test_own_uid_inside_the_subordinate_range_is_named(target):
    write_etc("subuid", "nsgt-alice:23000:65536\n")
    result = newuidmap(ALICE, target.pid, 0, ALICE.uid, 1, 1, 23000, 65536)
    assert_refused(result, b"newuidmap: uid 23001 is inside your subordinate range 23000-88535")
    assert target.uid_map() == []


@pytest.mark.parametrize("args", [
    (0, 200000, 10, 5, 200005, 10),   # both sides
    (0, 200000, 10, 20, 200005, 10),  # host side
    (0, 200000, 10, 5, 200020, 10),   # namespace side
])
def test_overlapping_triples_are_refused_by_name(target, args):
    result = newuidmap(ALICE, target.pid, *args)
    assert_refused(result, b"newuidmap: overlapping ranges: uid range")
    assert b"triple 1 (0 200000 10) and triple 2" in result.stderr
    assert target.uid_map() == []


def test_more_than_340_triples_is_refused(target):
    args = [x for i in range(341) for x in (i, 200000 + i, 1)]
    result = newuidmap(ALICE, target.pid, *args)
    assert_refused(result, b"newuidmap: 341 triples given: the kernel accepts at most 340")


def test_map_of_a_page_or_more_is_refused(target):
    write_etc("subuid", "nsgt-alice:1000000000:3000000000\n")
    args = [x for i in range(330) for x in (1000000000 + 3 * i, 1000000000 + 3 * i, 1)]
    result = newuidmap(ALICE, target.pid, *args)
    assert_refused(result, b"newuidmap: the map would be")
    assert target.uid_map() == []


# --- A8: GRANT_AUX_GROUP_SUBIDS -------------------------------------------------------------


def test_real_gid_other_than_primary_is_refused_by_default():
    target = Target.start(ALICE, gid=AUX_GID)
    try:
        result = newgidmap(ALICE, target.pid, 0, AUX_GID, 1, gid=AUX_GID)
        assert_refused(result, b"newgidmap: Target process is owned by a different user")
        assert b"GRANT_AUX_GROUP_SUBIDS" in result.stderr
        assert target.gid_map() == []
    finally:
        target.stop()


def test_grant_aux_group_subids_allows_the_current_real_gid_only():
    with open("/etc/login.defs", "a") as defs:
        defs.write("\nGRANT_AUX_GROUP_SUBIDS yes\n")
    first, second = Target.start(ALICE, gid=AUX_GID), Target.start(ALICE, gid=AUX_GID)
    try:
        assert newgidmap(ALICE, first.pid, 0, AUX_GID, 1, gid=AUX_GID).returncode == 0
        assert first.gid_map() == [(0, AUX_GID, 1)]
        result = newgidmap(ALICE, second.pid, 0, ALICE.gid, 1, gid=AUX_GID)
        assert_refused(result, b"newgidmap: gid range [0-1) -> [23001-23002) not allowed")
        assert b"your own real gid 23010" in result.stderr
    finally:
        first.stop()
        second.stop()


# --- §11 item 6: privilege that cannot be had is named -----------------------------------
# The launcher's in-process path alone: through the service these callers are served (below).


@only_transport("setuid")
def test_no_new_privs_is_detected(target):
    result = newuidmap(ALICE, target.pid, 0, 200000, 10, extra=("--no-new-privs",))
    assert_refused(result, b"newuidmap: cannot get CAP_SETUID: no_new_privs is set on the "
                           b"calling process: setuid helpers cannot gain privilege under it\n")
    assert target.uid_map() == []


@only_transport("setuid")
def test_capability_missing_from_the_bounding_set_is_detected(target):
    result = newuidmap(ALICE, target.pid, 0, 200000, 10, extra=("--bounding-set=-setuid",))
    assert_refused(result, b"newuidmap: cannot get CAP_SETUID: it is not in the capability "
                           b"bounding set")
    assert target.uid_map() == []


@only_transport("setuid")
def test_launcher_without_setuid_bit_is_detected(target, tmp_path):
    result = run_as(ALICE, [_copy_without_setuid_bit(), str(target.pid), "0", "200000", "10"])
    assert_refused(result, b"newuidmap: cannot get CAP_SETUID: the launcher is not setuid root "
                           b"and has no file capabilities\n")
    assert target.uid_map() == []


def _copy_without_setuid_bit() -> str:
    import shutil
    copy = "/run/nsgate-test/newuidmap-nosuid"
    shutil.copyfile(helper("newuidmap"), copy)
    os.chmod(copy, 0o755)
    return copy


@only_transport("service")
@pytest.mark.parametrize("how", ["bounding-set", "no-setuid-bit"])
def test_the_service_serves_a_launcher_that_cannot_gain_privilege(targets, how):
    """What the three tests above refuse in-process, the service serves (the launcher asks it
    first, with no privilege of its own)."""
    target = targets(ALICE)
    if how == "bounding-set":
        result = newuidmap(ALICE, target.pid, 0, 200000, 10, extra=("--bounding-set=-setuid",))
    else:
        result = run_as(ALICE, [_copy_without_setuid_bit(), str(target.pid), "0", "200000",
                                "10"], extra=("--no-new-privs",))
    assert (result.returncode, result.stdout, result.stderr) == (0, b"", b"")
    assert target.uid_map() == [(0, 200000, 10)]


# --- the credential sequence (A7) and the order of side effects, seen by strace ------------
# In-process: strace runs the setuid helper as the user. Through the service: strace follows the
# service's worker that serves the request, which runs the same code with the caller's
# credential shape.

TRACED = "trace=capset,setresuid,openat,write,prctl,close_range"
TRACED_SERVICE = TRACED + ",sendto"  # the answer: status, stdout and stderr in one packet


def _trace(user: User, argv: list[str]) -> tuple[int, list[str]]:
    if transport() == "service":
        with service_traced("-qq", "-e", TRACED_SERVICE) as events:
            result = run_as(user, argv)
        lines = [line for _, line in events]
    else:
        result = subprocess.run(["strace", "-f", "-qq", "-u", user.name, "-e", TRACED, *argv],
                                capture_output=True)
        lines = result.stderr.decode().splitlines()
    return result.returncode, [" ".join(line.split()) for line in lines if "ENOENT" not in line]


def _index(lines: list[str], needle: str) -> int:
    return next(i for i, line in enumerate(lines) if needle in line)


def test_map_opened_after_dropping_to_exactly_cap_setuid(target):
    status, lines = _trace(ALICE, [helper("newuidmap"), str(target.pid), "0", "200000", "10"])
    assert status == 0, lines
    opened = _index(lines, '"uid_map", O_WRONLY')
    before = lines[:opened]
    assert "setresuid(-1, 23001, -1)" in before[-2], before[-3:]
    assert before[-1].endswith("{effective=1<<CAP_SETUID, permitted=1<<CAP_SETUID, "
                               "inheritable=0}) = 0"), before[-1]
    writes = [line for line in lines[opened:] if line.startswith("write(4,")]
    assert writes == ['write(4, "0 200000 10\\n", 12) = 12']


def test_host_root_mapping_adds_cap_setfcap_only(target):
    write_etc("subuid", "nsgt-alice:0:10\n")
    status, lines = _trace(ALICE, [helper("newuidmap"), str(target.pid), "0", "0", "10"])
    assert status == 0, lines
    capset = lines[_index(lines, '"uid_map", O_WRONLY') - 1]
    assert "effective=1<<CAP_SETUID|1<<CAP_SETFCAP, permitted=1<<CAP_SETUID|1<<CAP_SETFCAP, " \
           "inheritable=0" in capset
    assert target.uid_map() == [(0, 0, 10)]


def test_gid_map_written_with_cap_setgid_after_setgroups_deny(target):
    status, lines = _trace(ALICE, [helper("newgidmap"), str(target.pid), "0", "23001", "1"])
    assert status == 0, lines
    deny = _index(lines, 'write(4, "deny\\n", 5)')
    opened = _index(lines, '"gid_map", O_WRONLY')
    assert deny < opened
    assert "effective=1<<CAP_SETGID, permitted=1<<CAP_SETGID, inheritable=0" in lines[opened - 1]


def test_messages_are_written_after_all_privilege_is_dropped(target):
    status, lines = _trace(ALICE, [helper("newuidmap"), str(target.pid), "0", "400000", "10"])
    assert status == 1
    if transport() == "setuid":
        message = _index(lines, "write(2, ")
    else:  # the answer (its magic first), not the syslog record (sent before it)
        message = next(i for i, line in enumerate(lines)
                       if line.startswith("sendto(") and ', "nsgate' in line)
    assert any("setresuid(23001, 23001, 23001) = 0" in line for line in lines[:message])
    assert "{effective=0, permitted=0, inheritable=0}) = 0" in lines[message - 1]


@only_transport("setuid")  # the launcher's own process; the service's is its unit's concern
def test_process_is_hardened_before_anything(target):
    status, lines = _trace(ALICE, [helper("newuidmap"), str(target.pid), "0", "200000", "10"])
    assert status == 0
    assert any("prctl(PR_SET_DUMPABLE, SUID_DUMP_DISABLE) = 0" in line for line in lines)
    assert any("prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL" in line for line in lines)
    assert any("close_range(3, 4294967295, 0) = 0" in line for line in lines)


# --- §11 item 8 and 9: the target opened as the caller; fd:N checked -----------------------


def test_target_is_opened_with_the_callers_credentials(targets):
    """With hidepid, alice cannot see bob's processes; a root-privileged open would."""
    bobs = targets(BOB)
    subprocess.run(["mount", "-t", "proc", "-o", "hidepid=invisible", "proc", "/proc"],
                   check=True)
    try:
        result = newuidmap(ALICE, bobs.pid, 0, 200000, 10)
    finally:
        subprocess.run(["umount", "--lazy", "/proc"], check=True)  # a worker may be reading it
    assert_refused(result, f"newuidmap: Could not open proc directory for target {bobs.pid}: "
                           "No such file or directory".encode())
    assert bobs.uid_map() == []


@pytest.mark.parametrize(("path", "message"), [
    ("/proc/self/status", b"is not a directory on procfs"),
    ("/tmp", b"is not a directory on procfs"),
])
def test_fd_argument_must_be_a_procfs_directory(target, path, message):
    result = run_as(ALICE, ["sh", "-c", f'exec 5<{path} && exec {helper("newuidmap")} fd:5 '
                                        "0 200000 10"])
    assert_refused(result, b"newuidmap: fd:5 " + message)


def test_fake_proc_directory_cannot_redirect_the_write(target, user_dir):
    """A5: a user-made directory whose uid_map links to a root-owned file."""
    victim = SANDBOX / "victim"
    victim.write_text("untouched\n")
    fake = user_dir / "fake"
    fake.mkdir()
    (fake / "uid_map").symlink_to(victim)
    result = run_as(ALICE, ["sh", "-c", f'exec 5<{fake} && exec {helper("newuidmap")} fd:5 '
                                        "0 200000 10"])
    assert_refused(result, b"newuidmap: fd:5 is not a directory on procfs")
    assert victim.read_text() == "untouched\n"


def test_bad_fd_number(target):
    result = newuidmap(ALICE, "fd:9", 0, 200000, 10)
    assert_refused(result, b"newuidmap: fd:9 is not an open file descriptor")


# --- general hardening at the boundary (C1-C7); issue 4 extends these --------------------


def test_empty_argv_is_refused(target):
    code = (f"import ctypes;libc=ctypes.CDLL(None);"
            f"argv=(ctypes.c_char_p*1)(None);envp=(ctypes.c_char_p*1)(None);"
            f"libc.execve(b'{helper('newuidmap')}',argv,envp);raise SystemExit(99)")
    result = run_as(ALICE, ["/usr/bin/python3", "-c", code])
    assert result.returncode == 1
    assert result.stdout == b""
    assert target.uid_map() == []


def test_argv0_is_never_printed(target):
    result = run_as(ALICE, ["bash", "-c", f'exec -a "$(printf "\\033[31mevil")" '
                                          f'{helper("newuidmap")} 0'])
    assert result.returncode == 1
    assert b"\x1b" not in result.stderr and b"evil" not in result.stderr
    assert result.stderr.startswith(b"newuidmap: ")


def test_hostile_environment_runs_nothing_of_the_callers(target, user_dir):
    marker = user_dir / "pwned"
    evil = user_dir / "evil"
    evil.mkdir()
    payload = f"open({str(marker)!r}, 'w').write('ran')\n"
    for name in ("sitecustomize.py", "usercustomize.py", "posix.py", "pwd.py", "nsgate.py",
                 "startup.py", "encodings.py"):
        (evil / name).write_text(payload)
    env = {"PATH": f"{evil}:/usr/bin:/bin", "PYTHONPATH": str(evil), "PYTHONHOME": str(evil),
           "PYTHONSTARTUP": str(evil / "startup.py"), "PYTHONINSPECT": "1",
           "PYTHONUSERBASE": str(evil), "PYTHONWARNINGS": "error", "PYTHONSAFEPATH": "",
           "PYTHONBREAKPOINT": "startup.run", "LD_PRELOAD": str(evil / "x.so"),
           "LD_LIBRARY_PATH": str(evil), "GCONV_PATH": str(evil), "LC_ALL": "xx_XX.EVIL",
           "GLIBC_TUNABLES": "glibc.malloc.check=3", "IFS": "/", "TMPDIR": str(evil)}
    result = run_as(ALICE, ["sh", "-c", f"cd {evil} && exec {helper('newuidmap')} "
                                        f"{target.pid} 0 200000 10"], env=env)
    assert result.returncode == 0, result.stderr
    assert target.uid_map() == [(0, 200000, 10)]
    assert not marker.exists()


def test_closed_standard_fds(target):
    result = run_as(ALICE, ["sh", "-c", f"exec {helper('newuidmap')} {target.pid} 0 200000 10 "
                                        "<&- >&- 2>&-"])
    assert result.returncode == 0
    assert target.uid_map() == [(0, 200000, 10)]


def test_tiny_file_size_limit_does_not_cut_the_map(target):
    args = [x for i in range(300) for x in (i, 200000 + i, 1)]
    result = run_as(ALICE, ["prlimit", "--fsize=1", "--", helper("newuidmap"),
                            str(target.pid), *map(str, args)])
    assert result.returncode == 0, result.stderr
    assert len(target.uid_map()) == 300


@pytest.mark.parametrize("nofile", [3, 4, 5, 6, 8])
def test_low_file_limit_fails_closed_or_completes(target, nofile):
    result = run_as(ALICE, ["prlimit", f"--nofile={nofile}", "--", helper("newuidmap"),
                            str(target.pid), "0", "200000", "10"])
    assert b"Traceback" not in result.stderr
    if result.returncode == 0:
        assert target.uid_map() == [(0, 200000, 10)]
    else:
        assert result.returncode == 1 and result.stderr.startswith(b"newuidmap: ")
        assert target.uid_map() == []


def test_python_never_shows_a_traceback_on_odd_bytes(target):
    result = newuidmap(ALICE, target.pid, "\udcff\udcfe", 200000, 10)
    assert_refused(result, b"newuidmap: invalid number '\\xff\\xfe'")


@pytest.mark.parametrize("tool", ["newuidmap", "getsubids"])
def test_inside_an_unmapped_user_namespace_no_traceback(tool):
    """Ids unmapped there cannot be set; the helper still fails with a message, exit 1."""
    args = ["nsgt-alice"] if tool == "getsubids" else ["1", "0", "200000", "10"]
    result = run_as(ALICE, ["unshare", "--user", "--", helper(tool), *args])
    assert result.returncode == 1
    assert result.stderr.startswith(f"{tool}: ".encode()), result.stderr
    assert b"Traceback" not in result.stderr
