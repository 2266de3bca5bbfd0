"""The row-based sanity checks, the noise rule, the ranking of flagged entries and the findings' decisions,
on hand-made rows and outcomes whose right answer is known."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from bench.checks.probes import Outcome
from bench.checks.suite import (
    CheckResult,
    beyond_noise,
    check_adaptive_gap,
    check_black_box,
    check_steps,
    check_sweeps,
)
from bench.report.run_report import RunReport
from bench.report.summary import CheckedSummary
from bench.store.database import Result
from leaderboard.findings import FAILS, HOLDS, MISSING, UNCLEAR, _better, _worst_metric, noise

PROTO = {"attacks": [{"label": "fgsm", "kind": "fgsm"}, {"label": "pgd-ce", "kind": "pgd"},
                     {"label": "autoattack", "kind": "autoattack"}, {"label": "random-search", "kind": "random-search"},
                     {"label": "bpda", "kind": "bpda"}],
         "adaptive_applied": ["bpda"], "epsilons": [0.1, 0.3], "primary_eps": 0.3}


def _row(attack: str, eps: float, sample: int, success: bool, detail: str | None = None) -> Result:
    return Result(run_id=1, fingerprint="f", attack=attack, eps=eps, sample=sample, label=0, attacked=True,
                  success=success, robust_after=not success, detail=detail)


def test_noise_rule() -> None:
    assert beyond_noise(5, 0) and beyond_noise(4, 0)  # 4 >= 2 sqrt(4)
    assert not beyond_noise(3, 0) and not beyond_noise(1, 0)  # 3 < 2 sqrt(3)
    assert not beyond_noise(10, 6)  # 4 < 2 sqrt(16)
    assert beyond_noise(20, 4)  # 16 >= 2 sqrt(24) = 9.8


def test_black_box_rule_is_per_sample_and_uses_half_a_percent() -> None:
    rows = [_row("random-search", 0.3, i, i < 2) for i in range(200)]
    r = check_black_box(PROTO, rows, 200)
    assert r.failed and r.value == pytest.approx(1.0)
    assert r.evidence["by_eps"]["0.3"]["random-search"] == [0, 1]
    one = check_black_box(PROTO, [_row("random-search", 0.3, i, i < 1) for i in range(200)], 200)
    assert one.status == "pass" and one.value == pytest.approx(0.5)  # exactly 0.5% is not above it
    # AutoAttack's Square (gradient-free) counts; its gradient sub-attacks do not
    aa = [_row("autoattack", 0.3, 0, True, "square"), _row("autoattack", 0.3, 1, True, "apgd-ce"),
          _row("autoattack", 0.3, 2, True, "square")]
    r = check_black_box(PROTO, aa, 200)
    assert r.failed and r.evidence["by_eps"]["0.3"] == {"autoattack/square": [0, 2]}


def test_adaptive_gap_compares_with_the_last_non_adaptive_stage() -> None:
    cells = {("fgsm", 0.3): 80.0, ("pgd-ce", 0.3): 60.0, ("autoattack", 0.3): 50.0, ("random-search", 0.3): 50.0,
             ("bpda", 0.3): 40.0}
    r = check_adaptive_gap(PROTO, cells, {0.3: 40.0})
    assert r.failed and r.value == pytest.approx(10.0)
    cells[("bpda", 0.3)] = 47.0
    assert check_adaptive_gap(PROTO, cells, {0.3: 47.0}).status == "pass"
    assert check_adaptive_gap({**PROTO, "adaptive_applied": []}, cells, {0.3: 47.0}).status == "not-run"


def _outcome(broken: set[int], n: int = 40) -> Outcome:
    return Outcome(ids=list(range(n)), broken=[i in broken for i in range(n)])


def test_sweeps_flag_accuracy_rising_with_eps_and_fgsm_beating_pgd() -> None:
    eps = [0.1, 0.2]
    honest = check_sweeps(eps, {0.1: _outcome({1}), 0.2: _outcome({1, 2, 3})}, {0.1: _outcome({1, 2}),
                                                                                 0.2: _outcome(set(range(10)))})
    assert [r.status for r in honest] == ["pass", "pass"]
    # PGD at 0.2 misses 6 samples it broke at 0.1: accuracy rises with eps; FGSM breaks them at 0.2
    rising = check_sweeps(eps, {0.1: _outcome(set()), 0.2: _outcome(set(range(8)))},
                          {0.1: _outcome(set(range(8))), 0.2: _outcome({0, 1})})
    by = {r.name: r for r in rising}
    assert by["rises-with-eps"].failed and by["rises-with-eps"].evidence["pairs"][0]["up_ids"] == [2, 3, 4, 5, 6, 7]
    assert by["single-step-wins"].failed


def test_steps_check_reads_the_loss_tail() -> None:
    runs = {10: _outcome({1, 2}), 20: _outcome({1, 2, 3}), 40: _outcome({1, 2, 3})}
    flat = [0.0, 1.0, 1.5, 1.8, 1.9, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0]
    rise, moving = check_steps([10, 20, 40], runs, flat)
    assert rise.status == "pass" and moving.status == "pass"
    climbing = [0.1 * t for t in range(11)]  # the last step adds 10% of the gain
    assert check_steps([10, 20, 40], runs, climbing)[1].failed
    more_steps_worse = {10: _outcome(set(range(10))), 20: _outcome({0}), 40: _outcome({0})}
    assert check_steps([10, 20, 40], more_steps_worse, flat)[0].failed


def test_flagged_entry_is_ranked_with_the_samples_the_checks_broke() -> None:
    run = SimpleNamespace(n_samples=200)
    flag = CheckResult("not-converged", "fail", 2.0, "broke 4", {"exposed_at_primary": [3, 5, 8, 9]})
    s = CheckedSummary(run=run, protocol={"primary_eps": 0.3}, n_evaluated=200, clean_correct=190, cells={},
                   worst={0.3: 50.0}, complete=True, checks=[flag])
    assert s.unreliable and s.ranked_worst == pytest.approx(48.0)
    s.checks = [CheckResult("loss-still-moving", "fail", 0.2, "moving", {"exposed_at_primary": [3]})]
    assert not s.unreliable and s.ranked_worst == 50.0  # a warning never changes the ranking


def _summary(entry: str, worst: float, protocol: str = "mnist-linf-quick-v1", n: int = 200) -> SimpleNamespace:
    run = SimpleNamespace(entry_id=entry, protocol=protocol, id=1, n_samples=n)
    return SimpleNamespace(run=run, complete=True, worst={0.3: worst}, primary_eps=0.3)


def test_findings_compare_beyond_two_standard_errors() -> None:
    assert noise(50.0, 200, 50.0, 200) == pytest.approx(200 * (2 * 0.25 / 200) ** 0.5)
    clear = [_summary("mart", 60.0), _summary("trades", 45.0)]
    assert _better(clear, "p", "c", "mart", "trades", _worst_metric).status == HOLDS
    close = [_summary("mart", 52.0), _summary("trades", 48.0)]  # 4 points < 2 SE (about 10 points)
    assert _better(close, "p", "c", "mart", "trades", _worst_metric).status == UNCLEAR
    behind = [_summary("mart", 47.0), _summary("trades", 48.0)]
    assert _better(behind, "p", "c", "mart", "trades", _worst_metric).status == FAILS
    other_protocols = [_summary("mart", 60.0), _summary("trades", 45.0, protocol="mnist-linf-quick-v2")]
    assert _better(other_protocols, "p", "c", "mart", "trades", _worst_metric).status == MISSING


def test_the_report_shows_flags_unreliable_first_and_ranks_as_the_summary() -> None:
    run = SimpleNamespace(id=7, entry_id="e", protocol="p", fingerprint="f", n_samples=200)
    checks = [CheckResult("loss-still-moving", "fail", 0.2, "moving"), CheckResult("bad-gradients", "pass", 0.0, "ok"),
              CheckResult("not-converged", "fail", 2.0, "broke 4", {"exposed_at_primary": [3, 5, 8, 9]}),
              CheckResult("black-box-wins", "fail", 1.0, "bb")]
    s = CheckedSummary(run=run, protocol={"primary_eps": 0.3, "epsilons": [0.3], "attacks": []}, n_evaluated=200,
                       clean_correct=190, cells={}, worst={0.3: 50.0}, complete=True, checks=checks)
    r = RunReport.from_summary(s)
    assert [f.name for f in r.flags] == [c.name for c in s.flags] == [
        "black-box-wins", "not-converged", "loss-still-moving"]  # unreliable ones first, then by name
    assert r.unreliable and r.ranked_accuracy == pytest.approx(48.0) and r.clean_accuracy == pytest.approx(95.0)
