"""Summaries computed from a run's stored rows alone (the checks read them; :mod:`bench.report.summary`
joins the checks to them for the leaderboard, the exports and the API).

Per (attack, eps) the stored ``robust_after`` flag is the sample's state after that stage of the
cascade, so every accuracy here is a plain mean of stored flags:
* clean accuracy: mean of the clean rows' flags;
* accuracy after an attack at eps: mean over samples of ``robust_after`` at that stage (the
  sample survived that attack and every earlier stage, smaller epsilons included);
* worst case at eps: the same for the last stage at that eps (the mean over samples of the
  minimum over attacks, never the minimum of per-attack means).

An escalated run (:mod:`bench.escalation`) has more stages after the cascade, listed in order in its
escalation record: the worst case at eps is then read at the last escalation stage there (its flags
already include the cascade and every escalation stage at smaller eps), and a randomized model's
clean accuracy at its clean-over-draws stage. ``worst_before`` and ``clean_correct_before`` keep the
cascade's own figures.

Detector runs add the clean rejection rate and, per (attack, eps), the detection ROC-AUC as the
RCE paper computes it: adversarial inputs that are misclassified (whether rejected or not) against
the clean inputs that are correctly classified, by their stored detector scores.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import torch

from bench.errors import BenchError
from bench.store.database import Result, Run, Store


@dataclass
class CellStats:
    attack: str
    eps: float
    n: int
    robust: int
    attacked: int
    broken: int
    seconds: float = 0.0
    n_forward: int = 0
    n_backward: int = 0
    broken_by: dict[str, int] = field(default_factory=dict)

    @property
    def accuracy(self) -> float:
        return 100.0 * self.robust / self.n if self.n else float("nan")


@dataclass
class ExtraStats:
    """An attack outside the cascade: a probe's accuracy, or a minimum-norm / L0 attack's distances."""

    label: str
    mode: str
    eps: float
    norm: str  # the distance reported: 'l2', 'linf' or 'l0'
    n: int  # samples in its range
    attacked: int
    broken: int
    robust: int
    distances: list[float]  # of the successful samples, ascending
    seconds: float = 0.0

    @property
    def accuracy(self) -> float:
        """Share of the samples in range that are correct and survive it (probes)."""
        return 100.0 * self.robust / self.n if self.n else float("nan")

    def quantile(self, q: float) -> float | None:
        if not self.distances:
            return None
        return self.distances[min(len(self.distances) - 1, int(q * len(self.distances)))]


def distance_norm(extra: dict) -> str:
    if extra["mode"] == "l0":
        return "l0"
    if extra["mode"] == "probe" or extra["kind"].startswith("fab") and extra["params"].get("norm", "Linf") == "Linf":
        return "linf"
    return "l2"


@dataclass
class RunSummary:
    run: Run
    protocol: dict
    n_evaluated: int
    clean_correct: int
    cells: dict[tuple[str, float], CellStats]
    worst: dict[float, float]
    complete: bool
    detector: dict | None = None
    clean_rejected: int = 0
    detection_auc: dict[tuple[str, float], tuple[float, int, int]] = field(default_factory=dict)
    extras: dict[str, ExtraStats] = field(default_factory=dict)
    worst_before: dict[float, float] = field(default_factory=dict)  # the cascade's own worst case
    clean_correct_before: int = 0  # the clean pass's own count
    escalation: dict | None = None  # the run's escalation record (None: not escalated)
    escalation_rounds: int = 0  # the escalation's rounds whose every stage is stored (the ones counted)

    @property
    def escalated(self) -> bool:
        """Whether escalation stages count in this summary (a complete round of them at least)."""
        return self.escalation_rounds > 0

    @property
    def escalation_complete(self) -> bool:
        """Every planned escalation round is stored (trivially, when none was planned)."""
        if not self.escalation:
            return True
        return self.escalation_rounds == len({st["round"] for st in self.escalation["stages"]})

    @property
    def adaptive_applied(self) -> list[str]:
        return list(self.protocol.get("adaptive_applied", []))

    def extras_by_mode(self, mode: str) -> list[ExtraStats]:
        return [e for e in self.extras.values() if e.mode == mode]

    @property
    def clean_rejection_rate(self) -> float | None:
        if self.detector is None or not self.n_evaluated:
            return None
        return 100.0 * self.clean_rejected / self.n_evaluated

    @property
    def clean_acc(self) -> float:
        return 100.0 * self.clean_correct / self.n_evaluated if self.n_evaluated else float("nan")

    @property
    def primary_eps(self) -> float:
        return float(self.protocol["primary_eps"])

    @property
    def epsilons(self) -> list[float]:
        return [float(e) for e in self.protocol["epsilons"]]

    @property
    def attack_labels(self) -> list[str]:
        return [a["label"] for a in self.protocol["attacks"]]

    def accuracy(self, attack: str, eps: float) -> float | None:
        cell = self.cells.get((attack, eps))
        return cell.accuracy if cell else None

    @property
    def autoattack(self) -> float | None:
        return self.accuracy("autoattack", self.primary_eps)


def summarize_rows(store: Store, run: Run) -> RunSummary:
    """The summary of a run from its stored rows and stages alone."""
    rows: list[Result] = store.results(run.id)
    protocol = json.loads(run.protocol_json)
    clean = [r for r in rows if r.attack == "clean"]
    extra_specs = {e["label"]: e for e in protocol.get("extras", [])}
    by_cell: dict[tuple[str, float], list[Result]] = defaultdict(list)
    by_extra: dict[str, list[Result]] = defaultdict(list)
    for r in rows:
        if r.attack in extra_specs:
            by_extra[r.attack].append(r)
        elif r.attack != "clean":
            by_cell[(r.attack, r.eps)].append(r)
    stages: defaultdict[tuple[str, float], list[Any]] = defaultdict(lambda: [0.0, 0, 0])  # seconds, passes
    for s in store.stages(run.id):
        acc = stages[(s.attack, s.eps)]
        acc[0] += s.seconds
        acc[1] += s.n_forward
        acc[2] += s.n_backward
    cells: dict[tuple[str, float], CellStats] = {}
    for key, rs in by_cell.items():
        sec, nf, nb = stages.get(key, [0.0, 0, 0])
        cells[key] = CellStats(
            attack=key[0], eps=key[1], n=len(rs), robust=sum(r.robust_after for r in rs),
            attacked=sum(r.attacked for r in rs), broken=sum(r.success for r in rs), seconds=sec,
            n_forward=nf, n_backward=nb,
            broken_by=dict(Counter(r.detail for r in rs if r.success and r.detail)),
        )
    extras: dict[str, ExtraStats] = {}
    for label, spec in extra_specs.items():
        rs = by_extra.get(label, [])
        norm = distance_norm(spec)
        eps = float(spec["eps"]) if spec.get("eps") is not None else 0.0
        extras[label] = ExtraStats(
            label=label, mode=spec["mode"], eps=eps, norm=norm, n=len(rs), attacked=sum(r.attacked for r in rs),
            broken=sum(r.success for r in rs), robust=sum(r.robust_after for r in rs),
            distances=sorted(float(getattr(r, norm)) for r in rs if r.success and getattr(r, norm) is not None),
            seconds=stages.get((label, eps), [0.0])[0])
    worst_before: dict[float, float] = {}
    labels = [a["label"] for a in protocol["attacks"]]
    for eps in protocol["epsilons"]:
        present = [lab for lab in labels if (lab, eps) in cells]
        if present:
            worst_before[eps] = cells[(present[-1], eps)].accuracy
    escalation = load_escalation(run)
    worst = dict(worst_before)
    clean_correct = clean_before = sum(r.robust_after for r in clean)
    rounds = 0
    for number in sorted({st["round"] for st in (escalation or {}).get("stages", [])}):
        in_round = [st for st in escalation["stages"] if st["round"] == number]  # type: ignore[index]
        if not all((c := cells.get((st["label"], float(st["eps"])))) is not None and c.n == run.n_samples
                   for st in in_round):
            break  # a round counts once every stage of it is stored: never half an escalation
        rounds += 1
        for st in in_round:  # in order: the last one at each eps decides
            cell = cells[(st["label"], float(st["eps"]))]
            if st.get("kind") == "clean":  # a randomized model's clean pass over draws
                clean_correct = cell.robust
            else:
                worst[float(st["eps"])] = cell.accuracy
    cascade = {(a["label"], float(eps)) for eps in protocol["epsilons"] for a in protocol["attacks"]
               if a["at"] == "all" or eps == protocol["primary_eps"]}
    complete = (len(clean) == run.n_samples and all(k in cells for k in cascade)
                and all(c.n == run.n_samples for k, c in cells.items() if k in cascade))
    detector = json.loads(run.detector_json) if run.detector_json else None
    auc: dict[tuple[str, float], tuple[float, int, int]] = {}
    if detector is not None:
        negatives = [r.score for r in clean if r.pred == r.label and r.score is not None]
        for key, rs in [*by_cell.items(), *(((k, extras[k].eps), v) for k, v in by_extra.items())]:
            positives = [r.score for r in rs if r.attacked and r.pred is not None and r.pred != r.label
                         and r.score is not None]
            if positives and negatives:
                auc[key] = (100.0 * roc_auc(positives, negatives), len(positives), len(negatives))
    return RunSummary(run=run, protocol=protocol, n_evaluated=len(clean),
                      clean_correct=clean_correct, cells=cells, worst=worst, complete=complete,
                      detector=detector, clean_rejected=sum(bool(r.rejected) for r in clean), detection_auc=auc,
                      extras=extras, worst_before=worst_before, clean_correct_before=clean_before,
                      escalation=escalation, escalation_rounds=rounds)


def load_escalation(run: Run) -> dict | None:
    """A run's escalation record, checked (None: not escalated); a one-line error when it is unreadable."""
    if not run.escalation_json:
        return None
    try:
        record = json.loads(run.escalation_json)
        if not isinstance(record, dict) or not isinstance(record.get("policy"), str):
            raise ValueError("no policy")
        for st in record["stages"]:
            str(st["label"]), float(st["eps"]), int(st["round"]), str(st["kind"])
        for rnd in record["rounds"]:
            list(rnd["remedies"]), dict(rnd["skipped"])
    except (ValueError, KeyError, TypeError) as exc:
        raise BenchError(f"run {run.id}: its escalation record is unreadable ({exc.__class__.__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else 'bad field'}); "
                         "clear runs.escalation_json to escalate it again") from None
    return record


def roc_auc(positives: list[float], negatives: list[float]) -> float:
    """P(score of a positive > score of a negative), ties counting one half (the ROC curve's area)."""
    pos = torch.tensor(positives, dtype=torch.float64)[:, None]
    neg = torch.tensor(negatives, dtype=torch.float64)[None, :]
    return float(((pos > neg).double() + 0.5 * (pos == neg).double()).mean())

