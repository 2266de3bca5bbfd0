"""The checks' batched PGD probe on a linear model: sound (breaks only breakable samples), strong
(breaks nearly all of them), and independent of which jobs share its batch."""

from __future__ import annotations

import pytest
import torch

from attacks import make_attack
from attacks.base import per_sample_uniform
from bench.checks.probes import PGDJob, PGDSetting, Prober, model_facts
from bench.protocol.data import load_split
from tests.conftest import Linear, optimal_margin


def reference_pgd(model: Linear, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor, eps: float, steps: int,
                  alpha: float, seed: int) -> tuple[set[int], list[float]]:
    """PGD on the CE loss of a linear model in closed form, for every sample through every step: the ids
    misclassified at some iterate, and per step the mean loss of the samples no iterate fooled.

    It shares only the random start's seeding contract with the probe (``per_sample_uniform`` over
    (seed, "check-pgd", eps, restart 0, sample id)); the gradient is the analytic one,
    W^T (softmax(z) - onehot(y)), and the probe's early stopping and batching play no part. It runs in
    float32 like the probe, so the two trajectories agree to rounding (the loss of a confidently correct
    sample, near 1e-6, is only known to about 1e-7 in float32).
    """
    w, b = model.w, model.b
    x0 = x.flatten(1)
    xa = (x0 + eps * per_sample_uniform(tuple(x.shape), ids, seed, "check-pgd", eps, 0).flatten(1))
    xa = xa.clamp(0, 1)
    onehot = torch.nn.functional.one_hot(y, w.shape[0]).float()
    fooled = torch.zeros(x.shape[0], dtype=torch.bool)
    losses = []
    for _ in range(steps + 1):
        z = xa @ w.T + b
        losses.append(torch.logsumexp(z, 1) - z.gather(1, y.view(-1, 1)).squeeze(1))
        fooled |= z.argmax(1) != y
        grad = (torch.softmax(z, 1) - onehot) @ w
        xa = torch.minimum(torch.maximum(xa + alpha * grad.sign(), x0 - eps), x0 + eps).clamp(0, 1)
    never = ~fooled
    curve = [float(loss[never].mean()) if bool(never.any()) else float("nan") for loss in losses]
    return {int(i) for i in ids[fooled]}, curve


def test_batched_pgd_is_sound_strong_and_batch_independent(linear_mnist: Linear, one_thread) -> None:
    x, y = load_split("mnist", "test")
    x, y = x[:60], y[:60]
    ids = torch.arange(60)
    prober = Prober(linear_mnist, 25, None, make_attack)
    setting = PGDSetting(20, rel_step_size=0.1)
    jobs = [PGDJob(setting, x, y, ids, e, 20, seed=3) for e in (0.02, 0.05, 0.1)]
    together = prober.pgd(jobs + [PGDJob(setting, x, y, ids, 0.05, 80, seed=4, restarts=3)], "probe")
    for job, tr in zip(jobs, together, strict=False):
        breakable = set((optimal_margin(linear_mnist, x, y, job.eps) < 0).nonzero().squeeze(1).tolist())
        broken = tr.outcome.broken_ids()
        assert broken <= breakable  # the engine-style verification never accepts a non-adversarial input
        assert len(broken) >= 0.9 * len(breakable)
        alone = prober.pgd([job], "probe")[0]
        assert alone.outcome.broken == tr.outcome.broken
        fooled, curve = reference_pgd(linear_mnist, x, y, ids, job.eps, job.steps, setting.alpha(job.eps), job.seed)
        assert broken == fooled
        assert len(curve) == job.steps + 1 and curve[-1] > curve[0]  # survivors' loss rises under the attack
        assert alone.survivor_loss == pytest.approx(curve, rel=1e-3, abs=1e-6)
        assert alone.survivor_loss == pytest.approx(tr.survivor_loss, rel=1e-4, nan_ok=True)
    assert len(together[-1].outcome.broken_ids()) >= len(together[1].outcome.broken_ids())  # 4x steps, 3 restarts


def test_model_facts_on_an_honest_linear_model(linear_mnist: Linear) -> None:
    x, y = load_split("mnist", "test")
    facts = model_facts(linear_mnist, x[:50], y[:50], torch.arange(50), 20)
    assert not facts.zero_grad_ids and not facts.nonfinite_grad_ids and not facts.disagree_ids
    assert not facts.probability_like and facts.median_grad_l1 > 0
