"""Frozen, versioned evaluation protocols and their fingerprints.

A protocol fixes everything that decides a number on the board: dataset, split, which samples,
norm, epsilon grid and primary epsilon, the ordered attack specs with their seeds, the chunk size
(the unit of work, seeding and commit), and the detector false-positive rate. Its fingerprint is
the SHA-256 of its canonical JSON; every stored row carries it. Changing anything means a new
version; never edit a published protocol in place (``tests/test_protocol.py`` pins the fingerprints).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from bench.errors import BenchError


@dataclass(frozen=True)
class AttackSpec:
    """One attack of a protocol: a label (row name), the attack kind, its hyperparameters and seed.

    ``at`` says at which epsilons of the grid the attack runs: every one (``"all"``) or only the
    primary epsilon (``"primary"``, used by the CPU ``-quick`` protocols for AutoAttack).
    """

    label: str
    kind: str
    params: Mapping[str, Any] = field(default_factory=dict)
    seed: int = 0
    at: Literal["all", "primary"] = "all"

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", MappingProxyType(dict(self.params)))

    def canonical(self) -> dict[str, Any]:
        return {"label": self.label, "kind": self.kind, "params": dict(sorted(self.params.items())),
                "seed": self.seed, "at": self.at}


@dataclass(frozen=True)
class Protocol:
    """A frozen evaluation protocol (see the module docstring)."""

    name: str
    dataset: str
    split: str
    n_samples: int
    norm: str
    epsilons: tuple[float, ...]
    primary_eps: float
    attacks: tuple[AttackSpec, ...]
    chunk_size: int = 100
    detector_fpr: float = 0.05
    eot_samples: int = 20
    description: str = ""

    def __post_init__(self) -> None:
        if self.primary_eps not in self.epsilons:
            raise ValueError(f"{self.name}: primary eps must be in the grid")
        if list(self.epsilons) != sorted(self.epsilons):
            raise ValueError(f"{self.name}: epsilons must ascend (nested balls)")
        if len({a.label for a in self.attacks}) != len(self.attacks):
            raise ValueError(f"{self.name}: attack labels must be unique")

    def canonical(self) -> dict[str, Any]:
        """Everything that defines the protocol, as plain JSON types (description excluded)."""
        return {
            "name": self.name, "dataset": self.dataset, "split": self.split,
            "samples": {"first": self.n_samples}, "norm": self.norm,
            "epsilons": list(self.epsilons), "primary_eps": self.primary_eps,
            "attacks": [a.canonical() for a in self.attacks], "chunk_size": self.chunk_size,
            "detector_fpr": self.detector_fpr, "eot_samples": self.eot_samples,
        }

    def canonical_json(self) -> str:
        return json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"))

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()[:16]

    def attacks_at(self, eps: float) -> list[AttackSpec]:
        """The attacks that run at ``eps``, in protocol order."""
        return [a for a in self.attacks if a.at == "all" or eps == self.primary_eps]

    def stages(self) -> list[tuple[str, float]]:
        """Ordered (attack label, eps) stages after the clean pass: epsilons ascending, attacks inner."""
        return [(a.label, eps) for eps in self.epsilons for a in self.attacks_at(eps)]

    def spec(self, label: str) -> AttackSpec:
        for a in self.attacks:
            if a.label == label:
                return a
        raise KeyError(label)


# The detector rule (part of every protocol): a detector entry's threshold is set on the last
# CALIBRATION_SAMPLES images of the protocol's split, which no protocol evaluates, at the protocol's
# detector_fpr. Pinned by tests/test_protocol.py; changing it needs a new protocol version.
CALIBRATION_SAMPLES = 1000


# AutoAttack standard on CPU costs minutes per robust MNIST model (APGD-T and FAB-T with 9 target
# classes, Square with 5,000 queries): the '-quick' protocols keep every sub-attack but run them at
# the primary eps only, with 3 target classes and 1,000 Square queries. The full protocols run the
# exact standard version at every epsilon.
QUICK_AA = {"version": "standard", "n_target_classes": 3, "square_queries": 1000}
FULL_AA = {"version": "standard"}


def _v1_attacks(step: dict[str, float], steps: int, aa_at: Literal["all", "primary"]) -> tuple[AttackSpec, ...]:
    """FGSM, PGD with CE then CW-margin loss (random start), then AutoAttack: the v1 order."""
    pgd = {"steps": steps, **step, "restarts": 1, "random_start": True}
    return (
        AttackSpec("fgsm", "fgsm", {}, seed=0),
        AttackSpec("pgd-ce", "pgd", {"loss": "ce", **pgd}, seed=1),
        AttackSpec("pgd-cw", "pgd", {"loss": "cw", **pgd}, seed=2),
        AttackSpec("autoattack", "autoattack", FULL_AA if aa_at == "all" else QUICK_AA, seed=3, at=aa_at),
    )


def _mnist_attacks(aa_at: Literal["all", "primary"]) -> tuple[AttackSpec, ...]:
    # Madry et al. / Shafahi et al.: PGD-40, step 0.01, random start; CW loss optimised by PGD.
    return _v1_attacks({"step_size": 0.01}, 40, aa_at)


def _cifar_attacks(aa_at: Literal["all", "primary"]) -> tuple[AttackSpec, ...]:
    # MART / TRADES evaluation: PGD-20 with step eps/10 and random start; CW-inf by PGD.
    return _v1_attacks({"rel_step_size": 0.1}, 20, aa_at)


_MNIST_EPS = (0.1, 0.2, 0.3, 0.4)
_CIFAR_EPS = (2 / 255, 4 / 255, 8 / 255, 16 / 255)

PROTOCOLS: dict[str, Protocol] = {
    p.name: p
    for p in (
        Protocol("mnist-linf-v1", "mnist", "test", 1000, "Linf", _MNIST_EPS, 0.3, _mnist_attacks("all"),
                 description="MNIST test set, first 1,000 images, L-inf, eps 0.1-0.4 (primary 0.3)."),
        Protocol("mnist-linf-quick-v1", "mnist", "test", 200, "Linf", _MNIST_EPS, 0.3,
                 _mnist_attacks("primary"),
                 description="CPU/CI variant: first 200 images; AutoAttack (3 targets, Square 1,000 queries) "
                             "at the primary eps only."),
        Protocol("mnist-linf-tiny-v1", "mnist", "test", 40, "Linf", _MNIST_EPS, 0.3,
                 _mnist_attacks("primary")[:3], chunk_size=20,
                 description="Smoke-test variant (40 images, no AutoAttack) for tests; never for reporting."),
        Protocol("cifar10-linf-v1", "cifar10", "test", 1000, "Linf", _CIFAR_EPS, 8 / 255,
                 _cifar_attacks("all"),
                 description="CIFAR-10 test set, first 1,000 images, L-inf, eps 2-16/255 (primary 8/255)."),
        Protocol("cifar10-linf-quick-v1", "cifar10", "test", 200, "Linf", _CIFAR_EPS, 8 / 255,
                 _cifar_attacks("primary"),
                 description="CPU/CI variant: first 200 images; AutoAttack (3 targets, Square 1,000 queries) "
                             "at the primary eps only."),
    )
}


def get_protocol(name: str) -> Protocol:
    """Look a protocol up by name, or raise a one-line error listing the known ones."""
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise BenchError(f"unknown protocol {name!r}; known: {', '.join(PROTOCOLS)}") from None
