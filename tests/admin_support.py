"""Shared pieces of the `nsgate` admin command tests: running the installed command as root or
as a test user, its JSON, and a clean slate for the files it reads."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.support import PREFIX, User, as_user

NSGATE_BIN = PREFIX / "bin" / "nsgate"
USERNET = Path("/etc/lxc/lxc-usernet")
NICS = Path("/run/lxc/nics")


def nsgate(*args: str, user: User | None = None, program: Path = NSGATE_BIN,
           env: dict[str, str] | None = None, timeout: float = 60
           ) -> subprocess.CompletedProcess[str]:
    argv = [str(program), *args]
    if user is not None:
        argv = as_user(user, argv)
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                            env=env if env is not None else {"PATH": os.environ["PATH"]},
                            stdin=subprocess.DEVNULL)
    assert "Traceback" not in result.stderr, result.stderr
    return result


def nsgate_json(*args: str, **kwargs) -> tuple[int, dict]:
    result = nsgate(*args, "--json", **kwargs)
    assert result.stdout, result.stderr
    return result.returncode, json.loads(result.stdout)


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


def links() -> set[str]:
    out = subprocess.run(["ip", "-j", "link", "show"], capture_output=True, check=True).stdout
    return {link["ifname"] for link in json.loads(out)}


def write_nics(lines: list[str]) -> None:
    NICS.parent.mkdir(exist_ok=True)
    NICS.write_text("".join(line + "\n" for line in lines))
    os.chmod(NICS, 0o600)


def clean_nic_state() -> None:
    USERNET.unlink(missing_ok=True)
    for path in NICS.parent.iterdir():
        if path.is_file() or path.is_symlink():
            path.unlink()


@pytest.fixture
def no_lock_left():
    """No backup from an earlier test; afterwards no lock, no half-written file, no link file
    of the lock protocol left in /etc (modules that edit the subid files use it autouse)."""
    for name in ("subuid-", "subgid-"):
        Path("/etc", name).unlink(missing_ok=True)
    yield
    for name in ("subuid", "subgid"):
        assert not Path(f"/etc/{name}.lock").exists()
        assert not Path(f"/etc/{name}+").exists()
        assert not list(Path("/etc").glob(f"{name}.[0-9]*"))
