"""Transfer attack (surrogate, cache, target never called) and FAB as a minimum-norm attack.

Transfer: the target ``Linear(round(x * L) / L)`` has a zero input gradient everywhere, so PGD on it
cannot move; inputs crafted on a smooth surrogate (a nearby unquantised linear model) break it. With
inputs on the grid k / L and eps a multiple of 1 / L, the closed-form linear optimum is exact for the
quantised model too (see test_attacks_gradient_free.py), so we know which samples are breakable.

FAB: on a binary linear model the minimal L-inf distance to the decision boundary is closed form,
|margin| / ||w_1 - w_0||_1, whenever the box [0, 1] does not bind.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from torch import nn

from attacks.base import PassCounter
from attacks.context import AttackContext
from attacks.fab import FABMinNorm
from attacks.pgd import PGD
from attacks.transfer import SurrogateProvider, Transfer
from tests.conftest import QUANT_LEVELS as LEVELS
from tests.conftest import Linear, masked_problem, optimal_margin

EPS = 2 / LEVELS  # a grid multiple: exact in float


pytestmark = pytest.mark.usefixtures("one_thread")


def _nearby(linear: Linear, seed: int = 1, noise: float = 0.3) -> Linear:
    """A surrogate: the target's linear part with perturbed weights (not the same model)."""
    g = torch.Generator().manual_seed(seed)
    return Linear(linear.w + noise * torch.randn(linear.w.shape, generator=g), linear.b.clone()).eval()


class FakeProvider:
    """Stands in for the engine: hands out one surrogate (counted) and a cache directory."""

    def __init__(self, model: nn.Module, cache_dir: Path | None) -> None:
        self.counter = PassCounter(model)
        self.cache_dir = cache_dir
        self.calls: list[tuple[str, str, int]] = []
        self.sha = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.parameters())).hexdigest()

    def surrogate(self, entry_id: str, budget: str, seed: int) -> tuple[nn.Module, str]:
        self.calls.append((entry_id, budget, seed))
        return self.counter, self.sha


def _ctx(provider: SurrogateProvider) -> AttackContext:
    return AttackContext(surrogates=provider)


def _transfer(**kw) -> Transfer:
    return Transfer(surrogate="standard", surrogate_budget="quick", surrogate_seed=3, **kw)


# -- transfer ------------------------------------------------------------------------------------------


def test_transfer_never_calls_the_target(tmp_path: Path) -> None:
    model, linear, x, y = masked_problem(n=20)
    provider = FakeProvider(_nearby(linear), tmp_path)
    assert isinstance(provider, SurrogateProvider)
    target = PassCounter(model)
    out = _transfer().run(target, x, y, [EPS / 2, EPS], context=_ctx(provider))
    assert (target.n_forward, target.n_backward) == (0, 0)  # not even a verification pass
    assert provider.counter.n_forward > 0 and provider.counter.n_backward > 0  # the surrogate did the work
    assert provider.calls and set(provider.calls) == {("standard", "quick", 3)}
    assert out.x_adv.shape == (2, *x.shape) and out.success.shape == (2, len(y))
    # the advisory verdict is the surrogate's
    for k in range(2):
        assert torch.equal(out.success[k], provider.counter.model(out.x_adv[k]).argmax(1) != y)


def test_transfer_without_provider_raises() -> None:
    model, _, x, y = masked_problem(n=4)
    with pytest.raises(ValueError, match="no surrogate provider bound"):
        _transfer().run(model, x, y, [EPS])
    with pytest.raises(ValueError, match="unknown inner attack"):
        Transfer(surrogate="standard", inner_kind="cw")


