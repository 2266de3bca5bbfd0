"""Random search in the L-inf ball: a gradient-free sanity check that exposes gradient masking.

Norm: L-inf. Following the uncertainty paper (../shared/papers/000_2dab57ef017d8076.txt, appendix C.1: "random search
attacks for 10,000 times on each image"), each sample gets ``n_draws`` random points of the ball of
radius eps intersected with the [0, 1] box. A fraction ``corner_fraction`` of them are corners of
that set (per pixel the lowest or the highest allowed value, i.e. ``x + eps * sign(u)`` clipped, with
random signs); the rest are uniform in it (per pixel uniform on ``[max(0, x - eps), min(1, x + eps)]``).
Corner and uniform draws are interleaved (draw 0 is a corner when the fraction is > 0), so an early
success is found as soon as possible. Per sample the search stops at the first misclassified draw
(by draw index); if none is found the draw with the highest CW margin is returned. Only forward
passes are used (under ``torch.no_grad``), so a zero or useless input gradient does not matter.

Seeding: draw ``j`` of a sample comes from block ``j // BLOCK`` of a generator seeded by
(seed, 'random-search', eps, sample id, block), so the draws, and therefore the result, depend neither
on the batch size, nor on ``batch_draws`` (the number of inputs per forward pass, memory only), nor on
the other samples. Each sample also costs one clean forward pass (already misclassified: returned as is).

Example: ``RandomSearch(n_draws=10_000).run(model, x, y, [8 / 255])``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from attacks.base import Attack, AttackContext, BatchResult, derive_seed, margin_loss

BLOCK = 16  # draws per seeded block; results never depend on it except through this constant


def forward_chunks(model: nn.Module, xs: torch.Tensor, chunk: int) -> torch.Tensor:
    """Logits of ``xs`` computed ``chunk`` inputs at a time (memory only)."""
    if xs.shape[0] == 0:
        return model(xs)
    chunk = max(int(chunk), 1)
    return torch.cat([model(xs[s:s + chunk]) for s in range(0, xs.shape[0], chunk)])


def is_corner(index: torch.Tensor, fraction: float) -> torch.Tensor:
    """Which draw indices are corners: evenly interleaved, ``fraction`` of them, draw 0 first."""
    idx = index.double()
    return torch.ceil((idx + 1) * fraction - 1e-9) > torch.ceil(idx * fraction - 1e-9)


class RandomSearch(Attack):
    name = "random-search"
    family = "fixed-budget"
    norm = "linf"
    kind = "black-box"

    def __init__(self, *, seed: int = 0, n_draws: int = 10_000, corner_fraction: float = 0.5,
                 batch_draws: int = 2048) -> None:
        super().__init__(seed=seed)
        if n_draws < 1 or batch_draws < 1:
            raise ValueError("n_draws and batch_draws must be >= 1")
        if not 0.0 <= corner_fraction <= 1.0:
            raise ValueError("corner_fraction must lie in [0, 1]")
        self.n_draws, self.corner_fraction, self.batch_draws = int(n_draws), float(corner_fraction), int(batch_draws)

    def attack_batch(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, ids: torch.Tensor,
                     context: AttackContext) -> BatchResult:
        with torch.no_grad():
            return BatchResult(*self._search(model, x, y, eps, ids))

    def _block(self, x: torch.Tensor, eps: float, sid: int, block: int) -> torch.Tensor:
        """Draws ``block * BLOCK ... + BLOCK - 1`` of one sample x (C, H, W): (BLOCK, C, H, W)."""
        gen = torch.Generator(device=x.device)
        gen.manual_seed(derive_seed(self.seed, self.name, eps, sid, block))
        shape = (BLOCK, *x.shape)
        r = torch.rand(shape, generator=gen, device=x.device, dtype=x.dtype)
        up = torch.rand(shape, generator=gen, device=x.device) < 0.5
        lo, hi = (x - eps).clamp(0.0, 1.0), (x + eps).clamp(0.0, 1.0)
        corner = torch.where(up, hi, lo)
        uniform = lo + (hi - lo) * r
        index = torch.arange(block * BLOCK, (block + 1) * BLOCK, device=x.device)
        pick = is_corner(index, self.corner_fraction).view(-1, *[1] * x.dim())
        return torch.where(pick, corner, uniform)

    def _search(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
                ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = x.shape[0]
        best_x = x.clone()
        if n == 0:
            return best_x, torch.zeros(0, dtype=torch.bool, device=x.device)
        logits = forward_chunks(model, x, self.batch_draws)
        done = logits.argmax(1) != y
        best_loss = torch.full((n,), float("-inf"), device=x.device)
        if eps <= 0:
            return best_x, done
        n_blocks = math.ceil(self.n_draws / BLOCK)
        block = 0
        while block < n_blocks:
            active = (~done).nonzero().squeeze(1)
            if active.numel() == 0:
                break
            # as many whole blocks per sample as fit into one forward of batch_draws inputs
            per = max(1, min(self.batch_draws // (BLOCK * active.numel()), n_blocks - block))
            draws = torch.stack([
                torch.cat([self._block(x[i], eps, int(ids[i]), b) for b in range(block, block + per)])
                for i in active.tolist()
            ])  # (A, per * BLOCK, C, H, W)
            first = block * BLOCK
            m = min(per * BLOCK, self.n_draws - first)
            draws = draws[:, :m]
            a = active.numel()
            flat = draws.reshape(a * m, *x.shape[1:])
            yy = y[active].repeat_interleave(m)
            logits = forward_chunks(model, flat, self.batch_draws)
            loss = margin_loss(logits, yy).view(a, m)
            fooled = (logits.argmax(1) != yy).view(a, m)
            hit = fooled.any(1)
            j_hit = fooled.float().argmax(1)  # first misclassified draw
            j_best = loss.argmax(1)  # first draw of highest loss
            improve = loss.gather(1, j_best[:, None]).squeeze(1) > best_loss[active]
            j = torch.where(hit, j_hit, j_best)
            take = hit | improve
            rows = torch.arange(a, device=x.device)
            best_x[active[take]] = draws[rows[take], j[take]]
            best_loss[active[take]] = loss[rows[take], j[take]]
            done[active[hit]] = True
            block += per
        return best_x, done
