"""Escalation on models whose answer is known: a flagged run reaches the truth; an honest run is untouched.

* A linear classifier behind a saturated softmax (probability outputs): the optimal L-inf attack on
  the linear logits is closed-form (``optimal_margin``), so the escalated worst case must equal the
  optimal accuracy at every eps (the engine verifies every input, so it can never go below it).
* The same linear classifier behind a hard clamp of its logit gaps (every loss on the outputs has a
  zero gradient): escalation attacks the logits the clamp hides and reaches the same optimum.
* The same linear classifier with logits: no unreliable flag, no escalation, the very same rows.
* The same linear classifier behind a detector whose score is known (the mean of 4 x (1 - x) over the
  pixels: near 0 on near-binary digits, lifted by any perturbation of a dark or a bright pixel): the
  protocol's attacks are all rejected, so accuracy rises with eps; escalation's detector-aware PGD
  reaches a reference attack written here (C&W-wb's objective, the same threshold).
* A randomized model whose per-draw accuracy is known per sample: judged over draws, whether it
  declares itself randomized or the checks find it so.
* An escalation killed mid-way resumes to exactly the rows of an uninterrupted one.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from bench import api
from bench.checks.suite import CHECKS
from bench.engine.verify import DrawsRule
from bench.errors import BenchError
from bench.escalation.policy import ALL_REMEDIES, TRIGGERS, policy_for, remedy_stages
from bench.protocol.data import load_split
from bench.protocol.protocols import PROTOCOLS, RANDOMIZED_RULE, AttackSpec, Protocol
from bench.store.database import Store
from tests.conftest import Linear, fit_linear_mnist, optimal_margin

EPS = (0.02, 0.05, 0.1)
PROTOCOL = Protocol(
    "test-escalation", "mnist", "test", 40, "Linf", EPS, 0.05,
    (AttackSpec("fgsm", "fgsm", {}, seed=0),
     AttackSpec("pgd-ce", "pgd", {"loss": "ce", "steps": 10, "rel_step_size": 0.25, "restarts": 1,
                                  "random_start": True}, seed=1),
     AttackSpec("pgd-cw", "pgd", {"loss": "cw", "steps": 10, "rel_step_size": 0.25, "restarts": 1,
                                  "random_start": True}, seed=2)),
    chunk_size=20,
)


class SaturatedSoftmax(nn.Module):
    """softmax(8 * linear(x)): probability rows so saturated that CE on them loses the gradient of some
    samples (the cascade misses the optimum) while their log still has it."""

    def __init__(self, linear: Linear) -> None:
        super().__init__()
        self.linear = linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(8.0 * self.linear(x), dim=1)


class ClampedGaps(nn.Module):
    """max(100 (z - max z), -10) over the linear logits z: the predictions are the linear model's, and
    every sample whose runner-up trails by more than 0.1 has an input gradient of exactly zero."""

    def __init__(self, linear: Linear) -> None:
        super().__init__()
        self.linear = linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.linear(x)
        return torch.clamp(100.0 * (z - z.max(1, keepdim=True).values), min=-10.0)


@pytest.fixture(scope="module")
def linear() -> Linear:
    return fit_linear_mnist()


@pytest.fixture(scope="module")
def surrogate_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One workspace for the runs whose escalation transfers: the tiny transfer surrogates are trained once
    (their checkpoints and the content-keyed transfer/distillation caches are deterministic, so sharing
    them changes no row)."""
    return tmp_path_factory.mktemp("ws")


def _optimal_accuracy(model: Linear, eps: float) -> float:
    x, y = load_split("mnist", "test")
    x, y = x[:PROTOCOL.n_samples], y[:PROTOCOL.n_samples]
    with torch.no_grad():
        correct = model(x).argmax(1) == y
        robust = correct & (optimal_margin(model, x, y, eps) > 0)
    return 100.0 * float(robust.sum()) / PROTOCOL.n_samples


