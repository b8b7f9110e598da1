"""The PAM session hook end to end (issue 11): a real PAM stack (python-pam, the test service
of tests/pam_support.py whose session line is the installed snippet's pam_exec line) runs the
installed `nsgate session` as a login program would. Subordinate ids: allocated at open, in the
mode login.defs asks for (linear, or deterministic exactly as shadow HEAD's formula gives it,
stored by name or by uid), mapped with the installed newuidmap, stable across logins, exactly one
range per user when 16 logins race. Bad input (a malformed session.conf, a full subid space, a
user with no passwd entry, a lock held by a dead or a live writer, a read-only /etc): the login
goes on within the bound, the reason is logged (authpriv, ident nsgate-session), nothing is half
written. The hook's own rules: the PAM environment cannot name another user, a session line
only, root alone (the snippet's seteuid), never by hand."""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests import test_lxc_real as lxc_real
from tests.pam_support import (
    CGROUP_ROOT,
    DAVE,
    ERIN,
    FRANK,
    GRACE,
    LOG_AUTHPRIV,
    LOG_NOTICE,
    LOG_WARNING,
    PAM_USERS,
    SESSION_BOUND,
    SNIPPET,
    Login,
    Syslog,
    add_pam_users,
    cgroup_of,
    hierarchies,
    hook_processes,
    install_service,
    priority,
    remove_user_cgroups,
    user_cgroups,
)
from tests.support import (
    NSGATE,
    PREFIX,
    Target,
    helper,
    private_dev_log,
    run_as,
    wait_for,
    write_etc,
)

SUBUID, SUBGID = Path("/etc/subuid"), Path("/etc/subgid")
SESSION_CONF = Path("/etc/nsgate/session.conf")
NSGATE_BIN = PREFIX / "bin" / "nsgate"
# Time a login may take besides the hook's bound: python-pam, pam_exec, the interpreter's start
# on a loaded 2-CPU machine. Only an open that waited for a 15 s lock goes past bound + this.
STARTUP_SLACK = 6.0


@pytest.fixture(scope="module", autouse=True)
def pam_world():
    """The test users; and the hook's top cgroup (`nsgate`, which its close keeps) removed at the
    end in every hierarchy where the module made it."""
    add_pam_users()
    tops = [m / "nsgate" for m in hierarchies()]
    absent = [top for top in tops if not top.exists()]
    yield
    for top in absent:
        with contextlib.suppress(FileNotFoundError):
            top.rmdir()  # fails (and says so) if anything is left below it


@pytest.fixture(autouse=True)
def service_and_policy():
    install_service()
    SESSION_CONF.parent.mkdir(exist_ok=True)
    SESSION_CONF.unlink(missing_ok=True)
    yield
    SESSION_CONF.unlink(missing_ok=True)


@pytest.fixture
def syslog():
    with private_dev_log() as sock:
        log = Syslog(sock)
        try:
            yield log
        finally:
            log.stop()


@pytest.fixture
def logins(syslog):
    """Factory of logins (drivers); every driver ended, every cgroup of the hook's test users
    removed afterwards (processes killed first), even when the test failed. The test's /dev/log
    outlives them (the hook's workers hold /dev/null of its /dev)."""
    made: list[Login] = []

    def login(user: str, wrap: tuple[str, ...] = ()) -> Login:
        made.append(Login(user, wrap))
        return made[-1]

    yield login
    for each in made:
        each.end()
    # the workers may be blocked sending to a full /dev/log queue: read it meanwhile
    wait_for(lambda: syslog.hook_lines() is not None and not hook_processes(),
             "the hook's workers to finish")
    remove_user_cgroups([u.uid for u in PAM_USERS])


def policy(text: str) -> None:
    write_etc("nsgate/session.conf", text)


def login_defs(drop: tuple[str, ...] = (), add: str = "") -> None:
    """The sandbox's login.defs without the keys `drop`, with the lines `add`."""
    lines = [line for line in Path("/etc/login.defs").read_text().splitlines()
             if not line.split() or line.split()[0] not in drop]
    write_etc("login.defs", "\n".join(lines) + "\n" + add)


def lines_of(path: Path, owner: str) -> list[tuple[int, int]]:
    found = []
    for line in path.read_text().splitlines():
        fields = line.split(":")
        if len(fields) == 3 and fields[0] == owner:
            found.append((int(fields[1]), int(fields[2])))
    return found


