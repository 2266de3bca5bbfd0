"""The checks' batched PGD probe on a linear model: sound (breaks only breakable samples), strong
(breaks nearly all of them), and independent of which jobs share its batch."""

from __future__ import annotations

import pytest
import torch

from attacks import make_attack
from bench.checks.probes import PGDJob, PGDSetting, Prober, model_facts
from bench.protocol.data import load_split
from tests.conftest import Linear, optimal_margin


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
        assert alone.survivor_loss == pytest.approx(alone.survivor_loss, nan_ok=True)
        assert alone.survivor_loss == pytest.approx(tr.survivor_loss, rel=1e-4, nan_ok=True)
    assert len(together[-1].outcome.broken_ids()) >= len(together[1].outcome.broken_ids())  # 4x steps, 3 restarts


def test_model_facts_on_an_honest_linear_model(linear_mnist: Linear) -> None:
    x, y = load_split("mnist", "test")
    facts = model_facts(linear_mnist, x[:50], y[:50], torch.arange(50), 20)
    assert not facts.zero_grad_ids and not facts.nonfinite_grad_ids and not facts.disagree_ids
    assert not facts.probability_like and facts.median_grad_l1 > 0
