"""`nsgate check` reports the service (nsgated(8)): its socket /run/nsgate/io.socket, whether
something listens there, and, for helpers installed for the service only (no setuid bit, no file
capabilities: make install MODE=service), an error when nothing does.

"Listening" is a real AF_UNIX SOCK_SEQPACKET socket this test binds and listens on at the
service's path (in the session's private tmpfs /run), as systemd's nsgate.socket or nsgated does;
"not listening" is the same socket file once its listener is closed (connect: ECONNREFUSED)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.admin_support import nsgate, nsgate_json
from tests.service_support import shared_nsgated_paused
from tests.support import ALICE
from tests.test_admin_check import scratch_install  # noqa: F401 - a fixture

SOCKET_DIR = Path("/run/nsgate")
SOCKET = SOCKET_DIR / "io.socket"
PRIVILEGED = ("newuidmap", "newgidmap", "lxc-user-nic")
START = "systemctl enable --now nsgate.socket"


@pytest.fixture(autouse=True)
def no_service() -> Iterator[None]:
    """No service (a module-wide nsgated, if up, is stopped meanwhile), and no nic grants or
    records another module may have left."""
    with shared_nsgated_paused():
        shutil.rmtree(SOCKET_DIR, ignore_errors=True)
        Path("/etc/lxc/lxc-usernet").unlink(missing_ok=True)
        Path("/run/lxc/nics").unlink(missing_ok=True)
        yield
        shutil.rmtree(SOCKET_DIR, ignore_errors=True)


def listen(mode: int = 0o666, directory_mode: int = 0o755) -> socket.socket:
    """The service's socket, as nsgate.socket makes it, listening."""
    SOCKET_DIR.mkdir(mode=directory_mode)
    os.chmod(SOCKET_DIR, directory_mode)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    server.bind(str(SOCKET))
    os.chmod(SOCKET, mode)
    server.listen(16)
    return server


def report(program: Path | None = None) -> tuple[int, dict, str]:
    kwargs = {} if program is None else {"program": program}
    status, data = nsgate_json("check", **kwargs)
    human = nsgate("check", **kwargs)
    assert human.returncode == status
    return status, data, human.stdout


def service_only(prefix: Path) -> None:
    """The scratch install as MODE=service leaves it: no helper has privilege."""
    for name in PRIVILEGED:
        os.chmod(prefix / "libexec/nsgate" / name, 0o755)


# --- setuid helpers: the service is optional -------------------------------------------------


def test_no_service_with_setuid_helpers_is_information_only():
    status, data, human = report()
    assert (status, data["findings"]) == (0, [])
    assert data["service"] == {
        "socket": str(SOCKET), "state": "absent", "helpers_need_service": False,
        "status": "nsgated does not listen: the setuid helpers serve every request in-process, "
                  f"except for no_new_privs callers; start it with {START}"}
    assert human == (f"{SOCKET}: info: {data['service']['status']} [service]\n"
                     "nsgate check: 0 errors, 0 warnings\n")


def test_a_listening_service_is_reported():
    server = listen()
    try:
        status, data, human = report()
    finally:
        server.close()
    assert (status, data["findings"]) == (0, [])
    assert data["service"]["state"] == "listening"
    assert f"{SOCKET}: info: nsgated listens: the helpers hand their requests to it" in human


def test_a_socket_nobody_listens_on_is_reported():
    listen().close()  # the file stays; connect is refused
    assert SOCKET.is_socket()
    status, data, _ = report()
    assert (status, data["findings"], data["service"]["state"]) == (0, [], "not-listening")


# --- helpers installed for the service only --------------------------------------------------


def test_service_only_helpers_without_a_service_are_an_error(scratch_install):  # noqa: F811
    service_only(scratch_install)
    status, data, human = report(scratch_install / "bin/nsgate")
    assert status == 1
    [finding] = data["findings"]  # and no `install` finding for the helpers' missing privilege
    assert (finding["file"], finding["line"], finding["severity"], finding["code"]) == (
        str(SOCKET), None, "error", "service-down")
    assert "installed for the service only" in finding["message"]
    assert "it does not exist" in finding["message"] and START in finding["message"]
    assert data["service"]["helpers_need_service"] is True
    assert f"{SOCKET}: error: the helpers are installed for the service only" in human
    assert "[service-down]" in human and ": info: " not in human


