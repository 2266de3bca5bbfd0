"""The typed result of one evaluation, as the Python API returns it: a model in, a report out.

Every figure comes from the run's stored per-sample rows (:mod:`bench.store.summary`) joined with
its stored sanity checks (:mod:`bench.report.summary`); the report only reshapes them into plain,
immutable values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bench.report.summary import CheckedSummary, failed_first


@dataclass(frozen=True)
class AttackCell:
    """One stage of the cascade at one eps: accuracy after it (every earlier stage included)."""

    attack: str
    eps: float
    accuracy: float  # % of the run's samples still robust after this stage
    attacked: int  # samples this attack ran on (the survivors of every earlier stage)
    broken: int  # of those, samples it broke (engine-verified)
    n: int
    seconds: float


@dataclass(frozen=True)
class CheckOutcome:
    """One sanity check of the run, with its evidence (counts, sample ids, curves)."""

    name: str
    severity: str  # "unreliable" or "warning"
    status: str  # "pass", "fail" or "not-run"
    value: float | None
    threshold: str
    summary: str
    evidence: dict[str, Any] = field(compare=False, repr=False)

    @property
    def failed(self) -> bool:
        return self.status == "fail"


@dataclass(frozen=True)
class EscalationStep:
    """One escalation stage at one eps: what it attacked and broke (engine-verified)."""

    remedy: str
    label: str
    eps: float
    attacked: int
    broken: int
    seconds: float


@dataclass(frozen=True)
class EscalationReport:
    """What the escalation did: the failed checks that triggered it, the remedies that ran (or why one
    did not), each stage's breaks, the checks run again afterwards, and its cost."""

    policy: str
    triggers: dict[str, list[str]]
    remedies: tuple[str, ...]
    skipped: dict[str, str]
    steps: tuple[EscalationStep, ...]
    checks_after: dict[str, str]
    seconds: float
    distill_seconds: float

    def broken_by_remedy(self) -> dict[str, int]:
        """Samples each remedy broke, over every eps (a sample counts once per eps it fell at)."""
        out: dict[str, int] = {}
        for st in self.steps:
            out[st.remedy] = out.get(st.remedy, 0) + st.broken
        return out

    @classmethod
    def from_summary(cls, s: CheckedSummary) -> EscalationReport | None:
        rec = s.escalation
        if not rec or not rec.get("rounds"):
            return None
        steps = []
        for st in rec.get("stages", []):
            if st.get("kind") == "clean":  # the clean pass over draws: clean accuracy, not a remedy's breaks
                continue
            cell = s.cells.get((st["label"], float(st["eps"])))
            if cell is not None:
                steps.append(EscalationStep(st["remedy"], st["label"], float(st["eps"]), cell.attacked, cell.broken,
                                            cell.seconds))
        rounds = rec["rounds"]
        triggers: dict[str, list[str]] = {}
        for r in rounds:
            triggers.update(r.get("triggers", {}))
        return cls(policy=str(rec["policy"]), triggers=triggers,
                   remedies=tuple(x for r in rounds for x in r.get("remedies", [])),
                   skipped={k: v for r in rounds for k, v in r.get("skipped", {}).items()}, steps=tuple(steps),
                   checks_after=dict(rounds[-1].get("after", {})), seconds=float(rec.get("seconds", 0.0)),
                   distill_seconds=float(rec.get("distill_seconds", 0.0)))


@dataclass(frozen=True)
class RunReport:
    """Clean accuracy, worst case per eps, per-attack cells, checks and flags, and the ranked accuracy.

    ``worst_case[eps]`` is the share of samples that survived every attack at that eps (and at every
    smaller one). ``ranked_accuracy`` is the worst case at the primary eps that ranks the entry: for
    an evaluation flagged unreliable, the samples the checks' own attacks broke count as broken too.
    For an escalated run, ``worst_case`` and ``clean_accuracy`` include the escalation's stages;
    ``worst_case_before_escalation`` keeps the protocol's own figures and ``escalation`` says what ran.
    """

    run_id: int
    entry_id: str
    protocol: str
    fingerprint: str
    n_samples: int
    complete: bool
    clean_accuracy: float
    primary_eps: float
    worst_case: dict[float, float]
    cells: tuple[AttackCell, ...]
    checks: tuple[CheckOutcome, ...]
    ranked_accuracy: float | None
    unreliable: bool
    summary: CheckedSummary = field(compare=False, repr=False)
    worst_case_before_escalation: dict[float, float] = field(default_factory=dict)
    escalation: EscalationReport | None = None

    @property
    def flags(self) -> tuple[CheckOutcome, ...]:
        """The failed checks, the unreliable ones first."""
        return tuple(failed_first(self.checks))

    def accuracy(self, attack: str, eps: float) -> float | None:
        """Accuracy after ``attack`` at ``eps`` (None when the protocol does not run it there)."""
        return next((c.accuracy for c in self.cells if c.attack == attack and c.eps == eps), None)

    @classmethod
    def from_summary(cls, s: CheckedSummary) -> RunReport:
        order = {label: i for i, label in enumerate(s.attack_labels)}
        clean_passes = {st["label"] for st in (s.escalation or {}).get("stages", []) if st.get("kind") == "clean"}
        cells = tuple(
            AttackCell(c.attack, float(c.eps), c.accuracy, c.attacked, c.broken, c.n, c.seconds)
            for c in sorted(s.cells.values(), key=lambda c: (c.eps, order.get(c.attack, len(order))))
            if c.attack not in clean_passes)
        checks = tuple(CheckOutcome(c.name, c.severity, c.status, c.value, c.threshold, c.summary, dict(c.evidence))
                       for c in s.checks)
        return cls(run_id=s.run.id, entry_id=s.run.entry_id, protocol=s.run.protocol, fingerprint=s.run.fingerprint,
                   n_samples=s.run.n_samples, complete=s.complete, clean_accuracy=s.clean_acc,
                   primary_eps=s.primary_eps, worst_case={float(e): w for e, w in s.worst.items()}, cells=cells,
                   checks=checks, ranked_accuracy=s.ranked_worst, unreliable=s.unreliable, summary=s,
                   worst_case_before_escalation={float(e): w for e, w in s.worst_before.items()},
                   escalation=EscalationReport.from_summary(s))

    def table(self) -> str:
        """A plain-text table: one line per attack, one column per eps, then the worst case."""
        eps = sorted({c.eps for c in self.cells})
        labels = list(dict.fromkeys(c.attack for c in self.cells))
        width = max([len("worst case"), *map(len, labels)])
        lines = [f"{self.entry_id} on {self.protocol} (run {self.run_id}): clean {self.clean_accuracy:.1f}%",
                 " " * width + "".join(f"{f'eps {e:.4g}':>11}" for e in eps)]
        for label in labels:
            vals = [self.accuracy(label, e) for e in eps]
            lines.append(f"{label:<{width}}" + "".join(f"{'–' if v is None else f'{v:.1f}':>11}" for v in vals))
        lines.append(f"{'worst case':<{width}}" + "".join(
            f"{'–' if e not in self.worst_case else f'{self.worst_case[e]:.1f}':>11}" for e in eps))
        for flag in self.flags:
            lines.append(f"[{flag.severity}] {flag.name}: {flag.summary}")
        return "\n".join(lines)
