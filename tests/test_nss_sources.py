"""Several `subid:` sources in /etc/nsswitch.conf, asked in order (issue 11 item 3; shadow reads
the first token only, shadow#1562).

The first source that holds any range for the user answers; a source that does not know the
user passes to the next; a source that fails (a module that cannot be loaded, or one whose
directory is down) is a refusal; a source after the answering one is not even loaded. The
modules are test_nss_plugin.py's, compiled at test time and overlaid on the library directory:
nsgtest grants nsgt-alice 500000/600000, nsgtdir grants only the "directory user" nsgt-carol
700000/800000 (she has no line in the files), nsgtfail answers every question with
SUBID_STATUS_ERROR_CONN, nosuchmodule does not exist. The files grant alice 200000 and bob
300000 (conftest.py).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests import test_nss_plugin
from tests.admin_support import nsgate, nsgate_json
from tests.support import ALICE, BOB, CAROL, PREFIX, User, helper, run_as, write_etc
from tests.test_nss_plugin import map_cmd, use_subid_source

pytestmark = pytest.mark.usefixtures("transport")

# test_nss_plugin.py's fixtures: the compiled modules, overlaid on the library directory
plugin_dir = test_nss_plugin.plugin_dir
plugins_on_libpath = test_nss_plugin.plugins_on_libpath
nss_targets = test_nss_plugin.nss_targets

FILES_RANGE = (200000, 65536)      # alice's in /etc/subuid and /etc/subgid
BOB_RANGE = (300000, 65536)        # bob's there
ALICE_PLUGIN = {"uid": (500000, 65536), "gid": (600000, 65536)}  # nsgtest's, alice's
CAROL_PLUGIN = {"uid": (700000, 65536), "gid": (800000, 65536)}  # nsgtdir's, carol's
PROGS = {"uid": "newuidmap", "gid": "newgidmap"}


def map_range(targets, user: User, kind: str, start: int, count: int):
    """`user` maps itself and [start, start + count) into a fresh namespace of its own, with
    the installed helper: (result, the map now)."""
    target = targets(user)
    own = user.uid if kind == "uid" else user.gid
    result = run_as(user, map_cmd(PROGS[kind], target.pid, 0, own, 1, 1, start, count))
    return result, (target.uid_map() if kind == "uid" else target.gid_map()), target


def assert_maps(targets, user: User, kind: str, start: int, count: int) -> None:
    result, mapped, _ = map_range(targets, user, kind, start, count)
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"" and result.stderr == b""
    own = user.uid if kind == "uid" else user.gid
    assert mapped == [(0, own, 1), (1, start, count)]


def refusal(targets, user: User, kind: str, start: int, count: int) -> list[str]:
    """The helper's stderr lines for a request it must refuse, having mapped nothing."""
    result, mapped, target = map_range(targets, user, kind, start, count)
    assert result.returncode == 1, result.stderr
    assert result.stdout == b""
    assert mapped == []
    assert target.setgroups() == "allow"  # newgidmap: no side effect at all
    lines = result.stderr.decode().splitlines()
    assert all(line.startswith(f"{PROGS[kind]}: ") for line in lines), lines
    return lines


def getsubids(user: User, kind: str, name: str) -> subprocess.CompletedProcess[bytes]:
    return run_as(user, [helper("getsubids"), *(["-g"] if kind == "gid" else []), name])


# --- files first: local users keep their files ranges, the directory serves the others -------

@pytest.mark.parametrize("kind", ["uid", "gid"])
def test_directory_user_maps_the_range_only_the_module_knows(nss_targets, kind: str) -> None:
    use_subid_source("files nsgtdir")
    assert_maps(nss_targets, CAROL, kind, *CAROL_PLUGIN[kind])
    assert_maps(nss_targets, ALICE, kind, *FILES_RANGE)  # and alice keeps hers


