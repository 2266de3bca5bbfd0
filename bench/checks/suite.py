"""Sanity checks: is this evaluation trustworthy? (the trust layer behind the leaderboard's flags)

Each check has a name, a threshold, a severity and evidence (counts, sample ids, figures). They are
computed from the run's stored rows plus probes that need the model (:mod:`bench.checks.probes`), and
stored with the run (``checks`` table) under the suite's fingerprint. A failed check of severity
``unreliable`` marks the entry "evaluation possibly unreliable" wherever it appears, and the entry
is then ranked by its worst case including the samples that the checks' own attacks broke.

The suite (thresholds and probe budgets) is fixed and versioned like a protocol: ``SUITE``.
Each check is declared once, on the function that decides it (:mod:`bench.checks.registry`): the
checks that need the model live in :mod:`bench.checks.model`, the ones read from stored rows alone
here. :func:`run_suite` runs every registered function in registration order, each probe once.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace

import torch

from attacks.registry import attack_labels
from bench.checks.model import check_model_facts, check_restarts, check_steps, check_sweeps, check_unbounded
from bench.checks.probes import Prober
from bench.checks.registry import (
    CHECKS,
    REGISTRY,
    SIZES,
    SUITE,
    CheckDef,
    CheckInputs,
    CheckResult,
    beyond_noise,
    check,
    points,
    sample_ids,
    suite_for,
)
from bench.store.database import Result, Store
from bench.store.summary import summarize_rows

__all__ = ["BLACK_BOX_KINDS", "BLACK_BOX_SUBATTACKS", "CHECKS", "SIZES", "SUITE", "WHITE_BOX_KINDS", "CheckDef",
           "CheckInputs", "CheckResult", "beyond_noise", "check_adaptive_gap", "check_black_box", "check_model_facts",
           "check_restarts", "check_steps", "check_sweeps", "check_unbounded", "load_results", "run_checks",
           "run_suite", "store_results", "suite_for"]


# From the attack classes' declared kinds (attacks.registry): the eps-ball attacks that use the model's
# gradients (adaptive wrappers included), and those that do not (transfer and gradient-free attacks).
WHITE_BOX_KINDS = attack_labels("white-box", "adaptive", family="fixed-budget")
BLACK_BOX_KINDS = attack_labels("black-box", "transfer")
BLACK_BOX_SUBATTACKS = {"square"}  # AutoAttack's sub-attacks without gradients


# ---- checks computed from stored rows only -------------------------------------------------

def check_black_box(protocol: dict, rows: list[Result], n_samples: int) -> CheckResult:
    """Item 4: samples a black-box attack broke after every white-box attack before it failed."""
    kinds = {a["label"]: a["kind"] for a in protocol["attacks"]}
    black = {lab for lab, k in kinds.items() if k in BLACK_BOX_KINDS}
    per_eps: dict[float, dict[str, list[int]]] = {}
    for r in rows:
        if not r.success:
            continue
        if r.attack in black or (kinds.get(r.attack) == "autoattack" and r.detail in BLACK_BOX_SUBATTACKS):
            name = r.attack if r.attack in black else f"{r.attack}/{r.detail}"
            per_eps.setdefault(float(r.eps), {}).setdefault(name, []).append(r.sample)
    if not black and not any(k == "autoattack" for k in kinds.values()):
        return CheckResult("black-box-wins", "not-run", None, "the protocol runs no black-box attack")
    worst_eps, worst = None, 0
    for eps, by in per_eps.items():
        count = sum(len(v) for v in by.values())
        if count > worst:
            worst_eps, worst = eps, count
    share = 100.0 * worst / n_samples if n_samples else 0.0
    ev = {"by_eps": {str(e): {k: sample_ids(v) for k, v in by.items()} for e, by in sorted(per_eps.items())},
          "counts": {str(e): sum(len(v) for v in by.values()) for e, by in sorted(per_eps.items())},
          "n_samples": n_samples, "black_box_attacks": sorted(black) + ["autoattack/square"]}
    failed = share > SUITE["max_black_box_fraction"]
    summary = (f"{worst} of {n_samples} samples ({share:.1f}%) at eps {worst_eps:g} were broken only by black-box "
               "attacks" if worst else "no sample was broken by a black-box attack alone")
    return CheckResult("black-box-wins", "fail" if failed else "pass", share, summary, ev)


@check("black-box-wins", 4, "unreliable", "Black-box attacks break samples every white-box attack missed",
       lambda s: f"<= {s['max_black_box_fraction']:g}% of samples")
def black_box_wins(inp: CheckInputs) -> list[CheckResult]:
    """Item 4 on the cascade's rows (the probes' and extras' rows are not white-box evidence)."""
    cascade = {a["label"] for a in inp.protocol["attacks"]}
    return [check_black_box(inp.protocol, [r for r in inp.rows if r.attack in cascade], inp.n)]


