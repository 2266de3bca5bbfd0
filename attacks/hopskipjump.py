"""HopSkipJump (Chen, Jordan & Wainwright, 2020), L-inf variant: a decision-based black-box attack.

Norm: L-inf. Only the predicted label of the model is used (never logits or gradients), so masked or
zero gradients do not stop it. HSJA minimises the L-inf distance of an adversarial point to x:

1. start: uniform-noise images U[0, 1]^D (up to ``init_attempts``, seeded per sample) until one is
   misclassified, then a binary search on the segment between x and it (blend factor to 1e-3);
2. boundary search: a binary search on the radius r of the L-inf projection ``clip(x', x - r, x + r)``
   of the current adversarial point x' until the bracket is below theta * min(1, dist)
   (theta = gamma / d^2, d = number of input values, as in the paper's L-inf setting);
3. gradient-direction estimate at the boundary point from ``min(init_evals * sqrt(t), max_evals)``
   label queries at points ``x_t + delta u`` (u uniform in [-1, 1]^d, normalised to unit L2 norm;
   delta = 0.1 at t = 1, then d * theta * dist), with the paper's baseline (mean) subtraction;
4. geometric step search: step size dist / sqrt(t) along the sign of the estimate, halved until
   the point is adversarial; then 2. again, and t += 1.

Queries are counted per sample (every input of every forward pass, the clean check, the start search
and all searches included) and the attack stops at ``max_queries``; a gradient estimate is shrunk to
leave ``RESERVE`` queries for the step and boundary searches that follow it. The path does not depend
on eps, so each sample is attacked once and all epsilons are derived from the closest adversarial
point found: when its distance is <= eps it is returned (success), otherwise its L-inf projection onto
the eps ball (clipped to the box) is returned and one extra forward pass per sample and eps checks
whether it is still misclassified. A sample therefore costs at most ``max_queries + K`` forward
passes for K epsilons. Randomness: one generator per (seed, 'hopskipjump', sample id), so results do
not depend on batch size, batch composition or eps. ``eval_batch`` bounds inputs per forward (memory).

Example: ``HopSkipJump(max_queries=1000).run(model, x, y, [0.03, 0.1])``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from attacks.base import Attack, AttackContext, BatchResult, derive_seed, project_linf
from attacks.random_search import forward_chunks

BLEND_TOL = 1e-3  # precision of the initial blend-factor binary search
RESERVE = 10  # queries a gradient estimate leaves for the step and boundary searches after it
MAX_HALVINGS = 30  # geometric step search gives up (keeps the boundary point) after this many


def _linf(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).flatten(1).abs().amax(1)


def _clip_radius(p: torch.Tensor, x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Per-sample L-inf projection of p onto the ball of radius r (N,) around x."""
    r = r.view(-1, *[1] * (x.dim() - 1)).to(x.dtype)
    return torch.minimum(torch.maximum(p, x - r), x + r)


