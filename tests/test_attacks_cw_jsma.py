"""C&W L2 (plain, high-confidence, detector-aware) and JSMA on models whose answer is known.

Linear models give C&W's minimal L2 distance in closed form: the adversarial region
{max_{j != y} z_j - z_y >= kappa} is a union of half-spaces, so the smallest perturbation has norm
min_j (z_y - z_j + kappa) / ||w_y - w_j|| (valid where the minimiser stays inside the [0, 1] box).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from attacks.base import PassCounter, margin_loss
from attacks.cw import CarliniWagnerHC, CarliniWagnerL2, CarliniWagnerWB
from attacks.jsma import JSMA
from tests.conftest import Linear

pytestmark = pytest.mark.usefixtures("one_thread")


def _linear(k: int, n: int, seed: int = 0, scale: float = 0.5) -> tuple[Linear, torch.Tensor, torch.Tensor]:
    """Random linear model on 8x8 inputs in [0.3, 0.7]: far from the box edges."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(k, 64, generator=g) * scale
    b = torch.randn(k, generator=g) * 0.1
    model = Linear(w, b)
    x = 0.3 + 0.4 * torch.rand(n, 1, 8, 8, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def _closed_form(model: Linear, x: torch.Tensor, y: torch.Tensor, kappa: float = 0.0
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimal L2 distance to margin >= kappa per sample, and whether its minimiser lies in [0.01, 0.99]."""
    n = x.shape[0]
    with torch.no_grad():
        z = model(x)
        d = model.w[y][:, None, :] - model.w[None]  # (N, K, D): w_y - w_j
        nd = d.norm(dim=2).clamp(min=1e-12)
        dist = (z.gather(1, y[:, None]) - z + kappa) / nd
        dist[torch.arange(n), y] = float("inf")
        ref, j = dist.min(1)
        x_star = x.flatten(1) - ref[:, None] * d[torch.arange(n), j] / nd[torch.arange(n), j][:, None]
    inside = (x_star > 0.01).all(1) & (x_star < 0.99).all(1)
    return ref, inside


def _check_output(model: nn.Module, out, x: torch.Tensor, y: torch.Tensor, kappa: float = 0.0) -> None:
    assert out.norm == "L2"
    assert float(out.x_adv.min()) >= 0.0 and float(out.x_adv.max()) <= 1.0
    l2 = (out.x_adv - x).flatten(1).norm(dim=1)
    assert torch.allclose(out.distance[out.success], l2[out.success], atol=1e-6)
    assert bool(torch.isinf(out.distance[~out.success]).all())
    with torch.no_grad():
        assert bool((margin_loss(model(out.x_adv), y)[out.success] > kappa).all())


def test_cw_finds_closed_form_distance_on_multiclass_linear_model() -> None:
    """Within 1% per sample. C&W's precision is set by Adam's step near the hinge: at its default lr=1e-2 the
    error reaches ~1% on a few samples, so this test halves lr (see the next test for the defaults)."""
    model, x, y = _linear(k=10, n=30)
    ref, inside = _closed_form(model, x, y)
    valid = inside & (ref > 0.15)  # tiny distances are below Adam's step resolution
    assert int(valid.sum()) >= 20
    out = CarliniWagnerL2(lr=5e-3).run_min_norm(model, x, y)
    _check_output(model, out, x, y)
    rel = (out.distance - ref) / ref
    assert bool(out.success.all())
    assert float(rel[valid].abs().max()) < 0.01, rel[valid]
    assert float(rel.min()) > -1e-4  # never below the true minimum


def test_cw_default_hyperparameters_near_closed_form_on_binary_linear_model() -> None:
    model, x, y = _linear(k=2, n=30)
    ref, inside = _closed_form(model, x, y)
    valid = inside & (ref > 0.15)
    assert int(valid.sum()) >= 15
    out = CarliniWagnerL2().run_min_norm(model, x, y)
    _check_output(model, out, x, y)
    rel = (out.distance - ref) / ref
    assert float(rel.min()) > -1e-4
    assert float(rel[valid].median()) < 0.003 and float(rel[valid].max()) < 0.02, rel[valid]


def test_cw_high_confidence_reaches_kappa_at_closed_form_distance() -> None:
    model, x, y = _linear(k=2, n=14, scale=2.0)
    hc = CarliniWagnerHC()
    assert hc.kappa == 10.0 and hc.name == "cw-hc"
    out = hc.run_min_norm(model, x, y)
    _check_output(model, out, x, y, kappa=10.0)
    assert bool(out.success.all())
    with torch.no_grad():
        assert float(margin_loss(model(out.x_adv), y).min()) >= 10.0 - 1e-3
    ref, inside = _closed_form(model, x, y, kappa=10.0)
    assert int(inside.sum()) >= 10
    assert float(((out.distance - ref) / ref)[inside].abs().max()) < 0.01
    plain = CarliniWagnerL2(max_iter=300).run_min_norm(model, x, y)
    assert bool((out.distance > plain.distance).all())


class CentroidDetectorModel(nn.Module):
    """Linear classifier with a detector: s(x) = squared distance to the centroid of the predicted class."""

    def __init__(self, w: torch.Tensor, b: torch.Tensor, mu: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("w", w)
        self.register_buffer("b", b)
        self.register_buffer("mu", mu)
        self.register_buffer("detector_eta", torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.w.T + self.b

    def detector_score(self, x: torch.Tensor) -> torch.Tensor:
        return (x.flatten(1) - self.mu[self.forward(x).argmax(1)]).pow(2).sum(1)


def _detector_problem(n: int = 16) -> tuple[CentroidDetectorModel, torch.Tensor, torch.Tensor]:
    """Two Gaussian classes; the decision boundary is oblique to the line between the centroids, so the
    nearest adversarial point lies far from the new class's centroid (and is detected)."""
    g = torch.Generator().manual_seed(0)
    u = torch.randint(0, 2, (64,), generator=g).float() * 2 - 1
    direction = u + torch.randn(64, generator=g)
    mu = torch.stack([0.5 - 0.06 * u, 0.5 + 0.06 * u])
    w = torch.stack([-direction, direction]) / 2
    model = CentroidDetectorModel(w, -(w @ torch.full((64,), 0.5)), mu)

    def sample(m: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.arange(m) % 2
        return (mu[labels] + 0.03 * torch.randn(m, 64, generator=g)).clamp(0, 1).view(m, 1, 8, 8), labels

    x_train, _ = sample(400)
    with torch.no_grad():
        model.detector_eta.fill_(float(model.detector_score(x_train).median()))  # eta: median training score
    x, y = sample(n)
    assert bool((model(x).argmax(1) == y).all())
    return model, x, y


def test_cw_wb_evades_the_detector_where_plain_cw_does_not() -> None:
    model, x, y = _detector_problem()
    eta = float(model.detector_eta)
    plain = CarliniWagnerL2(max_iter=300).run_min_norm(PassCounter(model), x, y)
    counter = PassCounter(model)  # the detector is found on the wrapped model
    wb = CarliniWagnerWB(max_iter=300).run_min_norm(counter, x, y)
    assert counter.n_forward > 0 and counter.n_backward > 0
    with torch.no_grad():
        s_plain, s_wb = model.detector_score(plain.x_adv), model.detector_score(wb.x_adv)
    assert bool(plain.success.all()) and bool(wb.success.all())
    assert float((s_plain <= eta).float().mean()) <= 0.2
    assert bool((s_wb <= eta + 1e-6).all())  # wb success requires f2 = max(s - eta, 0) = 0
    assert plain.extra is not None and wb.extra is not None
    assert torch.allclose(wb.extra["detector_score"], s_wb, atol=1e-6)
    assert bool((wb.extra["detector_term"] == 0).all())
    assert bool((plain.extra["detector_term"] > 0).float().mean() >= 0.8)
    assert float(wb.distance.median()) > float(plain.distance.median())  # evading costs distortion


def test_cw_wb_needs_a_detector() -> None:
    model, x, y = _linear(k=2, n=2)
    with pytest.raises(ValueError, match="detector_score"):
        CarliniWagnerL2(detector_weight=1.0, max_iter=5).run_min_norm(PassCounter(model), x, y)


def test_cw_deterministic_and_batch_independent() -> None:
    model, x, y = _linear(k=5, n=12, seed=3)
    attack = CarliniWagnerL2(max_iter=60, search_steps=4, seed=1)
    full = attack.run_min_norm(model, x, y)
    again = CarliniWagnerL2(max_iter=60, search_steps=4, seed=1).run_min_norm(model, x, y)
    assert torch.equal(full.x_adv, again.x_adv) and torch.equal(full.success, again.success)
    small = attack.run_min_norm(model, x, y, batch_size=5)
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(0))
    shuffled = attack.run_min_norm(model, x[perm], y[perm], sample_ids=perm, batch_size=4)
    for other, idx in ((small, torch.arange(12)), (shuffled, perm)):
        assert torch.equal(other.success, full.success[idx])
        assert torch.allclose(other.x_adv, full.x_adv[idx], atol=1e-5)
    assert 0 < int(full.success.sum())


def test_cw_run_returns_linf_ball_view_and_handles_empty_input() -> None:
    model, x, y = _linear(k=3, n=10, seed=4)
    attack = CarliniWagnerL2(max_iter=100, search_steps=5)
    mn = attack.run_min_norm(model, x, y)
    linf = (mn.x_adv - x).flatten(1).abs().amax(1)
    mid = float(linf[mn.success].median())
    epsilons = [0.0, mid, 1.0]
    out = attack.run(model, x, y, epsilons)
    assert out.x_adv.shape == (3, *x.shape) and out.success.shape == (3, 10)
    for k, eps in enumerate(epsilons):
        assert float((out.x_adv[k] - x).abs().max()) <= eps + 1e-6
        assert float(out.x_adv[k].min()) >= 0 and float(out.x_adv[k].max()) <= 1
        assert torch.equal(out.success[k], mn.success & (linf <= eps))
    assert not bool(out.success[0].any()) and torch.equal(out.success[2], mn.success)
    assert 0 < int(out.success[1].sum()) < int(out.success[2].sum())
    empty = attack.run_min_norm(model, x[:0], y[:0])
    assert empty.x_adv.shape == (0, 1, 8, 8) and empty.distance.shape == (0,)
    assert attack.run(model, x[:0], y[:0], [0.1]).x_adv.shape == (1, 0, 1, 8, 8)


# ------------------------------------------------------------------------------------------------ JSMA


def _random_cnn() -> nn.Module:
    """A small CNN on 28x28 inputs with seeded random weights (the global RNG is left untouched)."""
    g = torch.Generator().manual_seed(0)
    with torch.random.fork_rng():
        net = nn.Sequential(nn.Conv2d(1, 4, 5, stride=2), nn.ReLU(), nn.Conv2d(4, 8, 5, stride=2), nn.ReLU(),
                            nn.Flatten(), nn.Linear(8 * 4 * 4, 10))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return net.eval()


@pytest.mark.parametrize("fraction", [0.01, 0.03, 0.1])
def test_jsma_never_exceeds_its_l0_budget(fraction: float) -> None:
    net = _random_cnn()
    x = torch.rand(12, 1, 28, 28, generator=torch.Generator().manual_seed(1)) * 0.5
    with torch.no_grad():
        y = net(x).argmax(1)
    attack = JSMA(max_fraction=fraction, seed=0)
    out = attack.run_l0(net, x, y)
    budget = int(fraction * 784)
    changed = (out.x_adv != x).flatten(1).sum(1)
    assert out.norm == "L0" and attack.budget(784) <= budget
    assert int(changed.max()) <= budget
    assert float(out.x_adv.min()) >= 0 and float(out.x_adv.max()) <= 1
    assert bool((out.x_adv >= x).all())  # theta = +1 only increases features
    assert torch.equal(out.distance[out.success], changed[out.success].float())
    assert bool(torch.isinf(out.distance[~out.success]).all())
    with torch.no_grad():
        assert torch.equal(net(out.x_adv).argmax(1)[out.success], out.extra["target"][out.success])
    if fraction == 0.01:
        assert not bool(out.success.all())  # the budget binds: the test is not vacuous


def test_jsma_targeted_success_on_linear_mnist(linear_mnist: Linear) -> None:
    from bench.protocol.data import load_split

    x, y = load_split("mnist", "test")
    x, y = x[:30], y[:30]
    out = JSMA(seed=0).run_l0(linear_mnist, x, y)
    target = out.extra["target"]
    assert bool((target != y).all()) and len(set(target.tolist())) > 3  # random targets, never the label
    with torch.no_grad():
        pred = linear_mnist(out.x_adv).argmax(1)
    assert torch.equal(pred == target, out.success)
    assert float(out.success.float().mean()) >= 0.9
    assert float(out.distance[out.success].max()) <= 78
    assert float(out.x_adv.min()) >= 0 and float(out.x_adv.max()) <= 1
    moved = out.x_adv != x
    assert bool((out.x_adv[moved] == 1).all())  # theta = 1: changed pixels are set to 1
    nxt = JSMA(target="next", max_fraction=0.02).run_l0(linear_mnist, x[:5], y[:5])
    assert torch.equal(nxt.extra["target"], (y[:5] + 1) % 10)
    ll = JSMA(target="least-likely", max_fraction=0.02).run_l0(linear_mnist, x[:5], y[:5])
    assert torch.equal(ll.extra["target"], linear_mnist(x[:5]).argmin(1))


def test_jsma_deterministic_and_batch_independent() -> None:
    net = _random_cnn()
    x = torch.rand(10, 1, 28, 28, generator=torch.Generator().manual_seed(2)) * 0.5
    with torch.no_grad():
        y = net(x).argmax(1)
    attack = JSMA(max_fraction=0.05, seed=7)
    full = attack.run_l0(net, x, y)
    assert torch.equal(JSMA(max_fraction=0.05, seed=7).run_l0(net, x, y).x_adv, full.x_adv)
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(0))
    shuffled = attack.run_l0(net, x[perm], y[perm], sample_ids=perm, batch_size=3)
    assert torch.equal(shuffled.extra["target"], full.extra["target"][perm])
    assert torch.equal(shuffled.x_adv, full.x_adv[perm]) and torch.equal(shuffled.success, full.success[perm])
    other = JSMA(max_fraction=0.05, seed=8).run_l0(net, x, y)
    assert not torch.equal(other.extra["target"], full.extra["target"])


def test_jsma_is_l0_only_and_handles_empty_input() -> None:
    net = _random_cnn()
    x = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    with pytest.raises(ValueError, match="run_l0"):
        JSMA().run(net, x, torch.zeros(2, dtype=torch.long), [0.1])
    with pytest.raises(ValueError):
        JSMA(target="nearest")
    empty = JSMA().run_l0(net, x[:0], torch.zeros(0, dtype=torch.long))
    assert empty.x_adv.shape == (0, 1, 28, 28) and empty.success.shape == (0,)
