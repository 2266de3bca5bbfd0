"""A zoo of deliberately broken defenses: each must trip its sanity check; an honest model trips none.

All models share one small MLP adversarially trained here in seconds (PGD-AT at eps 0.1 on 3,000
MNIST training images). The broken ones wrap it: an input-quantising layer and a detached forward
(zero input gradients), a softmax output (probabilities), Gaussian input noise on every pass
(randomized, not declared), and logits scaled by 1,000 (a saturated softmax: the cross-entropy
gradient underflows to exactly zero). Each is evaluated under a small protocol with the engine,
then checked with the same code `bench evaluate` runs: the Python API.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from bench import api
from bench.checks.suite import CHECKS
from bench.protocol.protocols import AttackSpec, Protocol
from bench.report.summary import summarize
from bench.store.database import Store

EPS = (0.05, 0.1, 0.15, 0.2)
ZOO_PROTOCOL = Protocol(
    "test-zoo", "mnist", "test", 60, "Linf", EPS, 0.1,
    (AttackSpec("fgsm", "fgsm", {}, seed=0),
     AttackSpec("pgd-ce", "pgd", {"loss": "ce", "steps": 20, "rel_step_size": 0.1, "restarts": 1,
                                  "random_start": True}, seed=1),
     AttackSpec("pgd-cw", "pgd", {"loss": "cw", "steps": 20, "rel_step_size": 0.1, "restarts": 1,
                                  "random_start": True}, seed=2),
     AttackSpec("random-search", "random-search", {"n_draws": 200}, seed=3)),
    chunk_size=60,
)


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))


@pytest.fixture(scope="module")
def honest() -> nn.Module:
    """PGD-AT (eps 0.1, 5 steps of 0.03, random start) for 3 epochs of 3,000 images."""
    from bench.protocol.data import load_split

    torch.manual_seed(0)
    x, y = load_split("mnist", "train")
    x, y = x[:3000], y[:3000]
    model = _mlp()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(3):
        for i in range(0, 3000, 100):
            xb, yb = x[i:i + 100], y[i:i + 100]
            xa = (xb + torch.empty_like(xb).uniform_(-0.1, 0.1)).clamp(0, 1)
            for _ in range(5):
                xa.requires_grad_(True)
                g, = torch.autograd.grad(nn.functional.cross_entropy(model(xa), yb), xa)
                xa = torch.min(torch.max(xa.detach() + 0.03 * g.sign(), xb - 0.1), xb + 0.1).clamp(0, 1)
            loss = nn.functional.cross_entropy(model(xa), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


class Quantise(nn.Module):
    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.base = base

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(torch.round(x * 4) / 4)


class Detached(Quantise):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x.detach()) + 0.0 * x.flatten(1).sum(1, keepdim=True)


class Probabilities(Quantise):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.base(x), dim=1)


class Noisy(Quantise):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base((x + 0.3 * torch.randn_like(x)).clamp(0, 1))


class Saturated(Quantise):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 1000.0 * self.base(x)


def _checked(tmp_path: Path, model: nn.Module, name: str) -> dict[str, str]:
    """Evaluate and check the model through the Python API, as a defense author would."""
    store = Store(tmp_path / f"{name}.db")
    report = api.evaluate(model, ZOO_PROTOCOL, store=store, name=name.lower())
    s = summarize(store, store.run(report.run_id))
    assert {c.name for c in s.checks} == {c.name for c in report.checks} == set(CHECKS)  # stored and read back
    assert s.unreliable == report.unreliable == any(c.failed and c.severity == "unreliable" for c in report.checks)
    return {c.name: c.status for c in report.checks}


def test_honest_adversarially_trained_model_trips_no_check(tmp_path: Path, honest: nn.Module, one_thread) -> None:
    status = _checked(tmp_path, honest, "honest")
    assert "fail" not in status.values(), status
    assert status["bad-gradients"] == status["probability-outputs"] == status["randomized-forward"] == "pass"


@pytest.mark.parametrize(("wrapper", "flag"), [
    (Quantise, "bad-gradients"), (Detached, "bad-gradients"), (Probabilities, "probability-outputs"),
    (Noisy, "randomized-forward"), (Saturated, "bad-gradients"),
])
def test_broken_defense_trips_its_flag(tmp_path: Path, honest: nn.Module, wrapper: type[nn.Module], flag: str,
                                       one_thread) -> None:
    status = _checked(tmp_path, wrapper(honest).eval(), wrapper.__name__)
    assert status[flag] == "fail", status
