"""Paper attacks (BIM, ILCM, label-smoothed PGD sweep) and adaptive attacks (BPDA, EOT) on known answers.

Models are linear (the optimal L-inf attack is closed-form, see conftest.optimal_margin) or built here
around a linear core: an input quantiser with zero gradient (BPDA), a randomised input dither whose
single-sample gradients are mostly noise (EOT), a linear model with saturated softmax (the gamma sweep).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from attacks.adaptive import BPDA, EOT, EOTModel, bpda_patched
from attacks.base import PassCounter
from attacks.iterative import BIM, ILCM, LabelSmoothedPGD, smoothed_ce
from attacks.pgd import PGD
from tests.conftest import Linear, optimal_margin

BORDER = 1e-3  # samples this close to the decision boundary are excluded (float rounding)


def _binary(seed: int = 0, n: int = 200, scale: float = 1.0) -> tuple[Linear, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(2, 64, generator=g) * scale
    x = torch.rand(n, 1, 8, 8, generator=g)
    model = Linear(w, torch.zeros(2))
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def _in_ball_and_box(x_adv: torch.Tensor, x: torch.Tensor, epsilons: list[float]) -> bool:
    eps = torch.tensor(epsilons).view(-1, *[1] * x.dim())
    return bool(((x_adv - x).abs() <= eps + 1e-6).all() and (x_adv >= 0).all() and (x_adv <= 1).all()
                and torch.isfinite(x_adv).all())


# ---------------------------------------------------------------- BIM / ILCM


@pytest.mark.parametrize("kind", ["bim", "ilcm"])
@pytest.mark.parametrize("eps", [0.01, 0.03])
def test_bim_and_ilcm_are_optimal_on_binary_linear_model(kind: str, eps: float) -> None:
    """No random start, alpha = eps / steps: on a binary linear model both end on the optimal corner."""
    model, x, y = _binary(1)
    attack = BIM() if kind == "bim" else ILCM()
    out = attack.run(model, x, y, [eps])
    best = optimal_margin(model, x, y, eps)
    clear = best.abs() > BORDER
    pred = model(out.x_adv[0]).argmax(1)
    assert torch.equal((pred != y)[clear], (best < 0)[clear])
    assert torch.equal(out.success[0][clear], (best < 0)[clear])
    assert 0 < int((best < 0).sum()) < len(y)
    assert _in_ball_and_box(out.x_adv, x, [eps])
    if kind == "ilcm":  # with two classes the least-likely class is the other one
        assert all((d == "target-hit") == bool(s) for d, s in zip(out.detail[0], out.success[0], strict=True))


def test_bim_takes_eps_over_steps_and_stops_broken_samples() -> None:
    model, x, y = _binary(2)
    counter = PassCounter(model)
    out = BIM(steps=10).run(counter, x, y, [0.05])
    assert BIM(steps=10).alpha(0.05) == pytest.approx(0.005)
    assert int(out.success[0].sum()) > 0
    assert counter.n_forward < 11 * len(y)  # broken samples were not attacked further


def _block_model(seed: int, n: int, k: int = 4) -> tuple[Linear, torch.Tensor, torch.Tensor]:
    """k classes on disjoint pixel blocks with positive weights: the targeted optimum is closed-form."""
    g = torch.Generator().manual_seed(seed)
    d = 64 // k
    w = torch.zeros(k, 64)
    for c in range(k):
        w[c, c * d:(c + 1) * d] = torch.rand(d, generator=g) + 0.5
    b = torch.randn(k, generator=g)
    x = torch.rand(n, 1, 8, 8, generator=g)
    model = Linear(w, b)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def _best_targeted_margin(model: Linear, x: torch.Tensor, t: torch.Tensor, eps: float) -> torch.Tensor:
    """max over the ball of z_t - max_{j != t} z_j: raise block t, lower the other blocks (independent)."""
    up = model(torch.clamp(x + eps, max=1.0))
    down = model(torch.clamp(x - eps, min=0.0))
    z_t = up.gather(1, t[:, None]).squeeze(1)
    others = down.scatter(1, t[:, None], float("-inf"))
    return z_t - others.amax(1)


def test_ilcm_hits_its_target_exactly_when_feasible() -> None:
    model, x, y = _block_model(3, 200)
    eps = 0.1
    out = ILCM(steps=10).run(model, x, y, [eps])
    with torch.no_grad():
        target = model(x).argmin(1)
        reach = _best_targeted_margin(model, x, target, eps)
        pred = model(out.x_adv[0]).argmax(1)
    clear = reach.abs() > BORDER
    hit = pred == target
    assert torch.equal(hit[clear], (reach > 0)[clear])
    assert 10 < int((reach > 0).sum()) < len(y) - 10  # feasible for some samples, not all
    detail = out.detail[0]
    assert all((d == "target-hit") == bool(h) for d, h in zip(detail, hit, strict=True))
    assert torch.equal(out.success[0], pred != y)
    assert _in_ball_and_box(out.x_adv, x, [eps])


# ---------------------------------------------------------------- label-smoothed PGD sweep


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(4 * 36, 5)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def test_label_smoothing_sweep_never_does_worse_than_plain_ce() -> None:
    g = torch.Generator().manual_seed(1)
    model = SmallCNN().eval()
    x = torch.rand(30, 1, 8, 8, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    eps = 0.03
    params = dict(steps=5, rel_step_size=0.4, seed=3)
    plain = LabelSmoothedPGD(gammas=[0.0], **params).run(model, x, y, [eps])
    sweep = LabelSmoothedPGD(**params).run(model, x, y, [eps])
    p, s = plain.success[0], sweep.success[0]
    assert 0 < int(p.sum()) < len(y)
    assert bool((s | ~p).all()), "the sweep lost a sample that gamma = 0 broke"
    assert torch.equal(sweep.x_adv[0][p], plain.x_adv[0][p])  # gamma = 0 runs first, identically
    assert all(sweep.detail[0][i] == "gamma=0" for i in p.nonzero().squeeze(1).tolist())
    with torch.no_grad():
        assert torch.equal(model(sweep.x_adv[0]).argmax(1) != y, s)
    assert _in_ball_and_box(sweep.x_adv, x, [eps])


def test_smoothed_ce_is_the_papers_label_smoothing_loss() -> None:
    """Eq. 7 of the uncertainty paper: (1 - g) CE(p, y) + g KL(u || p) + g log K; g = 0 is plain CE."""
    g = torch.Generator().manual_seed(2)
    logits, y = torch.randn(6, 5, generator=g) * 3, torch.randint(0, 5, (6,), generator=g)
    logp = logits.log_softmax(1)
    ce = nn.functional.cross_entropy(logits, y, reduction="none")
    kl_u_p = (0.2 * (torch.log(torch.tensor(0.2)) - logp)).sum(1)
    for gamma in (0.0, 0.3, 1.0):
        want = (1 - gamma) * ce + gamma * kl_u_p + gamma * torch.log(torch.tensor(5.0))
        assert torch.allclose(smoothed_ce(logits, y, gamma), want, atol=1e-5)


@pytest.mark.parametrize("make", [lambda: BIM(steps=5), lambda: ILCM(steps=5),
                                  lambda: LabelSmoothedPGD(steps=4, gammas=[0.0, 0.5, 1.0], seed=2)])
def test_iterative_attacks_are_batch_independent_and_leave_rng_alone(make) -> None:
    model, x, y = _block_model(5, 30)
    attack = make()
    ids = torch.arange(100, 130)
    torch.manual_seed(0)
    expected = torch.rand(2)
    torch.manual_seed(0)
    a = attack.run(model, x, y, [0.0, 0.05, 0.2], sample_ids=ids)
    assert torch.equal(torch.rand(2), expected)  # the global RNG was not touched
    b = attack.run(model, x, y, [0.0, 0.05, 0.2], sample_ids=ids, batch_size=7)
    sub = attack.run(model, x[10:20], y[10:20], [0.0, 0.05, 0.2], sample_ids=ids[10:20])
    assert torch.equal(a.success, b.success) and torch.allclose(a.x_adv, b.x_adv)
    assert torch.equal(a.success[:, 10:20], sub.success) and torch.allclose(a.x_adv[:, 10:20], sub.x_adv)
    assert a.detail == b.detail
    assert not bool(a.success[0].any())
    assert bool((a.success[1] <= a.success[2]).all()) and bool(a.success[2].any())
    assert _in_ball_and_box(a.x_adv, x, [0.0, 0.05, 0.2])
    empty = attack.run(model, x[:0], y[:0], [0.1, 0.2])
    assert empty.x_adv.shape == (2, 0, 1, 8, 8) and empty.success.shape == (2, 0)


# ---------------------------------------------------------------- BPDA


class Quantize(nn.Module):
    """Round to ``levels`` grey levels: piecewise constant, so its gradient is 0 almost everywhere."""

    bpda_approx = "identity"

    def __init__(self, levels: int) -> None:
        super().__init__()
        self.levels = levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x * (self.levels - 1)) / (self.levels - 1)


def _quantised(seed: int, n: int, levels: int = 8) -> tuple[nn.Module, Linear, torch.Tensor, torch.Tensor]:
    lin, x, _ = _binary(seed, n)
    model = nn.Sequential(Quantize(levels), lin)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, lin, x, y


def _quantised_optimum(model: nn.Module, lin: Linear, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """Binary: margin z_y - z_o of Linear(q(x')) is smallest at the corner of the ball lowering it (q monotone)."""
    d = (lin.w[y] - lin.w[1 - y]).view_as(x)
    lo, hi = torch.clamp(x - eps, min=0.0), torch.clamp(x + eps, max=1.0)
    corner = torch.where(d > 0, lo, hi)
    with torch.no_grad():
        z = model(corner)
    return z.gather(1, y[:, None]).squeeze(1) - z.gather(1, (1 - y)[:, None]).squeeze(1)


def test_bpda_breaks_quantisation_that_plain_pgd_cannot() -> None:
    model, lin, x, y = _quantised(6, 200)
    eps = 0.1
    inner = {"steps": 20, "rel_step_size": 0.25}
    plain = PGD(seed=0, random_start=False, **inner).run(model, x, y, [eps])
    assert not bool(plain.success.any())  # zero gradient: PGD never moves
    noisy_start = PGD(seed=0, **inner).run(model, x, y, [eps])
    counter = PassCounter(model)
    out = BPDA(seed=0, inner_params=inner).run(counter, x, y, [eps])
    assert counter.n_backward > 0 and counter.n_forward > 0  # counting still works through the patch
    best = _quantised_optimum(model, lin, x, y, eps)
    clear = best.abs() > BORDER
    with torch.no_grad():
        pred = model(out.x_adv[0]).argmax(1)
    assert torch.equal((pred != y)[clear], (best < 0)[clear])  # BPDA reaches the quantised optimum
    assert int((best < 0).sum()) > 0.3 * len(y)
    assert int(noisy_start.success.sum()) < 0.5 * int((best < 0).sum())
    assert _in_ball_and_box(out.x_adv, x, [eps])
    assert "forward" not in model[0].__dict__


def test_bpda_forward_is_exact_and_gradient_is_the_approximation() -> None:
    class Clip(nn.Module):
        bpda_approx = staticmethod(lambda v: 2.0 * v)

        def forward(self, v: torch.Tensor) -> torch.Tensor:
            return torch.round(v * 7) / 7

    model = nn.Sequential(Clip(), nn.Flatten())
    x = torch.rand(5, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    plain = model(x)
    with bpda_patched(model) as patched:
        assert len(patched) == 1
        xr = x.clone().requires_grad_(True)
        out = model(xr)
        (grad,) = torch.autograd.grad(out.sum(), xr)
    assert torch.equal(out.detach(), plain)
    assert torch.equal(grad, torch.full_like(x, 2.0))


def test_bpda_restores_modules_after_an_exception() -> None:
    class Boom(nn.Module):
        def forward(self, v: torch.Tensor) -> torch.Tensor:
            if v.requires_grad:
                raise RuntimeError("boom")
            return v

    lin, x, _ = _binary(7, 10)
    quant = Quantize(8)
    model = nn.Sequential(quant, Boom(), lin)
    y = model(x).argmax(1)
    with pytest.raises(RuntimeError, match="boom"):
        BPDA(seed=0, inner_params={"steps": 3, "rel_step_size": 0.5}).run(model, x, y, [0.1])
    assert "forward" not in quant.__dict__
    xr = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(quant(xr).sum(), xr)
    assert not bool(grad.any())  # the real, zero gradient is back


def test_bpda_requires_a_declared_module_unless_allowed() -> None:
    model, x, y = _binary(8, 50)
    inner = {"steps": 5, "rel_step_size": 0.25}
    with pytest.raises(ValueError, match="no non-differentiable module"):
        BPDA(seed=1, inner_params=inner).run(model, x, y, [0.03])
    out = BPDA(seed=1, inner_params=inner, allow_plain=True).run(model, x, y, [0.03])
    ref = PGD(seed=1, **inner).run(model, x, y, [0.03])
    assert torch.equal(out.x_adv, ref.x_adv) and torch.equal(out.success, ref.success)
    with pytest.raises(ValueError, match="unknown inner attack"):
        BPDA(inner_kind="nope")


def test_bpda_with_other_inner_attacks_is_deterministic_and_handles_empty_input() -> None:
    model, _, x, y = _quantised(9, 40)
    for kind, params in [("bim", {"steps": 5}), ("fgsm", {}), ("pgd-ls-sweep", {"steps": 3, "gammas": [0.0, 1.0]})]:
        attack = BPDA(seed=4, inner_kind=kind, inner_params=params)
        a = attack.run(model, x, y, [0.05, 0.1])
        b = attack.run(model, x, y, [0.05, 0.1], batch_size=9)
        assert torch.equal(a.success, b.success) and torch.allclose(a.x_adv, b.x_adv)
        assert bool(a.success[1].any())
        assert _in_ball_and_box(a.x_adv, x, [0.05, 0.1])
        if kind != "fgsm":  # attacks.fgsm.FGSM itself fails on N = 0 (range step 0)
            empty = attack.run(model, x[:0], y[:0], [0.1])
            assert empty.x_adv.shape == (1, 0, 1, 8, 8)


# ---------------------------------------------------------------- EOT


class Dither(nn.Module):
    """x + a * sin(omega * (x + sigma * n)), n ~ N(0, 1) from torch's global RNG.

    The forward value moves by at most ``a`` per pixel, but the gradient 1 + a*omega*cos(...) has a
    random sign (a*omega = 8 >> 1): one sample's gradient is nearly useless, its mean over draws is 1.
    """

    def __init__(self, a: float = 0.002, omega: float = 4000.0, sigma: float = 1.0) -> None:
        super().__init__()
        self.a, self.omega, self.sigma = a, omega, sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.a * torch.sin(self.omega * (x + self.sigma * torch.randn_like(x)))


def test_eot_beats_single_sample_pgd_on_a_randomised_defense() -> None:
    lin, x, y = _binary(10, 60)
    dither = Dither()
    model = nn.Sequential(dither, lin)
    eps = 0.03
    best = optimal_margin(lin, x, y, eps)
    # the dither moves the logit margin by at most a * |w_y - w_o|_1: beyond that, samples are decided
    jitter = dither.a * (lin.w[y] - lin.w[1 - y]).abs().sum(1)
    clear = best.abs() > jitter + BORDER
    inner = {"steps": 40, "rel_step_size": 0.1}
    single = PGD(seed=0, **inner).run(model, x, y, [eps])
    eot = EOT(seed=0, samples=20, inner_params=inner).run(model, x, y, [eps])
    with torch.no_grad():
        broken_single = lin(single.x_adv[0]).argmax(1) != y
        broken_eot = lin(eot.x_adv[0]).argmax(1) != y
    n_opt = int((best < 0)[clear].sum())
    assert n_opt >= 15
    assert int(broken_eot[clear].sum()) >= 0.9 * n_opt  # EOT-PGD reaches (almost) the optimum
    assert not bool((broken_eot & (best > jitter + BORDER)).any())
    assert int(broken_single[clear].sum()) <= 0.5 * n_opt  # single-sample PGD is far worse (4 of 32)
    assert _in_ball_and_box(eot.x_adv, x, [eps])


def test_eot_is_deterministic_leaves_rng_alone_and_averages_probabilities() -> None:
    lin, x, y = _binary(11, 12)
    model = nn.Sequential(Dither(), lin)
    attack = EOT(seed=3, samples=4, inner_params={"steps": 5, "rel_step_size": 0.25})
    torch.manual_seed(5)
    a = attack.run(model, x, y, [0.02, 0.05])
    after = torch.rand(3)
    torch.manual_seed(5)
    assert torch.equal(after, torch.rand(3))
    b = attack.run(model, x, y, [0.02, 0.05])
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.success, b.success)
    assert _in_ball_and_box(a.x_adv, x, [0.02, 0.05])
    counter = PassCounter(model)
    EOT(samples=4, inner_kind="fgsm").run(counter, x, y, [0.05])
    assert counter.n_backward == 4 * len(y)  # one EOT gradient costs `samples` backward passes
    # on a deterministic model the EOT logits are the log-softmax
    assert torch.allclose(EOTModel(lin, 3)(x), lin(x).log_softmax(1), atol=1e-6)
    empty = attack.run(model, x[:0], y[:0], [0.1])
    assert empty.x_adv.shape == (1, 0, 1, 8, 8) and empty.success.shape == (1, 0)
