"""The checks that need the model: each registered function runs one probe measurement and judges it.

Measurements (:mod:`bench.checks.probes`) run on the first ``probe_samples`` evaluated samples that
are clean-correct, with the suite's own seeds (``SUITE["seed"]`` plus a fixed offset per probe); the
4x-steps / 5-restarts probe runs on the cascade's survivors at the primary eps. Where the protocol
stored a probe's rows itself (the v2 protocols' ``probe-unbounded`` and ``probe-4x-steps-5-restarts``
extras), the check reads them instead of probing again. Each ``check_*`` function decides from
measurements alone, so it can be tested on hand-made outcomes.

The functions are registered in the order the suite runs them: model facts, the unbounded probe,
the eps sweep, the steps sweep, the restarts probe.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from bench.checks.probes import ModelFacts, Outcome, PGDJob, PGDSetting
from bench.checks.probes import model_facts as measure_model_facts
from bench.checks.registry import SUITE, CheckInputs, CheckResult, beyond_noise, check, points, sample_ids

NOISE_RULE = "no rise beyond sampling noise (paired sign rule)"


# ---- items 5, 6 and 7: one pass over the evaluated samples -----------------------------------------

def check_model_facts(facts: ModelFacts, eot_applied: bool) -> list[CheckResult]:
    """Items 5, 6 and 7 from one pass over the evaluated samples."""
    bad = facts.zero_grad_ids + facts.nonfinite_grad_ids
    grad = CheckResult(
        "bad-gradients", "fail" if bad else "pass", float(len(bad)),
        (f"{len(facts.zero_grad_ids)} of {facts.n} samples have an all-zero input gradient and "
         f"{len(facts.nonfinite_grad_ids)} a NaN/infinite one" if bad else
         f"every one of {facts.n} samples has a finite, non-zero input gradient"),
        {"zero_ids": sample_ids(facts.zero_grad_ids), "nonfinite_ids": sample_ids(facts.nonfinite_grad_ids),
         "zero": len(facts.zero_grad_ids), "nonfinite": len(facts.nonfinite_grad_ids), "n": facts.n,
         "median_grad_l1": facts.median_grad_l1, "loss": "cross-entropy on the model's outputs"})
    probs = CheckResult(
        "probability-outputs", "fail" if facts.probability_like else "pass", facts.max_row_sum_error,
        ("outputs lie in [0, 1] and every row sums to 1: the model returns probabilities, so cross-entropy "
         "attacks apply a second softmax" if facts.probability_like else "outputs are not probability rows"),
        {"min": facts.output_min, "max": facts.output_max, "max_row_sum_error": facts.max_row_sum_error})
    random = bool(facts.disagree_ids)
    rnd = CheckResult(
        "randomized-forward", "fail" if random and not eot_applied else "pass", float(len(facts.disagree_ids)),
        (f"{len(facts.disagree_ids)} of {facts.n} samples got different outputs from two identical passes "
         f"({len(facts.flipped_ids)} different predictions); " + ("EOT was applied" if eot_applied else
                                                                   "the entry is not declared randomized, so no EOT")
         if random else "two identical forward passes agree on every sample"),
        {"disagree_ids": sample_ids(facts.disagree_ids), "flipped_ids": sample_ids(facts.flipped_ids),
         "max_output_diff": facts.max_output_diff, "eot_applied": eot_applied, "n": facts.n})
    return [grad, probs, rnd]


@check("bad-gradients", 5, "unreliable", "Zero, NaN or infinite input gradients", "no such sample")
@check("probability-outputs", 6, "unreliable", "The model outputs probabilities instead of logits",
       "outputs are not rows in [0, 1] summing to 1")
@check("randomized-forward", 7, "unreliable", "Two identical forward passes disagree (EOT required)",
       "deterministic, or EOT applied")
def model_facts(inp: CheckInputs) -> list[CheckResult]:
    """Input gradients, output range and determinism on every evaluated sample."""
    facts = measure_model_facts(inp.prober.model, inp.x, inp.y, torch.arange(inp.n), inp.prober.bs)
    return check_model_facts(facts, eot_applied="eot" in inp.applied)


# ---- item 1: an unbounded attack must break (nearly) everything ------------------------------------

def check_unbounded(acc: float, floor: float, survived: list[int], n_probed: int, source: str) -> CheckResult:
    failed = acc > floor
    return CheckResult(
        "unbounded-attack", "fail" if failed else "pass", acc,
        f"{source} at eps 1 leaves {acc:.1f}% accuracy (floor {floor:.1f}%)",
        {"survivor_ids": sample_ids(survived), "probed": n_probed, "floor": floor, "source": source})


@check("unbounded-attack", 1, "unreliable",
       lambda s: f"An unbounded attack (eps {s['unbounded']['eps']:g}) leaves accuracy above the floor",
       lambda s: f"accuracy <= {s['max_unbounded_accuracy']:g}% (detector entries: <= chance)")
def unbounded_probe(inp: CheckInputs) -> list[CheckResult]:
    """PGD (and, for detector entries, detector-aware PGD) at eps 1, or the protocol's stored probe."""
    n = inp.n
    floor = 100.0 / inp.n_classes if inp.is_detector else SUITE["max_unbounded_accuracy"]
    stored = [r for r in inp.rows if r.attack == "probe-unbounded"]
    if stored and not inp.is_detector:
        survived = [r.sample for r in stored if r.robust_after]
        return [check_unbounded(100.0 * len(survived) / n, floor, survived, sum(r.attacked for r in stored),
                                "the protocol's probe-unbounded (PGD)")]
    unb, setting = SUITE["unbounded"], inp.setting
    out = inp.prober.pgd([PGDJob(PGDSetting(setting.steps, rel_step_size=unb["rel_step_size"]), inp.xp, inp.yp,
                                 inp.probe, unb["eps"], setting.steps, inp.seed + 1)], "check unbounded PGD")[0].outcome
    broken, source = out.broken_ids(), f"PGD-{setting.steps} (CE)"
    if inp.is_detector:
        d = SUITE["detector_unbounded"]
        broken |= inp.prober.attack(d["kind"], d["params"], inp.seed + 2, inp.xp, inp.yp, inp.probe, unb["eps"],
                                    "check unbounded detector-aware PGD").broken_ids()
        source += " and detector-aware PGD"
    survived = [i for i in out.ids if i not in broken]
    acc = 100.0 * len(survived) / max(out.n, 1) * len(inp.correct) / n
    return [check_unbounded(acc, floor, survived, out.n, source)]


