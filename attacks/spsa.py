"""SPSA with Adam (Uesato et al., 2018, "Adversarial Risk and the Dangers of Evaluating Against Weak
Attacks"): a gradient-free L-inf attack on the CW logit margin.

Norm: L-inf. Each step estimates the gradient of the margin loss ``max_{j != y} z_j - z_y`` at the
current iterate from ``n_samples`` forward passes: ``n_samples / 2`` Rademacher directions v, each
evaluated antithetically at ``x_t + delta v`` and ``x_t - delta v`` (clipped to the box); the estimate is the mean of
``(L(x_t + delta v) - L(x_t - delta v)) / (2 delta) * v``. An Adam step (learning rate ``lr``,
betas 0.9 / 0.999) then ascends the loss, and the iterate is projected onto the eps ball and the
[0, 1] box. The iterate starts at x (as in the paper); each step also evaluates the iterate itself,
so a sample costs at most ``steps * (n_samples + 1) + 1`` forward passes and no backward pass.
Per sample the first misclassified iterate is kept and the sample stops being attacked; otherwise
the iterate with the highest margin is returned.

Parameters: ``steps`` (100), ``n_samples`` (128, i.e. 64 antithetic pairs; must be even),
``delta`` (0.01), ``lr`` (0.01), ``eval_batch`` (most inputs per forward pass; memory only).
The directions come from one generator per (seed, 'spsa', eps, sample id), consumed identically
whatever the batch, so results do not depend on batch size or batch composition.

Example: ``SPSA(steps=100).run(model, x, y, [0.3])``.
"""

from __future__ import annotations

import torch
from torch import nn

from attacks.base import Attack, AttackContext, BatchResult, derive_seed, margin_loss, project_linf
from attacks.random_search import forward_chunks

BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


class SPSA(Attack):
    name = "spsa"
    family = "fixed-budget"
    norm = "linf"
    kind = "black-box"

    def __init__(self, *, seed: int = 0, steps: int = 100, n_samples: int = 128, delta: float = 0.01,
                 lr: float = 0.01, eval_batch: int = 4096) -> None:
        super().__init__(seed=seed)
        if steps < 1 or n_samples < 2 or n_samples % 2:
            raise ValueError("steps must be >= 1 and n_samples an even number >= 2")
        if delta <= 0 or lr <= 0:
            raise ValueError("delta and lr must be positive")
        self.steps, self.n_samples, self.delta, self.lr = int(steps), int(n_samples), float(delta), float(lr)
        self.eval_batch = int(eval_batch)

    def attack_batch(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, ids: torch.Tensor,
                     context: AttackContext) -> BatchResult:
        with torch.no_grad():
            return BatchResult(*self._attack(model, x, y, eps, ids))

    def _attack(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
                ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = x.shape[0]
        best_x = x.clone()
        best_loss = torch.full((n,), float("-inf"), device=x.device)
        done = torch.zeros(n, dtype=torch.bool, device=x.device)
        if n == 0:
            return best_x, done
        gens = []
        for sid in ids.tolist():
            g = torch.Generator(device=x.device)
            g.manual_seed(derive_seed(self.seed, self.name, eps, int(sid)))
            gens.append(g)
        active = torch.arange(n, device=x.device)
        xa = x.clone()
        m = torch.zeros_like(x)
        v = torch.zeros_like(x)
        pairs = self.n_samples // 2
        shape = x.shape[1:]
        for step in range(self.steps + 1):
            logits = forward_chunks(model, xa, self.eval_batch)
            y0 = y[active]
            loss = margin_loss(logits, y0)
            fooled = logits.argmax(1) != y0
            improve = loss > best_loss[active]
            take = fooled | improve
            best_x[active[take]] = xa[take]
            best_loss[active[take]] = loss[take]
            done[active[fooled]] = True
            keep = ~fooled
            if step == self.steps or eps <= 0 or not bool(keep.any()):
                break
            active, xa, m, v = active[keep], xa[keep], m[keep], v[keep]
            a = active.numel()
            dirs = torch.stack([
                torch.randint(0, 2, (pairs, *shape), generator=gens[i], device=x.device).to(x.dtype) * 2 - 1
                for i in active.tolist()
            ])  # (A, P, C, H, W) Rademacher
            # probes stay inside the [0, 1] box (some defenses reject anything else)
            probe = torch.cat([xa[:, None] + self.delta * dirs, xa[:, None] - self.delta * dirs], dim=1).clamp(0, 1)
            yy = y[active].repeat_interleave(2 * pairs)
            pl = margin_loss(forward_chunks(model, probe.reshape(-1, *shape), self.eval_batch), yy).view(a, 2 * pairs)
            diff = (pl[:, :pairs] - pl[:, pairs:]) / (2 * self.delta)  # (A, P)
            grad = (diff.view(a, pairs, *[1] * len(shape)) * dirs).mean(1)
            t = step + 1
            m = BETAS[0] * m + (1 - BETAS[0]) * grad
            v = BETAS[1] * v + (1 - BETAS[1]) * grad * grad
            m_hat = m / (1 - BETAS[0] ** t)
            v_hat = v / (1 - BETAS[1] ** t)
            xa = project_linf(xa + self.lr * m_hat / (v_hat.sqrt() + ADAM_EPS), x[active], eps)
        return best_x, done
