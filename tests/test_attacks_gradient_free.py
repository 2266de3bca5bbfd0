"""Gradient-free attacks (random search, SPSA, HopSkipJump, Square) against gradient masking.

The masked model is ``Linear(round(x * L) / L)``: its input gradient is exactly zero everywhere, so PGD
cannot move, while forward-only attacks break it. With inputs on the grid k / L and eps a multiple of
1 / L, the corners of the eps ball intersected with the box are grid points and the quantiser maps the
ball into itself, so the closed-form linear optimum (``optimal_margin``) is exact for the masked model
too: we know which samples are breakable.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from attacks.base import PassCounter, margin_loss
from attacks.hopskipjump import HopSkipJump
from attacks.pgd import PGD
from attacks.random_search import RandomSearch
from attacks.spsa import SPSA
from attacks.square import SquareAttack
from tests.conftest import QUANT_LEVELS as LEVELS
from tests.conftest import Linear, masked_problem, optimal_margin

EPS = 2 / LEVELS  # a grid multiple: exact in float
BORDER = 1e-3


pytestmark = pytest.mark.usefixtures("one_thread")


def _binary(seed: int = 0, n: int = 60, side: int = 8) -> tuple[Linear, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    model = Linear(torch.randn(2, side * side, generator=g), torch.zeros(2))
    x = torch.rand(n, 1, side, side, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


GRADIENT_FREE = {
    "random-search": lambda: RandomSearch(n_draws=400, seed=0),
    "hopskipjump": lambda: HopSkipJump(max_queries=300, seed=0),
    # probes must cross a quantisation step (1/16 from a grid point) to see any change
    "spsa": lambda: SPSA(steps=10, n_samples=32, delta=0.07, lr=0.05, seed=0),
    "square": lambda: SquareAttack(n_queries=100, seed=0),
}
QUICK = {  # smaller budgets for the contract tests
    "random-search": lambda: RandomSearch(n_draws=100, batch_draws=256, seed=0),
    "hopskipjump": lambda: HopSkipJump(max_queries=80, init_evals=20, seed=0),
    "spsa": lambda: SPSA(steps=5, n_samples=16, delta=0.07, lr=0.05, seed=0),
    "square": lambda: SquareAttack(n_queries=30, seed=0),
}


def test_masked_model_has_zero_gradient_and_pgd_cannot_move() -> None:
    model, linear, x, y = masked_problem()
    xg = x.clone().requires_grad_(True)
    nn.functional.cross_entropy(model(xg), y).backward()
    assert torch.count_nonzero(xg.grad) == 0
    out = PGD(loss="ce", steps=20, rel_step_size=0.25, random_start=False, seed=0).run(model, x, y, [EPS])
    assert torch.equal(out.x_adv[0], x)  # zero gradient: PGD never leaves the clean input
    assert not bool(out.success.any())
    breakable = optimal_margin(linear, x, y, EPS) < 0
    assert breakable.float().mean() > 0.9  # yet nearly every sample has an adversarial example


@pytest.mark.parametrize("kind", sorted(GRADIENT_FREE))
def test_gradient_free_attacks_break_the_masked_model(kind: str) -> None:
    model, linear, x, y = masked_problem()
    pgd = PGD(loss="cw", steps=10, rel_step_size=0.25, random_start=False, seed=0).run(model, x, y, [EPS])
    pgd_broken = model(pgd.x_adv[0]).argmax(1) != y
    out = GRADIENT_FREE[kind]().run(model, x, y, [EPS])
    x_adv = out.x_adv[0]
    assert float((x_adv - x).abs().max()) <= EPS + 1e-6 and 0 <= float(x_adv.min()) <= float(x_adv.max()) <= 1
    broken = model(x_adv).argmax(1) != y
    assert torch.equal(broken, out.success[0])  # the attack's own verdict is right
    best = optimal_margin(linear, x, y, EPS)
    assert not bool((broken & (best > BORDER)).any())  # never beyond the closed-form optimum
    recall = float((broken & (best < 0)).sum()) / float((best < 0).sum())
    assert int(pgd_broken.sum()) == 0
    assert recall >= 0.7, f"{kind} broke only {recall:.0%} of the breakable samples"


@pytest.mark.parametrize("eps", [0.05, 0.1, 0.2])
def test_random_search_corners_reach_the_closed_form_optimum(eps: float) -> None:
    """4 pixels: 16 corners, 200 corner draws cover them all, so random search is exact on a linear model."""
    model, x, y = _binary(3, n=200, side=2)
    out = RandomSearch(n_draws=400, corner_fraction=0.5, batch_draws=97, seed=3).run(model, x, y, [eps])
    best = optimal_margin(model, x, y, eps)
    clear = best.abs() > BORDER
    broken = model(out.x_adv[0]).argmax(1) != y
    assert torch.equal(broken[clear], (best < 0)[clear])
    assert torch.equal(out.success[0], broken)
    assert 0 < int((best < 0).sum()) < len(y)
    # where no adversarial corner exists, the kept draw is the best corner: its margin is the optimum
    robust = best > BORDER
    reached = -margin_loss(model(out.x_adv[0]), y)
    assert torch.allclose(reached[robust], best[robust], atol=1e-5)
    # uniform draws alone almost never hit the optimum exactly
    uniform = RandomSearch(n_draws=400, corner_fraction=0.0, seed=3).run(model, x, y, [eps])
    reached_u = -margin_loss(model(uniform.x_adv[0]), y)
    assert bool((reached_u[robust] > best[robust] + 1e-4).all())


def test_spsa_matches_closed_form_on_linear_model() -> None:
    model, x, y = _binary(2, n=60)
    eps = 0.05
    out = SPSA(steps=20, n_samples=64, seed=0).run(model, x, y, [eps])
    best = optimal_margin(model, x, y, eps)
    clear = best.abs() > 0.3
    broken = model(out.x_adv[0]).argmax(1) != y
    assert torch.equal(broken[clear], (best < 0)[clear])
    assert 0 < int((best[clear] < 0).sum()) < int(clear.sum())


def test_hopskipjump_approaches_the_minimal_distance() -> None:
    """Binary linear model on 4x4 inputs: HSJA's closest point is near the exact minimal L-inf distance."""
    g = torch.Generator().manual_seed(3)
    w = torch.randn(2, 16, generator=g)
    b = torch.stack([-(w[0] - w[1]).sum() / 2, torch.tensor(0.0)])  # boundary through the box centre
    model = Linear(w, b)
    x = torch.rand(20, 1, 4, 4, generator=g)
    y = model(x).argmax(1)
    out = HopSkipJump(max_queries=1500, seed=0).run(model, x, y, [1.0])  # eps 1: the closest point itself
    found = (out.x_adv[0] - x).flatten(1).abs().amax(1)
    assert bool(out.success[0].all())
    lo, hi = torch.zeros(len(y)), torch.ones(len(y))
    for _ in range(30):  # bisection on eps of the closed-form optimum: the exact minimal distance
        mid = (lo + hi) / 2
        adv = torch.stack([optimal_margin(model, x[i:i + 1], y[i:i + 1], float(mid[i]))[0] < 0 for i in range(len(y))])
        hi, lo = torch.where(adv, mid, hi), torch.where(adv, lo, mid)
    assert bool((found >= hi - 1e-4).all())  # nothing can beat the optimum
    assert float((found / hi).median()) < 1.05, f"median ratio to the optimum {float((found / hi).median()):.3f}"
    assert float((found / hi).max()) < 1.15


