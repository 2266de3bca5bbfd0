"""Training recipes: an objective (loss + training attack) and per-dataset budgets.

A budget is a full, explicit schedule. ``paper`` budgets carry the papers' hyperparameters;
``quick`` budgets train on a 2-core CPU in a few minutes (see each entry for the choices made);
``tiny`` budgets exist for smoke tests only.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from types import MappingProxyType
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from attacks.signed_gradient import Scored, StepSize, signed_gradient_ascent
from defenses import losses

OBJECTIVES = ("ce", "madry", "pat", "trades", "mart", "mma", "dynamic", "rce", "adp")
BASE_LOSS_KEYS = ("ls", "entm", "squeeze")  # regularisers of the CE term (see defenses.losses.base_loss)
PARAM_KEYS = {
    "ce": {*BASE_LOSS_KEYS, "noise_sigma"},
    "madry": set(),
    "pat": {"alpha", *BASE_LOSS_KEYS},
    "trades": {"beta", *BASE_LOSS_KEYS},
    "mart": {"lambda"},
    "mma": {"max_margin", "bisection_steps"},
    "dynamic": {"c_max", "c_ramp"},
    "rce": set(),
    "adp": {"alpha", "beta", "det_offset"},
}


@dataclass(frozen=True)
class Budget:
    """One training schedule. ``epochs`` may be fractional (a prefix of a shuffled epoch).

    ``milestones`` are epochs at which the learning rate is divided by 10 (piecewise schedule);
    with ``schedule='onecycle'`` the rate ramps up linearly for 20% of training then down to 0.
    The training attack is L-inf PGD of ``attack_steps`` steps of ``attack_step_size`` within
    ``eps``; ``eps_warmup`` is the fraction of training over which eps (and the step size) ramps
    linearly from 0 to full, which avoids the early collapse of MNIST adversarial training.
    """

    epochs: float
    batch_size: int
    lr: float
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "piecewise"
    milestones: tuple[float, ...] = ()
    eps: float = 0.0
    attack_steps: int = 0
    attack_step_size: float = 0.0
    eps_warmup: float = 0.0
    augment: bool = False
    train_samples: int | None = None
    source: str = ""

    def canonical(self) -> dict[str, Any]:
        d = asdict(self)
        d["milestones"] = list(self.milestones)
        return d


@dataclass(frozen=True)
class Recipe:
    """Objective name + its weights + budgets per dataset and budget name."""

    objective: str
    params: Mapping[str, float] = field(default_factory=dict)
    budgets: Mapping[str, Mapping[str, Budget]] = field(default_factory=dict)
    dataset_params: Mapping[str, Mapping[str, float]] = field(default_factory=dict)  # per-dataset overrides

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {self.objective!r}; known: {', '.join(OBJECTIVES)}")
        keys = set(self.params).union(*[set(v) for v in self.dataset_params.values()])
        unknown = keys - PARAM_KEYS[self.objective]
        if unknown:
            raise ValueError(f"objective {self.objective!r} takes no parameter(s) {', '.join(sorted(unknown))}")
        object.__setattr__(self, "params", MappingProxyType(dict(self.params)))

    def params_for(self, dataset: str) -> dict[str, float]:
        """The objective's weights on ``dataset`` (e.g. a noise sigma given on another pixel scale)."""
        return {**self.params, **self.dataset_params.get(dataset, {})}

    def budget(self, dataset: str, name: str) -> Budget | None:
        return self.budgets.get(dataset, {}).get(name)

    def canonical(self, dataset: str, budget: str) -> dict[str, Any]:
        b = self.budget(dataset, budget)
        return {"objective": self.objective, "params": dict(sorted(self.params_for(dataset).items())),
                "dataset": dataset, "budget": budget, "schedule": b.canonical() if b else None}


def _pgd_ce(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int, alpha: float,
            gen: torch.Generator) -> torch.Tensor:
    """Training-time PGD on CE with a uniform random start (Madry / PAT / MART): ``steps`` steps of the
    shared core, no early stop, the last iterate."""
    noise = torch.rand(x.shape, generator=gen).to(x.device) * 2 - 1
    start = (x + eps * noise).clamp(0, 1)

    def ce(xa: torch.Tensor, logits: torch.Tensor, rows: torch.Tensor) -> Scored:
        return Scored(F.cross_entropy(logits, y[rows], reduction="sum"))

    return signed_gradient_ascent(model, x, start, eps, alpha, steps, ce, final=False)


