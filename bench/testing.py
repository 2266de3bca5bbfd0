"""Assertions for regression tests of robustness, for defense authors and for Gauntlet's own suite.

A defense author writes, in their own CI (the pytest plugin, :mod:`bench.pytest_plugin`, provides the
``gauntlet`` fixture that evaluates with one torch thread)::

    def test_my_defense_holds(gauntlet):
        report = gauntlet.evaluate(MyModel(), "mnist-linf-quick-v1")
        assert_robust(report, eps=0.3, at_least=45.0)

``assert_robust`` has sampling noise built in: a quick protocol evaluates a few hundred samples, so
a model whose true robust accuracy is ``at_least`` measures below it about half the time. It fails
only when the measured share is *significantly* below: when even the upper end of its one-sided
Wilson score interval (confidence ``confidence``) is below ``at_least``. Its message names the attack
that broke the most samples at that eps.

``assert_matches_record`` compares a run with a result of record (:mod:`bench.report.record`)
sample by sample: for every stage and eps, which samples survived. Its tolerance is stated in
samples per cell, 0 meaning exact equality.
"""

from __future__ import annotations

import math
from pathlib import Path
from statistics import NormalDist
from typing import Any

from bench.report.record import Survivors, read_record
from bench.report.run_report import RunReport
from bench.store.database import Store


def wilson_upper(successes: int, n: int, confidence: float = 0.95) -> float:
    """The upper end of the one-sided Wilson score interval of a proportion (as a fraction)."""
    if n <= 0:
        return 1.0
    z = NormalDist().inv_cdf(confidence)
    p = successes / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return min(1.0, (centre + spread) / (1 + z * z / n))


def _eps_of(report: RunReport, eps: float) -> float:
    match = [e for e in report.worst_case if math.isclose(e, eps, rel_tol=0, abs_tol=1e-9)]
    if not match:
        known = ", ".join(f"{e:g}" for e in sorted(report.worst_case))
        raise AssertionError(f"{report.protocol} does not evaluate eps {eps:g}; its eps: {known}")
    return match[0]


def strongest_attack(report: RunReport, eps: float) -> tuple[str, int] | None:
    """(label, samples broken) of the attack that broke the most samples at ``eps``, escalation included."""
    eps = _eps_of(report, eps)
    cells = [c for c in report.cells if c.eps == eps and c.attack != "clean" and c.broken > 0]
    if not cells:
        return None
    best = max(cells, key=lambda c: c.broken)
    return best.attack, best.broken


def assert_robust(report: RunReport, eps: float, at_least: float, confidence: float = 0.95) -> None:
    """Fail unless the worst-case accuracy at ``eps`` is consistent with at least ``at_least`` percent."""
    if not report.complete:
        raise AssertionError(f"run {report.run_id} of {report.entry_id} is incomplete")
    eps = _eps_of(report, eps)
    n = report.n_samples
    robust = round(report.worst_case[eps] * n / 100.0)
    upper = 100.0 * wilson_upper(robust, n, confidence)
    if upper >= at_least:
        return
    strongest = strongest_attack(report, eps)
    culprit = (f"{strongest[0]} broke the most samples ({strongest[1]})" if strongest
               else "no attack broke a sample: the clean errors account for it")
    raise AssertionError(
        f"{report.entry_id} under {report.protocol}: {report.worst_case[eps]:.1f}% robust at eps {eps:g} "
        f"({robust}/{n}; {confidence:.0%} upper bound {upper:.1f}%) < {at_least:g}%; {culprit}; "
        f"clean {report.clean_accuracy:.1f}%")


def compare_survivors(run: Survivors, record: Survivors, tolerance: int = 0) -> list[str]:
    """One line per (stage, eps) cell where ``run`` and ``record`` differ by more than ``tolerance``
    samples (a cell only one of them has counts as every sample differing). Cells both have come
    first: a cell where more samples survive is the headline of a weakened attack."""
    problems: list[str] = []
    unmatched: list[str] = []
    if run.n_samples != record.n_samples:
        problems.append(f"{run.n_samples} samples, the record has {record.n_samples}")
    for key in sorted(set(run.cells) | set(record.cells)):
        label = f"{key[0]}@{key[1]:g}"
        if key not in run.cells:
            unmatched.append(f"{label}: in the record, not in the run")
            continue
        if key not in record.cells:
            unmatched.append(f"{label}: in the run, not in the record")
            continue
        got, want = run.cells[key], record.cells[key]
        if len(got ^ want) > tolerance:
            more, fewer = sorted(got - want), sorted(want - got)
            problems.append(f"{label}: {len(more)} more survived (e.g. {more[:5]}), {len(fewer)} fewer "
                            f"(e.g. {fewer[:5]})")
    return problems + unmatched


def assert_matches_record(report: RunReport, record: str | Path | dict[str, Any], *, store: Store,
                          tolerance: int = 0) -> None:
    """Fail unless every (stage, eps) cell's survivors match the record's within ``tolerance`` samples.

    ``report`` is a run's report and ``store`` the store holding its per-sample rows (the
    ``gauntlet`` fixture's ``store``). Equal survivors under another protocol fingerprint fail too.
    """
    rec = record if isinstance(record, dict) else read_record(Path(record))
    problems = compare_survivors(Survivors.of_run(store, report.run_id), Survivors.of_record(rec), tolerance)
    prov = rec["provenance"]
    if not problems and report.fingerprint != prov["fingerprint"]:
        problems.append(f"same survivors, but protocol fingerprint {report.fingerprint} != {prov['fingerprint']}")
    if problems:
        head = (f"{report.entry_id} under {report.protocol} differs from its record (tolerance {tolerance} "
                f"sample(s) per cell) in {len(problems)} place(s)")
        raise AssertionError(head + ":\n  " + "\n  ".join(problems[:20]))
