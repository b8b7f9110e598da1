"""C7: resource limits and the file creation mask, set by the caller before running the helper.

Limits are set with `prlimit` by alice herself (soft and hard: she cannot raise them again). A
setuid launcher resets them where it holds CAP_SYS_RESOURCE (a container may drop it from the
bounding set: then the hard limits stay as alice set them); getsubids, which holds no
privilege, runs under them. Either way
the run fails closed: exit 1 with a `<prog>: ` message, or the whole request done; never a partial
action, a traceback or a crash. A tiny RLIMIT_FSIZE never cuts the nic database short. Under
umask 0 (or 0777) the files nsgate creates keep their modes: root's 0600 db and lock, a 0755
/run/lxc.
"""

from __future__ import annotations

import pytest

from tests.attacks.conftest import (
    BRIDGE,
    DB,
    LOCK,
    NicRequest,
    assert_db_files_sound,
    attack,
    fill_db,
    host_veths,
    net_names,
    verify,
    with_private_run,
)
from tests.support import only_transport
from tests.usernic_support import db_lines

pytestmark = pytest.mark.usefixtures("transport")

KIB, MIB = 1 << 10, 1 << 20

LIMITS = {
    **{f"nofile={n}": [f"--nofile={n}"] for n in (*range(3, 9), 32, 40)},
    "fsize=0": ["--fsize=0"],
    "fsize=1": ["--fsize=1"],
    # enough to exec the static launcher, too little for the interpreter
    "as=12MiB": [f"--as={12 * MIB}"],
    "nproc=1": ["--nproc=1"],
    "stack=16KiB": [f"--stack={16 * KIB}"],
    "stack=48KiB": [f"--stack={48 * KIB}"],
    # (with a file limit the launcher accepts, so that the others bite)
    "all": ["--nofile=40", "--fsize=1", f"--as={12 * MIB}", "--nproc=1", f"--stack={48 * KIB}"],
}


# Out of address space, the interpreter can only stop where an allocation fails: the generic
# "internal error (MemoryError|OSError [ENOMEM]); nothing more was done" is failing closed there.
OUT_OF_MEMORY = ("MemoryError", "OSError")


@pytest.mark.attack("C7 rlimits")
@pytest.mark.parametrize("limit", list(LIMITS))
def test_resource_limits_fail_closed(helper, scenario, limit):
    request = scenario.request()
    result = attack(["prlimit", *LIMITS[limit], "--", *request.argv])
    verify(request, result, allow_internal=OUT_OF_MEMORY if "as=" in " ".join(LIMITS[limit])
           else ())


@pytest.mark.attack("C7 rlimits")
@pytest.mark.helpers("lxc-user-nic")
@pytest.mark.parametrize("fsize", [0, 1])
def test_small_fsize_never_truncates_the_nic_db(helper, scenario, fsize):
    """A database of 3000 lines (other users', never pruned) and a create under
    RLIMIT_FSIZE: afterwards the db is the old content, or the old content plus one line."""
    old = fill_db(3000)
    request = scenario.request()
    result = attack(["prlimit", f"--fsize={fsize}", "--", *request.argv])
    state = verify(request, result)
    lines = db_lines()
    assert lines is not None and lines[:3000] == old, "the database lost lines"
    if state == "done":
        assert len(lines) == 3001 and lines[-1].startswith(f"nsgt-alice veth {BRIDGE} veth23001_")
    else:
        assert lines == old


@pytest.mark.attack("C7 umask")
@pytest.mark.parametrize("mask", [0o000, 0o777, 0o002])
def test_umask(helper, scenario, mask):
    """The request completes; for lxc-user-nic the db and lock it creates are root's 0600
    files (checked by the outcome)."""
    request = scenario.request()
    result = attack(["/bin/sh", "-c", f'umask {mask:03o}; exec "$@"', "sh", *request.argv])
    assert verify(request, result) == "done", result
    if helper == "lxc-user-nic":
        assert DB.exists() and LOCK.exists()
        assert_db_files_sound()


# A /run of the caller's mount namespace: the service's worker acts in the service's own, with
# its umask (test_umask covers the caller's umask through the service).
@only_transport("setuid")
@pytest.mark.attack("C7 umask")
@pytest.mark.helpers("lxc-user-nic")
@pytest.mark.parametrize("mask", [0o000, 0o777])
def test_umask_when_creating_run_lxc(helper, scenario, mask):
    """With no /run/lxc at all (a private /run), the create makes the directory 0755, the db
    and lock 0600, all root's, whatever alice's umask."""
    request = scenario.request()
    assert isinstance(request, NicRequest)
    result, listing = with_private_run("true", request.argv, umask=mask)
    assert result.rc == 0, result
    request.check_stdout(result.out or b"")
    assert sorted(p for p in listing if p.startswith("/run/lxc")) == [
        "/run/lxc", "/run/lxc/nics", "/run/lxc/nics.lock"], listing
    for name, mode in (("/run/lxc", 0o040755), ("/run/lxc/nics", 0o100600),
                       ("/run/lxc/nics.lock", 0o100600)):
        assert listing[name][:3] == (mode, 0, 0), (name, listing[name])
    # the pair is there and attached; its line is in the private db
    new = host_veths() - request.hosts_before
    request.made |= new
    assert len(new) == 1 and net_names(request.pid) == {"lo", "eth0"}, new
    host = next(iter(new))
    db = bytes.fromhex(listing["/run/lxc/nics"][5])
    assert db == f"nsgt-alice veth {BRIDGE} {host}\n".encode()
