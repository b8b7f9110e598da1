"""/etc/nsgate/session.conf through the installed `nsgate`: `nsgate check` lints it (each finding
code with its file:line, an unsafe file or directory refused by the trusted-file rule), and
`nsgate explain USER` shows what a login of the user gets from it and which line decided each
setting, for root and for the user, in text and JSON."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.admin_support import nsgate, nsgate_json
from tests.support import ALICE, BOB, CAROL, write_etc

CONF = Path("/etc/nsgate/session.conf")
SHOWN = str(CONF)


@pytest.fixture(autouse=True)
def no_session_conf():
    """No /etc/nsgate before and after each test (in the sandbox's /etc overlay)."""
    shutil.rmtree(CONF.parent, ignore_errors=True)
    CONF.parent.mkdir(mode=0o755)
    os.chmod(CONF.parent, 0o755)
    yield
    shutil.rmtree(CONF.parent, ignore_errors=True)


def write_conf(text: str | bytes, mode: int = 0o644) -> None:
    write_etc("nsgate/session.conf", text, mode)


def findings() -> tuple[int, list[tuple[str, int | None, str, str]]]:
    status, report = nsgate_json("check")
    return status, [(f["file"], f["line"], f["severity"], f["code"])
                    for f in report["findings"]]


def only_finding(line: int | None, severity: str, code: str, file: str = SHOWN) -> str:
    """The system has exactly this finding; the human line says file:line. Its message."""
    status, report = nsgate_json("check")
    found = [(f["file"], f["line"], f["severity"], f["code"]) for f in report["findings"]]
    assert found == [(file, line, severity, code)], report["findings"]
    assert status == (1 if severity == "error" else 0)
    human = nsgate("check")
    where = file if line is None else f"{file}:{line}"
    assert f"{where}: {severity}: " in human.stdout and f"[{code}]" in human.stdout, human
    assert human.returncode == status
    return report["findings"][0]["message"]


# --- nsgate check ----------------------------------------------------------------------------

def test_a_good_policy_has_no_findings():
    write_conf("# site policy\n* subids yes\n0-999 subids no\n0-999 cgroup no\n"
               "* pids.max 4096\n@nsgt-aux memory.max 8G\nnsgt-alice cpu.max 50000 100000\n"
               "20000-29999 io.weight default 100\n")
    assert findings() == (0, [])
    result = nsgate("check")
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout.endswith("nsgate check: 0 errors, 0 warnings\n")


def test_no_file_is_no_finding():
    CONF.parent.rmdir()
    assert findings() == (0, [])


@pytest.mark.parametrize(("text", "line", "words"), [
    ("nsgt-alice subids maybe\n", 1, "subids is 'maybe', not yes or no"),
    ("# ok\n\nnsgt-alice memory.max 1GB\n", 3, "memory.max '1GB'"),
    ("nsgt-alice pids.max 10 junk\n", 1, "pids.max '10 junk'"),
    ("30000-20000 subids yes\n", 1, "is empty"),
    ("nsgt-alice memory.high 1G\n", 1, "unknown key 'memory.high'"),
    ("nsgt-alice subids yes\r\n", 1, "control character"),
])
def test_a_line_that_does_not_parse(text, line, words):
    write_conf(text)
    message = only_finding(line, "error", "syntax")
    assert words in message and "refuses the whole file" in message


def test_every_bad_line_is_reported():
    write_conf("a subids x\nnsgt-alice subids yes\nb\n")
    assert findings() == (1, [(SHOWN, 1, "error", "syntax"), (SHOWN, 3, "error", "syntax")])


def test_an_oversized_file():
    write_conf(b"#" * (1 << 20) + b"\n")
    assert "larger than 1048576 bytes" in only_finding(None, "error", "syntax")


def test_unknown_user_and_group():
    write_conf("nsgt-nobody subids no\n@nsgt-nogroup pids.max 10\n")
    assert findings() == (0, [(SHOWN, 1, "warning", "unknown-who"),
                              (SHOWN, 2, "warning", "unknown-who")])
    human = nsgate("check").stdout
    assert f"{SHOWN}:1: warning: no user 'nsgt-nobody' in the passwd database" in human


def test_a_duplicate_and_a_shadowed_setting():
    write_conf("nsgt-alice pids.max 10\nnsgt-alice pids.max 10\n")
    only_finding(2, "warning", "duplicate-setting")
    write_conf("nsgt-alice pids.max 10\nnsgt-alice pids.max 20\n")
    assert "line 1 sets it to '10'" in only_finding(2, "error", "shadowed-setting")


def test_a_limit_on_a_user_without_a_cgroup():
    write_conf("@nsgt-aux cgroup no\nnsgt-alice memory.max 1G\n")
    message = only_finding(2, "error", "limit-without-cgroup")
    assert "nsgt-alice's cgroup is off (line 1)" in message
    # outside UID_MIN..UID_MAX of login.defs, a user has no cgroup unless a line gives one
    write_etc("login.defs", "UID_MIN 1000\nUID_MAX 20000\n")
    write_conf("nsgt-bob memory.max 1G\n")
    assert "uid 23002 is outside UID_MIN..UID_MAX" in only_finding(1, "error",
                                                                    "limit-without-cgroup")


def test_a_group_writable_policy_is_unsafe():
    write_conf("* subids yes\n", mode=0o664)
    message = only_finding(None, "error", "unsafe-file")
    assert "writable by group" in message and f"chmod go-w {SHOWN}" in message


def test_a_policy_owned_by_a_user_is_unsafe():
    write_conf("* subids yes\n")
    os.chown(CONF, ALICE.uid, 0)
    assert "owned by uid 23001" in only_finding(None, "error", "unsafe-file")


def test_a_symlinked_policy_is_unsafe():
    target = CONF.parent / "real.conf"
    target.write_text("* subids yes\n")
    CONF.symlink_to(target)
    assert "symbolic link" in only_finding(None, "error", "unsafe-file")


def test_a_writable_directory_of_the_policy_is_unsafe():
    write_conf("* subids yes\n")
    os.chmod(CONF.parent, 0o777)
    assert "its directory /etc/nsgate" in only_finding(None, "error", "unsafe-file")


def test_a_directory_in_place_of_the_policy_is_unsafe():
    CONF.mkdir(mode=0o755)
    assert "is not a regular file" in only_finding(None, "error", "unsafe-file")
    session = session_of("nsgt-alice")
    assert session["state"] == "refused" and "not a regular file" in session["error"]


def test_names_that_are_not_utf8_are_shown_escaped():
    write_conf(b"\xffnobody subids no\n")
    assert "no user '\\xffnobody'" in only_finding(1, "warning", "unknown-who")


def test_a_user_running_check_without_read_access_gets_a_note():
    write_conf("* subids maybe\n", mode=0o600)
    result = nsgate("check", user=ALICE)
    assert f"cannot read {SHOWN} (permission denied)" in result.stderr
    assert f"{SHOWN}:1" not in result.stdout


# --- nsgate explain ----------------------------------------------------------------------------

def session_of(who: str, **kwargs) -> dict:
    status, report = nsgate_json("explain", who, **kwargs)
    assert status == 0
    return report["session"]


def limits(session: dict) -> dict[str, tuple[str | None, str, bool]]:
    return {item["key"]: (item["value"], item["origin"], item["applied"])
            for item in session["limits"]}


def test_explain_without_a_policy_gives_the_defaults():
    session = session_of("nsgt-alice")
    assert session["state"] == "absent" and session["error"] is None
    assert session["subids"] == {"value": True, "origin": "default"}
    assert session["cgroup"] == {"value": True, "origin": "default"}
    assert list(limits(session)) == ["pids.max", "memory.max", "memory.swap.max", "cpu.max",
                                     "cpu.weight", "io.weight"]
    assert all(value == (None, "default", False) for value in limits(session).values())
    assert session["cgroup_now"] == []  # no delegated cgroup until a login makes one
    assert sorted(session["groups"]) == ["nsgt-alice", "nsgt-aux"]  # initgroups
    lines = nsgate("explain", "nsgt-alice").stdout.splitlines()
    start = lines.index(f"session ({SHOWN}):")
    assert lines[start + 1].startswith("  no file: the defaults apply")
    assert lines[start + 2].split() == ["SETTING", "VALUE", "FROM"]
    assert lines[start + 3].split() == ["subids", "yes", "default", "(uid", "23001", "is",
                                        "inside", "UID_MIN..UID_MAX,", "1000..60000)"]
    assert session["default_uids"] == [1000, 60000]
    assert lines[start + 5].split() == ["pids.max", "-", "default", "(no", "limit)"]


def test_explain_a_user_login_defs_leaves_out():
    write_etc("login.defs", "UID_MIN 1000\nUID_MAX 20000\n")
    session = session_of("nsgt-alice")
    assert session["subids"] == {"value": False, "origin": "default"}
    assert session["cgroup"] == {"value": False, "origin": "default"}
    text = nsgate("explain", "nsgt-alice").stdout
    assert "cgroup           no     default (uid 23001 is outside UID_MIN..UID_MAX, 1000..20000)" \
        in text


POLICY = """\
# site policy
* pids.max 1000
20000-29999 pids.max 2000
20000-29999 memory.max 4G
@nsgt-aux memory.max 8G
nsgt-alice cpu.max 50000 100000
nsgt-carol cgroup no
* subids no
@nsgt-aux subids yes
"""


def test_explain_names_the_deciding_line_of_each_setting():
    write_conf(POLICY)
    alice = session_of("nsgt-alice")
    assert alice["state"] == "applied"
    assert alice["subids"] == {"value": True, "origin": "line 9"}  # @group over *
    assert alice["cgroup"] == {"value": True, "origin": "default"}
    assert limits(alice) == {"pids.max": ("2000", "line 3", True),       # range over *
                             "memory.max": ("8G", "line 5", True),       # @group over range
                             "memory.swap.max": (None, "default", False),
                             "cpu.max": ("50000 100000", "line 6", True),  # user
                             "cpu.weight": (None, "default", False),
                             "io.weight": (None, "default", False)}
    bob = session_of("nsgt-bob")
    assert bob["subids"] == {"value": False, "origin": "line 8"}
    assert limits(bob)["memory.max"] == ("4G", "line 4", True)
    carol = session_of("nsgt-carol")
    assert carol["cgroup"] == {"value": False, "origin": "line 7"}
    assert limits(carol)["memory.max"] == ("4G", "line 4", False)
    lines = nsgate("explain", "nsgt-carol").stdout.splitlines()
    start = lines.index(f"session ({SHOWN}):")
    table = {line.split()[0]: line for line in lines[start + 2:start + 10]}
    assert table["cgroup"].split() == ["cgroup", "no", "line", "7"]
    assert "4G (not applied: no cgroup)" in table["memory.max"]
    assert table["memory.max"].split()[-2:] == ["line", "4"]


def test_explain_a_refused_policy():
    write_conf(POLICY + "nsgt-bob pids.max lots\n")
    session = session_of("nsgt-alice")
    assert session["state"] == "refused"
    assert session["error"].startswith(f"{SHOWN}: line 10: pids.max 'lots'")
    assert session["subids"] is None and session["limits"] == []
    text = nsgate("explain", "nsgt-alice").stdout
    assert f"  refused: {SHOWN}: line 10: pids.max 'lots'" in text
    assert "so the session hook sets up nothing at login, for anyone" in text


def test_explain_refuses_an_unsafe_policy_as_the_hook_would():
    write_conf(POLICY, mode=0o646)
    session = session_of("nsgt-alice")
    assert session["state"] == "refused"
    assert session["error"].startswith(f"the file {SHOWN} is writable by others")


def test_explain_with_a_login_defs_bound_that_is_no_number():
    write_etc("login.defs", "UID_MAX 6e4\n")
    session = session_of("nsgt-alice")
    assert session["state"] == "refused"
    assert session["error"] == "UID_MAX in /etc/login.defs is '6e4', not a decimal number"
    write_conf("* subids yes\n* cgroup yes\n")  # no default needed
    assert session_of("nsgt-alice")["state"] == "applied"


def test_a_user_explains_their_own_session():
    write_conf(POLICY)
    session = session_of("nsgt-bob", user=BOB)
    assert session["subids"] == {"value": False, "origin": "line 8"}
    assert session["groups"] == ["nsgt-bob"]


def test_a_user_who_cannot_read_the_policy():
    write_conf(POLICY, mode=0o600)
    status, report = nsgate_json("explain", user=CAROL)
    assert status == 0
    assert report["session"]["state"] == "unreadable"
    assert any(f"cannot read {SHOWN}" in note for note in report["notes"])
    text = nsgate("explain", user=CAROL).stdout
    assert "  not known: the file cannot be read here (run as root)" in text
