"""C3/C12/B17: the caller's environment and working directory.

Each probe sets loader, locale, shell or Python variables that point into a directory alice
controls, holding a payload that drops a marker file if it ever runs (a real shared object built
with gcc for the loader cases, Python modules for the Python cases). Where the variable can be
armed at all, the same environment is first shown to fire on an ordinary program run by alice
(the canary), so the probe can fail. Then the helper runs with it twice, each time with a valid
request:
- plain, as alice would run it: the request is carried out exactly, no marker appears, nothing
  is written into alice's directory;
- under `strace -f -u nsgt-alice` (root traces, so the setuid bit still works): the interpreter
  is exec'd with exactly the launcher's fixed environment and no path in alice's directory is
  ever opened, stat'ed or exec'd.
The working-directory probes do the same from a directory full of Python shadows.

Through the service transport the plain run is under no_new_privs (the loader then honours
alice's variables in her own unprivileged client, which is static and loads nothing); traced,
the launcher execs nothing at all (the service answers), names no path of alice's, and neither
does the worker of the service that serves it (strace attached to the service).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import zipfile
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.attacks.conftest import (
    ATTACKS,
    CLEAN_ENV,
    MARKERS,
    PYTHON,
    USER_PATH,
    Request,
    Result,
    attack,
    chown_tree,
    clear_markers,
    count_probe,
    evil_py,
    markers,
    tree_listing,
    user_env,
    verify,
)
from tests.service_support import service_traced
from tests.support import ALICE, transport, write_etc

pytestmark = pytest.mark.usefixtures("transport")

STDLIB = Path("/usr/lib/python3.11")
LIBDIR = Path("/usr/local/lib/nsgate")
EVIL_STDIN = (f"open({str(MARKERS)!r} + '/py.stdin', 'w').close()\n").encode()


@dataclass
class EnvProbe:
    env: dict[str, str]
    canary: list[str] | None = None  # an ordinary program the environment fires on
    armed: str = "marker"  # how the canary shows it: "marker", "files" (in alice's dir), "output"
    canary_stdin: bytes = b""
    stdin: bytes = b""  # what the helper's stdin holds (code, for PYTHONINSPECT)
    nss: bool = False  # needs the NSS module trap in nsswitch.conf
    in_dir: bool = False  # run (canary and helper) from alice's directory


def _write(path: Path, text: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)


def _python_shadows(root: Path, tag: str) -> None:
    """Modules the helper's interpreter imports, or would import if it looked here."""
    for name in ("sitecustomize", "usercustomize", "site", "pwd", "grp", "fcntl", "posix",
                 "syslog", "errno", "_cffi_backend", "_nsgate_sys", "_socket", "_struct",
                 "codecs", "io", "abc", "os"):
        _write(root / f"{name}.py", evil_py(f"{tag}.{name}"))
    for package in ("encodings", "nsgate", "nsgate/cli", "nsgate/system", "nsgate/policy",
                    "cffi"):
        _write(root / package / "__init__.py", evil_py(f"{tag}.{package.replace('/', '.')}"))
    _write(root / "nsgate/cli/entry.py", evil_py(f"{tag}.entry") + "def run(prog): pass\n")
    _write(root / "nsgate/errors.py", evil_py(f"{tag}.errors"))


def _evil_pycs(prefix: Path) -> None:
    """Bytecode for modules the canary and the helper import, in a PYTHONPYCACHEPREFIX tree:
    unchecked-hash pycs are loaded without looking at the source."""
    sources = [STDLIB / "json/__init__.py", STDLIB / "encodings/__init__.py",
               STDLIB / "encodings/aliases.py", STDLIB / "encodings/utf_8.py",
               LIBDIR / "nsgate/__init__.py", LIBDIR / "nsgate/cli/__init__.py",
               LIBDIR / "nsgate/cli/entry.py"]
    script = ("import py_compile, sys\n"
              "src, pyc, tag = sys.argv[1:]\n"
              "open(src, 'w').write(" + repr(evil_py("PYC")) + ".replace('PYC', tag))\n"
              "py_compile.compile(src, cfile=pyc, doraise=True, "
              "invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)\n")
    for source in sources:
        relative = source.parent.relative_to("/") / f"{source.stem}.cpython-311.pyc"
        pyc = prefix / relative
        pyc.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([PYTHON, "-I", "-c", script, str(prefix / "src.py"), str(pyc),
                        f"pyc.{source.stem}"], check=True, timeout=30)
    (prefix / "src.py").unlink()