def test_transfer_cache_is_reused_across_targets_and_survives_corruption(tmp_path: Path) -> None:
    model, linear, x, y = masked_problem(n=30)
    provider = FakeProvider(_nearby(linear), tmp_path)
    first = _transfer().run(model, x, y, [EPS / 2, EPS], context=_ctx(provider))
    files = sorted(tmp_path.glob("transfer-*.pt"))
    assert len(files) == 2  # one file per (surrogate, inner spec, seed, eps)
    assert not list(tmp_path.glob("*.tmp"))  # temp files were renamed away
    # a second target (any model), same provider: the surrogate is not called at all, inputs identical
    provider.counter.reset()
    other_target = PassCounter(Linear(torch.randn(2, 64), torch.zeros(2)))
    second = _transfer().run(other_target, x, y, [EPS / 2, EPS], context=_ctx(provider))
    assert (provider.counter.n_forward, provider.counter.n_backward) == (0, 0)
    assert other_target.n_forward == 0
    assert torch.equal(second.x_adv, first.x_adv) and torch.equal(second.success, first.success)
    # a subset in another order, by sample id, also comes from the cache
    perm = torch.tensor([7, 3, 29, 0])
    sub = _transfer().run(model, x[perm], y[perm], [EPS], sample_ids=perm, context=_ctx(provider))
    assert provider.counter.n_forward == 0 and torch.equal(sub.x_adv[0], first.x_adv[1][perm])
    # a corrupted file is ignored and recomputed (only that eps), giving the same inputs again
    files[0].write_bytes(b"not a torch file")
    third = _transfer().run(model, x, y, [EPS / 2, EPS], context=_ctx(provider))
    assert provider.counter.n_forward > 0
    assert torch.equal(third.x_adv, first.x_adv)
    provider.counter.reset()
    _transfer().run(model, x, y, [EPS / 2, EPS], context=_ctx(provider))
    assert provider.counter.n_forward == 0  # the rewritten file is valid again
    # another inner spec or seed is another key; a changed clean input under the same id is recomputed
    _transfer(inner_params={"loss": "cw", "steps": 10, "rel_step_size": 0.25, "random_start": False}).run(
        model, x, y, [EPS], context=_ctx(provider))
    assert provider.counter.n_forward > 0 and len(list(tmp_path.glob("transfer-*.pt"))) == 3
    provider.counter.reset()
    x2 = x.clone()
    x2[5] = 1 - x2[5]
    moved = _transfer().run(model, x2, y, [EPS], context=_ctx(provider))
    assert 0 < provider.counter.n_forward
    assert float((moved.x_adv[0][5] - x2[5]).abs().max()) <= EPS + 1e-6


@pytest.mark.parametrize("noise,inner_kind,params,min_recall", [
    (0.0, "pgd", None, 0.8),  # the target's own linear part, default inner PGD
    (0.1, "pgd", None, 0.7),  # a nearby linear model
    (0.3, "fgsm", {"loss": "ce"}, 0.95),  # farther away; FGSM goes to the corner of the ball
])
def test_transfer_breaks_a_zero_gradient_model_that_pgd_cannot(tmp_path: Path, noise: float, inner_kind: str,
                                                                params: dict | None, min_recall: float) -> None:
    model, linear, x, y = masked_problem(n=60)
    xg = x.clone().requires_grad_(True)
    nn.functional.cross_entropy(model(xg), y).backward()
    assert torch.count_nonzero(xg.grad) == 0
    pgd = PGD(loss="ce", steps=20, rel_step_size=0.25, random_start=False, seed=0).run(model, x, y, [EPS])
    assert not bool((model(pgd.x_adv[0]).argmax(1) != y).any())  # PGD on the target breaks nothing
    breakable = optimal_margin(linear, x, y, EPS) < 0
    assert breakable.float().mean() > 0.5
    target = PassCounter(model)
    out = _transfer(inner_kind=inner_kind, inner_params=params).run(
        target, x, y, [EPS], context=_ctx(FakeProvider(_nearby(linear, noise=noise), tmp_path)))
    assert target.n_forward == 0
    assert float((out.x_adv[0] - x).abs().max()) <= EPS + 1e-6
    broken = model(out.x_adv[0]).argmax(1) != y
    assert not bool((broken & ~breakable).any())  # never beyond the closed-form optimum
    recall = float((broken & breakable).sum()) / float(breakable.sum())
    assert recall >= min_recall, f"transfer broke only {recall:.0%} of the breakable samples"


