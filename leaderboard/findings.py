"""The findings page: does each paper's central claim hold under our protocol, from our own rows?

Each finding names the paper, states the claim, and decides it from stored summaries only: "holds",
"does not hold", "not shown (within sampling noise)" or "not evaluated" (a run it needs is
missing). "A beats B" compares the two entries under the same protocol: it holds when A leads by
more than sampling noise (two binomial standard errors of the difference), does not hold when A
does not lead at all, and is not shown in between. Per entry the run used is the most thorough
complete one on the dataset (full v2, quick v2, full v1, quick v1, in that order).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from bench.report.summary import CheckedSummary
from registry.entry import Entry

PREFERENCE = ("mnist-linf-v2", "mnist-linf-quick-v2", "mnist-linf-v1", "mnist-linf-quick-v1")
HOLDS, FAILS, MISSING = "holds", "does not hold", "not evaluated"
UNCLEAR = "not shown (within sampling noise)"


@dataclass
class Finding:
    paper: str
    claim: str
    status: str
    evidence: str
    runs: list[CheckedSummary] = field(default_factory=list)


def _pick(summaries: list[CheckedSummary], entry_id: str, protocol: str | None = None) -> CheckedSummary | None:
    names = (protocol,) if protocol else PREFERENCE
    for name in names:
        runs = [s for s in summaries if s.run.entry_id == entry_id and s.run.protocol == name and s.complete]
        if runs:
            return max(runs, key=lambda s: s.run.id)
    return None


def _pair(summaries: list[CheckedSummary], a: str, b: str) -> tuple[CheckedSummary | None, CheckedSummary | None]:
    """The two entries' runs under the most thorough protocol both completed."""
    for name in PREFERENCE:
        ra, rb = _pick(summaries, a, name), _pick(summaries, b, name)
        if ra is not None and rb is not None:
            return ra, rb
    return None, None


def noise(p1: float, n1: int, p2: float, n2: int) -> float:
    """Two standard errors of the difference of two accuracies (in points)."""
    var = sum((p / 100) * (1 - p / 100) / max(n, 1) for p, n in ((p1, n1), (p2, n2)))
    return 200.0 * math.sqrt(var)


def _worst(s: CheckedSummary) -> float:
    return s.worst.get(s.primary_eps, float("nan"))


def _pgd20(s: CheckedSummary) -> tuple[float, int, str]:
    """PGD-20 accuracy at the primary eps: the v2 probe, else the cascade's PGD-CE stage."""
    probe = s.extras.get("probe-steps-20")
    if probe is not None and probe.n:
        return probe.accuracy, probe.n, "probe-steps-20"
    cell = s.cells.get(("pgd-ce", s.primary_eps))
    steps = next((a["params"].get("steps") for a in s.protocol["attacks"] if a["label"] == "pgd-ce"), "?")
    return (cell.accuracy if cell else float("nan")), (cell.n if cell else 0), f"the cascade's PGD-{steps} (CE)"


def _better(summaries: list[CheckedSummary], paper: str, claim: str, a: str, b: str,
            metric: Callable[[CheckedSummary], tuple[float, int, str]]) -> Finding:
    """Claim: entry a is more robust than entry b under ``metric``."""
    ra, rb = _pair(summaries, a, b)
    if ra is None or rb is None:
        return Finding(paper, claim, MISSING, f"needs complete runs of {a} and {b} under one protocol")
    (va, na, what), (vb, nb, _) = metric(ra), metric(rb)
    margin = noise(va, na, vb, nb)
    status = HOLDS if va - vb > margin else (FAILS if va - vb <= 0 else UNCLEAR)
    return Finding(paper, claim, status,
                   f"{what} on {ra.run.protocol}: {a} {va:.1f}% vs {b} {vb:.1f}% (difference {va - vb:+.1f} points; "
                   f"sampling noise ±{margin:.1f})", [ra, rb])


def _worst_metric(s: CheckedSummary) -> tuple[float, int, str]:
    return _worst(s), s.run.n_samples, f"worst case at eps {s.primary_eps:g}"


def _obfuscation(summaries: list[CheckedSummary], paper: str, entry: str) -> Finding:
    claim = f"{entry} without adversarial training shows gradient obfuscation"
    s = _pick(summaries, entry)
    if s is None:
        return Finding(paper, claim, MISSING, f"needs a complete run of {entry}")
    flags = [c for c in s.flags if c.severity == "unreliable"]
    gap = next((c for c in s.flags if c.name == "adaptive-gap"), None)
    signs = flags + ([gap] if gap else [])
    if signs:
        return Finding(paper, claim, HOLDS, "; ".join(f"{c.name}: {c.summary}" for c in signs)
                       + f". Worst case at eps {s.primary_eps:g}: {_worst(s):.1f}%", [s])
    if not s.checks:
        return Finding(paper, claim, MISSING, f"the run of {entry} has no sanity checks stored (run `bench check`)")
    steps = sorted((p.label, p.accuracy) for p in s.extras_by_mode("probe") if p.label.startswith("probe-steps-"))
    slow = ("; PGD accuracy by steps: " + ", ".join(f"{lab.rsplit('-', 1)[1]}: {acc:.0f}%" for lab, acc in
                                                   sorted(steps, key=lambda t: int(t[0].rsplit('-', 1)[1])))
            if steps else "")
    return Finding(paper, claim, FAILS, f"no sanity check failed on {s.run.protocol}; worst case at eps "
                   f"{s.primary_eps:g}: {_worst(s):.1f}% (the standard attacks already break it){slow}", [s])


