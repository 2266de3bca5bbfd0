"""The escalation policy: which remedies each failed sanity check triggers, and what each remedy runs.

A failed check of severity "unreliable" means the protocol's own attacks were fooled, so the number
beside the flag is an upper bound, not a measurement. The policy names the attacks that answer each
diagnosis, from the literature on evaluating defenses:

* **probability outputs** (the cross-entropy of a softmax of probabilities is nearly flat): the
  protocol's PGD, with the not-converged remedy's steps and restarts, with CE and CW-margin losses
  on the *log* of the outputs (a model adapter), plus a margin loss on the probabilities themselves
  (Carlini and Wagner 2017; Carlini et al. 2019, "On Evaluating Adversarial Robustness", section on
  loss functions).
* **a detector that rejects the protocol's attacks** (a model with a ``detector_score``, judged by the
  protocol's detector rule, where any check calls for the gradient remedies or for every remedy:
  detected inputs count as robust, so an attack that ignores the detector is fooled by it, which is
  how accuracy comes to rise with eps): detector-aware PGD at every eps, the C&W-wb objective
  (misclassify while the score stays below the run's threshold; Carlini and Wagner 2017, "Adversarial
  Examples Are Not Easily Detected"; the RCE paper's adaptive attack, Pang et al. 2018). Stronger
  than the v2 protocols' opt-in ``detector-aware-pgd`` stage (weights up to 10, a fixed step of
  0.01 on MNIST, a random start), which on the faint-pixel detector of tests/test_escalation.py
  left 82.5 / 65.0 / 47.5% at eps 0.02 / 0.05 / 0.1 where this one (and the test's reference) leave
  75.0 / 45.0 / 27.5%: penalty weights up to 1,000, 100 steps of eps/20 per weight (a fixed step is
  too coarse at small eps), started at the clean input (a random start lifts a noise-sensitive
  detector's score before the first step). It runs first: what it breaks leaves the costlier stages.
* **zero or non-finite gradients, a failed unbounded attack, black-box wins**: BPDA (PGD with the
  not-converged remedy's steps and restarts, CE and CW) where the model declares an approximation,
  or through the identity in place of every shape-preserving submodule whose input gradient vanishes
  (Athalye et al. 2018, "Obfuscated Gradients Give a False Sense of Security";
  :mod:`bench.escalation.shattered`); the same PGD on the logits a saturating last operation hides
  (the outermost submodule with the model's output shape and predictions that still carries an input
  gradient, :mod:`bench.escalation.inner`; Carlini and Wagner 2017 on distillation, Tramèr et al. 2020
  on saturated output codes); transfer from the benchmark's smooth surrogates and from a
  surrogate *distilled* from the submitted model's own predictions on training images (Papernot et al. 2017's black-box
  substitute; Tramèr et al. 2020, "On Adaptive Attacks to Adversarial Example Defenses"); and the
  gradient-free attacks at every eps: Square at AutoAttack's standard 5,000 queries (Croce and Hein
  2020), random search, SPSA (Uesato et al. 2018) and HopSkipJump (Chen et al. 2020). With the
  same stages as not-converged (below).
* **randomized forward**: EOT (Athalye et al. 2018) at every eps, with every verdict (the clean one
  included) taken over draws by the protocol's ``RANDOMIZED_RULE``. A model found randomized by the
  checks (not declared so) had its cascade judged on single draws: the cascade runs again, judged
  over draws, before EOT.
* **not converged**: the protocol's PGD with ``steps_factor`` times the steps and ``restarts``
  restarts, CE and CW losses, at every eps (Carlini et al. 2019: "run more iterations"). The same
  stages join the gradient remedies: where the CE gradient underflows (a saturated softmax) the
  margin loss still points the way, and restarts escape flat regions.
* **single-step wins, accuracy rises with eps or steps** (the attack is not doing its job, cause
  unknown): every remedy that applies to the model (Pintor et al. 2022, "Indicators of Attack
  Failure", prescribe fixes per indicator; without the cause, we run them all).

Remedies run on the cascade's survivors at every eps of the grid, as ordinary per-sample stages
labelled ``esc-...`` with their own seeds; the engine verifies each input and re-runs the model. The
policy (settings, triggers and the stages it generates for the run's protocol) is hashed into an id
stored with the run, as the check suite's is: changing anything here means a new version.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from bench.protocol.protocols import RANDOMIZED_RULE, AttackSpec

POLICY: dict[str, Any] = {
    "name": "escalation-v3",
    "steps_factor": 4, "restarts": 5,  # the not-converged remedy, as the checks' own probe
    # detector-aware PGD (C&W-wb's objective, kappa 0): a penalty weight per pass, from the clean input
    "detector": {"steps": 100, "rel_step_size": 0.05, "weights": [0.1, 1.0, 10.0, 100.0, 1000.0], "kappa": 0.0,
                 "random_start": False},
    "distill": {"batch_size": 128, "lr": 1e-3, "seed": 700, "targets": "soft"},
    # a model found randomized (not declared so) was judged on single draws: its cascade and earlier rounds
    # run again over draws (bench.escalation.run), so that every verdict follows RANDOMIZED_RULE
    "rejudge_found_randomized": True,
    "max_rounds": 3,  # escalate, check again, escalate for newly failed checks: at most this many rounds
    "seed": 600,  # stage seeds are seed + the stage's position in remedy_stages' listing
}
# Budgets by protocol size. "quick" (at most 200 samples, the CPU protocols) and "full" run Square at
# AutoAttack standard's 5,000 queries; the gradient-free attacks get v2's quick or full budgets. "tiny"
# (at most 40 samples: the smoke-test protocols, never for reporting) shrinks every budget, the
# more-steps remedy's included, so that tests can run the whole path in seconds.
SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"square": {"n_queries": 500}, "random-search": {"n_draws": 200}, "spsa": {"steps": 5, "n_samples": 32},
             "hopskipjump": {"max_queries": 100}, "surrogate_budget": "tiny",
             "distill": {"train_images": 2000, "epochs": 1}, "steps_factor": 1, "restarts": 2, "detector_steps": 40},
    "quick": {"square": {"n_queries": 5000}, "random-search": {"n_draws": 1000}, "spsa": {"steps": 20, "n_samples": 64},
              "hopskipjump": {"max_queries": 300}, "surrogate_budget": "quick",
              "distill": {"train_images": 10_000, "epochs": 3}},
    "full": {"square": {"n_queries": 5000}, "random-search": {"n_draws": 10_000},
             "spsa": {"steps": 100, "n_samples": 128}, "hopskipjump": {"max_queries": 1000},
             "surrogate_budget": "quick",
             "distill": {"train_images": 10_000, "epochs": 3}},
}

GRADIENT_TRIGGERS = ("bad-gradients", "unbounded-attack", "black-box-wins")
ALL_REMEDIES = ("detector-aware", "log-outputs", "bpda", "inner-logits", "transfer", "more-steps", "gradient-free",
                "eot")
TRIGGERS: dict[str, tuple[str, ...]] = {
    "probability-outputs": ("log-outputs",),
    **{name: ("detector-aware", "bpda", "inner-logits", "transfer", "more-steps", "gradient-free")
       for name in GRADIENT_TRIGGERS},
    "randomized-forward": ("eot",),
    "not-converged": ("more-steps",),
    **{name: ALL_REMEDIES for name in ("single-step-wins", "rises-with-eps", "rises-with-steps")},
}
# When a remedy applies to a model at all (a remedy that does not apply is recorded as skipped).
CONDITIONS = {
    "detector-aware": "a detector (a detector_score, judged by the protocol's detector rule)",
    "log-outputs": "probability outputs (the probability-outputs check failed)",
    "bpda": "a module that declares a BPDA approximation (bpda_approx), or a shape-preserving module whose "
            "input gradient vanishes (given the identity)",
    "inner-logits": "a submodule with the model's output shape and predictions whose outputs differ from the "
                    "model's and carry an input gradient where the model's do not (logits a saturating output hides)",
    "eot": "a randomized model (declared, or the randomized-forward check failed)",
}


@dataclass(frozen=True)
class Stage:
    """One escalation attack: its spec (label, kind, params, seed), the model adapter its attack sees
    (None; "log": the log of the outputs; "inner": the outputs of the model's decision submodule) and
    the remedy it belongs to. It runs at every eps."""

    remedy: str
    spec: AttackSpec
    adapter: str | None = None

    def canonical(self) -> dict[str, Any]:
        return {"remedy": self.remedy, "adapter": self.adapter, **self.spec.canonical()}


def _pgd(protocol: dict) -> dict[str, Any]:
    """The protocol's own PGD (its ``pgd-ce`` stage) parameters, loss excluded."""
    spec = next(a for a in protocol["attacks"] if a["label"] == "pgd-ce")["params"]
    return {k: v for k, v in spec.items() if k != "loss"}


def size_of(protocol: dict) -> str:
    n = int(protocol["samples"]["first"])
    return "tiny" if n <= 40 else "quick" if n <= 200 else "full"


def distill_settings(protocol: dict) -> dict[str, Any]:
    """The distillation's settings for a run's protocol (the policy's, with its size's budget)."""
    return {**POLICY["distill"], **SIZES[size_of(protocol)]["distill"]}


def remedy_stages(protocol: dict) -> list[Stage]:
    """Every remedy's stages for a run's protocol, in the order they run at each eps: by remedy, in
    ``ALL_REMEDIES``'s order. A stage's seed is the policy's seed plus its position in the listing."""
    pgd = _pgd(protocol)
    size = SIZES[size_of(protocol)]
    more = {**pgd, "steps": size.get("steps_factor", POLICY["steps_factor"]) * int(pgd["steps"]),
            "restarts": size.get("restarts", POLICY["restarts"])}
    transfer_inner = {"loss": "ce", **pgd, "random_start": True, "early_stop": False}
    transfer_inner.pop("restarts", None)
    eot_samples = int(protocol.get("eot_samples", 20))
    detector = {**POLICY["detector"], "steps": size.get("detector_steps", POLICY["detector"]["steps"])}
    listing: list[tuple[str, str, str, dict[str, Any], str | None]] = [
        ("log-outputs", "esc-log-pgd-ce", "pgd", {**more, "loss": "ce"}, "log"),
        ("log-outputs", "esc-log-pgd-cw", "pgd", {**more, "loss": "cw"}, "log"),
        ("log-outputs", "esc-prob-margin", "pgd", {**more, "loss": "cw"}, None),
        ("bpda", "esc-bpda-pgd-ce", "bpda", {"inner_kind": "pgd", "inner_params": {**more, "loss": "ce"}}, None),
        ("bpda", "esc-bpda-pgd-cw", "bpda", {"inner_kind": "pgd", "inner_params": {**more, "loss": "cw"}}, None),
        ("transfer", "esc-transfer-standard", "transfer",
         {"surrogate": "standard", "surrogate_budget": size["surrogate_budget"], "inner_kind": "pgd",
          "inner_params": transfer_inner},
         None),
        ("transfer", "esc-transfer-pgd", "transfer",
         {"surrogate": "surrogate-pgd", "surrogate_budget": size["surrogate_budget"], "inner_kind": "pgd",
          "inner_params": transfer_inner}, None),
        ("transfer", "esc-transfer-distilled", "transfer",
         {"surrogate": "distilled", "surrogate_budget": "escalation", "inner_kind": "pgd",
          "inner_params": transfer_inner}, None),
        ("more-steps", "esc-pgd-ce-more", "pgd", {**more, "loss": "ce"}, None),
        ("more-steps", "esc-pgd-cw-more", "pgd", {**more, "loss": "cw"}, None),
        ("gradient-free", "esc-square", "square", {**size["square"], "p_init": 0.8}, None),
        ("gradient-free", "esc-random-search", "random-search", dict(size["random-search"]), None),
        ("gradient-free", "esc-spsa", "spsa", dict(size["spsa"]), None),
        ("gradient-free", "esc-hopskipjump", "hopskipjump", dict(size["hopskipjump"]), None),
        ("eot", "esc-eot-pgd", "eot", {"samples": eot_samples, "inner_kind": "pgd",
                                       "inner_params": {**pgd, "loss": "ce"}}, None),
        # added in escalation-v2: listed last, so that every earlier stage keeps its seed
        ("inner-logits", "esc-inner-pgd-ce", "pgd", {**more, "loss": "ce"}, "inner"),
        ("inner-logits", "esc-inner-pgd-cw", "pgd", {**more, "loss": "cw"}, "inner"),
        # added in escalation-v3 (listed last, run first)
        ("detector-aware", "esc-detector-aware-pgd", "detector-aware-pgd", detector, None),
    ]
    stages = [Stage(remedy, AttackSpec(label, kind, params, seed=POLICY["seed"] + i), adapter)
              for i, (remedy, label, kind, params, adapter) in enumerate(listing)]
    return sorted(stages, key=lambda s: ALL_REMEDIES.index(s.remedy))  # run in remedy order (a stable sort)


CLEAN_DRAWS = "esc-clean-draws"  # the eps-0 stage of a randomized model: clean correctness over draws


def policy_for(protocol: dict) -> tuple[dict[str, Any], str]:
    """The policy as applied to a run's protocol (settings, triggers, conditions, stages) and its id."""
    size = size_of(protocol)
    policy = {**POLICY, "size": size, "sizes": SIZES[size], "distill": distill_settings(protocol),
              "triggers": {k: list(v) for k, v in TRIGGERS.items()},
              "conditions": CONDITIONS, "randomized_rule": dict(RANDOMIZED_RULE),
              "stages": [s.canonical() for s in remedy_stages(protocol)]}
    digest = hashlib.sha256(json.dumps(policy, sort_keys=True).encode()).hexdigest()[:16]
    return policy, f"{POLICY['name']}-{size}:{digest}"


def triggered(failed_unreliable: Iterable[str]) -> dict[str, list[str]]:
    """For each failed unreliable check the policy knows, the remedies it calls for."""
    return {name: list(TRIGGERS[name]) for name in failed_unreliable if name in TRIGGERS}


def already_in_cascade(stage: Stage, protocol: dict) -> bool:
    """Whether the protocol's cascade already runs this very attack (kind and parameters) at every eps."""
    spec = stage.spec.canonical()
    return stage.adapter is None and any(
        a["kind"] == spec["kind"] and a["params"] == spec["params"] and a.get("at", "all") == "all"
        for a in protocol["attacks"])
