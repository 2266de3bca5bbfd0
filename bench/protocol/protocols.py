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
from dataclasses import dataclass, field, replace
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


EXTRA_MODES = ("min-norm", "l0", "probe")


@dataclass(frozen=True)
class ExtraSpec:
    """An attack outside the L-inf cascade: never part of the worst case, stored in its own rows.

    ``mode``: ``min-norm`` (per-sample minimal distances, e.g. C&W L2, FAB), ``l0`` (an L0 budget,
    e.g. JSMA) or ``probe`` (a sanity probe: an unbounded PGD, a 4x-steps / 5-restarts PGD, PGD
    at a given step count). ``on`` picks the samples: ``clean-correct`` (correct and accepted on
    the clean pass) or ``survivors`` (robust after every cascade stage at ``eps``). ``eps`` is the
    L-inf budget of a probe (None for min-norm / L0 attacks); ``max_samples`` limits the attack to
    the protocol's first samples (to bound the cost of expensive attacks in quick protocols).
    """

    label: str
    kind: str
    mode: str
    params: Mapping[str, Any] = field(default_factory=dict)
    seed: int = 0
    eps: float | None = None
    on: Literal["clean-correct", "survivors"] = "clean-correct"
    max_samples: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in EXTRA_MODES:
            raise ValueError(f"extra {self.label}: mode must be one of {', '.join(EXTRA_MODES)}")
        if (self.mode == "probe") != (self.eps is not None):
            raise ValueError(f"extra {self.label}: probes (and only probes) have an eps")
        object.__setattr__(self, "params", MappingProxyType(dict(self.params)))

    @property
    def row_eps(self) -> float:
        """The eps stored in this attack's rows (0 for min-norm and L0 attacks)."""
        return float(self.eps) if self.eps is not None else 0.0

    def canonical(self) -> dict[str, Any]:
        return {"label": self.label, "kind": self.kind, "mode": self.mode, "params": _plain(self.params),
                "seed": self.seed, "eps": self.eps, "on": self.on, "max_samples": self.max_samples}


def _plain(params: Mapping[str, Any]) -> dict[str, Any]:
    """Parameters as sorted plain JSON types (nested mappings included)."""
    return {k: _plain(v) if isinstance(v, Mapping) else list(v) if isinstance(v, tuple) else v
            for k, v in sorted(params.items())}


@dataclass(frozen=True)
class AdaptiveSpec:
    """An adaptive attack that runs only for entries declaring ``name`` in their ``adaptive_attacks``:
    in the cascade (``attack``) or as an extra (``extra``)."""

    name: str
    attack: AttackSpec | None = None
    extra: ExtraSpec | None = None

    def __post_init__(self) -> None:
        if (self.attack is None) == (self.extra is None):
            raise ValueError(f"adaptive {self.name}: give exactly one of attack and extra")

    def canonical(self) -> dict[str, Any]:
        return {"name": self.name, "attack": self.attack.canonical() if self.attack else None,
                "extra": self.extra.canonical() if self.extra else None}


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
    extras: tuple[ExtraSpec, ...] = ()
    adaptive: tuple[AdaptiveSpec, ...] = ()

    def __post_init__(self) -> None:
        if self.primary_eps not in self.epsilons:
            raise ValueError(f"{self.name}: primary eps must be in the grid")
        if list(self.epsilons) != sorted(self.epsilons):
            raise ValueError(f"{self.name}: epsilons must ascend (nested balls)")
        labels = [a.label for a in self.attacks] + [e.label for e in self.extras]
        labels += [a.attack.label if a.attack else a.extra.label for a in self.adaptive]  # type: ignore[union-attr]
        if len(set(labels)) != len(labels) or "clean" in labels:
            raise ValueError(f"{self.name}: attack labels must be unique (and not 'clean')")

    def canonical(self) -> dict[str, Any]:
        """Everything that defines the protocol, as plain JSON types (description excluded)."""
        return {
            "name": self.name, "dataset": self.dataset, "split": self.split,
            "samples": {"first": self.n_samples}, "norm": self.norm,
            "epsilons": list(self.epsilons), "primary_eps": self.primary_eps,
            "attacks": [a.canonical() for a in self.attacks], "chunk_size": self.chunk_size,
            "detector_fpr": self.detector_fpr, "eot_samples": self.eot_samples,
            # v2 fields; omitted when empty so that v1 fingerprints stay what they were published as
            **({"extras": [e.canonical() for e in self.extras]} if self.extras else {}),
            **({"adaptive": [a.canonical() for a in self.adaptive]} if self.adaptive else {}),
            **({"calibration_samples": CALIBRATION_SAMPLES} if self.extras or self.adaptive else {}),
        }

    def canonical_json(self) -> str:
        return json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"))

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()[:16]

    def for_entry(self, adaptive_names: tuple[str, ...] = ()) -> Protocol:
        """The attacks an entry is evaluated with: the protocol's, then the adaptive attacks it declares
        (those this protocol defines; names whose attack the protocol already runs are not repeated)."""
        have = {a.kind for a in self.attacks} | {a.label for a in self.attacks}
        chosen = [a for a in self.adaptive if a.name in adaptive_names]
        attacks = self.attacks + tuple(a.attack for a in chosen if a.attack is not None and a.name not in have)
        extras = self.extras + tuple(a.extra for a in chosen if a.extra is not None)
        return replace(self, attacks=attacks, extras=extras, adaptive=())

    def run_json(self, entry_protocol: Protocol, *, randomized: bool = False) -> str:
        """What a run stores: this protocol's canonical JSON plus the attacks applied to the entry (and,
        for a randomized entry, the rule its verdicts follow)."""
        d = self.canonical()
        if randomized:
            d["randomized_rule"] = dict(RANDOMIZED_RULE)
        d["attacks"] = [a.canonical() for a in entry_protocol.attacks]
        d["extras"] = [e.canonical() for e in entry_protocol.extras]
        d["adaptive_applied"] = [a.label for a in entry_protocol.attacks[len(self.attacks):]] + \
            [e.label for e in entry_protocol.extras[len(self.extras):]]
        return json.dumps(d, sort_keys=True, separators=(",", ":"))

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

    def extra(self, label: str) -> ExtraSpec:
        for e in self.extras:
            if e.label == label:
                return e
        raise KeyError(label)