@pytest.mark.parametrize("kind", ["uid", "gid"])
@pytest.mark.parametrize("later", ["nsgtfail", "nosuchmodule"])
def test_a_source_after_the_answering_one_is_never_reached(nss_targets, kind: str,
                                                           later: str) -> None:
    """alice's files line answers: the module after the files is not asked (nsgtfail would
    fail any question) nor even loaded (nosuchmodule cannot be)."""
    use_subid_source(f"files {later}")
    assert_maps(nss_targets, ALICE, kind, *FILES_RANGE)
    listing = getsubids(ALICE, kind, "nsgt-alice")
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout == b"0: nsgt-alice 200000 65536\n"


@pytest.mark.parametrize("owner", ["23001", "nsgt-alias"], ids=["by-uid", "by-alias"])
def test_a_line_by_uid_or_by_another_name_is_the_users_too(nss_targets, owner: str) -> None:
    """The files answer for alice through a line of her uid, or of another name of her uid
    (shadow's second pass): the failing module after them is not asked."""
    write_etc("subuid", f"{owner}:400000:65536\nnsgt-bob:300000:65536\n")
    use_subid_source("files nsgtfail")
    assert_maps(nss_targets, ALICE, "uid", 400000, 65536)
    lines = refusal(nss_targets, ALICE, "uid", 400000, 65537)  # still the files' answer
    assert any("owns in /etc/subuid: 400000-465535" in line for line in lines), lines


@pytest.mark.parametrize("kind", ["uid", "gid"])
def test_the_answering_source_alone_grants(nss_targets, kind: str) -> None:
    """alice is known to both: the files answer, so the module's range is not hers here."""
    use_subid_source("files nsgtest")
    lines = refusal(nss_targets, ALICE, kind, *ALICE_PLUGIN[kind])
    start, count = ALICE_PLUGIN[kind]
    assert lines[0] == (f"{PROGS[kind]}: {kind} range [1-{count + 1}) -> "
                        f"[{start}-{start + count}) not allowed")
    assert f"{PROGS[kind]}: nsgt-alice (uid 23001) owns in /etc/sub{kind}: 200000-265535 " \
           "(line 1)" in lines


# --- the order reversed ---------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["uid", "gid"])
def test_module_first_then_files(nss_targets, kind: str) -> None:
    use_subid_source("nsgtest files")
    assert_maps(nss_targets, ALICE, kind, *ALICE_PLUGIN[kind])  # the module answers for alice
    lines = refusal(nss_targets, ALICE, kind, *FILES_RANGE)     # so her files line is unused
    assert any("NSS module libsubid_nsgtest.so does not grant nsgt-alice" in line
               for line in lines), lines
    assert f"{PROGS[kind]}: it grants nsgt-alice (uid 23001): {ALICE_PLUGIN[kind][0]}-" \
           f"{ALICE_PLUGIN[kind][0] + 65535}" in lines
    assert_maps(nss_targets, BOB, kind, *BOB_RANGE)  # unknown to the module: the files answer


def test_getsubids_lists_from_the_answering_source(plugins_on_libpath) -> None:
    use_subid_source("nsgtest files")
    for kind in ("uid", "gid"):
        alice = getsubids(ALICE, kind, "nsgt-alice")
        assert alice.returncode == 0, alice.stderr
        assert alice.stdout == f"0: nsgt-alice {ALICE_PLUGIN[kind][0]} 65536\n".encode()
        bob = getsubids(BOB, kind, "nsgt-bob")
        assert bob.returncode == 0, bob.stderr
        assert bob.stdout == b"0: nsgt-bob 300000 65536\n"
    use_subid_source("files nsgtdir")
    for kind in ("uid", "gid"):
        carol = getsubids(CAROL, kind, "nsgt-carol")
        assert carol.returncode == 0, carol.stderr
        assert carol.stdout == f"0: nsgt-carol {CAROL_PLUGIN[kind][0]} 65536\n".encode()
        alice = getsubids(ALICE, kind, "nsgt-alice")
        assert alice.stdout == b"0: nsgt-alice 200000 65536\n"
    nobody = getsubids(BOB, "uid", "nsgt-nosuchuser")  # no source knows it
    assert (nobody.returncode, nobody.stdout, nobody.stderr) == (1, b"",
                                                                 b"Error fetching ranges\n")