def linear_start(path: Path, low: int, high: int, count: int) -> int:
    """shadow's linear mode (find_free_range): the lowest start from `low` whose `count` ids
    up to `high` touch no range of the file."""
    taken = sorted((int(f[1]), int(f[1]) + int(f[2])) for f in
                   (line.split(":") for line in path.read_text().splitlines()) if len(f) == 3)
    start = low
    for first, end in taken:
        if start + count <= first:
            break
        start = max(start, end)
    assert start + count - 1 <= high
    return start


def deterministic_start(uid: int, uid_min: int = 1000, sub_min: int = 65536,
                        sub_max: int = 4294967295, count: int = 65536) -> int:
    """shadow HEAD lib/find_new_sub_uids.c find_new_sub_uids_deterministic, safe mode."""
    space = sub_max - sub_min + 1
    slots = space // count
    offset = uid - uid_min
    assert 0 <= offset < slots
    return sub_min + offset * count


def no_lock_left() -> None:
    for name in ("subuid", "subgid"):
        assert not Path(f"/etc/{name}.lock").exists()
        assert not Path(f"/etc/{name}+").exists()
        assert not list(Path("/etc").glob(f"{name}.[0-9]*"))


def maps_with_newuidmap(user, start: int, count: int) -> None:
    """The user maps the range with the installed newuidmap (and newgidmap)."""
    target = Target.start(user)
    try:
        for name in ("newuidmap", "newgidmap"):
            result = run_as(user, [helper(name), str(target.pid), "0", str(start), str(count)])
            assert result.returncode == 0, result.stderr
        assert target.uid_map() == [(0, start, count)]
        assert target.gid_map() == [(0, start, count)]
    finally:
        target.stop()


# --- subordinate ids -------------------------------------------------------------------------


def test_open_allocates_linear_ranges_the_user_maps(logins, syslog):
    start = linear_start(SUBUID, 100000, 600100000, 65536)
    login = logins(DAVE.name)
    answer = login.open()
    assert answer["seconds"] < SESSION_BOUND + STARTUP_SLACK
    assert lines_of(SUBUID, DAVE.name) == [(start, 65536)]
    assert lines_of(SUBGID, DAVE.name) == [(start, 65536)]
    line = syslog.wait_line(b"open_session for nsgt-pam1", b"added nsgt-pam1:")
    assert priority(line) == LOG_AUTHPRIV | LOG_NOTICE
    assert b"to /etc/subuid" in line and b"to /etc/subgid" in line
    maps_with_newuidmap(DAVE, start, 65536)
    login.close()
    no_lock_left()
    assert user_cgroups(DAVE.uid) == []


def test_open_allocates_deterministic_ranges_stored_by_uid_as_shadow_head(logins, syslog):
    login_defs(drop=("SUB_UID_MIN", "SUB_UID_MAX", "SUB_GID_MIN", "SUB_GID_MAX"),
               add="SUB_UID_DETERMINISTIC yes\nSUB_GID_DETERMINISTIC yes\n"
                   "SUB_UID_STORE_BY_UID yes\nSUB_GID_STORE_BY_UID yes\n")
    start = deterministic_start(ERIN.uid)  # UID_MIN 1000, defaults for the SUB_ keys
    login = logins(ERIN.name)
    login.open()
    assert lines_of(SUBUID, str(ERIN.uid)) == [(start, 65536)]
    assert lines_of(SUBGID, str(ERIN.uid)) == [(start, 65536)]  # shadow: the uid for subgid too
    assert lines_of(SUBUID, ERIN.name) == []
    maps_with_newuidmap(ERIN, start, 65536)
    login.close()
    before = (SUBUID.read_bytes(), SUBGID.read_bytes())
    again = logins(ERIN.name)
    again.open()
    syslog.wait_line(b"open_session for nsgt-pam2", b"held in /etc/subuid")
    assert (SUBUID.read_bytes(), SUBGID.read_bytes()) == before  # stable across logins
    again.close()
    no_lock_left()


def test_a_user_holding_ranges_by_another_name_of_the_uid_gets_none(logins, syslog):
    write_etc("subuid", SUBUID.read_text() + f"{DAVE.uid}:500000:65536\n")
    write_etc("subgid", SUBGID.read_text() + f"{DAVE.uid}:500000:65536\n")
    before = (SUBUID.read_bytes(), SUBGID.read_bytes())
    login = logins(DAVE.name)
    login.open()
    syslog.wait_line(b"open_session for nsgt-pam1", b"subuids: held in /etc/subuid",
                     b"subgids: held in /etc/subgid")
    assert (SUBUID.read_bytes(), SUBGID.read_bytes()) == before
    login.close()


