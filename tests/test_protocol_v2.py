"""Protocol v2: the full attack suite, adaptive attacks per entry, and stages outside the cascade."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from attacks import make_attack
from attacks.min_norm import MinNormOutput
from bench.engine.evaluate import EvalTarget, evaluate
from bench.errors import AttackContractError, BenchError
from bench.protocol.protocols import PROTOCOLS, AdaptiveSpec, AttackSpec, ExtraSpec, get_protocol
from bench.report.summary import summarize
from bench.store.database import Store
from registry import ALL_BUILTIN, get_entry
from tests.conftest import Linear, small_protocol

PINNED_V2 = {
    "mnist-linf-v2": "ee11f76957da70f6",
    "mnist-linf-quick-v2": "d3f8cc8dcd7865e5",
    "cifar10-linf-v2": "3ca7393b1dbc3a2d",
    "cifar10-linf-quick-v2": "4b0b6a2e7622f63f",
}


@pytest.mark.parametrize("name", sorted(PINNED_V2))
def test_v2_fingerprints_are_pinned(name: str) -> None:
    assert PROTOCOLS[name].fingerprint == PINNED_V2[name]


@pytest.mark.parametrize("name", sorted(PINNED_V2))
def test_every_v2_attack_is_constructible_and_ordered(name: str) -> None:
    p = PROTOCOLS[name]
    specs = list(p.attacks) + list(p.extras) + [a.attack or a.extra for a in p.adaptive]
    for spec in specs:
        make_attack(spec.kind, dict(spec.params), spec.seed)  # raises on a bad parameter
    labels = [a.label for a in p.attacks]
    assert labels[:3] == ["fgsm", "pgd-ce", "pgd-cw"] and labels[-1] == "hopskipjump"
    assert labels.index("autoattack") < labels.index("transfer-standard") < labels.index("random-search")
    v1 = get_protocol(name.replace("-v2", "-v1"))
    assert (p.n_samples, p.epsilons, p.primary_eps) == (v1.n_samples, v1.epsilons, v1.primary_eps)


def test_every_declared_adaptive_attack_exists_in_v2() -> None:
    p = get_protocol("mnist-linf-quick-v2")
    names = {a.name for a in p.adaptive} | {a.label for a in p.attacks}
    for entry in ALL_BUILTIN:
        assert set(entry.adaptive_attacks) <= names, entry.id


def test_for_entry_adds_only_the_declared_adaptive_attacks() -> None:
    p = get_protocol("mnist-linf-quick-v2")
    assert [a.label for a in p.for_entry(()).attacks] == [a.label for a in p.attacks]
    rce = p.for_entry(get_entry("rce-kd").adaptive_attacks)
    assert rce.attacks[-1].label == "detector-aware-pgd" and rce.extras[-1].label == "cw-wb"
    pnml = p.for_entry(get_entry("pnml").adaptive_attacks)  # hopskipjump is already in the protocol
    assert [a.label for a in pnml.attacks[len(p.attacks):]] == ["bpda"]
    assert p.for_entry(("eot",)).attacks[-1].kind == "eot"


class _SameModel:
    """A surrogate provider that returns a fixed model (the tests' stand-in for trained surrogates)."""

    def __init__(self, model: torch.nn.Module, cache: Path) -> None:
        self.model, self.cache_dir = model, cache

    def surrogate(self, entry_id: str, budget: str, seed: int) -> tuple[torch.nn.Module, str]:
        return self.model, "surrogate-sha"


def _v2_like(n: int = 40) -> object:
    base = small_protocol(n=n, chunk=20, eps=(0.0, 0.05, 0.1), steps=5)
    attacks = base.attacks + (AttackSpec("transfer", "transfer", {"surrogate": "standard", "inner_kind": "fgsm",
                                                                "inner_params": {}},
                                         seed=6),)
    extras = (
        ExtraSpec("probe-unbounded", "pgd", "probe", {"steps": 10, "rel_step_size": 0.1}, seed=20, eps=1.0),
        ExtraSpec("probe-4x", "pgd", "probe", {"steps": 20, "rel_step_size": 0.25, "restarts": 2}, seed=21,
                  eps=0.1, on="survivors"),
        ExtraSpec("cw-l2", "cw-l2", "min-norm", {"max_iter": 50, "search_steps": 4, "initial_const": 1.0},
                  seed=30, max_samples=20),
        ExtraSpec("jsma", "jsma", "l0", {"max_fraction": 0.05}, seed=33, max_samples=20),
    )
    adaptive = (AdaptiveSpec("bpda-identity", AttackSpec("bpda", "bpda", {"allow_plain": True, "inner_params": {
        "steps": 5, "rel_step_size": 0.25}}, seed=41)),)
    return replace(base, name="test-v2", attacks=attacks, extras=extras, adaptive=adaptive)


def test_extras_and_transfer_run_verified_and_stay_out_of_the_worst_case(tmp_path: Path,
                                                                          linear_mnist: Linear) -> None:
    protocol = _v2_like()
    store = Store(tmp_path / "v2.db")
    target = EvalTarget(get_entry("pnml"), linear_mnist, "w", "test", 0)  # declares bpda-identity
    provider = _SameModel(linear_mnist, tmp_path / "cache")
    run_id = evaluate(store, target, protocol, surrogates=provider)
    run = next(r for r in store.runs() if r.id == run_id)
    s = summarize(store, run)
    assert s.complete and s.adaptive_applied == ["bpda"]
    assert "bpda" in s.attack_labels and ("transfer", 0.1) in s.cells
    assert any((tmp_path / "cache").iterdir()), "transfer inputs are cached for reuse"
    # the worst case is the cascade's alone: the same as a protocol without the extras
    bare = replace(protocol, name="test-v2-bare", extras=())
    bare_id = evaluate(store, EvalTarget(get_entry("pnml"), linear_mnist, "w2", "test", 0), bare, surrogates=provider)
    s_bare = summarize(store, next(r for r in store.runs() if r.id == bare_id))
    assert s.worst == s_bare.worst
    unbounded = s.extras["probe-unbounded"]
    assert unbounded.accuracy == 0.0, "an unbounded attack must break a linear model everywhere"
    cw = s.extras["cw-l2"]
    assert cw.n == 20 and 0 < cw.broken <= cw.attacked and all(d > 0 for d in cw.distances)
    jsma = s.extras["jsma"]
    budget = math.floor(0.05 * 784)
    assert jsma.distances and max(jsma.distances) <= budget
    rows = [r for r in store.results(run_id) if r.attack == "cw-l2" and r.success]
    for r in rows:  # the engine measured the distances on the stored rows
        assert r.l2 is not None and r.linf is not None and r.linf <= r.l2 + 1e-9
    survivors = {r.sample for r in store.results(run_id) if r.attack == "bpda" and r.eps == 0.1 and r.robust_after}
    probed = {r.sample for r in store.results(run_id) if r.attack == "probe-4x" and r.attacked}
    assert probed == survivors, "the convergence probe runs on the cascade's survivors at its eps"
    n_stages = len(store.stages(run_id))
    assert evaluate(store, target, protocol, surrogates=provider) == run_id
    assert len(store.stages(run_id)) == n_stages, "a finished run resumes to nothing"


class _OverBudgetL0:
    family, norm = "minimum-norm", "l0"  # as JSMA declares

    def run_l0(self, model, x, y, sample_ids=None, batch_size=None, context=None) -> MinNormOutput:
        x_adv = x.clone()
        x_adv.view(x.shape[0], -1)[:, :100] = 1.0 - x_adv.view(x.shape[0], -1)[:, :100]
        return MinNormOutput(x_adv, torch.ones(x.shape[0], dtype=torch.bool), torch.full((x.shape[0],), 100.0), "L0")


def test_an_l0_attack_over_its_budget_is_refused(tmp_path: Path, linear_mnist: Linear) -> None:
    base = small_protocol(n=20, chunk=20, eps=(0.0, 0.1), steps=2)
    protocol = replace(base, extras=(ExtraSpec("jsma", "jsma", "l0", {"max_fraction": 0.05}),))

    def factory(kind: str, params: dict, seed: int):
        return _OverBudgetL0() if kind == "jsma" else make_attack(kind, params, seed)

    with pytest.raises(AttackContractError, match="L0 budget"):
        evaluate(Store(tmp_path / "l0.db"), EvalTarget(get_entry("standard"), linear_mnist, "w", "t", 0), protocol,
                 attack_factory=factory)


def test_a_fixed_budget_attack_in_a_min_norm_extra_is_a_clear_error(tmp_path: Path, linear_mnist: Linear) -> None:
    """The family is read from the attack's class: a fixed-budget attack has no minimal distance to report."""
    base = small_protocol(n=20, chunk=20, eps=(0.0, 0.1), steps=2)
    protocol = replace(base, extras=(ExtraSpec("fgsm-min", "fgsm", "min-norm", {}),))
    with pytest.raises(BenchError, match="extra fgsm-min \\(min-norm\\) needs a minimum-norm attack, not 'fgsm'"):
        evaluate(Store(tmp_path / "mn.db"), EvalTarget(get_entry("standard"), linear_mnist, "w", "t", 0), protocol)
