"""Coverage-guided (atheris) fuzz harnesses for nsgate's parsers of untrusted input.

Each `fuzz_<name>.py` exposes `check(data: bytes)`, the property check, which runs with or without
atheris (tests/test_fuzz_regressions.py replays the corpus and the crashes through it). Run them
with `python fuzz/run.py --seconds 5` (see run.py).
"""
