"""`make bench` fails when a README performance target is missed (issue 9 §9).

The benchmark itself takes minutes and measures the machine; what is tested here is its verdict:
bench/bench.py's targets are the README table's, the figures of the README table get the
README's verdicts, and any missed target makes the exit status 1, naming the target.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]


def _load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("nsgate_bench", REPO / "bench" / "bench.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


bench = _load_bench()


def _readme_table() -> dict[str, list[str]]:
    """The README's performance table: case letter -> [case, nsgate, reference, target,
    verdict] cells."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Performance", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        match = re.match(r"\| \(([a-m])\) ", line)
        if match:
            rows[match.group(1)] = [cell.strip() for cell in line.strip("|").split("|")]
    assert sorted(rows) == list("abcdefghijklm"), rows
    return rows


def _number(pattern: str, text: str) -> float:
    match = re.search(pattern, text)
    assert match, f"{pattern!r} not in {text!r}"
    return float(match.group(1))


def test_the_targets_are_the_readme_s():
    rows = _readme_table()
    target = {case: row[3] for case, row in rows.items()}
    words = {"half": 0.5}
    readme = {
        "a_floor_ratio": _number(r"^≤ ([\d.]+)x the floor$", target["a"]),
        "b_speedup": _number(r"^≥ ([\d.]+)x faster", target["b"]),
        "b_rss_mib": _number(r", < ([\d.]+) MiB$", target["b"]),
        "d_floors": _number(r"^≤ reference \+ ([\d.]+) floors$", target["d"]),
        "e_floor_ratio": _number(r"^≤ ([\d.]+)x the floor$", target["e"]),
        "f_ratio": words[re.fullmatch(r"≤ (half) the reference", target["f"]).group(1)],
        "g_ratio": 1.0 if target["g"] == "no slower, no quota violation" else -1.0,
        "h_ratio": _number(r"^≤ ([\d.]+)x the reference$", target["h"]),
        "i_ratio": _number(r"^≤ ([\d.]+)x the reference$", target["i"]),
        "j_ratio": _number(r"^≤ ([\d.]+)x the reference$", target["j"]),
        "k_ratio": 1.0 if target["k"] == "no slower, no quota violation" else -1.0,
        "l_pss_mib": _number(r"^≤ ([\d.]+) MiB$", target["l"]),
        "m_share": _number(r"^≤ ([\d.]+)% of \(a\)$", target["m"]) / 100,
    }
    assert readme == bench.TARGETS


def _stats(ms: float, rss_mib: float = 10.0) -> object:
    return bench.Stats(median_ms=ms, p90_ms=ms, runs=10, peak_rss_mib=rss_mib, rss_exact=True)


def _figures(a: float, b: float, b_ref: float, b_rss: float, d: float, d_ref: float, e: float,
             f: float, f_ref: float, g: float, g_ref: float, floor: float,
             g_nics: int = 5, service: dict | None = None) -> tuple[dict, object]:
    stats = {("a", "nsgate"): _stats(a), ("b", "nsgate"): _stats(b, b_rss),
             ("b", "reference"): _stats(b_ref), ("c", "python3"): _stats(floor),
             ("d", "nsgate"): _stats(d), ("d", "reference"): _stats(d_ref),
             ("e", "nsgate"): _stats(e), ("f", "nsgate"): _stats(f),
             ("f", "reference"): _stats(f_ref), ("g", "nsgate"): _stats(g),
             ("g", "reference"): _stats(g_ref)}
    extras = bench.Extras.empty()
    extras.quota["g", "nsgate"].extend([bench.QuotaRound(g_nics, g_nics, g_nics)] * 3)
    extras.quota["g", "reference"].extend([bench.QuotaRound(5, 5, 5)] * 3)
    if service is not None:
        _service_figures(stats, extras, **service)
    return stats, extras


def _service_figures(stats: dict, extras: object, h: float, h_ref: float, i: float,
                     i_ref: float, j: float, j_ref: float, k: float, k_ref: float,
                     l_pss_mib: float, m_us: float, k_nics: int = 5,
                     k_consistent: bool = True) -> None:
    for case, ms, ref in (("h", h, h_ref), ("i", i, i_ref), ("j", j, j_ref), ("k", k, k_ref)):
        stats[case, "nsgate"], stats[case, "reference"] = _stats(ms), _stats(ref)
    extras.quota["k", "nsgate"].extend(
        [bench.QuotaRound(k_nics, k_nics, k_nics, k_consistent)] * 3)
    extras.memory.append(bench.ServiceMemory(11 * 1024, 5 * 1024, 2, round(l_pss_mib * 1024)))
    stats["m", "no socket"] = stats["m", "stale socket"] = _stats(m_us / 1000)


