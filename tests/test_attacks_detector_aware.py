"""Detector-aware PGD on a K-density detector built in the test (3 Gaussian classes of 8x8 images).

The detector is defenses.detectors.DetectorClassifier (metric "kd") around a tiny MLP; its threshold
is set on held-out clean inputs at 5% false positives, as the engine does (rejected iff score > t).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from attacks.base import PassCounter
from attacks.context import AttackContext
from attacks.detector_aware import DetectorAwarePGD, find_detector
from attacks.pgd import PGD
from defenses.detectors import DetectorClassifier, threshold_at_fpr

STRONG = {"weights": (0.1, 1.0, 10.0), "kappa": 0.0}  # the recommended sweep


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """These models are tiny: one thread is as fast, and two threads on a shared, loaded CPU can be
    100x slower (OpenMP spin-waiting). The previous setting is restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _data(n: int, g: torch.Generator, means: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    y = torch.randint(0, 3, (n,), generator=g)
    return (means[y] + 0.15 * torch.randn(n, 1, 8, 8, generator=g)).clamp(0, 1), y


@pytest.fixture(scope="module")
def kd_setup() -> tuple[DetectorClassifier, float, torch.Tensor, torch.Tensor]:
    """(detector model, 5%-FPR threshold, 40 clean test inputs that are correct and accepted, labels)."""
    g = torch.Generator().manual_seed(0)
    means = torch.rand(3, 1, 8, 8, generator=g) * 0.6 + 0.2
    x_train, y_train = _data(400, g, means)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(150):
        loss = nn.functional.cross_entropy(net(x_train), y_train)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model = DetectorClassifier(net, "kd", sigma2=1.0, n_ref=250).eval()
    model.fit_reference(x_train, y_train, n_eta=150)
    for p in model.parameters():
        p.requires_grad_(False)
    x_cal, _ = _data(300, g, means)
    x, y = _data(60, g, means)
    with torch.no_grad():
        threshold = threshold_at_fpr(model.detector_score(x_cal), 0.05)
        keep = (model(x).argmax(1) == y) & (model.detector_score(x) <= threshold)
    return model, threshold, x[keep][:40], y[keep][:40]


def _engine_verdict(model: DetectorClassifier, x_adv: torch.Tensor, y: torch.Tensor, t: float
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """(misclassified, rejected) exactly as the engine judges them."""
    with torch.no_grad():
        return model(x_adv).argmax(1) != y, model.detector_score(x_adv) > t


def _in_ball_and_box(x_adv: torch.Tensor, x: torch.Tensor, epsilons: list[float]) -> bool:
    return all(bool(torch.isfinite(x_adv[k]).all()) and float((x_adv[k] - x).abs().max()) <= e + 1e-6
               and float(x_adv[k].min()) >= 0.0 and float(x_adv[k].max()) <= 1.0 for k, e in enumerate(epsilons))


def test_detector_aware_beats_plain_pgd_on_a_kd_detector(kd_setup) -> None:
    model, t, x, y = kd_setup
    n, eps = x.shape[0], 0.25
    assert n >= 30
    plain = PGD(loss="cw", steps=30, rel_step_size=0.1, seed=0).run(PassCounter(model), x, y, [eps])
    mis, rej = _engine_verdict(model, plain.x_adv[0], y, t)
    assert int(mis.sum()) >= 0.9 * n  # plain PGD misclassifies nearly everything ...
    assert int((mis & rej).sum()) >= 0.8 * int(mis.sum())  # ... but the detector rejects most of it
    plain_success = int((mis & ~rej).sum())

    attack = DetectorAwarePGD(steps=30, rel_step_size=0.1, seed=0, **STRONG)
    counter = PassCounter(model)
    out = attack.run(counter, x, y, [eps], context=AttackContext(detector_threshold=t))
    mis_a, rej_a = _engine_verdict(model, out.x_adv[0], y, t)
    engine_success = mis_a & ~rej_a
    assert torch.equal(out.success[0], engine_success)  # the attack's verdict is the engine's rule
    assert int(engine_success.sum()) >= plain_success + 0.4 * n, (int(engine_success.sum()), plain_success)
    assert counter.n_forward > 0 and counter.n_backward > 0  # logits went through the counted model


def test_weight_sweep_and_kappa_help_over_a_single_weight(kd_setup) -> None:
    model, t, x, y = kd_setup
    runs = {}
    for name, kw in {"single": {}, "strong": STRONG}.items():
        attack = DetectorAwarePGD(steps=30, rel_step_size=0.1, seed=0, **kw)
        runs[name] = int(attack.run(model, x, y, [0.25], context=AttackContext(detector_threshold=t)).success.sum())
    assert runs["strong"] > runs["single"]


def test_outputs_in_ball_and_box(kd_setup) -> None:
    model, t, x, y = kd_setup
    epsilons = [0.0, 0.05, 0.3, 1.0]
    attack = DetectorAwarePGD(steps=5, step_size=0.2, restarts=2, slack=0.5, seed=3, **STRONG)
    out = attack.run(model, x[:15], y[:15], epsilons, context=AttackContext(detector_threshold=t))
    assert out.x_adv.shape == (4, 15, 1, 8, 8) and out.success.shape == (4, 15)
    assert _in_ball_and_box(out.x_adv, x[:15], epsilons)
    assert not bool(out.success[0].any())  # eps 0: clean inputs are correct and accepted
    assert torch.equal(out.x_adv[0], x[:15])


def test_deterministic_batch_independent_and_rng_untouched(kd_setup) -> None:
    model, t, x, y = kd_setup
    x, y = x[:20], y[:20]
    ids = torch.arange(500, 520)
    attack = DetectorAwarePGD(steps=8, rel_step_size=0.2, restarts=2, seed=5, **STRONG)
    ctx = AttackContext(detector_threshold=t)
    torch.manual_seed(0)
    expected = torch.rand(2)
    torch.manual_seed(0)
    a = attack.run(model, x, y, [0.15, 0.25], sample_ids=ids, context=ctx)
    assert torch.equal(torch.rand(2), expected)  # the global RNG was not touched
    again = attack.run(model, x, y, [0.15, 0.25], sample_ids=ids, context=ctx)
    b = attack.run(PassCounter(model), x, y, [0.15, 0.25], sample_ids=ids, batch_size=6, context=ctx)
    sub = attack.run(model, x[7:16], y[7:16], [0.15, 0.25], sample_ids=ids[7:16], batch_size=4, context=ctx)
    assert torch.equal(a.x_adv, again.x_adv) and torch.equal(a.success, again.success)
    assert torch.equal(a.success, b.success) and torch.allclose(a.x_adv, b.x_adv)
    assert torch.equal(a.success[:, 7:16], sub.success) and torch.allclose(a.x_adv[:, 7:16], sub.x_adv)
    assert bool(a.success.any()) and not bool(a.success.all())  # not vacuous
    other_seed = DetectorAwarePGD(steps=8, rel_step_size=0.2, restarts=2, seed=6, **STRONG)
    assert not torch.equal(other_seed.run(model, x, y, [0.15], sample_ids=ids, context=ctx).x_adv[0], a.x_adv[0])
    empty = attack.run(model, x[:0], y[:0], [0.1, 0.2], context=ctx)
    assert empty.x_adv.shape == (2, 0, 1, 8, 8) and empty.success.shape == (2, 0)


def test_missing_detector_raises(kd_setup) -> None:
    model, _, x, y = kd_setup
    plain = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    for m in (plain, PassCounter(plain)):
        with pytest.raises(ValueError, match="detector_score"):
            DetectorAwarePGD(steps=2).run(m, x[:3], y[:3], [0.1])
    assert find_detector(PassCounter(model)) is model

    class NoEta(nn.Module):  # a detector without detector_eta and no bound threshold
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return plain(x)

        def detector_score(self, x: torch.Tensor) -> torch.Tensor:
            return x.flatten(1).sum(1)

    with pytest.raises(ValueError, match="threshold"):
        DetectorAwarePGD(steps=2).run(NoEta(), x[:3], y[:3], [0.1])
    bound = AttackContext(detector_threshold=1e9)
    assert DetectorAwarePGD(steps=2).run(NoEta(), x[:3], y[:3], [0.1], context=bound).x_adv.shape == (1, 3, 1, 8, 8)
    with pytest.raises(ValueError):
        DetectorAwarePGD(step_size=0.01, rel_step_size=0.1)


def test_context_threshold_decides_success(kd_setup) -> None:
    model, t, x, y = kd_setup
    x, y = x[:25], y[:25]
    counts = {}
    for name, thr in {"strict": t - 1.0, "engine": t, "loose": t + 3.0}.items():
        attack = DetectorAwarePGD(steps=20, rel_step_size=0.1, seed=0, **STRONG)
        out = attack.run(model, x, y, [0.25], context=AttackContext(detector_threshold=thr))
        with torch.no_grad():
            score = model.detector_score(out.x_adv[0])
            mis = model(out.x_adv[0]).argmax(1) != y
        assert torch.equal(out.success[0], mis & (score <= thr))  # success iff misclassified and score <= thr
        counts[name] = int(out.success[0].sum())
    assert counts["strict"] < counts["engine"] <= counts["loose"]
    # no threshold in the context: falls back to detector_eta, identical to passing it explicitly
    eta = float(model.detector_eta)
    unbound = DetectorAwarePGD(steps=10, rel_step_size=0.1, seed=0, **STRONG).run(model, x, y, [0.25])
    explicit = DetectorAwarePGD(steps=10, rel_step_size=0.1, seed=0, **STRONG)
    out = explicit.run(model, x, y, [0.25], context=AttackContext(detector_threshold=eta))
    assert torch.equal(unbound.x_adv, out.x_adv) and torch.equal(unbound.success, out.success)


def test_unreachable_threshold_reduces_to_pgd_cw(kd_setup) -> None:
    """With a threshold no input exceeds, the penalty and its gradient vanish: PGD-CW, step for step."""
    model, _, x, y = kd_setup
    attack = DetectorAwarePGD(steps=15, rel_step_size=0.1, random_start=False)
    ours = attack.run(model, x, y, [0.1, 0.2], context=AttackContext(detector_threshold=1e9))
    pgd = PGD(loss="cw", steps=15, rel_step_size=0.1, random_start=False).run(model, x, y, [0.1, 0.2])
    assert torch.equal(ours.x_adv, pgd.x_adv) and torch.equal(ours.success, pgd.success)
    assert bool(ours.success[1].any())