def check_adaptive_gap(protocol: dict, cells: dict[tuple[str, float], float], worst: dict[float, float]) -> CheckResult:
    """Item 9: accuracy before the entry's adaptive attacks minus the worst case, per eps."""
    adaptive = [a for a in protocol.get("adaptive_applied", []) if any(s["label"] == a for s in protocol["attacks"])]
    if not adaptive:
        return CheckResult("adaptive-gap", "not-run", None, "the entry declares no adaptive attack in the cascade")
    labels = [a["label"] for a in protocol["attacks"]]
    gaps: dict[str, float] = {}
    for eps, w in worst.items():
        before = [lab for lab in labels if lab not in adaptive and (lab, eps) in cells]
        if before and any((a, eps) in cells for a in adaptive):
            gaps[str(eps)] = cells[(before[-1], eps)] - w
    if not gaps:
        return CheckResult("adaptive-gap", "not-run", None, "no adaptive stage was stored")
    eps_max, gap = max(gaps.items(), key=lambda kv: kv[1])
    failed = gap > SUITE["max_adaptive_gap"]
    return CheckResult("adaptive-gap", "fail" if failed else "pass", gap,
                       f"{', '.join(adaptive)} lowered accuracy by {gap:.1f} points at eps {float(eps_max):g} "
                       "beyond every non-adaptive attack", {"gap_by_eps": gaps, "adaptive": adaptive})


@check("adaptive-gap", 9, "warning", "A declared adaptive attack beats every non-adaptive attack",
       lambda s: f"gap <= {points(s['max_adaptive_gap'])}")
def adaptive_gap(inp: CheckInputs) -> list[CheckResult]:
    """Item 9 on the run's summary: cascade accuracies per (attack, eps) and the worst case."""
    cells = {key: c.accuracy for key, c in inp.summary.cells.items()}
    return [check_adaptive_gap(inp.protocol, cells, inp.summary.worst)]


# ---- running the suite -------------------------------------------------------------------------

def run_suite(inp: CheckInputs, progress: Callable[[str], None] | None = None) -> list[CheckResult]:
    """Every registered check for one run, in registration order (see :mod:`bench.checks.registry`)."""
    results: list[CheckResult] = []
    for registered in REGISTRY:
        if progress is not None:
            progress(registered.label)
        results.extend(registered.run(inp))
    return results


def store_results(store: Store, run_id: int, results: list[CheckResult], suite_id: str) -> None:
    store.replace_checks(run_id, [r.to_row(run_id, suite_id) for r in results])


def load_results(store: Store, run_id: int) -> list[CheckResult]:
    return [CheckResult.from_row(r) for r in store.checks(run_id)]


def run_checks(store: Store, run_id: int, model: torch.nn.Module, *, data_dir: str | None = None,
               device: str = "cpu", batch_size: int | None = None,
               progress: Callable[[str], None] | None = None, after_escalation: bool = False) -> list[CheckResult]:
    """Run the suite on a stored run with its model and store the results (replacing earlier ones).

    The stored checks are the diagnosis: they read the protocol's own cascade, never an escalation's
    rows, so running them again on an escalated run gives what the cascade alone gives.
    ``after_escalation`` runs them on the escalated run instead (its survivors and worst case) and
    returns them without storing them: the escalation records them as its "checks after".
    """
    from attacks import make_attack
    from attacks.base import PassCounter, prepare_model
    from attacks.context import AttackContext
    from bench.engine.verify import DetectorRule, has_detector
    from bench.errors import BenchError
    from bench.protocol.data import load_split

    run = next((r for r in store.runs() if r.id == run_id), None)
    if run is None:
        raise BenchError(f"run {run_id} not found")
    proto = json.loads(run.protocol_json)
    summary = summarize_rows(store, run)
    if not after_escalation:  # the cascade's own figures
        summary = replace(summary, worst=dict(summary.worst_before), clean_correct=summary.clean_correct_before,
                          escalation=None)
    if not summary.complete:
        raise BenchError(f"run {run_id} ({run.entry_id} on {run.protocol}) is partial: finish it before checking it")
    rows = store.results(run_id)
    x_all, y_all = load_split(proto["dataset"], proto["split"], data_dir)
    dev = torch.device(device)
    x, y = x_all[: run.n_samples].to(dev), y_all[: run.n_samples].to(dev)
    model = prepare_model(model, dev)  # as the engine runs it
    detector = None
    if has_detector(model):
        if run.detector_json is None:
            raise BenchError(f"run {run_id} has no detector calibration stored")
        detector = DetectorRule(model, float(json.loads(run.detector_json)["threshold"]))

    context = AttackContext(detector_threshold=None if detector is None else detector.threshold)

    bs = batch_size or int(proto.get("chunk_size", 100))
    with torch.no_grad():
        n_classes = int(model(x[:1]).shape[1])
    prober = Prober(PassCounter(model), bs, detector, make_attack, context)  # as the engine wraps it
    results = run_suite(CheckInputs(proto, rows, summary, x, y, prober, detector is not None, n_classes), progress)
    if not after_escalation:
        store_results(store, run_id, results, suite_for(proto)[1])
    return results