def _ms(cell: str) -> float:
    return _number(r"^([\d.]+) ms", cell)


def test_the_readme_figures_get_the_readme_verdicts_and_exit_1():
    """The run the README reports misses some targets: `make bench` exits 1 on it, naming
    exactly those, and every other verdict is the README's."""
    rows = _readme_table()
    stats, extras = _figures(
        a=_ms(rows["a"][1]), b=_ms(rows["b"][1]), b_ref=_ms(rows["b"][2]),
        b_rss=_number(r", ([\d.]+) MiB peak", rows["b"][1]), d=_ms(rows["d"][1]),
        d_ref=_ms(rows["d"][2]), e=_ms(rows["e"][1]), f=_ms(rows["f"][1]),
        f_ref=_ms(rows["f"][2]), g=_ms(rows["g"][1]), g_ref=_ms(rows["g"][2]),
        floor=_ms(rows["c"][1]))
    _service_figures(
        stats, extras, h=_ms(rows["h"][1]), h_ref=_ms(rows["h"][2]), i=_ms(rows["i"][1]),
        i_ref=_ms(rows["i"][2]), j=_ms(rows["j"][1]), j_ref=_ms(rows["j"][2]),
        k=_ms(rows["k"][1]), k_ref=_ms(rows["k"][2]),
        k_nics=int(_number(r", (\d+) nics$", rows["k"][1])),
        l_pss_mib=_number(r"^([\d.]+) MiB", rows["l"][1]),
        m_us=_number(r"^([\d.]+) µs", rows["m"][1]))
    checks = bench.verdicts(stats, extras)
    passed = {check.name: check.passed for check in checks}
    readme_verdict = {case: row[4] for case, row in rows.items()}
    assert passed["(a) nsgate / floor"] == readme_verdict["a"].startswith("met")
    assert passed["(b) reference / nsgate"] == readme_verdict["b"].startswith("met")
    assert passed["(b) nsgate peak RSS"] == (readme_verdict["b"].startswith("met")
                                             or readme_verdict["b"].endswith("RSS met"))
    assert passed["(d) nsgate - reference"] == readme_verdict["d"].startswith("met")
    assert passed["(e) nsgate / floor"] == readme_verdict["e"].startswith("met")
    assert passed["(f) nsgate / reference"] == readme_verdict["f"].startswith("met")
    assert passed["(g) nsgate / reference"] == (not readme_verdict["g"].startswith("time missed"))
    assert passed["(g) nsgate over quota"] == readme_verdict["g"].endswith("quota held")

    for case in "hij":
        assert passed[f"({case}) nsgate / reference"] == readme_verdict[case].startswith("met")
    assert passed["(k) nsgate / reference"] == (not readme_verdict["k"].startswith("time missed"))
    assert passed["(k) nsgate over quota"] == readme_verdict["k"].endswith("quota held")
    assert passed["(l) nsgated idle PSS"] == readme_verdict["l"].startswith("met")
    assert passed["(m) the try / (a)"] == readme_verdict["m"].startswith("met")

    status, missed = bench.exit_status(checks)
    assert status == 1
    assert [line.split(": ")[2] for line in missed] == [
        name for name, ok in passed.items() if not ok]
    assert all(line.startswith("bench: target missed: ") for line in missed)


ALL_MET = {"a": 7.0, "b": 20.0, "b_ref": 300.0, "b_rss": 11.0, "d": 10.0, "d_ref": 4.0,
           "e": 12.0, "f": 10.0, "f_ref": 100.0, "g": 18.0, "g_ref": 20.0, "floor": 6.0}
SERVICE_MET = {"h": 1.0, "h_ref": 1.1, "i": 4.0, "i_ref": 4.0, "j": 20.0, "j_ref": 100.0,
               "k": 17.0, "k_ref": 20.0, "l_pss_mib": 20.0, "m_us": 10.0}


def test_all_targets_met_exits_0():
    checks = bench.verdicts(*_figures(**ALL_MET, service=SERVICE_MET))
    assert len(checks) == 15 and all(check.passed for check in checks)
    assert bench.exit_status(checks) == (0, [])


