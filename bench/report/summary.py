"""A run's summary joined with its sanity checks: flags, the "possibly unreliable" mark and the
accuracy that ranks the entry.

The summary itself (:mod:`bench.store.summary`) is computed from the stored rows alone; the checks
(:mod:`bench.checks`) read that summary. Joining the two here, one layer above both, keeps the
dependency one-way: store <- checks <- report.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from typing import Protocol, TypeVar

from bench.checks.suite import CheckResult, load_results
from bench.store.database import Run, Store
from bench.store.summary import RunSummary, summarize_rows

C = TypeVar("C", bound="CheckLike")


class CheckLike(Protocol):
    """What ordering flags reads of a check: a stored CheckResult or a report's CheckOutcome."""

    @property
    def name(self) -> str: ...

    @property
    def severity(self) -> str: ...

    @property
    def failed(self) -> bool: ...


def failed_first(checks: Iterable[C]) -> list[C]:
    """The failed checks, the unreliable ones first, then by name: the order flags are shown in."""
    return sorted((c for c in checks if c.failed), key=lambda c: (c.severity != "unreliable", c.name))


@dataclass
class CheckedSummary(RunSummary):
    """:class:`RunSummary` plus the run's stored check results."""

    checks: list[CheckResult] = field(default_factory=list)

    @property
    def flags(self) -> list[CheckResult]:
        """Failed checks, the unreliable ones first."""
        return failed_first(self.checks)

    @property
    def unreliable(self) -> bool:
        """A failed check of severity 'unreliable': shown as "evaluation possibly unreliable"."""
        return any(c.failed and c.severity == "unreliable" for c in self.checks)

    @property
    def exposed(self) -> set[int]:
        """Samples the checks' own attacks broke at the primary eps after they survived the cascade."""
        return set().union(*(c.exposed for c in self.checks)) if self.checks else set()

    @property
    def exposed_after_escalation(self) -> set[int]:
        """Samples the checks' attacks broke at the primary eps after they survived the escalation."""
        rounds = (self.escalation or {}).get("rounds", [])
        done = [r for r in rounds if "exposed_at_primary" in r]
        return set(done[-1]["exposed_at_primary"]) if done else set()

    @property
    def ranked_worst(self) -> float | None:
        """The worst case at the primary eps that ranks the entry: for an unreliable evaluation, the
        (escalated) worst case with the samples the checks' attacks exposed counted as broken too (the
        checks run after the escalation, when there was one)."""
        w = self.worst.get(self.primary_eps)
        if w is None or not self.unreliable or not self.run.n_samples:
            return w
        exposed = self.exposed_after_escalation if self.escalated else self.exposed
        return w - 100.0 * len(exposed) / self.run.n_samples


def join_checks(summary: RunSummary, checks: list[CheckResult]) -> CheckedSummary:
    """The summary with ``checks`` attached."""
    return CheckedSummary(**{f.name: getattr(summary, f.name) for f in fields(RunSummary)}, checks=list(checks))


def summarize(store: Store, run: Run) -> CheckedSummary:
    """The run's summary from its rows, joined with its stored checks."""
    return join_checks(summarize_rows(store, run), load_results(store, run.id))


def summarize_all(store: Store) -> list[CheckedSummary]:
    return [summarize(store, run) for run in store.runs()]