# --- a source that fails, when it is reached: refusal, never the next source -----------------

@pytest.mark.parametrize("kind", ["uid", "gid"])
def test_a_module_that_is_down_refuses_the_users_it_is_asked_about(nss_targets,
                                                                   kind: str) -> None:
    """carol has no files line: nsgtfail is asked and fails; nothing falls through to a later
    source (nsgtdir would grant her range). Even her self-map alone is refused."""
    use_subid_source("files nsgtfail nsgtdir")
    lines = refusal(nss_targets, CAROL, kind, *CAROL_PLUGIN[kind])
    assert lines[0] == (f"{PROGS[kind]}: the subid source NSS module libsubid_nsgtfail.so "
                        "failed for nsgt-carol: SUBID_STATUS_ERROR_CONN")
    target = nss_targets(CAROL)
    own = CAROL.uid if kind == "uid" else CAROL.gid
    self_map = run_as(CAROL, map_cmd(PROGS[kind], target.pid, 0, own, 1))
    assert self_map.returncode == 1
    assert b"libsubid_nsgtfail.so failed" in self_map.stderr
    assert (target.uid_map() if kind == "uid" else target.gid_map()) == []
    assert target.setgroups() == "allow"
    listing = getsubids(CAROL, kind, "nsgt-carol")
    assert listing.returncode == 1 and listing.stdout == b""
    assert listing.stderr.startswith(b"getsubids: the subid source NSS module "
                                     b"libsubid_nsgtfail.so failed for nsgt-carol")


@pytest.mark.parametrize("kind", ["uid", "gid"])
def test_a_module_that_cannot_be_loaded_refuses_when_reached(nss_targets, kind: str) -> None:
    use_subid_source("files nosuchmodule nsgtdir")
    lines = refusal(nss_targets, CAROL, kind, *CAROL_PLUGIN[kind])
    assert lines[0] == (f"{PROGS[kind]}: cannot load the subid NSS module "
                        "libsubid_nosuchmodule.so named by /etc/nsswitch.conf")
    listing = getsubids(CAROL, kind, "nsgt-carol")
    assert listing.returncode == 1 and b"libsubid_nosuchmodule.so" in listing.stderr


@pytest.mark.parametrize("kind", ["uid", "gid"])
def test_a_failing_first_source_refuses_everyone(nss_targets, kind: str) -> None:
    """Before the files: even alice's files line is not reached."""
    use_subid_source("nsgtfail files")
    lines = refusal(nss_targets, ALICE, kind, *FILES_RANGE)
    assert "libsubid_nsgtfail.so failed for nsgt-alice" in lines[0]


def test_an_invalid_token_anywhere_refuses(nss_targets) -> None:
    """An NSS action is not a source: the whole line is refused, even for a user the files
    answer for before it."""
    use_subid_source("files [NOTFOUND=return] nsgtdir")
    lines = refusal(nss_targets, ALICE, "uid", *FILES_RANGE)
    assert lines[0] == ("newuidmap: invalid subid source '[NOTFOUND=return]' in "
                        "/etc/nsswitch.conf")


def test_no_source_holds_anything(nss_targets) -> None:
    """carol in neither source: every source asked is named in the refusal."""
    use_subid_source("files nsgtest")
    lines = refusal(nss_targets, CAROL, "uid", *CAROL_PLUGIN["uid"])
    assert ("newuidmap: /etc/subuid holds no subordinate uids for nsgt-carol (uid 23003): the "
            "next source in the subid: line of /etc/nsswitch.conf was asked") in lines
    assert any("NSS module libsubid_nsgtest.so does not grant nsgt-carol" in line
               for line in lines), lines


def test_a_missing_file_is_still_an_error_when_the_files_are_asked(nss_targets) -> None:
    use_subid_source("files nsgtdir")
    Path("/etc/subuid").unlink()
    lines = refusal(nss_targets, CAROL, "uid", *CAROL_PLUGIN["uid"])
    assert lines[0] == "newuidmap: cannot open /etc/subuid: No such file or directory"
    use_subid_source("nsgtdir files")  # the module answers first: the files are not opened
    assert_maps(nss_targets, CAROL, "uid", *CAROL_PLUGIN["uid"])