def test_every_unreliable_check_has_a_remedy_and_the_policy_is_pinned() -> None:
    unreliable = {name for name, c in CHECKS.items() if c.severity == "unreliable"}
    assert unreliable <= set(TRIGGERS), unreliable - set(TRIGGERS)
    assert all(set(v) <= set(ALL_REMEDIES) for v in TRIGGERS.values())
    proto = json.loads(PROTOCOLS["mnist-linf-quick-v1"].canonical_json())
    stages = remedy_stages(proto)
    assert len({s.spec.label for s in stages}) == len(stages) and all(s.spec.label.startswith("esc-") for s in stages)
    assert {s.remedy for s in stages} == set(ALL_REMEDIES)
    square = next(s for s in stages if s.spec.kind == "square")
    assert square.spec.params["n_queries"] == 5000  # AutoAttack standard's budget on the reporting protocols
    # the id covers the stages it generates for the protocol (the stored record says which policy ran)
    assert policy_for(proto)[1] != policy_for(json.loads(PROTOCOLS["mnist-linf-v1"].canonical_json()))[1]
    assert policy_for(proto)[1] == POLICY_QUICK_V1
    # a new stage is listed last: every earlier stage keeps its seed (the rows of runs escalated before stay valid)
    assert {s.spec.label: s.spec.seed for s in stages} == {label: 600 + i for i, label in enumerate(STAGE_LISTING)}


STAGE_LISTING = (  # remedy_stages' listing order (seeds 600, 601, ...); stages run in ALL_REMEDIES' order
    "esc-log-pgd-ce", "esc-log-pgd-cw", "esc-prob-margin", "esc-bpda-pgd-ce", "esc-bpda-pgd-cw",
    "esc-transfer-standard", "esc-transfer-pgd", "esc-transfer-distilled", "esc-pgd-ce-more", "esc-pgd-cw-more",
    "esc-square", "esc-random-search", "esc-spsa", "esc-hopskipjump", "esc-eot-pgd", "esc-inner-pgd-ce",
    "esc-inner-pgd-cw", "esc-detector-aware-pgd")


POLICY_QUICK_V1 = "escalation-v3-quick:7d0eeff5f0868e24"  # changing the policy needs a new version


def test_probability_outputs_escalate_to_the_closed_form_optimum(tmp_path: Path, linear: Linear, surrogate_home: Path,
                                                                one_thread) -> None:
    model = SaturatedSoftmax(linear).eval()
    report = api.evaluate(model, PROTOCOL, store=Store(tmp_path / "p.db"), name="softmax", home=surrogate_home)
    assert report.unreliable and "probability-outputs" in {c.name for c in report.flags}
    esc = report.escalation
    assert esc is not None and "log-outputs" in esc.remedies
    for eps in EPS:
        optimum = _optimal_accuracy(linear, eps)
        assert report.worst_case[eps] >= optimum - 1e-9  # the engine verified every input
        assert report.worst_case[eps] <= optimum + 100.0 / PROTOCOL.n_samples, (eps, report.worst_case, optimum)
    assert any(report.worst_case_before_escalation[e] > report.worst_case[e] for e in EPS)  # the cascade was fooled
    assert list(report.worst_case.values()) == sorted(report.worst_case.values(), reverse=True)  # nested balls
    assert report.unreliable  # the flag stays: the protocol's own attacks were fooled
    assert esc.checks_after["probability-outputs"] == "fail"  # a model fact, still true after escalation
    # every escalation row is an ordinary, engine-verified row inside its ball
    store = Store(tmp_path / "p.db")
    rows = [r for r in store.results(report.run_id) if r.attack.startswith("esc-")]
    assert rows and all(r.linf is None or r.linf <= r.eps + 1e-5 for r in rows)
    assert {s.seed for s in store.stages(report.run_id) if s.attack.startswith("esc-")} >= {600, 601}
    # checked again, the stored diagnosis reads the cascade alone: the same checks, the escalation reused
    again = api.check(model, PROTOCOL, store=store, name="softmax", home=surrogate_home)
    assert [(c.name, c.status, c.value) for c in again.checks] == [(c.name, c.status, c.value) for c in report.checks]
    assert again.worst_case == report.worst_case
    # the site shows what ran and what it broke, and the escalated worst case
    index = api.leaderboard(store=store, out=tmp_path / "site")
    assert 'class="badge escalated"' in index.read_text()
    page = next((tmp_path / "site" / "runs").glob("*.html")).read_text()
    assert 'id="escalation"' in page and 'data-attack="esc-log-pgd-ce"' in page and 'data-remedy="log-outputs"' in page
    assert "evaluation possibly unreliable" in page.lower()
    info = json.loads(next(iter(api.export("json", store=store, out=tmp_path / "json"))).read_text())
    assert info["gauntlet"]["escalation"]["remedies"] == list(esc.remedies)
    assert info["gauntlet"]["worst_case_by_eps"] == {str(e): w for e, w in report.worst_case.items()}


