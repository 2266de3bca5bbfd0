"""Sanity checks: is this evaluation trustworthy? (the trust layer behind the leaderboard's flags)

Each check has a name, a threshold, a severity and evidence (counts, sample ids, figures). They are
computed from the run's stored rows plus probes that need the model (:mod:`bench.probes`), and
stored with the run (``checks`` table) under the suite's fingerprint. A failed check of severity
``unreliable`` marks the entry "evaluation possibly unreliable" wherever it appears, and the entry
is then ranked by its worst case including the samples that the checks' own attacks broke.

The suite (thresholds and probe budgets) is fixed and versioned like a protocol: ``SUITE``.
Probes run on the first ``probe_samples`` evaluated samples that are clean-correct, with their
own seeds; the 4x-steps / 5-restarts probe runs on the cascade's survivors at the primary eps.
"Beyond sampling noise" is a paired sign rule: on the same samples, a change in one direction by
``u`` samples against ``d`` in the other counts when ``u - d >= max(2, z * sqrt(u + d))``.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from attacks.registry import attack_labels
from bench import code_version
from bench.probes import ModelFacts, Outcome, PGDJob, PGDSetting, Prober, model_facts
from bench.storage import Check, Result, Store, now

if TYPE_CHECKING:
    from bench.metrics import RunSummary

SUITE: dict = {  # thresholds and probe settings shared by both suites
    "name": "checks-v1",
    "steps_factor": 4, "restarts": 5, "seed": 1000,
    "unbounded": {"eps": 1.0, "rel_step_size": 0.1},
    "detector_unbounded": {"kind": "detector-aware-pgd", "params": {"steps": 100, "step_size": 0.02,
                                                                    "weights": [0.1, 1.0, 10.0], "kappa": 0.0}},
    "noise_z": 2.0,
    "max_unbounded_accuracy": 1.0,  # % (detector entries: chance, 100 / classes)
    "max_black_box_fraction": 0.5,  # % of samples broken only by black-box attacks (AutoAttack's rule)
    "max_probe_drop": 1.0,  # points
    "loss_tail": 0.1, "max_tail_share": 0.05,  # the last 10% of the steps may add <= 5% of the loss gain
    "max_adaptive_gap": 5.0,  # points
}
# Probe sizes: the eps / steps sweeps and the unbounded probe run on the first `probe_samples`
# clean-correct samples; 4x steps x 5 restarts on up to `restart_samples` cascade survivors at the
# primary eps. Protocols of at most 200 samples (the CPU '-quick' and '-tiny' ones) get the small sizes.
SIZES = {"full": {"probe_samples": 200, "restart_samples": 100}, "quick": {"probe_samples": 50, "restart_samples": 20}}


def suite_for(protocol: dict) -> tuple[dict, str]:
    """The suite settings for a run's protocol and their id (name, size and fingerprint)."""
    size = "quick" if int(protocol["samples"]["first"]) <= 200 else "full"
    suite = {**SUITE, **SIZES[size], "size": size}
    digest = hashlib.sha256(json.dumps(suite, sort_keys=True).encode()).hexdigest()[:16]
    return suite, f"{SUITE['name']}-{size}:{digest}"


# From the attack classes' declared kinds (attacks.registry): the eps-ball attacks that use the model's
# gradients (adaptive wrappers included), and those that do not (transfer and gradient-free attacks).
WHITE_BOX_KINDS = attack_labels("white-box", "adaptive", family="fixed-budget")
BLACK_BOX_KINDS = attack_labels("black-box", "transfer")
BLACK_BOX_SUBATTACKS = {"square"}  # AutoAttack's sub-attacks without gradients


@dataclass(frozen=True)
class CheckDef:
    name: str
    item: int  # the numbering
    severity: str  # unreliable | warning
    title: str
    threshold: str