# --- nsgate explain, nsgate check, holding_source -------------------------------------------

def test_explain_shows_which_source_answers(plugins_on_libpath) -> None:
    use_subid_source("files nsgtest nsgtdir")
    status, report = nsgate_json("explain", "nsgt-carol")
    assert status == 0
    sources = report["sources"]
    assert sources["order"] == ["files", "nsgtest", "nsgtdir"]
    assert Path("/etc/nsswitch.conf").read_text().splitlines()[sources["line"] - 1].startswith(
        "subid:")
    for kind in ("uid", "gid"):
        section = sources[kind]
        assert section["answering"] == "NSS module libsubid_nsgtdir.so"
        assert section["refused"] is None
        assert [(s["where"], s["role"]) for s in section["sources"]] == [
            (f"/etc/sub{kind}", "passes"), ("NSS module libsubid_nsgtest.so", "passes"),
            ("NSS module libsubid_nsgtdir.so", "answers")]
        start, count = CAROL_PLUGIN[kind]
        assert section["sources"][2]["ranges"] == [{"start": start, "count": count,
                                                    "last": start + count - 1}]
    assert any("from NSS module libsubid_nsgtdir.so, not from /etc/subuid" in note
               for note in report["notes"])

    status, report = nsgate_json("explain", "nsgt-alice")
    section = report["sources"]["uid"]
    assert section["answering"] == "/etc/subuid"
    assert [s["role"] for s in section["sources"]] == ["answers", "not asked", "not asked"]
    assert section["sources"][0]["ranges"][0]["start"] == 200000
    assert section["sources"][1]["ranges"][0]["start"] == 500000  # what the helpers skip

    human = nsgate("explain", "nsgt-alice")
    assert human.returncode == 0, human.stderr
    lines = human.stdout.splitlines()
    header = lines.index(f"subid sources (/etc/nsswitch.conf line {sources['line']}: files "
                         "nsgtest nsgtdir):")
    assert lines[header + 1].split() == ["KIND", "SOURCE", "ROLE", "RANGES"]
    assert lines[header + 2].split() == ["uid", "/etc/subuid", "answers", "200000-265535"]
    assert lines[header + 3].split() == ["uid", "NSS", "module", "libsubid_nsgtest.so", "not",
                                         "asked", "500000-565535"]


def test_explain_shows_a_failing_source(plugins_on_libpath) -> None:
    use_subid_source("files nsgtfail nosuchmodule")
    status, report = nsgate_json("explain", "nsgt-carol")
    assert status == 0
    section = report["sources"]["uid"]
    assert section["answering"] is None
    assert "libsubid_nsgtfail.so failed" in section["refused"]
    assert [(s["role"], s["error"] is None) for s in section["sources"]] == [
        ("passes", True), ("fails", False), ("not asked", False)]
    assert section["sources"][1]["error"] == ("the subid source NSS module libsubid_nsgtfail.so "
                                              "failed for nsgt-carol: SUBID_STATUS_ERROR_CONN")
    assert section["sources"][2]["error"].startswith(  # the loader's reason follows
        "cannot load the subid NSS module libsubid_nosuchmodule.so named by /etc/nsswitch.conf: "
        "libsubid_nosuchmodule.so: cannot open shared object file")
    assert any(note.startswith("the helpers refuse the uid requests of this user")
               for note in report["notes"])


def test_explain_with_an_invalid_line(plugins_on_libpath) -> None:
    use_subid_source("files [NOTFOUND=return]")
    status, report = nsgate_json("explain", "nsgt-alice")
    assert status == 0
    assert report["sources"]["uid"] == {
        "answering": None, "sources": [],
        "refused": "invalid subid source '[NOTFOUND=return]' in /etc/nsswitch.conf"}
    assert ("the helpers refuse every gid request: invalid subid source '[NOTFOUND=return]' in "
            "/etc/nsswitch.conf") in report["notes"]


