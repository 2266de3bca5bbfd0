"""The check registry: every check declared once, texts rendered from the suite's numbers exactly as they
were written by hand before, the suite id unchanged, and each probe run once with its own seed."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.checks import suite as suite_module
from bench.checks.probes import Prober
from bench.checks.registry import REGISTRY, Registered, check
from bench.checks.suite import CHECKS, SUITE, CheckResult, run_checks, suite_for
from bench.engine.evaluate import EvalTarget, evaluate
from bench.store.database import Store
from registry import get_entry
from tests.conftest import Linear, small_protocol

# The definitions as they were written by hand before the registry (bench/checks.py at 880cde1):
# name: (item, severity, title, threshold).
HAND_WRITTEN = {
    "unbounded-attack": (1, "unreliable", "An unbounded attack (eps 1) leaves accuracy above the floor",
                         "accuracy <= 1% (detector entries: <= chance)"),
    "rises-with-eps": (2, "unreliable", "Accuracy rises with epsilon",
                       "no rise beyond sampling noise (paired sign rule)"),
    "rises-with-steps": (2, "unreliable", "Accuracy rises with attack steps",
                         "no rise beyond sampling noise (paired sign rule)"),
    "single-step-wins": (3, "unreliable", "A single-step attack beats the multi-step one",
                         "FGSM no better than PGD beyond sampling noise"),
    "black-box-wins": (4, "unreliable", "Black-box attacks break samples every white-box attack missed",
                       "<= 0.5% of samples"),
    "bad-gradients": (5, "unreliable", "Zero, NaN or infinite input gradients", "no such sample"),
    "probability-outputs": (6, "unreliable", "The model outputs probabilities instead of logits",
                            "outputs are not rows in [0, 1] summing to 1"),
    "randomized-forward": (7, "unreliable", "Two identical forward passes disagree (EOT required)",
                           "deterministic, or EOT applied"),
    "not-converged": (8, "unreliable", "4x steps and 5 restarts break more of the cascade's survivors",
                      "accuracy drop <= 1 point"),
    "loss-still-moving": (8, "warning", "The PGD loss still rises in its last steps",
                          "last 10% of the steps add <= 5% of the loss gain"),
    "adaptive-gap": (9, "warning", "A declared adaptive attack beats every non-adaptive attack", "gap <= 5 points"),
}
RUN_ORDER = ["bad-gradients", "probability-outputs", "randomized-forward", "unbounded-attack", "rises-with-eps",
             "single-step-wins", "rises-with-steps", "loss-still-moving", "not-converged", "black-box-wins",
             "adaptive-gap"]


def test_rendered_texts_are_the_hand_written_ones() -> None:
    assert set(CHECKS) == set(HAND_WRITTEN)
    for name, (item, severity, title, threshold) in HAND_WRITTEN.items():
        d = CHECKS[name]
        assert (d.item, d.severity, d.title, d.threshold) == (item, severity, title, threshold), name
        assert CheckResult(name, "pass", 0.0, "").to_row(1).threshold == threshold  # what a stored row carries


def test_texts_follow_the_suite_numbers() -> None:
    changed = {**SUITE, "max_unbounded_accuracy": 0.5, "max_black_box_fraction": 2.0, "max_probe_drop": 2.5,
               "loss_tail": 0.2, "max_tail_share": 0.1, "max_adaptive_gap": 1.0, "steps_factor": 8, "restarts": 10,
               "unbounded": {"eps": 0.5, "rel_step_size": 0.1}}
    want = {"unbounded-attack": ("An unbounded attack (eps 0.5) leaves accuracy above the floor",
                                 "accuracy <= 0.5% (detector entries: <= chance)"),
            "black-box-wins": (HAND_WRITTEN["black-box-wins"][2], "<= 2% of samples"),
            "not-converged": ("8x steps and 10 restarts break more of the cascade's survivors",
                              "accuracy drop <= 2.5 points"),
            "loss-still-moving": (HAND_WRITTEN["loss-still-moving"][2],
                                  "last 20% of the steps add <= 10% of the loss gain"),
            "adaptive-gap": (HAND_WRITTEN["adaptive-gap"][2], "gap <= 1 point")}
    for name, (title, threshold) in want.items():
        d = CHECKS[name]
        assert (d.title_of(changed), d.threshold_of(changed)) == (title, threshold), name


def test_suite_ids_are_unchanged() -> None:
    """The ids stored check rows carry (the hash over SUITE and SIZES) as they were before the registry:
    a changed id would make every stored check look stale."""
    assert suite_for({"samples": {"first": 200}})[1] == "checks-v1-quick:6c09294228c9a208"
    assert suite_for({"samples": {"first": 1000}})[1] == "checks-v1-full:ab228db56e2711ef"


def test_registry_runs_in_a_fixed_order_and_refuses_a_second_declaration() -> None:
    assert [n for r in REGISTRY for n in r.names] == RUN_ORDER == list(CHECKS)
    before = (dict(CHECKS), [list(r.names) for r in REGISTRY])
    with pytest.raises(ValueError, match="declared twice"):
        check("bad-gradients", 5, "unreliable", "again", "again")(lambda inp: [])
    with pytest.raises(ValueError, match="severity"):
        check("new-check", 10, "fatal", "t", "t")
    assert (dict(CHECKS), [list(r.names) for r in REGISTRY]) == before


def test_a_registered_function_must_return_what_it_declared() -> None:
    def one_too_few(inp: object) -> list[CheckResult]:
        return [CheckResult("rises-with-eps", "pass", 0.0, "")]

    with pytest.raises(RuntimeError, match="declared"):
        Registered(one_too_few, ["rises-with-eps", "single-step-wins"]).run(None)  # type: ignore[arg-type]
    ok = Registered(one_too_few, ["rises-with-eps"]).run(None)  # type: ignore[arg-type]
    assert [(r.name, r.status) for r in ok] == [("rises-with-eps", "pass")]


class SpyProber(Prober):
    """A prober that records every probe it runs: (label, seeds, eps, steps, restarts)."""

    calls: list[tuple] = []

    def pgd(self, jobs, label):
        SpyProber.calls.append((label, [j.seed for j in jobs], [j.eps for j in jobs], [j.steps for j in jobs],
                                [j.restarts for j in jobs]))
        return super().pgd(jobs, label)

    def attack(self, kind, params, seed, x, y, ids, eps, label):
        SpyProber.calls.append((label, [seed], [eps], kind))
        return super().attack(kind, params, seed, x, y, ids, eps, label)


def test_each_probe_runs_once_with_its_seed_in_a_fixed_order(tmp_path: Path, linear_mnist: Linear,
                                                             monkeypatch: pytest.MonkeyPatch, one_thread) -> None:
    protocol = small_protocol()  # eps (0, 0.05, 0.1, 0.2), primary 0.1, PGD-10
    store = Store(tmp_path / "spy.db")
    run_id = evaluate(store, EvalTarget(get_entry("standard"), linear_mnist, "w", "test", 0), protocol)
    monkeypatch.setattr(suite_module, "Prober", SpyProber)
    SpyProber.calls = []
    labels: list[str] = []
    results = run_checks(store, run_id, linear_mnist, progress=labels.append)
    assert [r.name for r in results] == RUN_ORDER
    assert [c.name for c in store.checks(run_id)] == RUN_ORDER
    assert {c.suite for c in store.checks(run_id)} == {suite_for(protocol.canonical())[1]}
    assert labels == ["model facts", "unbounded probe", "eps sweep", "steps sweep", "restarts probe",
                      "black box wins", "adaptive gap"]
    seed = SUITE["seed"]
    eps = [0.0, 0.05, 0.1, 0.2]
    survivors = [c for c in results if c.name == "not-converged"][0].evidence["survivors"]
    assert survivors > 0  # so the restarts probe runs
    assert SpyProber.calls == [
        ("check unbounded PGD", [seed + 1], [1.0], [10], [1]),
        *[("check FGSM", [seed + 3], [e], "fgsm") for e in eps],
        ("check PGD", [seed + 4] * 4, eps, [10] * 4, [1] * 4),
        ("check PGD-K", [seed + 10, seed + 11, seed + 12], [0.1] * 3, [2, 5, 10], [1] * 3),
        ("check 4x-steps 5-restarts PGD", [seed + 20], [0.1], [40], [5]),
    ]