def test_policy_without_subids_allocates_nothing(logins, syslog):
    policy("* cgroup no\n@nsgt-pamgroup subids no\n")
    before = (SUBUID.read_bytes(), SUBGID.read_bytes())
    login = logins(DAVE.name)  # a member of nsgt-pamgroup
    login.open()
    syslog.wait_line(b"open_session for nsgt-pam1", b"no cgroup (line 1)",
                     b"no subordinate ids (line 2)")
    assert (SUBUID.read_bytes(), SUBGID.read_bytes()) == before
    login.close()


def test_sixteen_racing_logins_give_each_user_exactly_one_range(logins, syslog):
    sessions = [logins(user.name) for user in PAM_USERS for _ in range(4)]
    for each in sessions:  # all opening at once: 16 hooks racing for shadow's locks
        assert each.proc.stdin is not None
        each.proc.stdin.write('{"op": "open", "putenv": []}\n')
        each.proc.stdin.flush()
    for each in sessions:
        assert each.proc.stdout is not None
        answer = each.proc.stdout.readline()
        assert '"code": 0' in answer, answer
    for user in PAM_USERS:
        syslog.wait_line(f"open_session for {user.name}".encode(), b"added")
    ranges = []
    for path in (SUBUID, SUBGID):
        for user in PAM_USERS:
            held = lines_of(path, user.name)
            assert len(held) == 1, (path, user, path.read_text())
            ranges.append(held[0])
        spans = sorted((s, s + c) for s, c in
                       (tuple(map(int, line.split(":")[1:])) for line in
                        path.read_text().splitlines()))
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans)), spans  # no overlap
    for each in sessions:
        each.close()
    no_lock_left()
    assert not [c for u in PAM_USERS for c in user_cgroups(u.uid)]  # each last close removed


# --- bad input: the login goes on, the reason is logged, nothing half written ------------------


def assert_untouched(before: tuple[bytes, bytes]) -> None:
    assert (SUBUID.read_bytes(), SUBGID.read_bytes()) == before
    no_lock_left()
    assert not [c for u in PAM_USERS for c in user_cgroups(u.uid)]


def test_a_malformed_session_conf_does_nothing_and_says_which_line(logins, syslog):
    policy("* subids yes\nnsgt-pam1 pids.max lots\n")
    before = (SUBUID.read_bytes(), SUBGID.read_bytes())
    login = logins(DAVE.name)
    assert login.open()["seconds"] < SESSION_BOUND + STARTUP_SLACK
    line = syslog.wait_line(b"open_session for nsgt-pam1", b"/etc/nsgate/session.conf: line 2")
    assert priority(line) == LOG_AUTHPRIV | LOG_WARNING
    assert b"nothing done" in line
    assert_untouched(before)
    login.close()


def test_a_session_conf_others_may_write_is_not_trusted(logins, syslog):
    write_etc("nsgate/session.conf", "* subids yes\n", mode=0o666)
    before = (SUBUID.read_bytes(), SUBGID.read_bytes())
    login = logins(DAVE.name)
    assert login.open()["seconds"] < SESSION_BOUND + STARTUP_SLACK
    line = syslog.wait_line(b"open_session for nsgt-pam1", b"/etc/nsgate/session.conf",
                            b"nothing done")
    assert priority(line) == LOG_AUTHPRIV | LOG_WARNING
    assert_untouched(before)
    login.close()


def test_a_full_subid_space_is_logged_and_nothing_written(logins, syslog):
    # alice 200000+65536 and bob 300000+65536 leave no room for 65536 ids in 200000..365535
    login_defs(drop=("SUB_UID_MIN", "SUB_UID_MAX", "SUB_GID_MIN", "SUB_GID_MAX"),
               add="SUB_UID_MIN 200000\nSUB_UID_MAX 365535\n"
                   "SUB_GID_MIN 200000\nSUB_GID_MAX 365535\n")
    before = (SUBUID.read_bytes(), SUBGID.read_bytes())
    login = logins(FRANK.name)
    assert login.open()["seconds"] < SESSION_BOUND + STARTUP_SLACK
    line = syslog.wait_line(b"open_session for nsgt-pam3", b"subuids:")
    assert priority(line) == LOG_AUTHPRIV | LOG_WARNING
    syslog.wait_line(b"open_session for nsgt-pam3", b"subgids:")
    login.close()
    assert_untouched(before)