def _pgd_kl(model: nn.Module, x: torch.Tensor, eps: float, steps: int, alpha: float,
            gen: torch.Generator) -> torch.Tensor:
    """TRADES inner maximisation: maximise KL(p(x) || p(x')) from x + 0.001 * N(0, 1)."""
    with torch.no_grad():
        logits_clean = model(x)
    start = (x + 0.001 * torch.randn(x.shape, generator=gen).to(x.device)).clamp(0, 1)

    def kl(xa: torch.Tensor, logits: torch.Tensor, rows: torch.Tensor) -> Scored:
        return Scored(losses.kl_per_sample(logits_clean[rows], logits).sum())

    return signed_gradient_ascent(model, x, start, eps, alpha, steps, kl, final=False)


def _pgd_fosc(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int, alpha: float,
              gen: torch.Generator, c_t: float) -> torch.Tensor:
    """Dynamic AT's inner maximisation (Wang et al., 2019): PGD on CE that stops per sample once the
    first-order stationarity condition FOSC = eps * ||g||_1 - <x_k - x, g> falls to c_t or below (a
    stopped sample keeps its iterate; the loop ends when every sample has stopped)."""
    noise = torch.rand(x.shape, generator=gen).to(x.device) * 2 - 1
    start = (x + eps * noise).clamp(0, 1)
    active = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)

    def ce(xa: torch.Tensor, logits: torch.Tensor, rows: torch.Tensor) -> Scored:
        return Scored(F.cross_entropy(logits, y[rows], reduction="sum"))

    def moves(rows: torch.Tensor, xa: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        fosc = eps * grad.abs().flatten(1).sum(1) - ((xa - x[rows]) * grad).flatten(1).sum(1)
        active[rows] &= fosc > c_t
        return active[rows]

    return signed_gradient_ascent(model, x, start, eps, alpha, steps, ce, moves=moves, final=False)


def _an_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, max_eps: float, steps: int, alpha: float,
            gen: torch.Generator, bisection_steps: int) -> torch.Tensor:
    """MMA's margin search (Ding et al., 2020): PGD at the largest margin ``max_eps``, then per sample a
    bisection on the segment from x to the PGD point for the closest misclassified point (the
    shortest successful perturbation found); samples PGD cannot break keep the PGD point."""
    x_pgd = _pgd_ce(model, x, y, max_eps, steps, alpha, gen)
    delta = x_pgd - x
    shape = (-1, *[1] * (x.dim() - 1))
    with torch.no_grad():
        fooled = model(x_pgd).argmax(1) != y
        lo = torch.zeros(x.shape[0], device=x.device)
        hi = torch.ones(x.shape[0], device=x.device)
        for _ in range(bisection_steps):
            mid = (lo + hi) / 2
            wrong = model(x + mid.view(shape) * delta).argmax(1) != y
            hi = torch.where(wrong, mid, hi)
            lo = torch.where(wrong, lo, mid)
        t = torch.where(fooled, hi, torch.ones_like(hi))
    return (x + t.view(shape) * delta).clamp(0, 1).detach()


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """4-pixel-padding random crop and horizontal flip (the papers' CIFAR-10 augmentation)."""
    n, _, h, w = x.shape
    padded = F.pad(x, (4, 4, 4, 4))
    dx = torch.randint(0, 9, (n,), generator=gen).tolist()
    dy = torch.randint(0, 9, (n,), generator=gen).tolist()
    flip = (torch.rand(n, generator=gen) < 0.5).tolist()
    out = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
    return torch.where(torch.tensor(flip).view(n, 1, 1, 1).to(x.device), out.flip(3), out)


def _lr_at(b: Budget, progress_epochs: float) -> float:
    if b.schedule == "onecycle":
        frac = progress_epochs / b.epochs
        return b.lr * (frac / 0.2 if frac < 0.2 else max(0.0, (1 - frac) / 0.8))
    if b.schedule == "constant":
        return b.lr
    return b.lr * 0.1 ** sum(progress_epochs >= m for m in b.milestones)