def test_service_only_judges_the_service_s_targets():
    """--service-only: (h) to (l) judged; (a) to (g) and (m), whose yardstick is (a), not."""
    stats, extras = _figures(**ALL_MET, service=SERVICE_MET)
    for key in [key for key in stats if key[0] in "abcdefg"]:
        del stats[key]
    extras.quota["g", "nsgate"].clear()
    extras.quota["g", "reference"].clear()
    names = [check.name for check in bench.verdicts(stats, extras)]
    assert names == ["(h) nsgate / reference", "(i) nsgate / reference",
                     "(j) nsgate / reference", "(k) nsgate / reference",
                     "(k) nsgate over quota", "(l) nsgated idle PSS"]


@pytest.mark.parametrize(("change", "name"), [
    ({"a": 7.9}, "(a) nsgate / floor"),
    ({"b_ref": 199.0}, "(b) reference / nsgate"),
    ({"b_rss": 30.0}, "(b) nsgate peak RSS"),
    ({"d": 16.1}, "(d) nsgate - reference"),
    ({"e": 30.1}, "(e) nsgate / floor"),
    ({"f": 50.1}, "(f) nsgate / reference"),
    ({"g": 20.1}, "(g) nsgate / reference"),
    ({"g_nics": 6}, "(g) nsgate over quota"),
    ({"h": 1.2}, "(h) nsgate / reference"),
    ({"i": 4.5}, "(i) nsgate / reference"),
    ({"j": 25.1}, "(j) nsgate / reference"),
    ({"k": 20.1}, "(k) nsgate / reference"),
    ({"k_nics": 6}, "(k) nsgate over quota"),
    ({"k_consistent": False}, "(k) nsgate over quota"),
    ({"l_pss_mib": 40.1}, "(l) nsgated idle PSS"),
    ({"m_us": 71.0}, "(m) the try / (a)"),
])
def test_one_missed_target_exits_1_naming_it(change, name):
    service = {**SERVICE_MET, **{key: value for key, value in change.items()
                                 if key[0] in "hijklm"}}
    change = {key: value for key, value in change.items() if key[0] not in "hijklm"}
    checks = bench.verdicts(*_figures(**{**ALL_MET, **change}, service=service))
    status, missed = bench.exit_status(checks)
    assert status == 1
    assert len(missed) == 1 and missed[0].startswith(f"bench: target missed: {name}: "), missed


class _Lab:
    def __init__(self, scratch: Path) -> None:
        pass

    def close(self) -> None:
        pass


def test_bench_exits_with_the_verdict(monkeypatch, capsys, tmp_path):
    """bench() itself, its measuring replaced by given samples: it prints the table and exits
    1, naming the missed target on stderr; with every target met, 0 and nothing on stderr."""
    samples = {"a": 7.0, "b": 20.0, "c": 6.0, "d": 10.0, "e": 12.0, "f": 10.0, "g": 18.0}
    references = {"b": 300.0, "d": 4.0, "f": 100.0, "g": 20.0}

    def measure(nsgate_dir, lab, args, extras):
        for key in extras.quota:
            extras.quota[key].extend([bench.QuotaRound(5, 5, 5)] * 3)
        results = {}
        for case, ms in samples.items():
            impl = "python3" if case == "c" else "nsgate"
            results[case, impl] = [bench.Sample(ms, 0, 11 * 1024, 20 * 1024, "")] * 3
        for case, ms in references.items():
            results[case, "reference"] = [bench.Sample(ms, 0, 100 * 1024, 1024, "")] * 3
        return results

    for name in ("check_isolated", "overlay_etc", "add_test_user"):
        monkeypatch.setattr(bench, name, lambda *args: None)
    monkeypatch.setattr(bench, "package_version", lambda name: "test")
    monkeypatch.setattr(bench, "NicLab", _Lab)
    monkeypatch.setattr(bench, "measure", measure)
    args = bench.parse_args(["--prefix", str(tmp_path), "--scratch", str(tmp_path)])

    assert bench.bench(args) == 0
    out, err = capsys.readouterr()
    assert "verdict" in out and "MISS" not in out and err == ""

    samples["a"] = 9.9  # 1.65x the floor
    assert bench.bench(args) == 1
    out, err = capsys.readouterr()
    assert "MISS" in out
    assert err == "bench: target missed: (a) nsgate / floor: 1.65x, goal <= 1.3x\n"