def _noise_needed(summaries: list[CheckedSummary], paper: str) -> list[Finding]:
    out = []
    for noisy, plain in (("ls-noise", "ls-no-noise"), ("logit-squeeze-noise", "logit-squeeze-no-noise")):
        out.append(_better(summaries, paper, f"{noisy} is more robust than {plain} (Gaussian noise is what makes it "
                           "work)", noisy, plain, _worst_metric))
        f = _better(summaries, paper, f"{noisy} is a replacement for adversarial training (not less robust than "
                    "madry-pgd-at)", "madry-pgd-at", noisy, _worst_metric)
        # "not less robust than PGD-AT": fails when PGD-AT leads beyond noise, holds when it does not lead
        f.status = {HOLDS: FAILS, FAILS: HOLDS}.get(f.status, f.status)
        out.append(f)
    return out


def _detection(summaries: list[CheckedSummary], paper: str) -> list[Finding]:
    claim = "RCE + K-density detects adversarial examples (detection ROC-AUC above 90% for every attack)"
    s = _pick(summaries, "rce-kd")
    if s is None or not s.detection_auc:
        return [Finding(paper, claim, MISSING, "needs a complete run of rce-kd")]
    at = {k: v for k, v in s.detection_auc.items() if k[1] == s.primary_eps}
    low = min(at.items(), key=lambda kv: kv[1][0]) if at else None
    f1 = Finding(paper, claim, HOLDS if low and low[1][0] > 90 else FAILS,
                 f"lowest AUC at eps {s.primary_eps:g}: {low[0][0]} {low[1][0]:.1f}% ({low[1][1]} adversarial inputs)"
                 if low else "no AUC at the primary eps", [s])
    adaptive = [a for a in s.adaptive_applied if (a, s.primary_eps) in s.cells]
    claim2 = "rce-kd stays robust against a detector-aware (adaptive) attack"
    if not adaptive:
        return [f1, Finding(paper, claim2, MISSING, "needs a v2 run (detector-aware attacks)", [s])]
    before = [a for a in s.attack_labels if a not in adaptive and (a, s.primary_eps) in s.cells]
    acc_before = s.cells[(before[-1], s.primary_eps)].accuracy
    after = s.worst_before.get(s.primary_eps, float("nan"))  # the cascade's: an escalation is not the adaptive attack
    drop = acc_before - after
    f2 = Finding(paper, claim2, FAILS if drop > noise(acc_before, s.run.n_samples, after, s.run.n_samples)
                 else HOLDS, f"{', '.join(adaptive)} lowered accuracy at eps {s.primary_eps:g} from {acc_before:.1f}% "
                 f"to {after:.1f}%", [s])
    return [f1, f2]


def findings(summaries: list[CheckedSummary], entries: dict[str, Entry]) -> list[Finding]:
    """Every finding, in paper order (MNIST runs)."""
    unc = "Rethinking Uncertainty in Deep Learning (EntM, LS, PAT)"
    out = [_obfuscation(summaries, unc, "entm"), _obfuscation(summaries, unc, "ls"),
           _better(summaries, unc, "PAT-EntM is more robust than PAT", "pat-entm", "pat", _worst_metric),
           _better(summaries, unc, "PAT-LS is more robust than PAT", "pat-ls", "pat", _worst_metric)]
    out += _noise_needed(summaries, "Label Smoothing and Logit Squeezing (Shafahi et al.)")
    mart = "MART (Wang et al., ICLR 2020)"
    out += [_better(summaries, mart, "MART beats TRADES under PGD-20", "mart", "trades", _pgd20),
            _better(summaries, mart, "MART beats standard PGD adversarial training under PGD-20", "mart",
                    "madry-pgd-at", _pgd20),
            _better(summaries, mart, "MART beats TRADES in worst case", "mart", "trades", _worst_metric)]
    out += _detection(summaries, "Towards Robust Detection of Adversarial Examples (RCE, Pang et al.)")
    pnml = _better(summaries, "Adversarial pNML (Pesso et al.)", "pNML's gain over its base model survives BPDA",
                   "pnml", "madry-pgd-at", _worst_metric)
    if pnml.runs and "bpda" not in pnml.runs[0].adaptive_applied:
        pnml.status, pnml.evidence = MISSING, pnml.evidence + "; but BPDA was not run (needs a v2 run)"
    out.append(pnml)
    return out