def test_clamped_logits_escalate_to_the_closed_form_optimum(tmp_path: Path, linear: Linear, surrogate_home: Path,
                                                            one_thread) -> None:
    model = ClampedGaps(linear).eval()
    report = api.evaluate(model, PROTOCOL, store=Store(tmp_path / "c.db"), name="clamped", home=surrogate_home)
    assert "bad-gradients" in {c.name for c in report.flags}
    esc = report.escalation
    assert esc is not None and "inner-logits" in esc.remedies
    for eps in EPS:
        optimum = _optimal_accuracy(linear, eps)
        assert optimum - 1e-9 <= report.worst_case[eps] <= optimum + 100.0 / PROTOCOL.n_samples, (eps, optimum)
    assert any(report.worst_case_before_escalation[e] > report.worst_case[e] + 10 for e in EPS)  # the clamp fooled it
    assert esc.broken_by_remedy().get("inner-logits", 0) > 0
    assert esc.skipped["detector-aware"].startswith("not applicable")  # no detector: no stage, no row


class FaintPixels(nn.Module):
    """The linear classifier with a detector: score = mean over pixels of 4 x (1 - x) (rejected above the
    run's threshold, calibrated by the engine at the protocol's false-positive rate)."""

    def __init__(self, linear: Linear) -> None:
        super().__init__()
        self.linear = linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)

    def detector_score(self, x: torch.Tensor) -> torch.Tensor:
        return (4 * x * (1 - x)).flatten(1).mean(1)


def _detector_aware_reference(model: FaintPixels, x: torch.Tensor, y: torch.Tensor, eps: float,
                              threshold: float) -> float:
    """Accuracy (correct and not rejected) under PGD on min(margin, 0) - lam relu(score - threshold), from
    the clean input, 200 steps of eps/20, for lam from 0.1 to 1,000; any misclassified input below the
    threshold found on the way counts."""
    with torch.no_grad():
        robust = (model(x).argmax(1) == y) & (model.detector_score(x) <= threshold)
    for lam in (0.1, 1.0, 10.0, 100.0, 1000.0):
        xa = x.clone()
        for _ in range(200):
            xa.requires_grad_(True)
            z = model(xa)
            margin = z.masked_fill(F.one_hot(y, 10).bool(), float("-inf")).amax(1) - z.gather(1, y[:, None])[:, 0]
            loss = margin.clamp(max=0.0) - lam * F.relu(model.detector_score(xa) - threshold)
            g = torch.autograd.grad(loss.sum(), xa)[0]
            with torch.no_grad():
                xa = torch.min(torch.max(xa + eps / 20 * g.sign(), x - eps), x + eps).clamp(0, 1)
                robust &= ~((model(xa).argmax(1) != y) & (model.detector_score(xa) <= threshold))
    return 100.0 * float(robust.sum()) / x.shape[0]


def test_a_detector_that_rejects_the_attacks_escalates_to_a_detector_aware_reference(
        tmp_path: Path, linear: Linear, surrogate_home: Path, one_thread) -> None:
    model = FaintPixels(linear).eval()
    store = Store(tmp_path / "d.db")
    report = api.evaluate(model, PROTOCOL, store=store, name="faint", home=surrogate_home)
    assert "rises-with-eps" in {c.name for c in report.flags}
    esc = report.escalation
    assert esc is not None and "detector-aware" in esc.remedies
    for eps in EPS:  # the first stage at every eps
        assert next(st for st in esc.steps if st.eps == eps).label == "esc-detector-aware-pgd", eps
    threshold = json.loads(store.run(report.run_id).detector_json)["threshold"]
    x, y = load_split("mnist", "test")
    x, y = x[:PROTOCOL.n_samples], y[:PROTOCOL.n_samples]
    for eps in EPS:
        reference = _detector_aware_reference(model, x, y, eps, threshold)
        assert report.worst_case[eps] <= reference + 3.0, (eps, report.worst_case, reference)
    assert any(report.worst_case_before_escalation[e] > report.worst_case[e] + 20 for e in EPS)  # all rejected
    assert esc.broken_by_remedy()["detector-aware"] > 0


def test_the_decision_module_is_found_behind_a_saturating_output(linear: Linear) -> None:
    from attacks.adapters import adapt
    from bench.escalation.inner import decision_module

    x = load_split("mnist", "test")[0][:20]
    clamped = ClampedGaps(linear).eval()
    found = decision_module(clamped, x)
    assert found is not None and found[0] == "linear" and found[1] is clamped.linear
    assert torch.equal(adapt(clamped, "inner", found[1])(x), linear(x))  # the attack sees the hidden logits
    assert decision_module(linear, x) is None  # a plain classifier: nothing hides behind its outputs
    assert decision_module(nn.Sequential(linear), x) is None  # the same outputs: attacking them changes nothing