class HopSkipJump(Attack):
    name = "hopskipjump"
    family = "fixed-budget"
    norm = "linf"
    kind = "black-box"

    def __init__(self, *, seed: int = 0, max_queries: int = 1000, init_evals: int = 100, max_evals: int = 1000,
                 init_attempts: int = 100, gamma: float = 1.0, eval_batch: int = 4096) -> None:
        super().__init__(seed=seed)
        if max_queries < 1 or init_evals < 1 or max_evals < 1 or init_attempts < 1:
            raise ValueError("max_queries, init_evals, max_evals and init_attempts must be >= 1")
        self.max_queries, self.init_evals, self.max_evals = int(max_queries), int(init_evals), int(max_evals)
        self.init_attempts, self.gamma, self.eval_batch = int(init_attempts), float(gamma), int(eval_batch)

    def attack_epsilons(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, epsilons: list[float],
                        ids: torch.Tensor, bs: int, context: AttackContext) -> list[BatchResult]:
        """The path does not depend on eps: each batch is attacked once, then every eps is derived from the
        closest point found (hence the whole eps list); the checks of projected points span the batches."""
        with torch.no_grad():
            parts = [self._attack(model, x[s:s + bs], y[s:s + bs], ids[s:s + bs]) for s in range(0, x.shape[0], bs)]
            best = torch.cat([p[0] for p in parts]) if parts else x.clone()
            dist = torch.cat([p[1] for p in parts]) if parts else torch.zeros(0, device=x.device)
            out = []
            for eps in epsilons:
                proj = project_linf(best, x, eps)  # the identity where dist <= eps
                success = dist <= eps
                check = (~success & torch.isfinite(dist)).nonzero().squeeze(1)
                if check.numel():
                    pred = forward_chunks(model, proj[check], bs).argmax(1)
                    success[check] = pred != y[check]
                out.append(BatchResult(proj, success))
        return out

    def _attack(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Closest adversarial point found per sample and its L-inf distance (inf: none found)."""
        n, dev, shape = x.shape[0], x.device, x.shape[1:]
        best = x.clone()
        dist = torch.full((n,), float("inf"), device=dev)
        if n == 0:
            return best, dist
        d = x[0].numel()
        theta = self.gamma / d ** 2
        used = torch.zeros(n, dtype=torch.long, device=dev)

        def left() -> torch.Tensor:
            return self.max_queries - used

        def query(points: torch.Tensor, owner: torch.Tensor) -> torch.Tensor:
            """Is each point misclassified? Charges one query to its owner sample."""
            used.index_add_(0, owner, torch.ones_like(owner))
            return forward_chunks(model, points, self.eval_batch).argmax(1) != y[owner]

        def boundary(cand: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            """Binary search on the L-inf radius between x[idx] and the adversarial points cand."""
            x0 = x[idx]
            hi = _linf(cand, x0)
            lo = torch.zeros_like(hi)
            thr = torch.clamp(hi * theta, max=theta)
            while True:
                sub = ((hi - lo > thr) & (left()[idx] > 0)).nonzero().squeeze(1)
                if sub.numel() == 0:
                    break
                mid = (hi[sub] + lo[sub]) / 2
                hit = query(_clip_radius(cand[sub], x0[sub], mid), idx[sub])
                hi[sub[hit]] = mid[hit]
                lo[sub[~hit]] = mid[~hit]
            out = _clip_radius(cand, x0, hi)
            return out, _linf(out, x0)

        def record(points: torch.Tensor, dists: torch.Tensor, idx: torch.Tensor) -> None:
            better = dists < dist[idx]
            best[idx[better]] = points[better]
            dist[idx[better]] = dists[better]

        gens = []
        for sid in ids.tolist():
            g = torch.Generator(device=dev)
            g.manual_seed(derive_seed(self.seed, self.name, int(sid)))
            gens.append(g)

        clean_adv = query(x, torch.arange(n, device=dev))
        dist[clean_adv] = 0.0

        # 1. a starting adversarial point: uniform noise, then a blend-factor binary search towards x
        start = x.clone()
        searching = ~clean_adv
        for _ in range(self.init_attempts):
            idx = (searching & (left() > 0)).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            noise = torch.stack([torch.rand(shape, generator=gens[i], device=dev, dtype=x.dtype) for i in idx.tolist()])
            hit = query(noise, idx)
            start[idx[hit]] = noise[hit]
            searching[idx[hit]] = False
        live = ~clean_adv & ~searching
        lo = torch.zeros(n, device=dev, dtype=x.dtype)
        hi = torch.ones(n, device=dev, dtype=x.dtype)

        def blend(i: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
            a = a.view(-1, *[1] * len(shape))
            return (1 - a) * x[i] + a * start[i]

        while True:
            idx = (live & (hi - lo > BLEND_TOL) & (left() > 0)).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            mid = (hi[idx] + lo[idx]) / 2
            hit = query(blend(idx, mid), idx)
            hi[idx[hit]] = mid[hit]
            lo[idx[~hit]] = mid[~hit]
        idx = live.nonzero().squeeze(1)
        if idx.numel() == 0:
            return best, dist
        xb = x.clone()
        db = dist.clone()
        xb[idx], db[idx] = boundary(blend(idx, hi[idx]), idx)
        record(xb[idx], db[idx], idx)

        # 2.-4. iterate: gradient-direction estimate, geometric step search, boundary search
        t = 1
        while True:
            nominal = min(int(self.init_evals * math.sqrt(t)), self.max_evals)
            n_evals = torch.clamp(torch.clamp(left() - RESERVE, min=0), max=nominal)
            live &= n_evals >= 1
            idx = live.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            update = self._direction(query, xb, db, idx, n_evals, t, d * theta, gens)
            step = db[idx] / math.sqrt(t)
            cand = xb[idx].clone()
            pending = torch.ones(idx.numel(), dtype=torch.bool, device=dev)
            for _ in range(MAX_HALVINGS):
                sub = (pending & (left()[idx] > 0)).nonzero().squeeze(1)
                if sub.numel() == 0:
                    break
                s = step[sub].view(-1, *[1] * len(shape))
                pts = (xb[idx[sub]] + s * update[sub]).clamp(0.0, 1.0)
                hit = query(pts, idx[sub])
                cand[sub[hit]] = pts[hit]
                pending[sub[hit]] = False
                step[sub[~hit]] /= 2
            xb[idx], db[idx] = boundary(cand, idx)
            record(xb[idx], db[idx], idx)
            t += 1
        return best, dist

    def _direction(self, query, xb: torch.Tensor, db: torch.Tensor, idx: torch.Tensor, n_evals: torch.Tensor,
                   t: int, delta_scale: float, gens: list[torch.Generator]) -> torch.Tensor:
        """Sign of the Monte-Carlo estimate of the boundary's normal at xb[idx] (points away from y)."""
        shape = xb.shape[1:]
        dev = xb.device
        points, dirs, owners = [], [], []
        for i in idx.tolist():
            b = int(n_evals[i])
            u = torch.rand((b, *shape), generator=gens[i], device=dev, dtype=xb.dtype) * 2 - 1
            u = u / u.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * len(shape))
            delta = 0.1 if t == 1 else float(delta_scale * db[i])
            p = (xb[i] + delta * u).clamp(0.0, 1.0)
            points.append(p)
            dirs.append((p - xb[i]) / delta)
            owners.append(torch.full((b,), i, dtype=torch.long, device=dev))
        hit = query(torch.cat(points), torch.cat(owners))
        phi = hit.to(xb.dtype) * 2 - 1
        out = []
        start = 0
        for u in dirs:
            f = phi[start:start + u.shape[0]]
            start += u.shape[0]
            mean = f.mean()
            if abs(float(mean)) < 1.0:
                f = f - mean  # baseline subtraction (variance reduction), as in the paper
            out.append((f.view(-1, *[1] * len(shape)) * u).mean(0))
        return torch.stack(out).sign()