def nsswitch_findings() -> list[tuple[int, str, str, str]]:
    _, report = nsgate_json("check")
    assert "Traceback" not in str(report)
    return [(f["line"], f["code"], f["severity"], f["message"]) for f in report["findings"]
            if f["file"] == "/etc/nsswitch.conf"]


def test_check_lints_the_subid_line(plugins_on_libpath) -> None:
    use_subid_source("files nsgtest")
    assert nsswitch_findings() == []  # every source fine
    kept = [line for line in Path("/etc/nsswitch.conf").read_text().splitlines()
            if not line.lower().startswith("subid:")]
    write_etc("nsswitch.conf", "\n".join(
        [*kept, "subid: files nosuchmodule [NOTFOUND=return] nsgnohas files nsgtest",
         "# subid: ignored comment", "SUBID: sss"]) + "\n")
    line = len(kept) + 1
    findings = nsswitch_findings()
    assert [(n, code, severity) for n, code, severity, _ in findings] == [
        (line, "subid-source", "error"),
        (line, "subid-module", "error"),
        (line, "subid-module", "error"),
        (line, "subid-duplicate", "warning"),
        (line + 2, "subid-duplicate", "warning")]
    messages = [message for *_, message in findings]
    assert messages[0].startswith("'[NOTFOUND=return]' is not a subid source")
    assert "libsubid_nosuchmodule.so cannot be loaded" in messages[1]
    assert "does not provide shadow_subid_has_range" in messages[2]
    assert "files is named twice" in messages[3]
    assert f"only the first subid: line (line {line}) is read" in messages[4]
    human = nsgate("check")
    assert human.returncode == 1
    assert f"/etc/nsswitch.conf:{line}: error: '[NOTFOUND=return]' is not a subid source" \
        in human.stdout


HOLDING_SOURCE = """
import sys
sys.path.append(sys.argv[1])
from nsgate.errors import Refusal
from nsgate.system import files, subid_db
try:
    print(subid_db.holding_source(sys.argv[2], sys.argv[3].encode(), int(sys.argv[4]),
                                  files.read_small("/etc/nsswitch.conf")))
except Refusal as refusal:
    print("Refusal: " + refusal.first)
"""


def holding_source(kind: str, user: User) -> str:
    """subid_db.holding_source of the installed library, as the session hook calls it (root)."""
    result = subprocess.run(["/usr/bin/python3", "-I", "-S", "-c", HOLDING_SOURCE,
                             str(PREFIX / "lib" / "nsgate"), kind, user.name, str(user.uid)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    return result.stdout.strip()


def test_holding_source_for_the_session_hook(plugins_on_libpath) -> None:
    use_subid_source("files nsgtdir nsgtfail")
    for kind in ("uid", "gid"):
        assert holding_source(kind, ALICE) == f"/etc/sub{kind}"
        assert holding_source(kind, CAROL) == "NSS module libsubid_nsgtdir.so"
        assert holding_source(kind, BOB) == f"/etc/sub{kind}"
    # bob's line removed: nsgtdir does not know him, nsgtfail is reached and fails
    write_etc("subuid", "nsgt-alice:200000:65536\n")
    assert holding_source("uid", BOB) == ("Refusal: the subid source NSS module "
                                          "libsubid_nsgtfail.so failed for nsgt-bob: "
                                          "SUBID_STATUS_ERROR_CONN")
    use_subid_source("files nsgtdir")
    assert holding_source("uid", BOB) == "None"  # no source holds any range for him
    Path("/etc/subuid").unlink()  # a missing file holds nothing (the hook will write it)
    assert holding_source("uid", ALICE) == "None"
    assert holding_source("uid", CAROL) == "NSS module libsubid_nsgtdir.so"
    use_subid_source("files nosuchmodule")
    assert holding_source("gid", ALICE) == "/etc/subgid"  # the module is not loaded
    assert holding_source("uid", ALICE).startswith("Refusal: cannot load the subid NSS module "
                                                   "libsubid_nosuchmodule.so")