CHECKS: dict[str, CheckDef] = {c.name: c for c in (
    CheckDef("unbounded-attack", 1, "unreliable", "An unbounded attack (eps 1) leaves accuracy above the floor",
             "accuracy <= 1% (detector entries: <= chance)"),
    CheckDef("rises-with-eps", 2, "unreliable", "Accuracy rises with epsilon",
             "no rise beyond sampling noise (paired sign rule)"),
    CheckDef("rises-with-steps", 2, "unreliable", "Accuracy rises with attack steps",
             "no rise beyond sampling noise (paired sign rule)"),
    CheckDef("single-step-wins", 3, "unreliable", "A single-step attack beats the multi-step one",
             "FGSM no better than PGD beyond sampling noise"),
    CheckDef("black-box-wins", 4, "unreliable", "Black-box attacks break samples every white-box attack missed",
             "<= 0.5% of samples"),
    CheckDef("bad-gradients", 5, "unreliable", "Zero, NaN or infinite input gradients", "no such sample"),
    CheckDef("probability-outputs", 6, "unreliable", "The model outputs probabilities instead of logits",
             "outputs are not rows in [0, 1] summing to 1"),
    CheckDef("randomized-forward", 7, "unreliable", "Two identical forward passes disagree (EOT required)",
             "deterministic, or EOT applied"),
    CheckDef("not-converged", 8, "unreliable", "4x steps and 5 restarts break more of the cascade's survivors",
             "accuracy drop <= 1 point"),
    CheckDef("loss-still-moving", 8, "warning", "The PGD loss still rises in its last steps",
             "last 10% of the steps add <= 5% of the loss gain"),
    CheckDef("adaptive-gap", 9, "warning", "A declared adaptive attack beats every non-adaptive attack",
             "gap <= 5 points"),
)}


@dataclass
class CheckResult:
    name: str
    status: str  # pass | fail | not-run
    value: float | None
    summary: str
    evidence: dict = field(default_factory=dict)
    seconds: float = 0.0
    severity: str = ""

    def __post_init__(self) -> None:
        self.severity = self.severity or CHECKS[self.name].severity

    @property
    def definition(self) -> CheckDef:
        return CHECKS[self.name]

    @property
    def title(self) -> str:
        return self.definition.title

    @property
    def threshold(self) -> str:
        return self.definition.threshold

    @property
    def failed(self) -> bool:
        return self.status == "fail"

    @property
    def exposed(self) -> set[int]:
        """Samples that survived the cascade at the primary eps but a check's attack broke there."""
        return set(self.evidence.get("exposed_at_primary", []))

    def to_row(self, run_id: int, suite_id: str = "") -> Check:
        return Check(run_id=run_id, name=self.name, severity=self.severity, status=self.status, value=self.value,
                     threshold=self.threshold, summary=self.summary, evidence_json=json.dumps(self.evidence),
                     suite=suite_id, code_version=code_version(), seconds=self.seconds, created_at=now())

    @classmethod
    def from_row(cls, row: Check) -> CheckResult:
        return cls(name=row.name, status=row.status, value=row.value, summary=row.summary,
                   evidence=json.loads(row.evidence_json), seconds=row.seconds, severity=row.severity)


def beyond_noise(up: int, down: int, z: float | None = None) -> bool:
    """A paired change of ``up`` samples one way against ``down`` the other is more than noise."""
    z = SUITE["noise_z"] if z is None else z
    return up - down >= max(2.0, z * math.sqrt(up + down))


def _ids(xs: set[int] | list[int], cap: int = 50) -> list[int]:
    return sorted(xs)[:cap]


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
    ev = {"by_eps": {str(e): {k: _ids(v) for k, v in by.items()} for e, by in sorted(per_eps.items())},
          "counts": {str(e): sum(len(v) for v in by.values()) for e, by in sorted(per_eps.items())},
          "n_samples": n_samples, "black_box_attacks": sorted(black) + ["autoattack/square"]}
    failed = share > SUITE["max_black_box_fraction"]
    summary = (f"{worst} of {n_samples} samples ({share:.1f}%) at eps {worst_eps:g} were broken only by black-box "
               "attacks" if worst else "no sample was broken by a black-box attack alone")
    return CheckResult("black-box-wins", "fail" if failed else "pass", share, summary, ev)


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


# ---- checks that need the model --------------------------------------------------------------