@pytest.mark.parametrize("inner_kind,params", [
    ("pgd", None),
    ("fgsm", {"loss": "ce"}),
    ("bim", {"steps": 5}),
])
def test_transfer_ball_box_determinism_and_empty(inner_kind: str, params: dict | None) -> None:
    g = torch.Generator().manual_seed(5)
    surrogate = Linear(torch.randn(3, 64, generator=g), torch.zeros(3))
    target = Linear(torch.randn(3, 64, generator=g), torch.zeros(3))
    x = torch.rand(20, 1, 8, 8, generator=g)
    x[:, :, :2] = 0.0  # pixels on the box edges
    x[:, :, -2:] = 1.0
    y = target(x).argmax(1)
    epsilons = [0.0, 0.02, 0.3]

    ctx = _ctx(FakeProvider(surrogate, None))

    def attack() -> Transfer:
        return _transfer(inner_kind=inner_kind, inner_params=params, seed=4)

    out = attack().run(target, x, y, epsilons, context=ctx)
    assert out.x_adv.shape == (3, *x.shape) and out.success.shape == (3, len(y))
    assert bool(torch.isfinite(out.x_adv).all())
    assert float(out.x_adv.min()) >= 0.0 and float(out.x_adv.max()) <= 1.0
    for k, eps in enumerate(epsilons):
        assert float((out.x_adv[k] - x).abs().max()) <= eps + 1e-6
    assert torch.equal(out.x_adv[0], x)
    assert bool(out.success[2].any())
    # deterministic, and independent of batch size and of which samples share the call
    again = attack().run(target, x, y, epsilons, batch_size=7, context=ctx)
    assert torch.equal(again.x_adv, out.x_adv) and torch.equal(again.success, out.success)
    ids = torch.arange(10, 20)
    part = attack().run(target, x[10:], y[10:], epsilons, sample_ids=ids, batch_size=3, context=ctx)
    assert torch.equal(part.x_adv, out.x_adv[:, 10:])
    provider = FakeProvider(surrogate, None)
    empty = _transfer(inner_kind=inner_kind, inner_params=params).run(target, x[:0], y[:0], epsilons,
                                                                      context=_ctx(provider))
    assert empty.x_adv.shape == (3, 0, 1, 8, 8) and empty.success.shape == (3, 0)
    assert provider.calls == []  # no surrogate loaded (or trained) for nothing
    none = attack().run(target, x, y, [], context=ctx)
    assert none.x_adv.shape == (0, *x.shape)


# -- FAB -----------------------------------------------------------------------------------------------


