"""The assertions for defense authors (bench/testing.py) on runs whose answer is known: results of record
restored into an in-memory store (their per-sample rows say which attack broke what), a Wilson bound
solved here from its defining equation, and survivors that differ by a known number of samples."""

from __future__ import annotations

import math
import re
from dataclasses import replace
from pathlib import Path
from statistics import NormalDist

import pytest

from bench import api
from bench.errors import BenchError
from bench.report.record import Survivors, import_record, read_record
from bench.report.run_report import RunReport
from bench.store.database import Store
from bench.testing import assert_matches_record, assert_robust, compare_survivors, robust_accuracy, wilson_upper

ROOT = Path(__file__).resolve().parents[1]
STANDARD = ROOT / "results" / "mnist-linf-quick-v1" / "standard.quick.seed0.json"
FLAGGED = ROOT / "results" / "mnist-linf-quick-v2" / "madry-pgd-at.quick.seed0.json"  # black-box-wins, escalated


def restored(path: Path) -> tuple[RunReport, Store]:
    store = Store("sqlite://")
    return api.report(import_record(store, read_record(path)), store=store), store


def test_the_readme_shows_the_example_test_verbatim() -> None:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- readme-plugin-example[^>]*-->\s*```python\n(.*?)```", readme, re.S)
    assert block and block.group(1) == (ROOT / "examples" / "test_my_defense.py").read_text()


@pytest.mark.parametrize("k, n, confidence", [(0, 10, 0.95), (3, 10, 0.95), (90, 200, 0.95), (149, 200, 0.99),
                                              (199, 200, 0.9)])
def test_wilson_upper_solves_the_score_equation(k: int, n: int, confidence: float) -> None:
    """The upper end is the p >= k/n where (k/n - p)^2 = z^2 p (1 - p) / n: found here by bisection."""
    z, phat = NormalDist().inv_cdf(confidence), k / n
    lo, hi = phat, 1.0
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if (phat - mid) ** 2 < z * z * mid * (1 - mid) / n else (lo, mid)
    assert math.isclose(wilson_upper(k, n, confidence), lo, abs_tol=1e-9)
    assert wilson_upper(n, n, confidence) == 1.0


def test_assert_robust_passes_within_sampling_noise_and_fails_beyond_it() -> None:
    report, _ = restored(STANDARD)
    measured = report.worst_case[0.1]  # 74.5% of 200
    bound = 100.0 * wilson_upper(round(measured * 2), 200)
    assert measured < bound - 4.0  # 200 samples: a few points of noise
    assert_robust(report, eps=0.1, at_least=measured + 4.0)  # below the bar, not significantly
    assert_robust(report, eps=0.1, at_least=bound)
    with pytest.raises(AssertionError, match=r"74\.5% robust at eps 0\.1 \(149/200"):
        assert_robust(report, eps=0.1, at_least=bound + 0.1)


@pytest.mark.parametrize("eps", [0.1, 0.2, 0.3, 0.4])
def test_the_failure_names_the_attack_that_broke_the_most_within_eps(eps: float) -> None:
    """Counted here from the per-sample rows: a sample broken at a smaller eps is not attacked again, and
    counts for the attack that broke it there (at eps 0.4 nothing is left to break)."""
    report, store = restored(STANDARD)
    broken: dict[str, int] = {}
    for r in store.results(report.run_id):
        if r.attack != "clean" and r.eps <= eps + 1e-9 and r.success:
            broken[r.attack] = broken.get(r.attack, 0) + 1
    with pytest.raises(AssertionError) as failure:
        assert_robust(report, eps=eps, at_least=100.0)
    named = re.search(r"; (\S+) broke the most samples within eps [0-9.]+ \((\d+)\)", str(failure.value))
    assert named, str(failure.value)
    assert broken[named.group(1)] == int(named.group(2)) == max(broken.values())


def test_an_unreliable_run_is_judged_by_its_ranked_number_and_the_message_names_its_flags() -> None:
    report, _ = restored(FLAGGED)
    assert report.unreliable and report.primary_eps == 0.3
    lowered = replace(report, ranked_accuracy=report.worst_case[0.3] - 20.0)  # the checks' attacks broke more
    assert robust_accuracy(lowered, 0.3) == report.worst_case[0.3] - 20.0
    assert robust_accuracy(lowered, 0.2) == report.worst_case[0.2]  # ranked only at the primary eps
    assert_robust(report, eps=0.3, at_least=report.worst_case[0.3])
    with pytest.raises(AssertionError, match=r"the sanity checks' own attacks broke 40 more .*"
                                             r"flagged unreliable: black-box-wins"):  # 20% of 200 samples
        assert_robust(lowered, eps=0.3, at_least=report.worst_case[0.3])


def test_compare_survivors_counts_the_tolerance_in_samples() -> None:
    record = Survivors(10, {("pgd-ce", 0.1): frozenset({1, 2, 3, 4, 5}), ("fgsm", 0.1): frozenset({1, 2})})
    run = Survivors(10, {("pgd-ce", 0.1): frozenset({1, 2, 3, 6}), ("fgsm", 0.1): frozenset({1, 2})})
    assert compare_survivors(run, record, tolerance=3) == []  # 6 more, 4 and 5 fewer: 3 samples differ
    [problem] = compare_survivors(run, record, tolerance=2)
    assert problem == "pgd-ce@0.1: 1 more survived (e.g. [6]), 2 fewer (e.g. [4, 5])"
    extra = Survivors(10, {**run.cells, ("square", 0.1): frozenset()})
    assert compare_survivors(extra, record, tolerance=10) == ["square@0.1: in the run, not in the record"]


def test_bad_arguments_are_one_line_errors() -> None:
    report, store = restored(STANDARD)
    with pytest.raises(BenchError, match="percentage.*did you mean 45"):
        assert_robust(report, eps=0.1, at_least=0.45)
    with pytest.raises(BenchError, match="confidence"):
        assert_robust(report, eps=0.1, at_least=99.0, confidence=1.5)
    with pytest.raises(BenchError, match="does not evaluate eps 0.25"):
        assert_robust(report, eps=0.25, at_least=10.0)
    record = read_record(STANDARD)
    assert_matches_record(report, record, store=store)  # the run is the record's own
    with pytest.raises(BenchError, match="tolerance"):
        assert_matches_record(report, record, store=store, tolerance=-1)
    with pytest.raises(BenchError, match="has no 'survivors' section"):
        assert_matches_record(report, {k: v for k, v in record.items() if k != "survivors"}, store=store)
    damaged = {**record, "survivors": {**record["survivors"], "pgd-ce@0.1": "not hex"}}
    with pytest.raises(BenchError, match="record of standard is damaged"):
        assert_matches_record(report, damaged, store=store)


def test_a_record_of_another_protocol_is_named_first() -> None:
    """A record made under another protocol fingerprint fails the comparison, and that cause comes first,
    before the cell differences it explains."""
    report, store = restored(STANDARD)
    record = read_record(STANDARD)
    other = {**record, "provenance": {**record["provenance"], "fingerprint": "0" * 16}}
    with pytest.raises(AssertionError, match=r"in 1 place\(s\):\n  protocol fingerprint .* != the record's 0{16}"):
        assert_matches_record(report, other, store=store)
    key = next(k for k, mask in record["survivors"].items() if not k.startswith("clean") and int(mask, 16))
    emptied = {**other, "survivors": {**record["survivors"], key: "0"}}
    with pytest.raises(AssertionError, match=r"in 2 place\(s\):\n  protocol fingerprint .*\n  " + re.escape(key)):
        assert_matches_record(report, emptied, store=store)