# ---- items 2 (epsilon) and 3: independent FGSM and PGD at every eps ---------------------------------

def check_sweeps(eps_list: list[float], fgsm: dict[float, Outcome], pgd: dict[float, Outcome]) -> list[CheckResult]:
    """Items 2 (epsilon) and 3 from independent FGSM and PGD runs at every eps on the same samples."""
    rises: list[dict[str, Any]] = []
    single: list[dict[str, Any]] = []
    for name, runs in (("pgd", pgd), ("fgsm", fgsm)):
        for a, b in zip(eps_list, eps_list[1:], strict=False):
            ba, bb = runs[a].broken_ids(), runs[b].broken_ids()
            up, down = ba - bb, bb - ba  # robust at the larger eps but broken at the smaller one
            rises.append({"attack": name, "from": a, "to": b, "rise": runs[b].accuracy - runs[a].accuracy,
                          "up": len(up), "down": len(down), "up_ids": sample_ids(up),
                          "beyond_noise": beyond_noise(len(up), len(down))})
    for e in eps_list:
        f, p = fgsm[e].broken_ids(), pgd[e].broken_ids()
        single.append({"eps": e, "fgsm_accuracy": fgsm[e].accuracy, "pgd_accuracy": pgd[e].accuracy,
                       "fgsm_only": len(f - p), "pgd_only": len(p - f), "fgsm_only_ids": sample_ids(f - p),
                       "beyond_noise": beyond_noise(len(f - p), len(p - f))})
    n = pgd[eps_list[0]].n
    curves = {"eps": eps_list, "pgd": [pgd[e].accuracy for e in eps_list], "fgsm": [fgsm[e].accuracy for e in eps_list],
              "n": n}
    bad_rise = [r for r in rises if r["beyond_noise"]]
    top = max(rises, key=lambda r: r["rise"]) if rises else None
    rise = CheckResult(
        "rises-with-eps", "fail" if bad_rise else "pass", top["rise"] if top else None,
        (f"{bad_rise[0]['attack'].upper()} accuracy rose from eps {bad_rise[0]['from']:g} to {bad_rise[0]['to']:g} "
         f"by {bad_rise[0]['rise']:.1f} points ({bad_rise[0]['up']} samples up, {bad_rise[0]['down']} down)"
         if bad_rise else f"accuracy falls with eps for FGSM and PGD on {n} samples"),
        {"pairs": rises, "curves": curves})
    bad_single = [s for s in single if s["beyond_noise"]]
    gap = max((s["pgd_accuracy"] - s["fgsm_accuracy"] for s in single), default=None)
    one = CheckResult(
        "single-step-wins", "fail" if bad_single else "pass", gap,
        (f"at eps {bad_single[0]['eps']:g} FGSM leaves {bad_single[0]['fgsm_accuracy']:.1f}% against PGD's "
         f"{bad_single[0]['pgd_accuracy']:.1f}% ({bad_single[0]['fgsm_only']} samples only FGSM broke)"
         if bad_single else "PGD is at least as strong as FGSM at every eps"),
        {"per_eps": single, "curves": curves})
    return [rise, one]