def test_a_user_with_no_passwd_entry_logs_in_and_nothing_is_done(logins, syslog):
    before = (SUBUID.read_bytes(), SUBGID.read_bytes())
    login = logins("nsgt-ghost")  # pam_permit lets anyone in
    assert login.open()["seconds"] < SESSION_BOUND + STARTUP_SLACK
    line = syslog.wait_line(b"open_session for nsgt-ghost",
                            b"no such user in the passwd database: nothing done")
    assert priority(line) == LOG_AUTHPRIV | LOG_WARNING
    login.close()
    syslog.wait_line(b"close_session for nsgt-ghost", b"no such user")
    assert_untouched(before)


def test_a_lock_left_by_a_dead_writer_is_taken_over(logins, syslog):
    dead = subprocess.Popen(["true"])
    dead.wait()
    write_etc("subuid.lock", f"{dead.pid}\0", mode=0o600)
    login = logins(GRACE.name)
    login.open()
    syslog.wait_line(b"open_session for nsgt-pam4", b"added nsgt-pam4:", b"to /etc/subuid")
    assert len(lines_of(SUBUID, GRACE.name)) == 1
    no_lock_left()
    login.close()


def test_a_lock_held_by_a_live_writer_delays_no_login(logins, syslog):
    holder = subprocess.Popen(["sleep", "600"])
    try:
        write_etc("subuid.lock", f"{holder.pid}\0", mode=0o600)
        before = SUBUID.read_bytes()
        login = logins(GRACE.name)
        answer = login.open()
        # the worker waits 15 s for the lock; the login waited at most the bound
        assert answer["seconds"] < SESSION_BOUND + STARTUP_SLACK
        line = syslog.wait_line(b"open_session for nsgt-pam4", b"subuids:",
                                b"is held by process %d" % holder.pid)
        assert priority(line) == LOG_AUTHPRIV | LOG_WARNING
        syslog.wait_line(b"open_session for nsgt-pam4", b"added nsgt-pam4:", b"/etc/subgid",
                         b"the login went on after 5 s")
        assert SUBUID.read_bytes() == before
        assert len(lines_of(SUBGID, GRACE.name)) == 1
        assert Path("/etc/subuid.lock").read_bytes() == f"{holder.pid}\0".encode()
        login.close()
    finally:
        holder.kill()
        holder.wait()
        Path("/etc/subuid.lock").unlink(missing_ok=True)
    no_lock_left()


def test_a_read_only_etc_is_logged_and_the_login_goes_on(logins, syslog):
    before = (SUBUID.read_bytes(), SUBGID.read_bytes())
    read_only_etc = ("unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
                     'mount --bind /etc /etc && mount -o remount,bind,ro /etc && exec "$@"',
                     "sh")
    login = logins(DAVE.name, wrap=read_only_etc)
    assert login.open()["seconds"] < SESSION_BOUND + STARTUP_SLACK
    line = syslog.wait_line(b"open_session for nsgt-pam1", b"subuids:", b"Read-only file system")
    assert priority(line) == LOG_AUTHPRIV | LOG_WARNING
    syslog.wait_line(b"open_session for nsgt-pam1", b"subgids:", b"Read-only file system")
    login.close()
    assert_untouched(before)


# --- the hook's own rules ----------------------------------------------------------------------


def test_the_pam_environment_cannot_name_another_user(logins, syslog):
    """pam_exec passes the PAM environment first: a PAM_USER there (pam_env's user_readenv) is
    not the user; the hook reads pam_exec's own items, at the end of its environment."""
    login = logins(DAVE.name)
    login.open(putenv=(f"PAM_USER={ERIN.name}", "PAM_TYPE=close_session",
                       "PAM_SERVICE=forged"))
    syslog.wait_line(b"open_session for nsgt-pam1", b"(service nsgate-test)", b"added")
    assert len(lines_of(SUBUID, DAVE.name)) == 1
    assert lines_of(SUBUID, ERIN.name) == []
    login.close()


