"""Attacks on models whose answer is known: linear classifiers (closed-form optimal L-inf attack)."""

from __future__ import annotations

import pytest
import torch

from attacks import FGSM, PGD, AutoAttackStandard
from attacks.base import PassCounter
from tests.conftest import Linear, optimal_margin

BORDER = 1e-3  # samples this close to the decision boundary are excluded (float rounding)


def _binary(seed: int = 0, n: int = 200) -> tuple[Linear, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(2, 64, generator=g)
    b = torch.zeros(2)
    x = torch.rand(n, 1, 8, 8, generator=g)
    model = Linear(w, b)
    with torch.no_grad():
        y = model(x).argmax(1)  # every sample correctly classified at eps 0
    return model, x, y


@pytest.mark.parametrize("eps", [0.01, 0.03, 0.1])
def test_fgsm_is_optimal_on_binary_linear_model(eps: float) -> None:
    model, x, y = _binary()
    out = FGSM().run(model, x, y, [eps])
    best = optimal_margin(model, x, y, eps)
    clear = best.abs() > BORDER
    assert clear.sum() > 150
    pred = model(out.x_adv[0]).argmax(1)
    # success exactly where the closed-form optimum crosses the boundary
    assert torch.equal((pred != y)[clear], (best < 0)[clear])
    assert 0 < int((best < 0).sum()) < len(y)  # the test is not vacuous


@pytest.mark.parametrize("loss", ["ce", "cw"])
def test_pgd_is_optimal_on_binary_linear_model(loss: str) -> None:
    model, x, y = _binary(1)
    eps = 0.03
    out = PGD(loss=loss, steps=20, rel_step_size=0.25, restarts=1, seed=0).run(model, x, y, [eps])
    best = optimal_margin(model, x, y, eps)
    clear = best.abs() > BORDER
    pred = model(out.x_adv[0]).argmax(1)
    assert torch.equal((pred != y)[clear], (best < 0)[clear])
    assert torch.equal(out.success[0][clear], (best < 0)[clear])
    assert float((out.x_adv[0] - x).abs().max()) <= eps + 1e-6
    assert 0 < int((best < 0).sum()) < len(y)


def test_pgd_matches_optimum_on_multiclass_linear_model(linear_mnist: Linear) -> None:
    from bench.protocol.data import load_split

    x, y = load_split("mnist", "test")
    x, y = x[:150], y[:150]
    correct = linear_mnist(x).argmax(1) == y
    x, y = x[correct], y[correct]
    eps = 0.05
    out = PGD(loss="cw", steps=50, rel_step_size=0.1, restarts=3, seed=0).run(linear_mnist, x, y, [eps])
    best = optimal_margin(linear_mnist, x, y, eps)
    clear = best.abs() > BORDER
    found = linear_mnist(out.x_adv[0]).argmax(1) != y
    assert not bool((found & (best > BORDER)).any()), "found an adversarial example where none exists"
    # With ten classes PGD is a heuristic (max of linear margins); it must reach nearly every
    # sample that the closed form says is breakable.
    achievable = clear & (best < 0)
    recall = float((found & achievable).sum()) / float(achievable.sum())
    assert recall >= 0.95, f"PGD-CW found {recall:.1%} of the closed-form adversarial examples"
    assert 0 < int((best < 0).sum()) < len(y)


def test_pgd_several_epsilons_per_call_and_monotone() -> None:
    model, x, y = _binary(2)
    epsilons = [0.0, 0.01, 0.02, 0.05]
    out = PGD(loss="ce", steps=10, rel_step_size=0.25, seed=0).run(model, x, y, epsilons)
    assert out.x_adv.shape == (4, *x.shape)
    assert not bool(out.success[0].any())  # eps 0: robust = clean
    for k in range(1, 4):
        assert bool((out.success[k - 1] <= out.success[k]).all())  # nested balls: never fewer successes


def test_pgd_keeps_best_iterate_not_last() -> None:
    """With a huge step the last iterate oscillates; the kept one must still be a success."""
    model, x, y = _binary(3)
    eps = 0.05
    out = PGD(loss="ce", steps=7, step_size=0.05, random_start=False, seed=0).run(model, x, y, [eps])
    pred = model(out.x_adv[0]).argmax(1)
    assert torch.equal(pred != y, out.success[0])


def test_pgd_results_do_not_depend_on_batch_size() -> None:
    model, x, y = _binary(4)
    attack = PGD(loss="ce", steps=5, rel_step_size=0.3, restarts=2, seed=7)
    a = attack.run(model, x, y, [0.02], batch_size=200)
    b = attack.run(model, x, y, [0.02], batch_size=13)
    assert torch.equal(a.success, b.success)
    assert torch.allclose(a.x_adv, b.x_adv)


def test_pgd_breaks_stop_being_attacked() -> None:
    model, x, y = _binary(5)
    counter = PassCounter(model)
    out = PGD(loss="ce", steps=20, rel_step_size=0.25, seed=0, random_start=False).run(counter, x, y, [0.05])
    n_broken = int(out.success[0].sum())
    assert n_broken > 0
    # 21 forwards for every sample would mean broken samples kept being attacked
    assert counter.n_forward < 21 * len(y)


def _ten_class_binary(seed: int, n: int) -> tuple[Linear, torch.Tensor, torch.Tensor]:
    """Ten outputs (AutoAttack's targeted attacks need them) of which only two can ever win."""
    model, x, y = _binary(seed, n)
    w = torch.cat([model.w, torch.zeros(8, 64)])
    b = torch.cat([model.b, torch.full((8,), -100.0)])
    return Linear(w, b), x, y


def test_autoattack_matches_optimum_on_binary_linear_model() -> None:
    model, x, y = _ten_class_binary(6, n=40)
    eps = 0.03
    out = AutoAttackStandard(seed=0).run(model, x, y, [eps])
    best = optimal_margin(model, x, y, eps)
    clear = best.abs() > BORDER
    pred = model(out.x_adv[0]).argmax(1)
    assert torch.equal((pred != y)[clear], (best < 0)[clear])
    assert float((out.x_adv[0] - x).abs().max()) <= eps + 1e-6
    assert all(d in (None, "apgd-ce", "apgd-t", "fab-t", "square") for d in out.detail[0])
    assert any(d is not None for d in out.detail[0])


def test_autoattack_is_seeded_and_leaves_global_rng_alone() -> None:
    model, x, y = _ten_class_binary(7, n=30)
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a = AutoAttackStandard(seed=5).run(model, x, y, [0.03])
    after = torch.rand(3)
    b = AutoAttackStandard(seed=5).run(model, x, y, [0.03])
    assert torch.equal(before, after)
    assert torch.equal(a.x_adv, b.x_adv)