def _fab_problem(seed: int = 0, n: int = 40) -> tuple[Linear, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Binary linear model, boundary through the box centre; inputs in [0.3, 0.7]; closed-form L-inf distance."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(2, 64, generator=g)
    b = torch.stack([-(w[0] - w[1]).sum() / 2, torch.tensor(0.0)])
    model = Linear(w, b).eval()
    x = 0.3 + 0.4 * torch.rand(n, 1, 8, 8, generator=g)
    y = model(x).argmax(1)
    d = w[1 - y] - w[y]  # direction raising the other logit
    z = model(x)
    margin = z.gather(1, y[:, None]).squeeze(1) - z.gather(1, (1 - y)[:, None]).squeeze(1)
    closed = margin / d.abs().sum(1)
    # the box is inactive where the closed-form point x + closed * sign(d) stays inside [0, 1]
    corner = x.flatten(1) + closed[:, None] * d.sign()
    inactive = (corner >= 0).all(1) & (corner <= 1).all(1)
    return model, x, y, torch.where(inactive, closed, torch.nan)


def test_fab_linf_distance_matches_the_closed_form() -> None:
    model, x, y, closed = _fab_problem()
    keep = ~closed.isnan()
    assert int(keep.sum()) >= 30
    state = torch.random.get_rng_state()
    out = FABMinNorm(n_iter=100, seed=0).run_min_norm(model, x, y)
    assert torch.equal(torch.random.get_rng_state(), state)  # global RNG untouched
    assert out.norm == "Linf" and bool(out.success.all())
    linf = (out.x_adv - x).flatten(1).abs().amax(1)
    assert torch.allclose(out.distance, linf)
    assert bool((model(out.x_adv).argmax(1) != y).all())
    ratio = out.distance[keep] / closed[keep]
    assert float(ratio.min()) >= 1 - 1e-5, "below the exact minimum: impossible"
    assert float(ratio.max()) <= 1.02, f"FAB is {float(ratio.max()):.4f} x the optimum"
    # deterministic, and batch-size independent up to float rounding (a matmul's result may depend on
    # the batch's size in its last bits, on CPUs whose kernels block by batch size, e.g. AVX-512)
    same = FABMinNorm(n_iter=100, seed=0).run_min_norm(model, x, y)
    assert torch.equal(same.x_adv, out.x_adv) and torch.equal(same.distance, out.distance)
    again = FABMinNorm(n_iter=100, seed=0).run_min_norm(model, x, y, batch_size=7)
    assert torch.allclose(again.x_adv, out.x_adv, rtol=0, atol=1e-5)
    assert torch.allclose(again.distance, out.distance, rtol=1e-4, atol=1e-6)


def test_fab_l2_and_restarts() -> None:
    model, x, y, _ = _fab_problem(1, n=12)
    w = model.w[1 - y] - model.w[y]
    z = model(x)
    closed = (z.gather(1, y[:, None]) - z.gather(1, (1 - y)[:, None])).squeeze(1) / w.norm(dim=1)
    out = FABMinNorm(norm="L2", n_iter=50).run_min_norm(model, x, y)
    assert out.norm == "L2" and bool(out.success.all())
    assert torch.allclose(out.distance, (out.x_adv - x).flatten(1).norm(dim=1))
    ratio = out.distance / closed  # the L2 projection stays inside the box for inputs in [0.3, 0.7]
    assert float(ratio.min()) >= 1 - 1e-5 and float(ratio.max()) <= 1.02
    state = torch.random.get_rng_state()
    multi = FABMinNorm(n_restarts=3, n_iter=30, seed=2).run_min_norm(model, x, y, batch_size=5)
    assert torch.equal(torch.random.get_rng_state(), state)
    single = FABMinNorm(n_restarts=1, n_iter=30, seed=2).run_min_norm(model, x, y)
    # restarts only ever improve (up to the float rounding of another batch size, see above)
    assert bool((multi.distance <= single.distance * (1 + 1e-4) + 1e-6).all())
    perm = torch.tensor([4, 0, 9])
    part = FABMinNorm(n_restarts=3, n_iter=30, seed=2).run_min_norm(model, x[perm], y[perm], sample_ids=perm)
    assert torch.allclose(part.distance, multi.distance[perm], rtol=1e-4, atol=1e-6)


def test_fab_linf_view_misclassified_and_empty() -> None:
    model, x, y, _ = _fab_problem(2, n=16)
    y = y.clone()
    y[:3] = 1 - y[:3]  # already misclassified: distance 0, the clean input
    out = FABMinNorm(n_iter=50).run_min_norm(model, x, y)
    assert torch.equal(out.distance[:3], torch.zeros(3)) and bool(out.success[:3].all())
    assert torch.equal(out.x_adv[:3], x[:3])
    epsilons = [0.0, float(out.distance[3:].median()), 1.0]
    view = FABMinNorm(n_iter=50).run(model, x, y, epsilons)
    assert view.x_adv.shape == (3, *x.shape)
    for k, eps in enumerate(epsilons):
        assert float((view.x_adv[k] - x).abs().max()) <= eps + 1e-6
        assert float(view.x_adv[k].min()) >= 0 and float(view.x_adv[k].max()) <= 1
        assert torch.equal(view.success[k], out.success & (out.distance <= eps))
    assert 3 < int(view.success[1].sum()) < len(y)
    empty = FABMinNorm().run_min_norm(model, x[:0], y[:0])
    assert empty.distance.shape == (0,) and empty.x_adv.shape == (0, 1, 8, 8)
    assert FABMinNorm().run(model, x[:0], y[:0], [0.1]).x_adv.shape == (1, 0, 1, 8, 8)
    with pytest.raises(ValueError):
        FABMinNorm(norm="L1")
