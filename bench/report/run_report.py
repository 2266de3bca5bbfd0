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
class RunReport:
    """Clean accuracy, worst case per eps, per-attack cells, checks and flags, and the ranked accuracy.

    ``worst_case[eps]`` is the share of samples that survived every attack at that eps (and at every
    smaller one). ``ranked_accuracy`` is the worst case at the primary eps that ranks the entry: for
    an evaluation flagged unreliable, the samples the checks' own attacks broke count as broken too.
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
        cells = tuple(
            AttackCell(c.attack, float(c.eps), c.accuracy, c.attacked, c.broken, c.n, c.seconds)
            for c in sorted(s.cells.values(), key=lambda c: (c.eps, order.get(c.attack, len(order)))))
        checks = tuple(CheckOutcome(c.name, c.severity, c.status, c.value, c.threshold, c.summary, dict(c.evidence))
                       for c in s.checks)
        return cls(run_id=s.run.id, entry_id=s.run.entry_id, protocol=s.run.protocol, fingerprint=s.run.fingerprint,
                   n_samples=s.run.n_samples, complete=s.complete, clean_accuracy=s.clean_acc,
                   primary_eps=s.primary_eps, worst_case={float(e): w for e, w in s.worst.items()}, cells=cells,
                   checks=checks, ranked_accuracy=s.ranked_worst, unreliable=s.unreliable, summary=s)

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
