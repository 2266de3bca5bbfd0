"""Shared fixtures: known-answer models, small protocols and isolated workspaces."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from attacks.base import AttackOutput
from bench.orchestration.pool import usable_cpus
from bench.protocol.protocols import AttackSpec, Protocol


def _default_threads() -> int:
    """Torch threads per test process: the cores shared among pytest-xdist's workers, at most 2.

    GAUNTLET_TEST_THREADS overrides it (use 1 on a machine busy with other work: OpenMP threads
    spin-wait, and two of them beside another process run several times slower)."""
    if "GAUNTLET_TEST_THREADS" in os.environ:
        return int(os.environ["GAUNTLET_TEST_THREADS"])
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    return max(1, min(2, usable_cpus() // workers))


torch.set_num_threads(_default_threads())


class Linear(nn.Module):
    """f(x) = W flatten(x) + b: the optimal L-inf attack is closed-form."""

    def __init__(self, w: torch.Tensor, b: torch.Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w.clone(), requires_grad=False)
        self.b = nn.Parameter(b.clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.w.T + self.b


def optimal_margin(model: Linear, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """Per sample, min over the ball-and-box of min_{j != y} (z_y - z_j): exact for a linear model.

    For the pair (y, j) with d = w_y - w_j, the margin falls by |d_i| times the room each pixel has
    in the direction that lowers it: min(eps, x_i) when decreasing (d_i > 0), min(eps, 1 - x_i) when
    increasing. Negative means an adversarial input exists in the ball.
    """
    xf = x.flatten(1)
    out = []
    for i in range(xf.shape[0]):
        d = model.w[y[i]] - model.w  # (K, D)
        margin = d @ xf[i] + (model.b[y[i]] - model.b)
        room = torch.where(d > 0, xf[i].clamp(max=eps), (1 - xf[i]).clamp(max=eps))
        worst = margin - (d.abs() * room).sum(1)
        worst[y[i]] = float("inf")
        out.append(worst.min())
    return torch.stack(out)


@pytest.fixture
def linear_mnist() -> Linear:
    """A linear classifier fitted in a second on 2,000 MNIST training images (about 85% accurate)."""
    return fit_linear_mnist()


def fit_linear_mnist() -> Linear:
    """The ``linear_mnist`` model (deterministic: same weights on every call), for module-scoped fixtures.

    Fitted once per process (about half a second, which dozens of tests would pay each); every call gets
    its own copy of the weights."""
    w, b = _linear_mnist_weights()
    return Linear(w, b).eval()


@functools.lru_cache(maxsize=1)
def _linear_mnist_weights() -> tuple[torch.Tensor, torch.Tensor]:
    from bench.protocol.data import load_split

    x, y = load_split("mnist", "train")
    x, y = x[:2000].flatten(1), y[:2000]
    g = torch.Generator().manual_seed(0)
    w = torch.randn(10, 784, generator=g) * 0.01
    b = torch.zeros(10)
    w.requires_grad_(True)
    b.requires_grad_(True)
    opt = torch.optim.Adam([w, b], lr=0.05)
    for _ in range(60):
        loss = nn.functional.cross_entropy(x @ w.T + b, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return w.detach(), b.detach()


def small_protocol(n: int = 60, chunk: int = 20, eps: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2),
                   primary: float = 0.1, steps: int = 10) -> Protocol:
    return Protocol(
        f"test-mnist-{n}-{chunk}", "mnist", "test", n, "Linf", eps, primary,
        (
            AttackSpec("fgsm", "fgsm", {}, seed=0),
            AttackSpec("pgd-ce", "pgd", {"loss": "ce", "steps": steps, "rel_step_size": 0.25, "restarts": 2,
                                         "random_start": True}, seed=1),
            AttackSpec("pgd-cw", "pgd", {"loss": "cw", "steps": steps, "rel_step_size": 0.25, "restarts": 1,
                                         "random_start": True}, seed=2),
        ),
        chunk_size=chunk,
    )


QUANT_LEVELS = 8


class Quantised(nn.Module):
    """Linear classifier on inputs rounded to QUANT_LEVELS + 1 grey levels: zero input gradient everywhere."""

    def __init__(self, linear: Linear) -> None:
        super().__init__()
        self.linear = linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.round(x * QUANT_LEVELS) / QUANT_LEVELS)


def masked_problem(seed: int = 0, n: int = 60, side: int = 8) -> tuple[Quantised, Linear, torch.Tensor, torch.Tensor]:
    """A gradient-masked binary model, inputs on its grid, and labels it gets right at eps 0."""
    g = torch.Generator().manual_seed(seed)
    linear = Linear(torch.randn(2, side * side, generator=g), torch.zeros(2))
    x = torch.randint(0, QUANT_LEVELS + 1, (n, 1, side, side), generator=g).float() / QUANT_LEVELS
    model = Quantised(linear).eval()
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, linear, x, y


@pytest.fixture
def one_thread():
    """Attacks making many tiny passes: one thread avoids OpenMP contention on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class EscapingAttack:
    """A buggy attack that returns inputs outside the epsilon ball."""

    def run(self, model, x, y, epsilons, sample_ids=None, batch_size=None, context=None) -> AttackOutput:
        x_adv = torch.stack([(x + 2 * e + 1e-3).clamp(0, 1) for e in epsilons])
        return AttackOutput(x_adv=x_adv, success=torch.ones(len(epsilons), x.shape[0], dtype=torch.bool))


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "ws"
    monkeypatch.setenv("GAUNTLET_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def postgres():
    """One throwaway PostgreSQL server for the session (bench/store/throwaway_pg.py); without the server
    binaries the test is skipped, or failed where ``GAUNTLET_REQUIRE_POSTGRES=1`` (CI)."""
    from bench.store.throwaway_pg import MISSING, PostgresServer, find_binaries

    if find_binaries() is None:
        if os.environ.get("GAUNTLET_REQUIRE_POSTGRES") == "1":
            pytest.fail(MISSING)
        pytest.skip(MISSING)
    server = PostgresServer()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def new_db(request: pytest.FixtureRequest, tmp_path: Path):
    """A factory of new, empty databases (a SQLAlchemy URL per call): SQLite files or PostgreSQL databases
    on the session's server, so storage, resume and engine tests run against both."""
    if request.param == "sqlite":
        return lambda name="test": f"sqlite:///{tmp_path / name}.db"
    server = request.getfixturevalue("postgres")
    return lambda name="test": server.new_database()
