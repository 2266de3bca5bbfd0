"""The check registry: the suite's numbers, the checks declared against them, and what each check reads.

A check is declared once, with :func:`check`, on the function that produces its result: its name,
the issue's item number, its severity, a title and a threshold text. Titles and thresholds that
state a number are functions of the suite (``SUITE``), so the text on the board is rendered from
the same number the check compares with and cannot drift from it. Checks that judge one shared
measurement (the FGSM and PGD eps sweep decides both ``rises-with-eps`` and ``single-step-wins``)
stack their declarations on one function, which runs the measurement once and returns their
results in declaration order (top first). :func:`bench.checks.suite.run_suite` runs the registered
functions in the order they were registered (:mod:`bench.checks.model`'s, then the row checks of
:mod:`bench.checks.suite`).

Every registered function receives one :class:`CheckInputs`: the run's rows, protocol, summary and
a prober on the model, plus the quantities several checks share (the probe samples, the protocol's
PGD setting, the cascade's survivors), computed once on first use.

"Beyond sampling noise" is a paired sign rule: on the same samples, a change in one direction by
``u`` samples against ``d`` in the other counts when ``u - d >= max(2, z * sqrt(u + d))``.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch

from bench import code_version
from bench.checks.probes import PGDSetting, Prober
from bench.store.database import Check, Result, now
from bench.store.summary import RunSummary

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


def beyond_noise(up: int, down: int, z: float | None = None) -> bool:
    """A paired change of ``up`` samples one way against ``down`` the other is more than noise."""
    z = SUITE["noise_z"] if z is None else z
    return up - down >= max(2.0, z * math.sqrt(up + down))


def points(x: float) -> str:
    """A threshold in accuracy points, as the check texts write it: "1 point", "5 points"."""
    return f"{x:g} point" + ("" if x == 1 else "s")


def sample_ids(xs: set[int] | list[int], cap: int = 50) -> list[int]:
    """The first ``cap`` sample ids, sorted: the evidence a check cites."""
    return sorted(xs)[:cap]


# ---- declarations ------------------------------------------------------------------------------

Text = Callable[[Mapping[str, Any]], str]  # a title or threshold, rendered from the suite's settings


@dataclass(frozen=True)
class CheckDef:
    """One declared check; ``title`` and ``threshold`` are rendered from ``SUITE``."""

    name: str
    item: int  # the numbering
    severity: str  # unreliable | warning
    title_of: Text
    threshold_of: Text

    @property
    def title(self) -> str:
        return self.title_of(SUITE)

    @property
    def threshold(self) -> str:
        return self.threshold_of(SUITE)


@dataclass
class CheckResult:
    """One check's outcome on one run, as stored in the ``checks`` table (title and threshold come from
    the declaration, so rows read back show the current texts)."""

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


Measure = Callable[["CheckInputs"], list[CheckResult]]


@dataclass
class Registered:
    """A registered function and the checks it decides, in the order it returns them."""

    fn: Measure
    names: list[str]

    @property
    def label(self) -> str:
        """What the progress line shows while it runs: the function's name in words."""
        return self.fn.__name__.replace("_", " ")

    def run(self, inp: CheckInputs) -> list[CheckResult]:
        """Its results, each timed with an equal share of the function's wall time."""
        t0 = time.perf_counter()
        out = self.fn(inp)
        if [r.name for r in out] != self.names:
            raise RuntimeError(f"{self.fn.__name__} returned {[r.name for r in out]}, declared {self.names}")
        for r in out:
            r.seconds = (time.perf_counter() - t0) / len(out)
        return out


CHECKS: dict[str, CheckDef] = {}  # every declared check, by name
REGISTRY: list[Registered] = []  # the functions that decide them, in registration (= run) order


def _text(text: str | Text) -> Text:
    return text if callable(text) else lambda _suite: text


