"""C1: argc == 0 (PwnKit, CVE-2021-4034). The caller execve()s the helper with an empty argv;
Linux >= 5.18 turns it into [""] (CVE-2022-49264), older kernels hand over argc == 0. Either way
the launcher must not read argv[1] or beyond, where envp[0] would sit: a request placed in envp
is never acted on, and nothing of envp runs."""

from __future__ import annotations

import json

import pytest

from tests.attacks.conftest import PYTHON, attack, chown_tree, verify

pytestmark = [pytest.mark.attack("C1 argc == 0"),
              pytest.mark.usefixtures("transport")]

EXEC_EMPTY_ARGV = r"""
import ctypes, json, sys
libc = ctypes.CDLL(None, use_errno=True)
env = [e.encode() for e in json.loads(sys.argv[2])]
argv = (ctypes.c_char_p * 1)(None)
envp = (ctypes.c_char_p * (len(env) + 1))(*env, None)
libc.execve(sys.argv[1].encode(), argv, envp)
sys.exit(99)
"""


def _exec_empty_argv(argv0: str, envp: list[str], **kwargs):
    return attack([PYTHON, "-I", "-c", EXEC_EMPTY_ARGV, argv0, json.dumps(envp)], **kwargs)


def test_empty_argv_and_envp(helper, scenario):
    request = scenario.request()
    result = _exec_empty_argv(request.argv[0], [])
    assert result.rc != 99, "execve failed"
    assert verify(request, result) == "untouched"


def test_request_in_envp_is_never_read_as_arguments(helper, scenario):
    """envp[0..] holds a complete valid request: read past argv, it would be carried out."""
    request = scenario.request()
    result = _exec_empty_argv(request.argv[0], request.args)
    assert result.rc != 99, "execve failed"
    assert verify(request, result) == "untouched"


def test_pwnkit_shaped_environment(helper, scenario, evil_dir, evil_so, marker_dir):
    """PwnKit's envp: a name for argv[1] to be found on PATH, `PATH=GCONV_PATH=.`, a charset
    whose converter is the caller's shared object, run from a directory laid out for it."""
    (evil_dir / "GCONV_PATH=.").mkdir()
    (evil_dir / "GCONV_PATH=." / "nsgtpwn").write_text("#!/bin/sh\ntouch /tmp/nsgtpwn\n")
    (evil_dir / "GCONV_PATH=." / "nsgtpwn").chmod(0o755)
    (evil_dir / "nsgtpwn").mkdir()
    (evil_dir / "nsgtpwn" / "gconv-modules").write_text(
        f"module UTF-8// NSGTPWN// {evil_so.with_suffix('')} 2\n")
    chown_tree(evil_dir)
    request = scenario.request()
    envp = ["nsgtpwn", "PATH=GCONV_PATH=.", "CHARSET=NSGTPWN", "SHELL=nsgtpwn",
            f"GCONV_PATH={evil_dir / 'nsgtpwn'}", f"LD_PRELOAD={evil_so}", "LC_ALL=C.NSGTPWN"]
    result = _exec_empty_argv(request.argv[0], envp, cwd=evil_dir)
    assert result.rc != 99, "execve failed"
    assert verify(request, result) == "untouched"