@check("rises-with-eps", 2, "unreliable", "Accuracy rises with epsilon", NOISE_RULE)
@check("single-step-wins", 3, "unreliable", "A single-step attack beats the multi-step one",
       "FGSM no better than PGD beyond sampling noise")
def eps_sweep(inp: CheckInputs) -> list[CheckResult]:
    """FGSM and the protocol's PGD at every eps of the grid, each run independently on the probe samples."""
    eps_list, probe = inp.eps_list, inp.probe
    fgsm = {e: inp.prober.attack("fgsm", {}, inp.seed + 3, inp.xp, inp.yp, probe, e, "check FGSM") for e in eps_list}
    traces = inp.prober.pgd([PGDJob(inp.setting, inp.xp, inp.yp, probe, e, inp.setting.steps, inp.seed + 4)
                             for e in eps_list], "check PGD")
    pgd = {e: tr.outcome for e, tr in zip(eps_list, traces, strict=True)}
    out = check_sweeps(eps_list, fgsm, pgd)
    exposed = (fgsm[inp.primary].broken_ids() | pgd[inp.primary].broken_ids()) & set(inp.survivors)
    for r in out:
        r.evidence["exposed_at_primary"] = sorted(exposed)
    return out


# ---- items 2 (steps) and 8 (loss still moving): PGD with growing step counts ------------------------

def check_steps(steps: list[int], runs: dict[int, Outcome], loss_curve: list[float]) -> list[CheckResult]:
    """Items 2 (steps) and 8 (loss still moving) from independent PGD runs with growing step counts."""
    pairs: list[dict[str, Any]] = []
    for a, b in zip(steps, steps[1:], strict=False):
        ba, bb = runs[a].broken_ids(), runs[b].broken_ids()
        up, down = ba - bb, bb - ba
        pairs.append({"from": a, "to": b, "rise": runs[b].accuracy - runs[a].accuracy, "up": len(up),
                      "down": len(down), "up_ids": sample_ids(up), "beyond_noise": beyond_noise(len(up), len(down))})
    curve = {"steps": steps, "accuracy": [runs[k].accuracy for k in steps], "n": runs[steps[0]].n}
    bad = [p for p in pairs if p["beyond_noise"]]
    top = max(pairs, key=lambda p: p["rise"]) if pairs else None
    rise = CheckResult(
        "rises-with-steps", "fail" if bad else "pass", top["rise"] if top else None,
        (f"PGD accuracy rose from {bad[0]['from']} to {bad[0]['to']} steps by {bad[0]['rise']:.1f} points"
         if bad else "PGD accuracy does not rise with steps"), {"pairs": pairs, "curve": curve})
    finite = [v for v in loss_curve if v == v]
    if len(finite) < len(loss_curve) or len(loss_curve) < 2:
        moving = CheckResult("loss-still-moving", "not-run", None, "every probed sample was broken: no loss to follow",
                             {"loss_curve": loss_curve})
    else:
        t = len(loss_curve) - 1
        tail_start = t - max(1, math.ceil(SUITE["loss_tail"] * t))
        gain = loss_curve[-1] - loss_curve[0]
        tail = loss_curve[-1] - loss_curve[tail_start]
        share = tail / gain if gain > 1e-12 else 0.0
        failed = share > SUITE["max_tail_share"]
        moving = CheckResult(
            "loss-still-moving", "fail" if failed else "pass", share,
            f"the last {t - tail_start} of {t} PGD steps added {100 * share:.1f}% of the surviving samples' loss gain",
            {"loss_curve": loss_curve, "tail_from_step": tail_start, "gain": gain, "tail": tail})
    return [rise, moving]