def _shell_trap(path: Path, tag: str) -> None:
    _write(path, f"#!/bin/sh\n: > {MARKERS}/sh.{tag}.$$\n")
    path.chmod(0o755)


def _copy_so(so: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(so, dest)
    dest.chmod(0o755)


def _locale(d: Path) -> str:
    target = d / "locale" / "NSGT.UTF-8"
    shutil.copytree("/usr/lib/locale/C.utf8", target)
    return str(target)


def _probe(name: str, d: Path, so: Path) -> EnvProbe:
    """The environment of probe `name`, its payloads written into alice's directory `d`."""
    if name == "LD_PRELOAD":
        _copy_so(so, d / "evil.so")
        return EnvProbe({"LD_PRELOAD": str(d / "evil.so")}, ["/bin/true"])
    if name == "LD_LIBRARY_PATH":  # an NSS module the interpreter would dlopen by name
        _copy_so(so, d / "libnss_nsgtevil.so.2")
        return EnvProbe({"LD_LIBRARY_PATH": str(d)}, ["getent", "passwd", "nsgt-nosuch"],
                        nss=True)
    if name == "LD_AUDIT":
        _copy_so(so, d / "audit.so")
        return EnvProbe({"LD_AUDIT": str(d / "audit.so")}, ["/bin/true"])
    if name == "LD_DEBUG_OUTPUT":
        return EnvProbe({"LD_DEBUG": "all", "LD_DEBUG_OUTPUT": str(d / "ld-debug"),
                         "LD_PROFILE": "libc.so.6", "LD_PROFILE_OUTPUT": str(d),
                         "LD_BIND_NOT": "1"}, ["/bin/true"], armed="files")
    if name == "LD_SHOW_AUXV":
        return EnvProbe({"LD_SHOW_AUXV": "1", "LD_TRACE_LOADED_OBJECTS": "1"}, ["/bin/true"],
                        armed="output")
    if name == "GCONV_PATH":
        _copy_so(so, d / "nsgtevil.so")
        _write(d / "gconv-modules", f"module UTF-8// NSGTEVIL// {d}/nsgtevil 1\n"
                                    f"module NSGTEVIL// UTF-8// {d}/nsgtevil 1\n")
        return EnvProbe({"GCONV_PATH": str(d), "CHARSET": "NSGTEVIL"},
                        ["iconv", "-f", "NSGTEVIL", "-t", "UTF-8", "/dev/null"])
    if name == "GLIBC_TUNABLES":  # CVE-2023-4911's shape, and a long one
        value = "glibc.malloc.mxfast=glibc.malloc.mxfast=" + "A" * 4000
        return EnvProbe({"GLIBC_TUNABLES": value})
    if name == "LOCPATH":
        _locale(d)
        return EnvProbe({"LOCPATH": str(d / "locale"), "LC_ALL": "NSGT.UTF-8"})
    if name == "NLSPATH":
        _write(d / "nsgt.cat", b"\0" * 64)
        return EnvProbe({"NLSPATH": f"{d}/%N.cat:{d}/%L/%N", "LANG": "C.UTF-8"})
    if name == "LANG/LC_ALL path":
        path = _locale(d)
        return EnvProbe({"LANG": path, "LC_ALL": path, "LC_MESSAGES": path, "LC_CTYPE": path,
                         "LANGUAGE": path})
    if name == "PYTHONPATH":
        _python_shadows(d, "pythonpath")
        return EnvProbe({"PYTHONPATH": f"{d}:{d}/nsgate"}, [PYTHON, "-c", "pass"])
    if name == "PYTHONHOME":
        _python_shadows(d / "lib/python3.11", "pythonhome")
        _python_shadows(d / "lib/python3.11/lib-dynload", "pythonhome-dynload")
        return EnvProbe({"PYTHONHOME": str(d)}, [PYTHON, "-c", "pass"])
    if name == "PYTHONSTARTUP":
        _write(d / "startup.py", evil_py("startup"))
        return EnvProbe({"PYTHONSTARTUP": str(d / "startup.py"), "PYTHONINSPECT": "1"},
                        [PYTHON, "-i"], stdin=EVIL_STDIN)
    if name == "PYTHONINSPECT":
        # (it reads code from stdin only when that is a terminal: the canary shows the flag)
        return EnvProbe({"PYTHONINSPECT": "1"},
                        [PYTHON, "-c", "import sys\nif sys.flags.inspect: print('inspect')"],
                        armed="output", stdin=EVIL_STDIN)
    if name == "PYTHONUSERBASE":
        site = d / "lib/python3.11/site-packages"
        _write(site / "usercustomize.py", evil_py("usercustomize"))
        _write(site / "nsgt.pth", evil_py("pth").replace("\n", "; ").rstrip("; ") + "\n")
        return EnvProbe({"PYTHONUSERBASE": str(d)}, [PYTHON, "-c", "pass"])
    if name == "PYTHONWARNINGS":  # the category's module is imported at start-up
        _write(d / "nsgtwarn.py", evil_py("warnings") + "class W(Warning): pass\n")
        return EnvProbe({"PYTHONWARNINGS": "error::nsgtwarn.W", "PYTHONPATH": str(d)},
                        [PYTHON, "-c", "pass"])
    if name == "PYTHONBREAKPOINT":
        _write(d / "nsgtbp.py", evil_py("breakpoint") + "def hook(*a, **k): pass\n")
        return EnvProbe({"PYTHONBREAKPOINT": "nsgtbp.hook", "PYTHONPATH": str(d)},
                        [PYTHON, "-c", "breakpoint()"])
    if name == "PYTHONPYCACHEPREFIX":
        _evil_pycs(d / "pycache")
        return EnvProbe({"PYTHONPYCACHEPREFIX": str(d / "pycache")},
                        [PYTHON, "-c", "import json"])
    if name == "PYTHONEXECUTABLE":
        _shell_trap(d / "python3", "pythonexecutable")
        return EnvProbe({"PYTHONEXECUTABLE": str(d / "python3")})
    if name == "PYTHONSAFEPATH":  # unset it, and put the working directory on the path
        _python_shadows(d, "safepath")
        return EnvProbe({"PYTHONSAFEPATH": "", "PYTHONPATH": ".:"},
                        [PYTHON, "-P", "-c", "import nsgate"], in_dir=True)
    if name == "PYTHONDEVMODE/PYTHONMALLOC":
        return EnvProbe({"PYTHONDEVMODE": "1", "PYTHONMALLOC": "debug", "PYTHONMALLOCSTATS": "1",
                         "PYTHONVERBOSE": "1", "PYTHONPROFILEIMPORTTIME": "1",
                         "PYTHONTRACEMALLOC": "5", "PYTHONFAULTHANDLER": "1",
                         "PYTHONIOENCODING": "latin-1", "PYTHONUTF8": "0", "PYTHONDEBUG": "1",
                         "PYTHONHASHSEED": "0", "PYTHONINTMAXSTRDIGITS": "640",
                         "PYTHONNOUSERSITE": "", "PYTHONCOERCECLOCALE": "0"},
                        [PYTHON, "-c", "pass"], armed="output")
    if name == "PYTHONPLATLIBDIR":  # relative to the prefix: the whole stdlib moves
        _python_shadows(d / "python3.11", "platlibdir")
        _copy_so(so, d / "python3.11/lib-dynload/_json.cpython-311-x86_64-linux-gnu.so")
        return EnvProbe({"PYTHONPLATLIBDIR": "../.." + str(d)}, [PYTHON, "-c", "pass"])
    if name == "PATH":
        for program in ("ovs-vsctl", "ip", "python3", "sh", "iconv", "getent", "nscd"):
            _shell_trap(d / program, f"path.{program}")
        return EnvProbe({"PATH": f"{d}:{USER_PATH}"}, ["/bin/sh", "-c", "ovs-vsctl"])
    if name == "IFS/ENV/BASH_ENV":
        _shell_trap(d / "env.sh", "bash_env")
        return EnvProbe({"IFS": "/ \t\n", "ENV": str(d / "env.sh"),
                         "BASH_ENV": str(d / "env.sh"), "SHELLOPTS": "xtrace", "PS4": "$(id)"},
                        ["/bin/bash", "-c", "true"])
    if name == "TMPDIR":
        return EnvProbe({"TMPDIR": str(d), "TMP": str(d), "TEMP": str(d)},
                        [PYTHON, "-c", "import tempfile; tempfile.mkstemp()"], armed="files")
    if name == "resolver/malloc":
        _write(d / "hosts", "localhost evil.example\n")
        return EnvProbe({"HOSTALIASES": str(d / "hosts"), "RES_OPTIONS": "debug ndots:15",
                         "LOCALDOMAIN": "evil.example", "MALLOC_CHECK_": "3",
                         "MALLOC_PERTURB_": "85", "MALLOC_TRACE": str(d / "mtrace"),
                         "TZ": str(d / "tz"), "TZDIR": str(d)})
    raise AssertionError(name)


PROBES = ["LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT", "LD_DEBUG_OUTPUT", "LD_SHOW_AUXV",
          "GCONV_PATH", "GLIBC_TUNABLES", "LOCPATH", "NLSPATH", "LANG/LC_ALL path", "PYTHONPATH",
          "PYTHONHOME", "PYTHONSTARTUP", "PYTHONINSPECT", "PYTHONUSERBASE", "PYTHONWARNINGS",
          "PYTHONBREAKPOINT", "PYTHONPYCACHEPREFIX", "PYTHONEXECUTABLE", "PYTHONSAFEPATH",
          "PYTHONDEVMODE/PYTHONMALLOC", "PYTHONPLATLIBDIR", "PATH", "IFS/ENV/BASH_ENV", "TMPDIR",
          "resolver/malloc", "everything at once"]

NSS_TRAP = "passwd: nsgtevil files\ngroup: nsgtevil files\nshadow: files\n"


# --- running the helper traced ----------------------------------------------------------------

_EXECVE_PYTHON = re.compile(r'execve\("/usr/bin/python3", \[.*\], \[(?P<env>[^\]]*)\]\)\s+= 0$')
_CHDIR_ROOT = re.compile(r' chdir\("/"\)\s+= 0$')


TRACED = ["-qq", "-v", "-s", "8192", "-e", "trace=%file,chdir,fchdir"]


def traced(request: Request, env: dict[str, str], cwd: Path | None = None,
           stdin: bytes = b"") -> tuple[Result, list[str], list[str]]:
    """Run the helper under `strace -f -u nsgt-alice` with `env` added for the helper only;
    the result, the trace lines, and through the service those of the worker that served it."""
    log = ATTACKS / "strace.log"
    log.unlink(missing_ok=True)
    argv = ["strace", "-f", *TRACED, "-o", str(log), "-u", ALICE.name]
    for key, value in env.items():
        argv += ["-E", f"{key}={value}"]
    with service_traced(*TRACED) if transport() == "service" else nullcontext([]) as served:
        proc = subprocess.run([*argv, "--", *request.argv], env={"PATH": USER_PATH}, cwd=cwd,
                              input=stdin, capture_output=True, timeout=60)
    count_probe()
    return (Result(proc.returncode, proc.stdout, proc.stderr), log.read_text().splitlines(),
            [line for _, line in served])


def assert_clean_run(lines: list[str], served: list[str], forbidden: Path) -> None:
    """assert_clean_interpreter of the setuid transport; through the service, the client's
    own exec is its only one, it and the worker serving it name nothing under `forbidden`,
    and no relative path is used before the launcher has moved to /."""
    if transport() == "setuid":
        assert_clean_interpreter(lines, forbidden)
        return
    execs = [i for i, line in enumerate(lines) if " execve(" in line]
    assert len(execs) == 1, [lines[i][:300] for i in execs]
    for line in lines[execs[0] + 1:] + served:
        assert str(forbidden) not in line, line
    assert served, "no worker of the service served it"
    chdir = next((i for i, line in enumerate(lines) if _CHDIR_ROOT.search(line)), None)
    assert chdir is not None, "no chdir(\"/\") in the launcher"
    relative = re.compile(r'(?:openat\(AT_FDCWD|stat|access|readlink|execve)\w*\("[^/"]')
    for line in lines[execs[0] + 1:chdir]:
        assert not relative.search(line), line


def assert_clean_interpreter(lines: list[str], forbidden: Path) -> None:
    """Exactly one interpreter exec, with the launcher's fixed environment; after the
    launcher's own exec nothing names a path under `forbidden`, and no relative path is used
    before the launcher has moved to /."""
    execs = [i for i, line in enumerate(lines) if " execve(" in line]
    pythons = [i for i in execs if _EXECVE_PYTHON.search(lines[i])]
    assert len(pythons) == 1, [lines[i][:300] for i in execs]
    found = _EXECVE_PYTHON.search(lines[pythons[0]])
    assert found is not None
    env = re.findall(r'"((?:[^"\\]|\\.)*)"', found.group("env"))
    assert env == CLEAN_ENV, env
    for line in lines[execs[0] + 1:]:
        assert str(forbidden) not in line, line
    chdir = next((i for i, line in enumerate(lines) if _CHDIR_ROOT.search(line)), None)
    assert chdir is not None and chdir < pythons[0], "no chdir(\"/\") before the interpreter"
    relative = re.compile(r'(?:openat\(AT_FDCWD|stat|access|readlink|execve)\w*\("[^/"]')
    for line in lines[execs[0] + 1:chdir]:
        assert not relative.search(line), line


# --- environment injection ---------------------------------------------------------------------


def _arm(probe: EnvProbe, d: Path) -> None:
    """The canary: the environment fires on an ordinary program of alice's."""
    before = tree_listing(d)
    result = attack([*user_env(probe.env), *probe.canary], probe=False,
                    cwd=d if probe.in_dir else "/", input=probe.canary_stdin, stdin=None)
    if probe.armed == "marker":
        fired = bool(markers())
    elif probe.armed == "files":
        fired = tree_listing(d) != before
    else:
        fired = bool(result.out or result.err)
    assert fired, f"the trap does not fire on {probe.canary}: {result}"
    clear_markers()
    # what alice's own program left there is hers: forget it, only the helper's runs count
    for path in sorted(d.rglob("*"), reverse=True):
        if (str(path.relative_to(d)), path.lstat().st_uid, path.lstat().st_size) not in before:
            path.unlink() if not path.is_dir() else shutil.rmtree(path)


@pytest.mark.attack("C3 environment injection")
@pytest.mark.parametrize("variable", PROBES)
def test_environment_injection(helper, scenario, variable, evil_dir, evil_so, marker_dir):
    if variable == "everything at once":
        probe = EnvProbe({})
        for name in PROBES[:-1]:
            sub = evil_dir / re.sub(r"\W", "_", name)
            sub.mkdir()
            one = _probe(name, sub, evil_so)
            for key, value in one.env.items():
                probe.env[key] = f"{probe.env[key]}:{value}" if key in probe.env else value
            probe.nss |= one.nss
            probe.stdin = probe.stdin or one.stdin
        probe.env["PYTHONPATH"] += f":{evil_dir / 'PYTHONSAFEPATH'}"
    else:
        probe = _probe(variable, evil_dir, evil_so)
    chown_tree(evil_dir)
    if probe.nss:
        write_etc("nsswitch.conf", NSS_TRAP)
    if probe.canary is not None:
        _arm(probe, evil_dir)
    snapshot = tree_listing(evil_dir)

    cwd = evil_dir if probe.in_dir else None
    request = scenario.request()
    result = attack([*user_env(probe.env), *request.argv], input=probe.stdin, stdin=None,
                    cwd=cwd)
    assert verify(request, result) == "done", result
    assert markers() == [], "a payload ran"
    assert tree_listing(evil_dir) == snapshot, "something was written into alice's directory"

    request = scenario.request()
    result, trace, served = traced(request, probe.env, stdin=probe.stdin, cwd=cwd)
    assert verify(request, result) == "done", result
    assert markers() == [], "a payload ran under strace"
    assert_clean_run(trace, served, evil_dir)
    assert tree_listing(evil_dir) == snapshot


# --- a hostile working directory -----------------------------------------------------------------


def _hostile_cwd(d: Path, so: Path) -> None:
    """Every shadow of a Python start-up: modules, packages, a venv, a zipped stdlib, a
    build-tree marker, gconv and a fake ovs-vsctl."""
    _python_shadows(d, "cwd")
    _python_shadows(d / "lib/python3.11", "cwd-venv")
    _python_shadows(d / "Lib", "cwd-buildtree")
    _write(d / "pyvenv.cfg", f"home = {d}\ninclude-system-site-packages = false\n")
    _write(d / "pybuilddir.txt", "Lib\n")
    _write(d / "__main__.py", evil_py("cwd.main"))
    with zipfile.ZipFile(d / "python311.zip", "w") as archive:
        for module in ("encodings/__init__.py", "nsgate/__init__.py", "nsgate/cli/__init__.py",
                       "nsgate/cli/entry.py", "site.py", "sitecustomize.py"):
            archive.writestr(module, evil_py(f"cwd.zip.{module.split('/')[0]}"))
    _copy_so(so, d / "nsgtevil.so")
    _write(d / "gconv-modules", f"module UTF-8// NSGTEVIL// {d}/nsgtevil 1\n")
    _shell_trap(d / "ovs-vsctl", "cwd.ovs")
    _shell_trap(d / "python3", "cwd.python3")


@pytest.mark.attack("C3 hostile working directory")
@pytest.mark.parametrize("how", ["plain", "traced", "unsearchable", "deleted"])
def test_hostile_working_directory(helper, scenario, how, evil_dir, evil_so, marker_dir):
    _hostile_cwd(evil_dir, evil_so)
    chown_tree(evil_dir)
    # the canary: an ordinary interpreter started there picks the shadows up
    attack([PYTHON, "-c", "import nsgate"], cwd=evil_dir, probe=False)
    assert markers(), "the shadows do not fire on an ordinary python3 -c"
    clear_markers()
    snapshot = tree_listing(evil_dir)
    request = scenario.request()
    if how == "plain":
        result = attack(request.argv, cwd=evil_dir)
    elif how == "traced":
        result, trace, served = traced(request, {}, cwd=evil_dir)
        assert_clean_run(trace, served, evil_dir)
    elif how == "unsearchable":  # alice takes her own search right away after cd
        result = attack(["/bin/sh", "-c", f'cd {evil_dir} && chmod 0 {evil_dir} && exec "$@"',
                         "sh", *request.argv], cwd="/")
        evil_dir.chmod(0o755)
    else:
        gone = evil_dir / "gone"
        gone.mkdir()
        chown_tree(gone)
        result = attack(["/bin/sh", "-c", f'cd {gone} && rmdir {gone} && exec "$@"', "sh",
                         *request.argv], cwd="/")
    assert verify(request, result) == "done", result
    assert markers() == [], "a shadow ran"
    assert tree_listing(evil_dir) == snapshot