# The detector rule (part of every protocol): a detector entry's threshold is set on the last
# CALIBRATION_SAMPLES images of the protocol's split, which no protocol evaluates, at the protocol's
# detector_fpr. Pinned by tests/test_protocol.py; changing it needs a new protocol version.
CALIBRATION_SAMPLES = 1000

# The randomized rule (part of every protocol): a randomized model, declared so by its entry or found
# so by the checks, is judged over draws. A sample counts as correct (clean) or robust (on its final
# adversarial input) only if the model is right in at least `min_correct` of `draws` forward passes: a
# majority of 10. The draws are seeded from `seed` and the stage. Pinned by tests/test_protocol.py;
# stored in every randomized run's protocol JSON and in the escalation policy's fingerprint.
RANDOMIZED_RULE: Mapping[str, int] = MappingProxyType({"draws": 10, "min_correct": 6, "seed": 500})


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


# ---- protocol version 2: every attack of the five papers, black-box and gradient-free attacks,
# the adaptive attacks entries declare, minimum-norm / L0 attacks and sanity probes. Same samples
# and epsilons as v1; the cascade runs cheap to expensive. Quick variants shrink query and
# iteration budgets and run the expensive attacks at the primary eps only, but keep every attack.

def _v2(dataset: str, quick: bool) -> tuple[tuple[AttackSpec, ...], tuple[ExtraSpec, ...], tuple[AdaptiveSpec, ...]]:
    mnist = dataset == "mnist"
    step: dict[str, float] = {"step_size": 0.01} if mnist else {"rel_step_size": 0.1}
    steps = 40 if mnist else 20
    at: Literal["all", "primary"] = "primary" if quick else "all"
    pgd = {"steps": steps, **step, "restarts": 1, "random_start": True}
    surrogate_budget = "quick" if quick else "paper"
    transfer_inner = {"loss": "ce", "steps": steps, **step, "random_start": True, "early_stop": False}
    attacks = (
        AttackSpec("fgsm", "fgsm", {}, seed=0),
        AttackSpec("pgd-ce", "pgd", {"loss": "ce", **pgd}, seed=1),
        AttackSpec("pgd-cw", "pgd", {"loss": "cw", **pgd}, seed=2),
        AttackSpec("bim", "bim", {"steps": 10}, seed=4),
        AttackSpec("ilcm", "ilcm", {"steps": 10}, seed=5),
        AttackSpec("autoattack", "autoattack", QUICK_AA if quick else FULL_AA, seed=3, at=at),
        AttackSpec("transfer-standard", "transfer", {"surrogate": "standard", "surrogate_budget": surrogate_budget,
                                                     "inner_kind": "pgd", "inner_params": transfer_inner}, seed=6),
        AttackSpec("transfer-pgd", "transfer", {"surrogate": "surrogate-pgd", "surrogate_budget": surrogate_budget,
                                                "inner_kind": "pgd", "inner_params": transfer_inner}, seed=7),
        AttackSpec("random-search", "random-search", {"n_draws": 1000 if quick else 10_000}, seed=8, at=at),
        AttackSpec("spsa", "spsa", {"steps": 20, "n_samples": 64} if quick else {"steps": 100, "n_samples": 128},
                   seed=9, at=at),
        AttackSpec("hopskipjump", "hopskipjump", {"max_queries": 300 if quick else 1000}, seed=10, at=at),
    )
    few = 100 if quick else None
    # C&W: the paper's 9 binary-search steps and C&W's 1,000 iterations at lr 0.01; quick variants run
    # 5 search steps of 100 iterations at lr 0.1 from c = 0.01 on 50 images (at lr 0.01, 100 iterations
    # found adversarial inputs for only a third of an undefended model's images).
    cw = {"max_iter": 100, "lr": 0.1, "search_steps": 5, "initial_const": 0.01} if quick else {"max_iter": 1000}
    few_min = 50 if quick else None
    extras = (
        ExtraSpec("probe-unbounded", "pgd", "probe", {"loss": "ce", "steps": steps, "rel_step_size": 0.1,
                                                      "restarts": 1, "random_start": True}, seed=20, eps=1.0),
        ExtraSpec("probe-4x-steps-5-restarts", "pgd", "probe", {"loss": "ce", **pgd, "steps": 4 * steps,
                                                                "restarts": 5}, seed=21,
                  eps=0.3 if mnist else 8 / 255, on="survivors"),
        *(ExtraSpec(f"probe-steps-{k}", "pgd", "probe", {"loss": "ce", **{**pgd, "steps": k}}, seed=22,
                    eps=0.3 if mnist else 8 / 255, max_samples=few)
          for k in ((10, 20, 40) if quick else (10, 20, 40, 100))),
        ExtraSpec("cw-l2", "cw-l2", "min-norm", cw, seed=30, max_samples=few_min),
        ExtraSpec("cw-hc", "cw-hc", "min-norm", cw, seed=31, max_samples=few_min),
        ExtraSpec("fab-min-norm", "fab-min-norm", "min-norm", {"norm": "Linf"}, seed=32, max_samples=few_min),
        ExtraSpec("jsma", "jsma", "l0", {"max_fraction": 0.1}, seed=33, max_samples=few_min),
    )
    adaptive = (
        AdaptiveSpec("pgd-label-smoothed-ce",
                     AttackSpec("pgd-ls-sweep", "pgd-ls-sweep", {"steps": steps, **step}, seed=40, at=at)),
        AdaptiveSpec("bpda-identity", AttackSpec("bpda", "bpda", {"inner_kind": "pgd", "allow_plain": True,
                                                                  "inner_params": {"loss": "ce", **pgd}}, seed=41)),
        AdaptiveSpec("eot", AttackSpec("eot", "eot", {"samples": 20, "inner_kind": "pgd",
                                                      "inner_params": {"loss": "ce", **pgd}}, seed=42, at=at)),
        AdaptiveSpec("detector-aware-pgd", AttackSpec("detector-aware-pgd", "detector-aware-pgd",
                                                      {"steps": 100, **step, "weights": [0.1, 1.0, 10.0],
                                                       "kappa": 0.0}, seed=43)),
        AdaptiveSpec("cw-wb", extra=ExtraSpec("cw-wb", "cw-wb", "min-norm", cw, seed=44, max_samples=few_min)),
    )
    return attacks, extras, adaptive