def test_hopskipjump_respects_query_budget() -> None:
    """Per sample: at most max_queries model inputs, plus one check per epsilon whose point is projected."""
    model, _, x, y = masked_problem(4, n=6)
    budget, epsilons = 200, [0.0, 1 / 8, 2 / 8]
    counter = PassCounter(model)
    for i in range(len(y)):
        HopSkipJump(max_queries=budget, seed=0).run(counter, x[i:i + 1], y[i:i + 1], epsilons)
        n_fwd, n_bwd = counter.reset()
        assert n_bwd == 0
        assert budget - 30 <= n_fwd <= budget + len(epsilons)  # spends its budget, never more
    HopSkipJump(max_queries=budget, seed=0).run(counter, x, y, epsilons, batch_size=5)
    assert counter.n_forward <= len(y) * (budget + len(epsilons))


@pytest.mark.parametrize("kind", sorted(QUICK))
def test_outputs_stay_in_ball_and_box(kind: str) -> None:
    g = torch.Generator().manual_seed(5)
    model = Linear(torch.randn(2, 64, generator=g), torch.zeros(2))
    x = torch.rand(20, 1, 8, 8, generator=g)
    x[:, :, :2] = 0.0  # pixels on the box edges
    x[:, :, -2:] = 1.0
    y = model(x).argmax(1)
    epsilons = [0.0, 0.02, 0.3]
    out = QUICK[kind]().run(model, x, y, epsilons)
    assert out.x_adv.shape == (3, *x.shape) and out.success.shape == (3, len(y))
    assert bool(torch.isfinite(out.x_adv).all())
    assert float(out.x_adv.min()) >= 0.0 and float(out.x_adv.max()) <= 1.0
    for k, eps in enumerate(epsilons):
        assert float((out.x_adv[k] - x).abs().max()) <= eps + 1e-6
    assert torch.equal(out.x_adv[0], x) and not bool(out.success[0].any())
    assert bool(out.success[2].any())
    empty = QUICK[kind]().run(model, x[:0], y[:0], epsilons)
    assert empty.x_adv.shape == (3, 0, 1, 8, 8) and empty.success.shape == (3, 0)


@pytest.mark.parametrize("kind", ["random-search", "hopskipjump", "spsa"])
def test_seeded_and_independent_of_batch(kind: str) -> None:
    model, _, x, y = masked_problem(6, n=12)
    ids = torch.arange(100, 112)
    attack = QUICK[kind]()
    a = attack.run(model, x, y, [1 / 8], sample_ids=ids)
    b = attack.run(model, x, y, [1 / 8], sample_ids=ids, batch_size=5)
    c = attack.run(model, x[6:], y[6:], [1 / 8], sample_ids=ids[6:], batch_size=3)  # other batch company
    assert torch.equal(a.success, b.success) and torch.allclose(a.x_adv, b.x_adv)
    assert torch.equal(a.success[:, 6:], c.success) and torch.allclose(a.x_adv[:, 6:], c.x_adv)
    assert 0 < int(a.success.sum())  # not vacuous
    other = type(attack)(**{**vars(attack), "seed": 1}).run(model, x, y, [1 / 8], sample_ids=ids)
    assert not torch.equal(a.x_adv, other.x_adv)  # the seed matters


@pytest.mark.parametrize("kind", sorted(QUICK))
def test_deterministic_and_leaves_global_rng_alone(kind: str) -> None:
    model, _, x, y = masked_problem(7, n=16)
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a = QUICK[kind]().run(model, x, y, [1 / 8])
    after = torch.rand(3)
    b = QUICK[kind]().run(model, x, y, [1 / 8])
    assert torch.equal(before, after)
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.success, b.success)
