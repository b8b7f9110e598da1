"""The fuzz harnesses' properties, kept in CI without atheris (fuzz/, issue 4 "Fuzzing").

Every input of fuzz/corpus/<harness>/ (seeds, and what the fuzzer kept) and every crash in
fuzz/crashes/ (`<harness>-crash-<sha1>`, written by fuzz/run.py) is replayed through that
harness's `check`, the same property check atheris runs: no exception but the documented
ones, nothing granted that the files do not grant, round trips. Inputs that once failed a check
are kept in the corpus as `found-*` (fuzz/README.md says what each found), so they replay
here for good.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parent.parent
FUZZ = ROOT / "fuzz"
HARNESSES = sorted(p.stem.removeprefix("fuzz_") for p in FUZZ.glob("fuzz_*.py"))
ARTIFACT_KINDS = ("crash", "timeout", "oom", "leak", "slow-unit")


def harness(name: str) -> ModuleType:
    return importlib.import_module(f"fuzz.fuzz_{name}")


def _harness_of_artifact(path: Path) -> str:
    for kind in ARTIFACT_KINDS:
        name, sep, _ = path.name.partition(f"-{kind}-")
        if sep:
            return name
    raise AssertionError(f"{path.name}: not a fuzz/run.py artifact (<harness>-crash-<sha1>)")


def _inputs() -> list:
    cases = [pytest.param(name, path, id=f"corpus/{name}/{path.name}")
             for name in HARNESSES for path in sorted((FUZZ / "corpus" / name).iterdir())]
    crashes = FUZZ / "crashes"
    found = sorted(crashes.iterdir()) if crashes.is_dir() else []
    cases += [pytest.param(_harness_of_artifact(path), path, id=f"crashes/{path.name}")
              for path in found if not path.name.startswith(".")]
    return cases


@pytest.mark.parametrize(("name", "path"), _inputs())
def test_replay(name: str, path: Path) -> None:
    harness(name).check(path.read_bytes())


def test_every_harness_has_seeds_and_every_corpus_a_harness() -> None:
    assert HARNESSES == ["config", "getsubids", "idmap", "netlink", "nic_commit_wire",
                         "nic_request", "nicdb", "pam_exec_env", "service_wire", "subid",
                         "usernet"]
    assert sorted(p.name for p in (FUZZ / "corpus").iterdir()) == HARNESSES
    for name in HARNESSES:
        assert any(p.name.startswith("seed-") for p in (FUZZ / "corpus" / name).iterdir())


def test_checks_run_without_atheris() -> None:
    """The replay must not depend on atheris: importing the harnesses does not import it."""
    code = ("import sys; sys.modules['atheris'] = None\n"
            f"from fuzz import {', '.join('fuzz_' + n for n in HARNESSES)}\n"
            "fuzz_subid.check(b'')\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            env={"PYTHONPATH": f"{ROOT / 'helpers'}:{ROOT}"}, check=False)
    assert result.returncode == 0, result.stderr.decode()


def test_getsubids_harness_restores_the_real_modules() -> None:
    """The getsubids harness swaps files, pwd, posix and confine (seccomp!) for fakes only while
    it runs: the pytest process is never confined."""
    module = harness("getsubids")
    from nsgate.cli import getsubids
    from nsgate.system import files, subid_db

    def real() -> list:
        return [files.open_trusted, files.chunks, files.read_small, subid_db.posix,
                subid_db.pwd, getsubids.pwd, getattr(getsubids, "confine", None)]

    def confinement() -> list[str]:
        return [line for line in Path("/proc/self/status").read_text().splitlines()
                if line.startswith(("Seccomp:", "NoNewPrivs:", "CapBnd:"))]

    before, confined_before = real(), confinement()
    module.check((FUZZ / "corpus" / "getsubids" / "seed-user").read_bytes())
    assert real() == before
    assert confinement() == confined_before


# The harness checks under hypothesis too: the seeds, spliced and mutated at random, so the
# properties keep being searched in every `make test` even where atheris does not run.
SEEDS = {name: [p.read_bytes() for p in sorted((FUZZ / "corpus" / name).iterdir())]
         for name in HARNESSES}


@st.composite
def mutated(draw, name: str) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS[name])))
    for _ in range(draw(st.integers(0, 4))):
        position = draw(st.integers(0, len(data)))
        action = draw(st.integers(0, 2))
        if action == 0:
            data[position:position] = draw(st.binary(min_size=1, max_size=8))
        elif action == 1:
            del data[position:position + draw(st.integers(1, 8))]
        else:
            other = draw(st.sampled_from(SEEDS[name]))
            data[position:] = other[draw(st.integers(0, len(other))):]
    return bytes(data)


@pytest.mark.parametrize("name", HARNESSES)
def test_properties_hold_on_mutated_seeds(name: str) -> None:
    @settings(max_examples=150, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(data=mutated(name))
    def run(data: bytes) -> None:
        harness(name).check(data)

    run()