def _v2_protocol(name: str, dataset: str, n: int, quick: bool, description: str) -> Protocol:
    attacks, extras, adaptive = _v2(dataset, quick)
    eps, primary = (_MNIST_EPS, 0.3) if dataset == "mnist" else (_CIFAR_EPS, 8 / 255)
    return Protocol(name, dataset, "test", n, "Linf", eps, primary, attacks, description=description,
                    extras=extras, adaptive=adaptive)


for _p in (
    _v2_protocol("mnist-linf-v2", "mnist", 1000, False, "v1's samples and epsilons with the full attack suite."),
    _v2_protocol("mnist-linf-quick-v2", "mnist", 200, True, "CPU/CI variant of mnist-linf-v2: first 200 images, "
                 "smaller query/iteration budgets, expensive attacks at the primary eps, extras on 100 images."),
    _v2_protocol("cifar10-linf-v2", "cifar10", 1000, False, "v1's samples and epsilons with the full attack suite."),
    _v2_protocol("cifar10-linf-quick-v2", "cifar10", 200, True, "Reduced-budget variant of cifar10-linf-v2."),
):
    PROTOCOLS[_p.name] = _p


def get_protocol(name: str) -> Protocol:
    """Look a protocol up by name, or raise a one-line error listing the known ones."""
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise BenchError(f"unknown protocol {name!r}; known: {', '.join(PROTOCOLS)}") from None