@check("rises-with-steps", 2, "unreliable", "Accuracy rises with attack steps", NOISE_RULE)
@check("loss-still-moving", 8, "warning", "The PGD loss still rises in its last steps",
       lambda s: f"last {100 * s['loss_tail']:g}% of the steps add <= {100 * s['max_tail_share']:g}% of the loss gain")
def steps_sweep(inp: CheckInputs) -> list[CheckResult]:
    """The protocol's PGD with a quarter, half and all of its steps at the primary eps, on the probe samples."""
    s = inp.setting.steps
    counts = sorted({max(1, s // 4), max(1, s // 2), s})
    traces = inp.prober.pgd([PGDJob(inp.setting, inp.xp, inp.yp, inp.probe, inp.primary, count, inp.seed + 10 + k)
                             for k, count in enumerate(counts)], "check PGD-K")
    runs = {count: tr.outcome for count, tr in zip(counts, traces, strict=True)}
    return check_steps(counts, runs, traces[counts.index(s)].survivor_loss)


# ---- item 8: more steps and restarts on the cascade's survivors -------------------------------------

def check_restarts(drop: float, broken: list[int], probed: int, survivors: int, n: int, source: str) -> CheckResult:
    failed = drop > SUITE["max_probe_drop"]
    return CheckResult(
        "not-converged", "fail" if failed else "pass", drop,
        f"{source} broke {len(broken)} of {probed} probed survivors: accuracy {drop:.1f} points lower",
        {"broken_ids": sample_ids(broken), "probed": probed, "survivors": survivors, "n_samples": n, "source": source,
         "exposed_at_primary": sorted(broken)})


@check("not-converged", 8, "unreliable",
       lambda s: f"{s['steps_factor']}x steps and {s['restarts']} restarts break more of the cascade's survivors",
       lambda s: f"accuracy drop <= {points(s['max_probe_drop'])}")
def restarts_probe(inp: CheckInputs) -> list[CheckResult]:
    """The protocol's PGD with more steps and restarts (``steps_factor``, ``restarts``) on up to
    ``restart_samples`` of the cascade's survivors, or the protocol's stored probe of the same."""
    n, survivors = inp.n, inp.survivors
    stored = [r for r in inp.rows if r.attack == "probe-4x-steps-5-restarts"]
    if stored:
        broken = [r.sample for r in stored if r.success]
        return [check_restarts(100.0 * len(broken) / n, broken, sum(r.attacked for r in stored), len(survivors), n,
                               "the protocol's probe-4x-steps-5-restarts")]
    chosen = torch.tensor(survivors[: inp.suite["restart_samples"]], dtype=torch.long)
    if chosen.numel() == 0:
        return [check_restarts(0.0, [], 0, 0, n, "no survivor to probe:")]
    dev = inp.x.device
    out = inp.prober.pgd([PGDJob(inp.setting, inp.x[chosen.to(dev)], inp.y[chosen.to(dev)], chosen, inp.primary,
                                 SUITE["steps_factor"] * inp.setting.steps, inp.seed + 20, SUITE["restarts"])],
                         "check 4x-steps 5-restarts PGD")[0].outcome
    broken = sorted(out.broken_ids())
    drop = 100.0 * len(broken) / out.n * len(survivors) / n  # scaled up when the survivors were capped
    return [check_restarts(drop, broken, out.n, len(survivors), n,
                           f"PGD with {SUITE['steps_factor']}x steps and {SUITE['restarts']} restarts")]
