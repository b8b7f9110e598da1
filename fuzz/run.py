"""Run every fuzz harness (fuzz/fuzz_<name>.py) under atheris for a time budget each.

    python fuzz/run.py --seconds 5                  # each harness 5 s
    python fuzz/run.py --seconds 60 subid nicdb     # only these
    python fuzz/run.py --seconds 5 --scratch build/fuzz-corpus            # make test
    python fuzz/run.py --total-seconds 600 --scratch build/fuzz-corpus --merge  # make fuzz

The corpus of a harness is fuzz/corpus/<name>/ (seeds, kept in git). New inputs that reach new
code are added to it, or with `--scratch DIR` to DIR/<name>/ (the work tree stays clean; DIR is
read again next time); `--merge` then adds to fuzz/corpus/<name>/ only those of them that bring
coverage it lacks (libFuzzer's -merge=1), so the kept corpus stays small.
A crashing input is written to fuzz/crashes/<name>-crash-<sha1> (also -timeout-, -oom-); it is
replayed by tests/test_fuzz_regressions.py. Exits 1 if any harness crashed, 2 on a usage error.
Each harness's libFuzzer output goes to <log-dir>/<name>.log; a summary line per harness is
printed, with executions per second and coverage (libFuzzer's "cov", edges of nsgate's code).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

FUZZ = Path(__file__).resolve().parent
ROOT = FUZZ.parent
CORPUS = FUZZ / "corpus"
CRASHES = FUZZ / "crashes"
MAX_LEN = {"getsubids": 8192, "idmap": 8192, "netlink": 16384}
DEFAULT_MAX_LEN = 4096


def harnesses() -> list[str]:
    return sorted(p.stem.removeprefix("fuzz_") for p in FUZZ.glob("fuzz_*.py"))


def _artifacts() -> list[Path]:
    return [p for p in CRASHES.iterdir() if not p.name.startswith(".")]


def _stat(log: str, name: str) -> int | None:
    found = re.findall(rf"stat::{name}:\s+(\d+)", log)
    return int(found[-1]) if found else None


def _environment(python: str) -> dict[str, str]:
    """nsgate from the source tree; the harnesses' `#!/usr/bin/env python3` (libFuzzer's merge
    runs them as programs) finds the python that has atheris."""
    path = f"{Path(python).parent}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}"
    env = dict(os.environ, PYTHONPATH=f"{ROOT / 'helpers'}{os.pathsep}{ROOT}", PATH=path)
    env.pop("PYTHONSTARTUP", None)
    return env


def merge(name: str, python: str, scratch: Path, log_dir: Path) -> int:
    """Add to fuzz/corpus/<name>/ the inputs of scratch/<name>/ with coverage it lacks; how many."""
    corpus = CORPUS / name
    before = len(list(corpus.iterdir()))
    result = subprocess.run([python, str(FUZZ / f"fuzz_{name}.py"), "-merge=1",
                             f"-max_len={MAX_LEN.get(name, DEFAULT_MAX_LEN)}", "-timeout=30",
                             "-rss_limit_mb=2048", str(corpus), str(scratch / name)],
                            cwd=ROOT, env=_environment(python), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)
    (log_dir / f"{name}-merge.log").write_bytes(result.stdout)
    if result.returncode != 0:
        raise SystemExit(f"fuzz: merging the corpus of {name} failed, see {log_dir}")
    return len(list(corpus.iterdir())) - before


def run_one(name: str, seconds: int, python: str, scratch: Path | None, log_dir: Path) -> dict:
    corpus = CORPUS / name
    corpus.mkdir(parents=True, exist_ok=True)
    CRASHES.mkdir(exist_ok=True)
    dirs = [corpus]
    if scratch is not None:
        dirs.insert(0, scratch / name)  # libFuzzer adds new inputs to the first directory
        dirs[0].mkdir(parents=True, exist_ok=True)
    before = set(_artifacts())
    command = [python, str(FUZZ / f"fuzz_{name}.py"), f"-max_total_time={seconds}",
               f"-max_len={MAX_LEN.get(name, DEFAULT_MAX_LEN)}", "-timeout=30",
               "-rss_limit_mb=2048", "-print_final_stats=1",
               f"-artifact_prefix={CRASHES}/{name}-", *map(str, dirs)]
    started = time.monotonic()
    result = subprocess.run(command, cwd=ROOT, env=_environment(python), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)
    elapsed = time.monotonic() - started
    log = result.stdout.decode("utf-8", "replace")
    log_dir.mkdir(parents=True, exist_ok=True)
    (log_dir / f"{name}.log").write_text(log)
    crashes = sorted(set(_artifacts()) - before)
    runs = _stat(log, "number_of_executed_units")
    return {"name": name, "status": result.returncode, "seconds": elapsed, "runs": runs,
            "exec_per_sec": _stat(log, "average_exec_per_sec"),
            "coverage": (re.findall(r"cov: (\d+)", log) or ["?"])[-1],
            "corpus": len(list(corpus.iterdir())), "crashes": crashes, "log": log}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("names", nargs="*", help=f"harnesses (default all: {harnesses()})")
    parser.add_argument("--seconds", type=int, default=5, help="budget of each harness")
    parser.add_argument("--total-seconds", type=int, help="budget of all, shared evenly")
    parser.add_argument("--python", default=sys.executable, help="a python with atheris")
    parser.add_argument("--scratch", type=Path, help="add new inputs here, not to fuzz/corpus")
    parser.add_argument("--merge", action="store_true",
                        help="then add to fuzz/corpus what in --scratch brings new coverage")
    parser.add_argument("--log-dir", type=Path, default=ROOT / "build" / "fuzz-logs")
    args = parser.parse_args()
    if args.merge and args.scratch is None:
        parser.error("--merge needs --scratch")
    names = args.names or harnesses()
    unknown = sorted(set(names) - set(harnesses()))
    if unknown:
        parser.error(f"no such harness: {', '.join(unknown)}")
    seconds = max(1, args.total_seconds // len(names)) if args.total_seconds else args.seconds

    failed = []
    started = time.monotonic()
    for name in names:
        outcome = run_one(name, seconds, args.python, args.scratch, args.log_dir)
        ok = outcome["status"] == 0 and not outcome["crashes"]
        print(f"fuzz {name:12} {'ok' if ok else 'CRASH':5} {outcome['seconds']:6.1f}s "
              f"runs {outcome['runs']} exec/s {outcome['exec_per_sec']} "
              f"cov {outcome['coverage']} corpus {outcome['corpus']}", flush=True)
        if ok and args.merge:
            print(f"fuzz {name:12} merged: {merge(name, args.python, args.scratch, args.log_dir)}"
                  " new inputs in fuzz/corpus", flush=True)
        if not ok:
            failed.append(name)
            tail = outcome["log"].splitlines()[-40:]
            print("\n".join(f"  | {line}" for line in tail), file=sys.stderr)
            for crash in outcome["crashes"]:
                print(f"  crash input: {crash.relative_to(ROOT)} {crash.read_bytes()[:200]!r}",
                      file=sys.stderr)
    print(f"fuzz: {len(names)} harnesses, {seconds}s each, {time.monotonic() - started:.1f}s in "
          f"all, {'crashed: ' + ', '.join(failed) if failed else 'no crash'}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