def test_service_only_helpers_with_a_dead_socket_are_an_error(scratch_install):  # noqa: F811
    service_only(scratch_install)
    listen().close()
    status, data, _ = report(scratch_install / "bin/nsgate")
    assert status == 1
    assert [(f["code"], "nothing listens on it" in f["message"]) for f in data["findings"]] == [
        ("service-down", True)]


def test_service_only_helpers_with_a_listening_service_are_sound(scratch_install):  # noqa: F811
    service_only(scratch_install)
    server = listen()
    try:
        status, data, human = report(scratch_install / "bin/nsgate")
    finally:
        server.close()
    assert (status, data["findings"]) == (0, [])
    assert data["service"]["state"] == "listening"
    assert data["service"]["helpers_need_service"] is True
    assert "nsgated listens" in human


def test_lxc_mark_leaves_the_helpers_without_privilege(scratch_install):  # noqa: F811
    """The mark that makes liblxc use the helpers (a file capability whose root is host uid
    4294967294, nsgated(8) LXC) grants nothing on the host: still a service-only install, with
    no `install` finding for capabilities."""
    service_only(scratch_install)
    for name, cap in (("newuidmap", "cap_setuid"), ("newgidmap", "cap_setgid")):
        subprocess.run(["setcap", "-n", "4294967294", f"{cap}+ep",
                        str(scratch_install / "libexec/nsgate" / name)], check=True)
    subprocess.run(["setcap", "-n", "4294967294", "cap_setuid+ep",
                    str(scratch_install / "libexec/nsgate/getsubids")], check=True)
    status, data, _ = report(scratch_install / "bin/nsgate")
    assert status == 1
    assert [f["code"] for f in data["findings"]] == ["service-down"]


def test_one_helper_without_privilege_is_still_a_broken_install(scratch_install):  # noqa: F811
    """Only an install where no helper has privilege is for the service; one helper that lost
    its setuid bit is a defect, whatever the service does."""
    os.chmod(scratch_install / "libexec/nsgate/lxc-user-nic", 0o755)
    server = listen()
    try:
        status, data, _ = report(scratch_install / "bin/nsgate")
    finally:
        server.close()
    assert status == 1
    assert [(f["file"], f["code"]) for f in data["findings"]] == [
        (str(scratch_install / "libexec/nsgate/lxc-user-nic"), "install")]


# --- a socket someone else could have put there ----------------------------------------------


@pytest.mark.parametrize("setup, path, words", [
    (lambda: os.chown(SOCKET_DIR, ALICE.uid, ALICE.gid), SOCKET_DIR,
     "owned by uid 23001 with mode 0755, not root's alone"),
    (lambda: os.chmod(SOCKET_DIR, 0o777), SOCKET_DIR, "mode 0777, not root's alone"),
    (lambda: os.chmod(SOCKET_DIR, 0o700), SOCKET_DIR, "users cannot reach the socket"),
    (lambda: os.chown(SOCKET, ALICE.uid, ALICE.gid), SOCKET,
     "owned by uid 23001, not by root: it is not the service's"),
    (lambda: os.chmod(SOCKET, 0o600), SOCKET, "users cannot connect to it"),
])
def test_an_unsafe_socket_or_directory_is_an_error(setup, path, words):
    server = listen()
    try:
        setup()
        status, data, human = report()
    finally:
        server.close()
    assert status == 1
    [finding] = data["findings"]
    assert (finding["file"], finding["severity"], finding["code"]) == (
        str(path), "error", "service-socket")
    assert words in finding["message"], finding["message"]
    assert f"{path}: error: " in human and "[service-socket]" in human


def test_something_else_at_the_socket_path_is_an_error():
    SOCKET_DIR.mkdir(mode=0o755)
    SOCKET.write_text("not a socket\n")
    status, data, _ = report()
    assert status == 1
    assert [(f["file"], f["code"], "is not a socket" in f["message"])
            for f in data["findings"]] == [(str(SOCKET), "service-socket", True)]
    assert data["service"]["state"] == "not-listening"