def check_model_facts(facts: ModelFacts, eot_applied: bool) -> list[CheckResult]:
    """Items 5, 6 and 7 from one pass over the evaluated samples."""
    bad = facts.zero_grad_ids + facts.nonfinite_grad_ids
    grad = CheckResult(
        "bad-gradients", "fail" if bad else "pass", float(len(bad)),
        (f"{len(facts.zero_grad_ids)} of {facts.n} samples have an all-zero input gradient and "
         f"{len(facts.nonfinite_grad_ids)} a NaN/infinite one" if bad else
         f"every one of {facts.n} samples has a finite, non-zero input gradient"),
        {"zero_ids": _ids(facts.zero_grad_ids), "nonfinite_ids": _ids(facts.nonfinite_grad_ids),
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
        {"disagree_ids": _ids(facts.disagree_ids), "flipped_ids": _ids(facts.flipped_ids),
         "max_output_diff": facts.max_output_diff, "eot_applied": eot_applied, "n": facts.n})
    return [grad, probs, rnd]


def check_sweeps(eps_list: list[float], fgsm: dict[float, Outcome], pgd: dict[float, Outcome]) -> list[CheckResult]:
    """Items 2 (epsilon) and 3 from independent FGSM and PGD runs at every eps on the same samples."""
    rises, single = [], []
    for name, runs in (("pgd", pgd), ("fgsm", fgsm)):
        for a, b in zip(eps_list, eps_list[1:], strict=False):
            ba, bb = runs[a].broken_ids(), runs[b].broken_ids()
            up, down = ba - bb, bb - ba  # robust at the larger eps but broken at the smaller one
            rises.append({"attack": name, "from": a, "to": b, "rise": runs[b].accuracy - runs[a].accuracy,
                          "up": len(up), "down": len(down), "up_ids": _ids(up),
                          "beyond_noise": beyond_noise(len(up), len(down))})
    for e in eps_list:
        f, p = fgsm[e].broken_ids(), pgd[e].broken_ids()
        single.append({"eps": e, "fgsm_accuracy": fgsm[e].accuracy, "pgd_accuracy": pgd[e].accuracy,
                       "fgsm_only": len(f - p), "pgd_only": len(p - f), "fgsm_only_ids": _ids(f - p),
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


def check_steps(steps: list[int], runs: dict[int, Outcome], loss_curve: list[float]) -> list[CheckResult]:
    """Items 2 (steps) and 8 (loss still moving) from independent PGD runs with growing step counts."""
    pairs = []
    for a, b in zip(steps, steps[1:], strict=False):
        ba, bb = runs[a].broken_ids(), runs[b].broken_ids()
        up, down = ba - bb, bb - ba
        pairs.append({"from": a, "to": b, "rise": runs[b].accuracy - runs[a].accuracy, "up": len(up),
                      "down": len(down), "up_ids": _ids(up), "beyond_noise": beyond_noise(len(up), len(down))})
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


def check_restarts(drop: float, broken: list[int], probed: int, survivors: int, n: int, source: str) -> CheckResult:
    failed = drop > SUITE["max_probe_drop"]
    return CheckResult(
        "not-converged", "fail" if failed else "pass", drop,
        f"{source} broke {len(broken)} of {probed} probed survivors: accuracy {drop:.1f} points lower",
        {"broken_ids": _ids(broken), "probed": probed, "survivors": survivors, "n_samples": n, "source": source,
         "exposed_at_primary": sorted(broken)})


def check_unbounded(acc: float, floor: float, survived: list[int], n_probed: int, source: str) -> CheckResult:
    failed = acc > floor
    return CheckResult(
        "unbounded-attack", "fail" if failed else "pass", acc,
        f"{source} at eps 1 leaves {acc:.1f}% accuracy (floor {floor:.1f}%)",
        {"survivor_ids": _ids(survived), "probed": n_probed, "floor": floor, "source": source})


# ---- running the suite -------------------------------------------------------------------------

@dataclass
class CheckInputs:
    """What the suite needs about one run: its rows, protocol, summary, and a prober on the model."""

    protocol: dict
    rows: list[Result]
    summary: RunSummary  # the run's cascade accuracies per (attack, eps) and worst case, from the same rows
    x: torch.Tensor  # the evaluated samples, in id order (on the model's device)
    y: torch.Tensor
    prober: Prober
    is_detector: bool
    n_classes: int = 10


def run_suite(inp: CheckInputs, progress: Callable[[str], None] | None = None) -> list[CheckResult]:
    """Every check for one run (see the module docstring for what each measures)."""
    proto = inp.protocol
    suite, _ = suite_for(proto)
    n = inp.x.shape[0]
    ids_all = torch.arange(n)
    primary = float(proto["primary_eps"])
    eps_list = [float(e) for e in proto["epsilons"]]
    seed = SUITE["seed"]
    clean = {r.sample: r.robust_after for r in inp.rows if r.attack == "clean"}
    pgd_spec = next(a for a in proto["attacks"] if a["label"] == "pgd-ce")["params"]
    setting = PGDSetting(int(pgd_spec["steps"]), pgd_spec.get("step_size"), pgd_spec.get("rel_step_size"))
    correct = [i for i in range(n) if clean.get(i)]
    probe = torch.tensor(correct[: suite["probe_samples"]], dtype=torch.long)
    xp, yp = inp.x[probe.to(inp.x.device)], inp.y[probe.to(inp.x.device)]
    applied = set(proto.get("adaptive_applied", []))
    survivors = sorted(_survivors(inp.rows, proto, primary))  # the cascade's survivors at the primary eps
    results: list[CheckResult] = []

    def timed(fn: Callable[[], list[CheckResult]], label: str) -> None:
        if progress is not None:
            progress(label)
        t0 = time.perf_counter()
        out = fn()
        for r in out:
            r.seconds = (time.perf_counter() - t0) / len(out)
        results.extend(out)

    timed(lambda: check_model_facts(model_facts(inp.prober.model, inp.x, inp.y, ids_all, inp.prober.bs),
                                    eot_applied="eot" in applied), "model facts")

    def unbounded() -> list[CheckResult]:
        floor = 100.0 / inp.n_classes if inp.is_detector else SUITE["max_unbounded_accuracy"]
        stored = [r for r in inp.rows if r.attack == "probe-unbounded"]
        if stored and not inp.is_detector:
            survived = [r.sample for r in stored if r.robust_after]
            return [check_unbounded(100.0 * len(survived) / n, floor, survived, sum(r.attacked for r in stored),
                                    "the protocol's probe-unbounded (PGD)")]
        unb = SUITE["unbounded"]
        out = inp.prober.pgd([PGDJob(PGDSetting(setting.steps, rel_step_size=unb["rel_step_size"]), xp, yp, probe,
                                     unb["eps"], setting.steps, seed + 1)], "check unbounded PGD")[0].outcome
        broken, source = out.broken_ids(), f"PGD-{setting.steps} (CE)"
        if inp.is_detector:
            d = SUITE["detector_unbounded"]
            broken |= inp.prober.attack(d["kind"], d["params"], seed + 2, xp, yp, probe, unb["eps"],
                                        "check unbounded detector-aware PGD").broken_ids()
            source += " and detector-aware PGD"
        survived = [i for i in out.ids if i not in broken]
        acc = 100.0 * len(survived) / max(out.n, 1) * len(correct) / n
        return [check_unbounded(acc, floor, survived, out.n, source)]

    timed(unbounded, "unbounded probe")

    def sweeps() -> list[CheckResult]:
        fgsm = {e: inp.prober.attack("fgsm", {}, seed + 3, xp, yp, probe, e, "check FGSM") for e in eps_list}
        traces = inp.prober.pgd([PGDJob(setting, xp, yp, probe, e, setting.steps, seed + 4) for e in eps_list],
                                "check PGD")
        pgd = {e: tr.outcome for e, tr in zip(eps_list, traces, strict=True)}
        out = check_sweeps(eps_list, fgsm, pgd)
        exposed = (fgsm[primary].broken_ids() | pgd[primary].broken_ids()) & set(survivors)
        for r in out:
            r.evidence["exposed_at_primary"] = sorted(exposed)
        return out

    timed(sweeps, "eps sweep")

    def steps() -> list[CheckResult]:
        s = setting.steps
        counts = sorted({max(1, s // 4), max(1, s // 2), s})
        traces = inp.prober.pgd([PGDJob(setting, xp, yp, probe, primary, count, seed + 10 + k)
                                 for k, count in enumerate(counts)], "check PGD-K")
        runs = {count: tr.outcome for count, tr in zip(counts, traces, strict=True)}
        return check_steps(counts, runs, traces[counts.index(s)].survivor_loss)

    timed(steps, "steps sweep")

    def restarts() -> list[CheckResult]:
        stored = [r for r in inp.rows if r.attack == "probe-4x-steps-5-restarts"]
        if stored:
            broken = [r.sample for r in stored if r.success]
            return [check_restarts(100.0 * len(broken) / n, broken, sum(r.attacked for r in stored), len(survivors), n,
                                   "the protocol's probe-4x-steps-5-restarts")]
        chosen = torch.tensor(survivors[: suite["restart_samples"]], dtype=torch.long)
        if chosen.numel() == 0:
            return [check_restarts(0.0, [], 0, 0, n, "no survivor to probe:")]
        dev = inp.x.device
        out = inp.prober.pgd([PGDJob(setting, inp.x[chosen.to(dev)], inp.y[chosen.to(dev)], chosen, primary,
                                     SUITE["steps_factor"] * setting.steps, seed + 20, SUITE["restarts"])],
                             "check 4x-steps 5-restarts PGD")[0].outcome
        broken = sorted(out.broken_ids())
        drop = 100.0 * len(broken) / out.n * len(survivors) / n  # scaled up when the survivors were capped
        return [check_restarts(drop, broken, out.n, len(survivors), n,
                               f"PGD with {SUITE['steps_factor']}x steps and {SUITE['restarts']} restarts")]

    timed(restarts, "restarts probe")
    cascade = {a["label"] for a in proto["attacks"]}
    results.append(check_black_box(proto, [r for r in inp.rows if r.attack in cascade], n))
    cells = {key: c.accuracy for key, c in inp.summary.cells.items()}
    results.append(check_adaptive_gap(proto, cells, inp.summary.worst))
    return results


def _survivors(rows: list[Result], proto: dict, eps: float) -> set[int]:
    """Samples robust after the last cascade stage at eps."""
    labels = [a["label"] for a in proto["attacks"]]
    have = {r.attack for r in rows if float(r.eps) == eps}
    last = [lab for lab in labels if lab in have]
    if not last:
        return set()
    return {r.sample for r in rows if r.attack == last[-1] and float(r.eps) == eps and r.robust_after}


def store_results(store: Store, run_id: int, results: list[CheckResult], suite_id: str) -> None:
    store.replace_checks(run_id, [r.to_row(run_id, suite_id) for r in results])


def load_results(store: Store, run_id: int) -> list[CheckResult]:
    return [CheckResult.from_row(r) for r in store.checks(run_id)]


def run_checks(store: Store, run_id: int, model: torch.nn.Module, *, data_dir: str | None = None,
               device: str = "cpu", batch_size: int | None = None,
               progress: Callable[[str], None] | None = None) -> list[CheckResult]:
    """Run the suite on a stored run with its model and store the results (replacing earlier ones)."""
    from attacks import make_attack
    from attacks.base import prepare_model
    from attacks.context import AttackContext
    from bench.data import load_split
    from bench.errors import BenchError
    from bench.verify import DetectorRule, has_detector

    run = next((r for r in store.runs() if r.id == run_id), None)
    if run is None:
        raise BenchError(f"run {run_id} not found")
    proto = json.loads(run.protocol_json)
    from bench.metrics import summarize  # here: bench.metrics imports this module

    summary = summarize(store, run)
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
    prober = Prober(model, bs, detector, make_attack, context)
    results = run_suite(CheckInputs(proto, rows, summary, x, y, prober, detector is not None, n_classes), progress)
    store_results(store, run_id, results, suite_for(proto)[1])
    return results
