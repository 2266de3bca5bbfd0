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
that broke the most samples within that eps: a sample broken at a smaller eps is not attacked again
(the balls are nested), so it counts for the attack that broke it there. For a run flagged unreliable,
the number at the primary eps is the ranked one (the checks' own attacks' breaks count too), as on the
leaderboard, and the message names the flags.

``assert_matches_record`` compares a run with a result of record (:mod:`bench.report.record`)
sample by sample: for every stage and eps, which samples survived. Its tolerance is stated in
samples per cell, 0 meaning exact equality.
"""

from __future__ import annotations

import math
from pathlib import Path
from statistics import NormalDist
from typing import Any

from bench.errors import BenchError
from bench.report.record import Survivors, check_record, read_record
from bench.report.run_report import RunReport
from bench.store.database import Store


def wilson_upper(successes: int, n: int, confidence: float = 0.95) -> float:
    """The upper end of the one-sided Wilson score interval of a proportion (as a fraction)."""
    if not 0.0 < confidence < 1.0:
        raise BenchError(f"confidence must be between 0 and 1 (exclusive), got {confidence!r}")
    if n <= 0:
        return 1.0
    if not 0 <= successes <= n:
        raise BenchError(f"{successes} successes out of {n}")
    z = NormalDist().inv_cdf(confidence)
    p = successes / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return min(1.0, (centre + spread) / (1 + z * z / n))


def _eps_of(report: RunReport, eps: float) -> float:
    match = [e for e in report.worst_case if math.isclose(e, eps, rel_tol=0, abs_tol=1e-9)]
    if not match:
        known = ", ".join(f"{e:g}" for e in sorted(report.worst_case))
        raise BenchError(f"{report.protocol} does not evaluate eps {eps:g}; its eps: {known}")
    return match[0]


def strongest_attack(report: RunReport, eps: float) -> tuple[str, int] | None:
    """(label, samples broken) of the attack that broke the most samples within ``eps``, escalation
    included: each attack's breaks summed over the evaluated eps up to ``eps`` (a sample broken at a
    smaller eps is not attacked at the larger ones, and counts against robustness there too)."""
    eps = _eps_of(report, eps)
    broken: dict[str, int] = {}
    for c in report.cells:
        if c.attack != "clean" and c.eps <= eps and c.broken > 0:
            broken[c.attack] = broken.get(c.attack, 0) + c.broken
    if not broken:
        return None
    best = max(broken, key=lambda a: broken[a])  # the first listed wins a tie (cells come in stage order)
    return best, broken[best]


def robust_accuracy(report: RunReport, eps: float) -> float:
    """The accuracy ``assert_robust`` judges: the worst case at ``eps``; for a run flagged unreliable, at
    the primary eps, the ranked accuracy where it is lower (the leaderboard's number)."""
    eps = _eps_of(report, eps)
    value = report.worst_case[eps]
    if report.unreliable and report.ranked_accuracy is not None and math.isclose(eps, report.primary_eps,
                                                                                 rel_tol=0, abs_tol=1e-9):
        value = min(value, report.ranked_accuracy)
    return value


def assert_robust(report: RunReport, eps: float, at_least: float, confidence: float = 0.95) -> None:
    """Fail unless the robust accuracy at ``eps`` (:func:`robust_accuracy`) is consistent with at least
    ``at_least`` percent."""
    if not 1.0 <= at_least <= 100.0 and at_least != 0.0:
        raise BenchError(f"at_least is a percentage (0 to 100), got {at_least!r}"
                         + (f": did you mean {at_least * 100:g}?" if 0.0 < at_least < 1.0 else ""))
    if not report.complete:
        raise AssertionError(f"run {report.run_id} of {report.entry_id} is incomplete")
    eps = _eps_of(report, eps)
    n = report.n_samples
    value = robust_accuracy(report, eps)
    robust = round(value * n / 100.0)
    upper = 100.0 * wilson_upper(robust, n, confidence)
    if upper >= at_least:
        return
    strongest = strongest_attack(report, eps)
    culprit = (f"{strongest[0]} broke the most samples within eps {eps:g} ({strongest[1]})" if strongest
               else "no attack broke a sample: the clean errors account for it")
    exposed = round((report.worst_case[eps] - value) * n / 100.0)  # the ranked number of a flagged run
    if exposed > 0:
        culprit += f"; the sanity checks' own attacks broke {exposed} more (the ranked number)"
    unreliable = [f.name for f in report.flags if f.severity == "unreliable"]
    flagged = f"; flagged unreliable: {', '.join(unreliable)}" if unreliable else ""
    raise AssertionError(
        f"{report.entry_id} under {report.protocol}: {value:.1f}% robust at eps {eps:g} "
        f"({robust}/{n}; {confidence:.0%} upper bound {upper:.1f}%) < {at_least:g}%; {culprit}; "
        f"clean {report.clean_accuracy:.1f}%{flagged}")


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
    if tolerance < 0:
        raise BenchError(f"tolerance is a number of samples (>= 0), got {tolerance!r}")
    rec = check_record(record, "the record given") if isinstance(record, dict) else read_record(Path(record))
    problems = compare_survivors(Survivors.of_run(store, report.run_id), Survivors.of_record(rec), tolerance)
    recorded = rec["provenance"].get("fingerprint")
    if report.fingerprint != recorded:  # first: another protocol explains every other difference
        problems.insert(0, f"protocol fingerprint {report.fingerprint} != the record's {recorded}")
    if problems:
        head = (f"{report.entry_id} under {report.protocol} differs from its record (tolerance {tolerance} "
                f"sample(s) per cell) in {len(problems)} place(s)")
        raise AssertionError(head + ":\n  " + "\n  ".join(problems[:20]))
