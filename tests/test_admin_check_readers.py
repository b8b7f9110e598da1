"""`nsgate check`: a subid line nsgate ignores is an error while another privileged reader of the
file still grants ids with it. shadow's newuidmap and newgidmap before 4.20 (Debian 12: 4.13)
read `name:0:0` as every id from 0 (host root included) and a range past 4294967295 as its ids
up to there. They stay the system's /usr/bin/newuidmap until the admin runs `nsgate-divert
enable`, and stay runnable afterwards as the diverted original /usr/bin/newuidmap.distrib while
that keeps its setuid bit or file capability.

Each case sets up /usr/bin as such a system has it (an overlay in the test's private mount
namespace, changed as nsgate-divert changes it), and where the check says shadow grants ids, the
test makes shadow's newuidmap grant them to the test user for real."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator

import pytest

from tests.admin_support import nsgate, nsgate_json
from tests.support import BOB, NSGATE, SANDBOX, Target, run_as, write_etc

DIVERT = ("cd /usr/bin && for tool in newuidmap newgidmap; do mv $tool $tool.distrib && "
          f"ln -s {NSGATE}/$tool $tool; done")


@contextlib.contextmanager
def usr_bin(setup: str) -> Iterator[None]:
    """/usr/bin as `setup` (shell, run as root) leaves it, in this mount namespace only."""
    work = SANDBOX / "usr-bin"
    subprocess.run(["rm", "-rf", str(work)], check=True)
    (work / "upper").mkdir(parents=True)
    (work / "work").mkdir()
    subprocess.run(["mount", "-t", "overlay", "nsgate-usr-bin", "-o",
                    f"lowerdir=/usr/bin,upperdir={work / 'upper'},workdir={work / 'work'}",
                    "/usr/bin"], check=True)
    try:
        subprocess.run(["/bin/sh", "-ec", setup], check=True)
        yield
    finally:
        # lazily: umount itself runs from /usr/bin
        subprocess.run(["umount", "--lazy", "/usr/bin"], check=True)


def check() -> tuple[int, list[tuple[str, int | None, str, str, str]]]:
    status, report = nsgate_json("check")
    human = nsgate("check")
    assert human.returncode == status
    return status, [(f["file"], f["line"], f["severity"], f["code"], f["message"])
                    for f in report["findings"]]


def shadow_maps(tool: str, start: int, count: int) -> tuple[int, list[tuple[int, ...]]]:
    """Bob asks the system's (shadow's) tool to map host ids [start, start + count) at 0."""
    target = Target.start(BOB)
    try:
        result = run_as(BOB, [f"/usr/bin/{tool}", str(target.pid), "0", str(start), str(count)])
        return result.returncode, (target.uid_map() if tool.startswith("newuidmap")
                                   else target.gid_map())
    finally:
        target.stop()


@pytest.mark.parametrize("name, tool, kind", [("subuid", "newuidmap", "uid"),
                                              ("subgid", "newgidmap", "gid")])
def test_count_zero_from_zero_is_an_error_while_shadow_reads_the_file(name, tool, kind):
    write_etc(name, "nsgt-alice:200000:65536\nnsgt-bob:0:0\n")
    status, found = check()
    assert status == 1
    [(file, line, severity, code, message)] = found
    assert (file, line, severity, code) == (f"/etc/{name}", 2, "error", "shadow-grants")
    assert (f"nsgt-bob:0:0 grants nothing to nsgate (count 0), but /usr/bin/{tool} (setuid "
            f"root, not nsgate's) honours it as {kind}s 0-4294967295, host root included") \
        in message
    assert "remove the line" in message
    # What the error says, for real: shadow maps host root for bob.
    assert shadow_maps(tool, 0, 1) == (0, [(0, 0, 1)])


def test_a_range_past_the_id_space_is_an_error_while_shadow_reads_the_file():
    write_etc("subuid", "nsgt-bob:4294967000:65536\n")
    status, found = check()
    assert status == 1
    [(_, line, severity, code, message)] = found
    assert (line, severity, code) == (1, "error", "shadow-grants")
    assert "as uids 4294967000-4294967295, as shadow before 4.20 does" in message
    assert shadow_maps("newuidmap", 4294967000, 10) == (0, [(0, 4294967000, 10)])


def test_a_line_shadow_ignores_too_stays_a_warning():
    """Count 0 from a start above 0: shadow's range end is below its start, so it covers no id
    (its newuidmap refuses, as nsgate's does)."""
    write_etc("subuid", "nsgt-alice:200000:65536\nnsgt-bob:300000:0\n")
    status, found = check()
    assert status == 0
    assert [f[:4] for f in found] == [("/etc/subuid", 2, "warning", "grants-nothing")]
    assert shadow_maps("newuidmap", 300000, 1) == (1, [])


def test_after_nsgate_divert_the_kept_setuid_original_is_still_a_reader():
    write_etc("subuid", "nsgt-bob:0:0\n")
    with usr_bin(DIVERT):
        status, found = check()
        assert status == 1
        [(_, _, severity, code, message)] = found
        assert (severity, code) == ("error", "shadow-grants")
        assert "but /usr/bin/newuidmap.distrib (setuid root, not nsgate's) honours it" in message
        assert shadow_maps("newuidmap.distrib", 0, 1) == (0, [(0, 0, 1)])


@pytest.mark.parametrize("original, severity", [
    ("chmod u-s newuidmap.distrib", "warning"),
    ("rm newuidmap.distrib", "warning"),
    ("chmod u-s newuidmap.distrib && setcap cap_setuid+ep newuidmap.distrib", "error"),
    ("chmod u-s newuidmap.distrib && setcap cap_setgid+ep newuidmap.distrib", "warning"),
])
def test_with_nsgate_the_only_privileged_reader_it_is_a_warning(original, severity):
    write_etc("subuid", "nsgt-bob:0:0\n")
    with usr_bin(f"{DIVERT} && {original}"):
        status, found = check()
    assert [f[2:4] for f in found] == [
        (severity, "shadow-grants" if severity == "error" else "grants-nothing")]
    assert status == (1 if severity == "error" else 0)
    if severity == "error":
        assert "/usr/bin/newuidmap.distrib (with cap_setuid, not nsgate's)" in found[0][4]


def test_an_unprivileged_shadow_tool_is_no_reader():
    write_etc("subuid", "nsgt-bob:0:0\n")
    with usr_bin("chmod u-s /usr/bin/newuidmap"):
        status, found = check()
    assert (status, [f[2:4] for f in found]) == (0, [("warning", "grants-nothing")])