def check(name: str, item: int, severity: str, title: str | Text,
          threshold: str | Text) -> Callable[[Measure], Measure]:
    """Declare check ``name`` and register the decorated function as the one that decides it.

    ``title`` and ``threshold`` are texts, or functions of the suite's settings for texts that state
    one of its numbers. Stacked declarations on one function are checks decided by one measurement:
    the function returns their results in the order of the decorators, top first.
    """
    if severity not in ("unreliable", "warning"):
        raise ValueError(f"check {name}: severity must be 'unreliable' or 'warning'")

    def register(fn: Measure) -> Measure:
        if name in CHECKS:
            raise ValueError(f"check {name} is declared twice")
        CHECKS[name] = CheckDef(name, item, severity, _text(title), _text(threshold))
        entry = next((r for r in REGISTRY if r.fn is fn), None)
        if entry is None:
            REGISTRY.append(Registered(fn, [name]))
        else:  # decorators apply bottom-up: this one stands above the names already registered
            entry.names.insert(0, name)
        ordered = {n: CHECKS[n] for r in REGISTRY for n in r.names}  # CHECKS lists the checks in run order
        CHECKS.clear()
        CHECKS.update(ordered)
        return fn

    return register


# ---- what every check receives -------------------------------------------------------------------

@dataclass
class CheckInputs:
    """What the suite needs about one run: its rows, protocol, summary, and a prober on the model.

    The properties below are shared by several checks and computed once, on first use.
    """

    protocol: dict
    rows: list[Result]
    summary: RunSummary  # the run's cascade accuracies per (attack, eps) and worst case, from the same rows
    x: torch.Tensor  # the evaluated samples, in id order (on the model's device)
    y: torch.Tensor
    prober: Prober
    is_detector: bool
    n_classes: int = 10

    @cached_property
    def suite(self) -> dict:
        return suite_for(self.protocol)[0]

    @property
    def n(self) -> int:
        return int(self.x.shape[0])

    @property
    def seed(self) -> int:
        return int(SUITE["seed"])

    @property
    def primary(self) -> float:
        return float(self.protocol["primary_eps"])

    @property
    def eps_list(self) -> list[float]:
        return [float(e) for e in self.protocol["epsilons"]]

    @property
    def applied(self) -> set[str]:
        """The adaptive attacks applied to the entry."""
        return set(self.protocol.get("adaptive_applied", []))

    @cached_property
    def setting(self) -> PGDSetting:
        """The protocol's PGD (its ``pgd-ce`` stage), which the probes repeat."""
        spec = next(a for a in self.protocol["attacks"] if a["label"] == "pgd-ce")["params"]
        return PGDSetting(int(spec["steps"]), spec.get("step_size"), spec.get("rel_step_size"))

    @cached_property
    def correct(self) -> list[int]:
        """The samples correct (and accepted) on the clean pass, by id."""
        clean = {r.sample: r.robust_after for r in self.rows if r.attack == "clean"}
        return [i for i in range(self.n) if clean.get(i)]

    @cached_property
    def probe(self) -> torch.Tensor:
        """The probe samples: the first ``probe_samples`` clean-correct ones."""
        return torch.tensor(self.correct[: self.suite["probe_samples"]], dtype=torch.long)

    @cached_property
    def xp(self) -> torch.Tensor:
        return self.x[self.probe.to(self.x.device)]

    @cached_property
    def yp(self) -> torch.Tensor:
        return self.y[self.probe.to(self.x.device)]

    @cached_property
    def survivors(self) -> list[int]:
        """The survivors at the primary eps: robust after the last stored stage there (the cascade's,
        or for an escalated run the escalation's last)."""
        labels = [a["label"] for a in self.protocol["attacks"]]
        labels += [s["label"] for s in (self.summary.escalation or {}).get("stages", [])
                   if float(s["eps"]) == self.primary]
        have = {r.attack for r in self.rows if float(r.eps) == self.primary}
        last = [lab for lab in labels if lab in have]
        if not last:
            return []
        return sorted({r.sample for r in self.rows if r.attack == last[-1] and float(r.eps) == self.primary
                       and r.robust_after})