def test_an_honest_model_runs_no_escalation_and_keeps_its_rows(tmp_path: Path, linear: Linear, one_thread) -> None:
    on = api.evaluate(linear, PROTOCOL, store=Store(tmp_path / "on.db"), name="lin", home=tmp_path / "ws")
    off = api.evaluate(linear, PROTOCOL, store=Store(tmp_path / "off.db"), name="lin", escalation=False,
                       home=tmp_path / "ws")
    assert not on.unreliable and on.escalation is None
    key = [(r.attack, r.eps, r.sample, r.robust_after, r.pred, r.linf) for r in Store(tmp_path / "on.db").results(1)]
    assert key == [(r.attack, r.eps, r.sample, r.robust_after, r.pred, r.linf)
                   for r in Store(tmp_path / "off.db").results(1)]
    assert Store(tmp_path / "on.db").run(on.run_id).escalation_json is None and on.worst_case == off.worst_case


class Coin(nn.Module):
    """Right with probability 0.9 on images brighter than the median, 0.1 on the others, per draw."""

    def __init__(self, linear: Linear, threshold: float) -> None:
        super().__init__()
        self.linear, self.threshold = linear, threshold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.linear(x)
        p = torch.where(x.flatten(1).mean(1) > self.threshold, 0.9, 0.1)
        right = torch.rand(x.shape[0]) < p
        wrong = logits.scatter(1, logits.argmax(1, keepdim=True), float("-inf")).argmax(1)
        keep = torch.where(right, logits.argmax(1), wrong)
        return 0.01 * logits + 10.0 * nn.functional.one_hot(keep, logits.shape[1]).float()


def test_a_declared_randomized_model_is_judged_over_draws(tmp_path: Path, linear: Linear, one_thread) -> None:
    x, y = load_split("mnist", "test")
    x, y = x[:PROTOCOL.n_samples], y[:PROTOCOL.n_samples]
    threshold = float(x.flatten(1).mean(1).median())
    model = Coin(linear, threshold).eval()
    with torch.no_grad():
        base_right = linear(x).argmax(1) == y
    bright = x.flatten(1).mean(1) > threshold
    report = api.evaluate(model, PROTOCOL, store=Store(tmp_path / "r.db"), name="coin", randomized=True,
                          checks=False)
    clean = {r.sample: r.robust_after for r in Store(tmp_path / "r.db").results(report.run_id) if r.attack == "clean"}
    # right in >= 6 of 10 draws: nearly always for p = 0.9 (when the linear model is right), almost never for 0.1
    expected = {i for i in range(PROTOCOL.n_samples) if bool(base_right[i]) and bool(bright[i])}
    got = {i for i, ok in clean.items() if ok}
    assert len(got ^ expected) <= 2, (sorted(got - expected), sorted(expected - got))
    stored = json.loads(Store(tmp_path / "r.db").run(report.run_id).protocol_json)
    assert stored["randomized_rule"] == dict(RANDOMIZED_RULE)


def test_a_randomized_model_found_by_the_checks_is_judged_again_over_draws(tmp_path: Path, linear: Linear,
                                                                           surrogate_home: Path, one_thread) -> None:
    x, y = load_split("mnist", "test")
    x, y = x[:PROTOCOL.n_samples], y[:PROTOCOL.n_samples]
    threshold = float(x.flatten(1).mean(1).median())
    found = api.evaluate(Coin(linear, threshold).eval(), PROTOCOL, store=Store(tmp_path / "f.db"), name="coin",
                         home=surrogate_home)
    declared = api.evaluate(Coin(linear, threshold).eval(), PROTOCOL, store=Store(tmp_path / "d.db"), name="coin",
                            randomized=True, home=surrogate_home)
    assert "randomized-forward" in {c.name for c in found.flags} and found.escalation is not None
    with torch.no_grad():
        expected = 100.0 * float(((linear(x).argmax(1) == y) & (x.flatten(1).mean(1) > threshold)).sum()) / len(y)
    assert abs(found.clean_accuracy - expected) <= 100.0 * 2 / len(y)  # clean, over draws, on every sample
    rows = Store(tmp_path / "f.db").results(found.run_id)
    for eps in EPS:  # the cascade ran again over draws at every eps, then the remedies on its survivors
        assert {r.attack for r in rows if r.eps == eps} >= {"esc-draws-fgsm", "esc-draws-pgd-ce", "esc-draws-pgd-cw"}
        # the same verdicts as a run declared randomized, not the single draws' lower numbers
        assert abs(found.worst_case[eps] - declared.worst_case[eps]) <= 100.0 * 2 / len(y), (
            eps, found.worst_case, declared.worst_case, found.worst_case_before_escalation)