def test_a_non_session_line_does_nothing(logins, syslog):
    line = SNIPPET.read_text().splitlines()[-1].replace("session", "account", 1)
    install_service(extra=line + "\n")
    before = (SUBUID.read_bytes(), SUBGID.read_bytes())
    login = logins(DAVE.name)
    login.open()
    warned = syslog.wait_line(b"called for account", b"acts on a `session` line only")
    assert priority(warned) == LOG_AUTHPRIV | LOG_WARNING
    syslog.wait_line(b"open_session for nsgt-pam1", b"added")  # the session line still runs
    assert SUBUID.read_bytes() != before[0]
    login.close()


def test_without_seteuid_under_a_setuid_caller_the_hook_refuses(logins, syslog):
    """A su-like caller: real uid the user's, effective uid root. pam_exec without `seteuid`
    keeps the real uid; the hook then does nothing and says to add it."""
    line = SNIPPET.read_text().splitlines()[-1].replace(" seteuid", "")
    write_etc("pam.d/nsgate-test", "auth required pam_permit.so\naccount required "
                                   f"pam_permit.so\n{line}\n")
    before = (SUBUID.read_bytes(), SUBGID.read_bytes())
    login = logins(DAVE.name, wrap=("setpriv", f"--ruid={DAVE.uid}", "--"))
    login.open()
    warned = syslog.wait_line(b"open_session", b"not root's alone", b"`seteuid`")
    assert b"real/effective/saved" in warned and b"%d/0/0" % DAVE.uid in warned
    assert (SUBUID.read_bytes(), SUBGID.read_bytes()) == before
    install_service()  # the snippet as shipped: seteuid makes the same caller root throughout
    again = logins(DAVE.name, wrap=("setpriv", f"--ruid={DAVE.uid}", "--"))
    again.open()
    syslog.wait_line(b"open_session for nsgt-pam1", b"added")
    login.close()
    again.close()