def train_model(
    model: nn.Module, recipe: Recipe, budget: Budget, x_train: torch.Tensor, y_train: torch.Tensor,
    seed: int, device: torch.device, on_step: Callable[[int, int, float], None] | None = None,
    dataset: str | None = None,
) -> dict[str, float]:
    """Train ``model`` in place with ``recipe`` under ``budget``; returns summary metrics.

    Deterministic for a given seed on a given device: shuffling, random starts and augmentation
    draw from one ``torch.Generator``.
    """
    gen = torch.Generator().manual_seed(seed)
    if budget.train_samples is not None:
        x_train, y_train = x_train[: budget.train_samples], y_train[: budget.train_samples]
    n = x_train.shape[0]
    steps_per_epoch = math.ceil(n / budget.batch_size)
    total_steps = max(1, round(budget.epochs * steps_per_epoch))
    params = [p for p in model.parameters() if p.requires_grad]
    if budget.optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(params, lr=budget.lr, weight_decay=budget.weight_decay)
    else:
        opt = torch.optim.SGD(params, lr=budget.lr, momentum=budget.momentum, weight_decay=budget.weight_decay)
    p = recipe.params_for(dataset) if dataset else dict(recipe.params)
    full_model = model
    # A detector trains its classifier only (e.g. an RCE net, whose logits it reverses afterwards).
    model = model.training_target() if hasattr(model, "training_target") else model
    # channels_last speeds CPU convolutions by 5-25% here; weights are saved contiguous either way.
    model.to(device=device, memory_format=torch.channels_last)
    t0 = time.perf_counter()
    order = torch.randperm(n, generator=gen)
    running = 0.0
    for step in range(total_steps):
        pos = (step % steps_per_epoch) * budget.batch_size
        if step and step % steps_per_epoch == 0:
            order = torch.randperm(n, generator=gen)
        idx = order[pos:pos + budget.batch_size]
        x = x_train[idx].to(device).contiguous(memory_format=torch.channels_last)
        y = y_train[idx].to(device)
        if budget.augment:
            x = _augment(x, gen)
        if p.get("noise_sigma"):
            # Gaussian noise augmentation (Shafahi et al.): train on x + sigma * N(0, 1), not clipped.
            x = x + p["noise_sigma"] * torch.randn(x.shape, generator=gen).to(device)
        progress = step / total_steps
        for group in opt.param_groups:
            group["lr"] = _lr_at(budget, step / steps_per_epoch)
        ramp = min(1.0, progress / budget.eps_warmup) if budget.eps_warmup > 0 else 1.0
        eps = budget.eps * ramp
        alpha = StepSize.resolve(budget.attack_step_size * ramp, None).alpha(eps)  # absolute, ramped with eps
        x_adv = None
        if recipe.objective not in ("ce", "rce", "adp") and eps > 0:
            model.eval()
            if recipe.objective == "trades":
                x_adv = _pgd_kl(model, x, eps, budget.attack_steps, alpha, gen)
            elif recipe.objective == "mma":
                # the largest margin plays the role of eps; the step size scales with it
                scale = p.get("max_margin", eps) / budget.eps
                x_adv = _an_pgd(model, x, y, eps * scale, budget.attack_steps, alpha * scale, gen,
                                int(p.get("bisection_steps", 10)))
            elif recipe.objective == "dynamic":
                # c_t falls linearly from c_max to 0 over the first c_ramp of training
                c_t = p.get("c_max", 0.5) * max(0.0, 1.0 - progress / p.get("c_ramp", 0.8))
                x_adv = _pgd_fosc(model, x, y, eps, budget.attack_steps, alpha, gen, c_t)
            else:
                x_adv = _pgd_ce(model, x, y, eps, budget.attack_steps, alpha, gen)
        if x_adv is None:
            x_adv = x
        model.train()
        base = {k: float(p[k]) for k in BASE_LOSS_KEYS if k in p}
        if recipe.objective == "ce":
            loss = losses.base_loss(model(x), y, **base)
        elif recipe.objective == "rce":
            loss = losses.rce(model(x), y)
        elif recipe.objective == "adp":
            loss = losses.adp(model.member_logits(x), y, p.get("alpha", 2.0), p.get("beta", 0.5),
                              p.get("det_offset", 1e-6))
        elif recipe.objective in ("madry", "dynamic"):
            loss = losses.ce(model(x_adv), y)
        else:
            lc, la = model(x), model(x_adv)  # separate passes keep BatchNorm statistics per input kind
            if recipe.objective == "pat":
                loss = losses.pat(lc, la, y, p.get("alpha", 0.5), **base)
            elif recipe.objective == "trades":
                loss = losses.trades(lc, la, y, p["beta"], **base)
            elif recipe.objective == "mma":
                loss = losses.mma(lc, la, y)
            else:
                loss = losses.mart(lc, la, y, p["lambda"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        running = 0.98 * running + 0.02 * float(loss.detach()) if step else float(loss.detach())
        if on_step is not None:
            on_step(step + 1, total_steps, running)
    full_model.to(memory_format=torch.contiguous_format).eval()
    return {"train_loss": running, "train_seconds": time.perf_counter() - t0, "steps": float(total_steps)}