def test_draws_rule_is_seeded_and_leaves_the_callers_random_state(linear: Linear) -> None:
    x, y = load_split("mnist", "test")
    x, y = x[:40], y[:40]
    model = Coin(linear, float(x.flatten(1).mean(1).median())).eval()
    rule = DrawsRule(**RANDOMIZED_RULE)
    torch.manual_seed(5)
    state = torch.get_rng_state()
    a = rule.verdict(model, x, y, 20, "stage", 0.1, 0)
    assert torch.equal(torch.get_rng_state(), state)
    b = rule.verdict(model, x, y, 20, "stage", 0.1, 0)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_a_killed_escalation_resumes_to_the_same_rows(tmp_path: Path, linear: Linear, surrogate_home: Path,
                                                      one_thread) -> None:
    model = SaturatedSoftmax(linear).eval()
    ref = api.evaluate(model, PROTOCOL, store=Store(tmp_path / "ref.db"), name="softmax", home=surrogate_home)
    calls = []

    def kill_after_three(label: str, eps: float, done: int, total: int) -> None:
        if label.startswith("esc-"):
            calls.append(label)
            if len(calls) == 3:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        api.evaluate(model, PROTOCOL, store=Store(tmp_path / "k.db"), name="softmax", home=surrogate_home,
                     progress=kill_after_three)
    partial = Store(tmp_path / "k.db")
    assert json.loads(partial.run(1).escalation_json)["stages"]  # the plan was stored before its stages
    half = api.report(1, store=partial)
    assert half.worst_case == half.worst_case_before_escalation  # never half an escalation in the numbers
    again = api.evaluate(model, PROTOCOL, store=Store(tmp_path / "k.db"), name="softmax", home=surrogate_home)

    def rows(db: Path) -> list[tuple]:
        return [(r.attack, r.eps, r.sample, r.attacked, r.robust_after, r.pred) for r in Store(db).results(1)]

    assert rows(tmp_path / "k.db") == rows(tmp_path / "ref.db") and again.worst_case == ref.worst_case


def test_check_without_a_run_is_one_line_error(tmp_path: Path, linear: Linear) -> None:
    with pytest.raises(BenchError):
        api.check(SaturatedSoftmax(linear), PROTOCOL, store=Store(tmp_path / "none.db"), name="softmax")


class RoundHidden(nn.Module):
    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return torch.round(h * 2) / 2


def test_shattered_modules_are_found_and_declared_only_for_the_stage() -> None:
    from attacks.adaptive import bpda_modules
    from bench.escalation.shattered import declared_identity, shattered_modules

    torch.manual_seed(0)
    masked = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), RoundHidden(), nn.Linear(32, 10)).eval()
    x = load_split("mnist", "test")[0][:20]
    found = shattered_modules(masked, x)
    assert [name for name, _ in found] == ["3"]  # the rounding: ReLU, Flatten and Linear keep their gradient
    assert shattered_modules(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)), x) == []
    with declared_identity([m for _, m in found]):
        assert bpda_modules(masked) == [masked[3]]
    assert bpda_modules(masked) == [] and "bpda_approx" not in vars(masked[3])


def test_an_unreadable_escalation_record_is_a_one_line_error(tmp_path: Path, linear: Linear) -> None:
    store = Store(tmp_path / "c.db")
    report = api.evaluate(linear, PROTOCOL, store=store, name="lin", checks=False)
    store.set_escalation(report.run_id, '{"policy": "escalation-v1-quick:x", "stages": [{"label": 1}]}')
    with pytest.raises(BenchError, match="escalation record is unreadable"):
        api.report(report.run_id, store=store)


class InnerOptimisation(nn.Module):
    """A test-time refinement that runs its own backward pass inside forward (as pnml does)."""

    def __init__(self) -> None:
        super().__init__()
        self.act = nn.Tanh()
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            z = x.detach().requires_grad_(True)
            g, = torch.autograd.grad(self.act(z).sum(), z)  # frees the graph through self.act
        return self.head(x - 0.01 * g)


def test_shattered_search_skips_graphs_the_model_freed_itself() -> None:
    from bench.escalation.shattered import shattered_modules

    x = load_split("mnist", "test")[0][:4]
    assert shattered_modules(InnerOptimisation().eval(), x) == []