def test_run_by_hand_it_says_what_it_is_for():
    result = subprocess.run([str(NSGATE_BIN), "session"], capture_output=True, text=True,
                            env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 2
    assert "run by pam_exec(8) from a PAM session line" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_user_forging_pam_exec_s_environment_gets_nothing(syslog):
    before = (SUBUID.read_bytes(), SUBGID.read_bytes())
    env = {"PATH": "/usr/bin:/bin", "PAM_SERVICE": "sshd", "PAM_USER": DAVE.name,
           "PAM_TYPE": "open_session for root: added x"}
    result = subprocess.run(["setpriv", f"--reuid={DAVE.uid}", f"--regid={DAVE.gid}",
                             "--clear-groups", str(NSGATE_BIN), "session"],
                            capture_output=True, text=True, env=env)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    line = syslog.wait_line(b"not root's alone", b"nothing done")
    assert b"failed: 'open_session for root: added x': run with uids 23201/23201/23201" in line
    assert (SUBUID.read_bytes(), SUBGID.read_bytes()) == before


def test_the_snippet_is_the_installed_pam_exec_line():
    lines = [line for line in SNIPPET.read_text().splitlines() if not line.startswith("#")]
    assert lines == [f"session optional pam_exec.so quiet seteuid {NSGATE_BIN} session"]
    assert os.stat(SNIPPET).st_mode & 0o777 == 0o644


# --- the delegated cgroup ----------------------------------------------------------------------
# This machine's kind: v1 controllers, the named name=systemd and the unified v2 hierarchy, no
# systemd: nsgate/user-<uid> (root's, the limits) and its child `delegate` (the user's, the
# session's process) in every hierarchy.

HOOK_CGROUP = "/nsgate/user-{uid}/delegate"


def assert_session_cgroup(login: Login, user) -> None:
    tops = user_cgroups(user.uid)
    assert sorted(t.parent.parent for t in tops) == sorted(hierarchies()), tops
    for top in tops:
        st = top.stat()
        assert (st.st_uid, st.st_mode & 0o022) == (0, 0), top  # the limits: root's alone
        delegate = top / "delegate"
        owned = [delegate, delegate / "cgroup.procs"]
        owned += [delegate / name for name in ("tasks", "cgroup.subtree_control",
                                               "cgroup.threads") if (delegate / name).exists()]
        for path in owned:
            assert path.stat().st_uid == user.uid, path
    wanted = HOOK_CGROUP.format(uid=user.uid)
    assert set(cgroup_of(login.pid).values()) == {wanted}, cgroup_of(login.pid)


def test_open_puts_the_session_in_a_delegated_cgroup_and_the_last_close_removes_it(logins,
                                                                                  syslog):
    policy("nsgt-pam1 pids.max 40\nnsgt-pam1 memory.max 256M\n@nsgt-pamgroup cpu.weight 50\n")
    first, second = logins(DAVE.name), logins(DAVE.name)
    before = cgroup_of(first.pid)
    first.open()
    line = syslog.wait_line(b"open_session for nsgt-pam1", b"cgroup:")
    assert b"pids.max=40" in line and b"memory.max=256M" in line and b"cpu.weight=50" in line
    assert_session_cgroup(first, DAVE)
    top = {t.parent.parent.name: t for t in user_cgroups(DAVE.uid)}
    assert (top["pids"] / "pids.max").read_text().strip() == "40"
    assert (top["memory"] / "memory.limit_in_bytes").read_text().strip() == str(256 << 20)
    assert (top["cpu"] / "cpu.shares").read_text().strip() == str(50 * 1024 // 100)
    # a process the user starts in the session lands in the delegated cgroup, and may make
    # cgroups of its own below it (the delegation)
    inner = first.run("sh", "-c", "cat /proc/self/cgroup; mkdir /sys/fs/cgroup/pids" +
                      HOOK_CGROUP.format(uid=DAVE.uid) + "/mine && echo made")
    assert inner["status"] == 0, inner
    assert f"pids:{HOOK_CGROUP.format(uid=DAVE.uid)}\n" in inner["stdout"]
    assert inner["stdout"].endswith("made\n")
    (top["pids"] / "delegate" / "mine").rmdir()
    second.open()
    assert_session_cgroup(second, DAVE)
    first.close()  # another session of the user still runs: the cgroup stays
    assert cgroup_of(first.pid) == before
    assert user_cgroups(DAVE.uid)
    second.close()  # the last one: gone everywhere
    assert cgroup_of(second.pid) == before
    assert user_cgroups(DAVE.uid) == []
    syslog.wait_line(b"close_session for nsgt-pam1", b"cgroup: closed")


def test_a_cgroup_the_user_prepared_is_refused_and_nothing_is_left(logins, syslog):
    """The user's cgroup already exists in one hierarchy, owned by the user (made to capture
    the limits): the cgroup step is refused with the reason, what it made elsewhere is undone,
    and the login goes on; the subids are a step of their own and are still allocated."""
    pids_top = CGROUP_ROOT / "pids" / "nsgate"
    made_top = not pids_top.exists()
    planted = pids_top / f"user-{GRACE.uid}"
    planted.mkdir(parents=True)
    try:
        os.chown(planted, GRACE.uid, GRACE.gid)
        policy("nsgt-pam4 pids.max 30\n")
        login = logins(GRACE.name)
        before = cgroup_of(login.pid)
        assert login.open()["seconds"] < SESSION_BOUND + STARTUP_SLACK
        line = syslog.wait_line(b"open_session for nsgt-pam4", b"cgroup:", b"refusing",
                                str(planted).encode(), b"not root's alone")
        assert priority(line) == LOG_AUTHPRIV | LOG_WARNING
        syslog.wait_line(b"open_session for nsgt-pam4", b"added nsgt-pam4:")
        assert cgroup_of(login.pid) == before
        assert user_cgroups(GRACE.uid) == [planted]  # the others undone; this one not ours
        assert planted.stat().st_uid == GRACE.uid and not list(planted.glob("*/"))
        login.close()
        assert user_cgroups(GRACE.uid) == []  # close removes the user's empty tree, this too
    finally:
        with contextlib.suppress(FileNotFoundError):
            planted.rmdir()
        if made_top:
            with contextlib.suppress(OSError):
                pids_top.rmdir()


def test_a_fork_bomb_in_the_session_stops_at_pids_max(logins):
    policy("nsgt-pam3 pids.max 30\n")
    login = logins(FRANK.name)
    login.open()
    bomb = ("import os, time\n"
            "kids, refused = [], 0\n"
            "for _ in range(300):\n"
            "    try:\n"
            "        pid = os.fork()\n"
            "    except OSError:\n"
            "        refused += 1\n"
            "        continue\n"
            "    if pid == 0:\n"
            "        time.sleep(600)\n"
            "        os._exit(0)\n"
            "    kids.append(pid)\n"
            "print(len(kids), refused)\n"
            "for pid in kids:\n"
            "    os.kill(pid, 9)\n"
            "    os.waitpid(pid, 0)\n")
    result = login.run("python3", "-I", "-c", bomb)
    assert result["status"] == 0, result
    forked, refused = map(int, result["stdout"].split())
    assert forked < 30 and refused == 300 - forked  # the driver and the bomb itself count too
    top = {t.parent.parent.name: t for t in user_cgroups(FRANK.uid)}
    # v1 counts a refused fork in the cgroup of the process that tried: the session's
    events = (top["pids"] / "delegate" / "pids.events").read_text()
    assert int(events.split()[1]) >= refused, events
    login.close()
    assert user_cgroups(FRANK.uid) == []


def test_a_memory_hog_in_the_session_is_killed_at_memory_max(logins):
    policy("nsgt-pam4 memory.max 64M\n")
    login = logins(GRACE.name)
    login.open()
    result = login.run("python3", "-I", "-c", "b = b'x' * (512 << 20); print('survived')")
    assert result["status"] == -9 and "survived" not in result["stdout"], result
    top = {t.parent.parent.name: t for t in user_cgroups(GRACE.uid)}
    # the user's limit was reached, and the OOM killer killed the hog where it ran (v1 counts
    # the kill there; this kernel keeps memory.failcnt at 0)
    assert (top["memory"] / "memory.max_usage_in_bytes").read_text() == f"{64 << 20}\n"
    oom = dict(line.split() for line in (top["memory"] / "delegate" / "memory.oom_control")
               .read_text().splitlines())
    assert int(oom["oom_kill"]) >= 1, oom
    assert login.run("true")["status"] == 0  # the session itself lives on
    login.close()
    assert user_cgroups(GRACE.uid) == []


def test_an_unprivileged_lxc_start_in_the_session_runs_under_the_user_s_cgroup(logins):
    """Debian's lxc-start, run by the user inside the PAM session (no systemd, no cgroup made
    by hand as tests/test_lxc_real.py must): liblxc makes the container's cgroups below the
    session's delegated one, in every hierarchy. The rootfs and config are test_lxc_real's,
    without a nic; the user holds test_lxc_real's range (SUBID_START)."""
    policy("nsgt-pam1 pids.max 200\n")
    for name in ("subuid", "subgid"):
        write_etc(name, f"{DAVE.name}:{lxc_real.SUBID_START}:65536\n")
    home = lxc_real.WORLD / "session"
    shutil.rmtree(home, ignore_errors=True)
    lxcpath = home / "lxc"
    (lxcpath / "c1").mkdir(parents=True)
    (home / "run").mkdir()
    lxc_real._rootfs(lxcpath / "c1" / "rootfs")
    config = [line for line in lxc_real._config(lxcpath / "c1" / "rootfs", None).splitlines()
              if not line.startswith("lxc.net.")]
    (lxcpath / "c1" / "config").write_text("\n".join([*config, "lxc.net.0.type = empty"]) + "\n")
    for path in (lxc_real.WORLD, home):
        path.chmod(0o755)
    for path in (home, home / "run", lxcpath, lxcpath / "c1", lxcpath / "c1" / "config"):
        os.chown(path, DAVE.uid, DAVE.gid)
    env = {"PATH": f"{NSGATE}:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(home),
           "XDG_RUNTIME_DIR": str(home / "run")}
    lxc = ("-P", str(lxcpath), "-n", "c1")
    login = logins(DAVE.name)
    login.open()
    try:
        started = login.run("lxc-start", *lxc, "-d", "-l", "info", "-o", str(home / "lxc.log"),
                            env=env)
        log = (home / "lxc.log").read_text() if (home / "lxc.log").exists() else ""
        assert started["status"] == 0, (started, log[-3000:])
        init = login.run("lxc-info", *lxc, "-p", "-H", env=env)
        assert init["status"] == 0, init
        where = cgroup_of(int(init["stdout"]))
        session = HOOK_CGROUP.format(uid=DAVE.uid) + "/"
        assert all(path.startswith(session) for path in where.values()), where
        assert login.run("lxc-stop", *lxc, "-k", env=env)["status"] == 0
    finally:
        login.run("lxc-stop", *lxc, "-k", env=env)
    login.close()
    assert user_cgroups(DAVE.uid) == []  # liblxc's cgroups below it went with it
    shutil.rmtree(home, ignore_errors=True)
