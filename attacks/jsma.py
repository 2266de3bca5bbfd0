"""Jacobian-based Saliency Map Attack (JSMA, Papernot et al., EuroS&P 2016): a targeted L0 attack.

Norm: L0. Features are the input's elements (C * H * W values; pixels on 1-channel MNIST). Each
iteration computes, on the logits Z (Papernot et al.'s choice; C&W call it JSMA-Z), alpha =
dZ_t/dx and beta = sum_{j != t} dZ_j/dx, and picks the pair of features (p, q) in the search domain
that maximises -(alpha_p + alpha_q) * (beta_p + beta_q) subject to alpha_p + alpha_q > 0 and
beta_p + beta_q < 0 (signs flipped for ``theta < 0``): the paper's pairwise saliency map. Both
features move by ``theta`` (default +1.0: set to 1) and are clipped to [0, 1]; a feature leaves the
search domain once it reaches the clip bound it moves towards (the domain starts as all features
that can still move that way). A sample stops as soon as the model predicts its target, when no
admissible pair is left (failure), or after ``floor(max_fraction * C*H*W) // 2`` iterations, so at
most ``floor(max_fraction * C*H*W)`` features change (``max_fraction`` is the paper's gamma, default
0.1: 78 of MNIST's 784 pixels; the RCE paper caps JSMA at 100 iterations on MNIST).

Targets (``target``): 'random' (default, as in the RCE paper: uniform over classes != y, seeded per
(seed, 'jsma', sample id) so results do not depend on the batch), 'next' ((y + 1) mod K) or
'least-likely' (argmin of the clean logits). ``run_l0`` returns a ``MinNormOutput`` with
norm 'L0', distance = number of features changed (inf where the target was not reached),
success = target reached, ``extra['target']`` the targets. The pair search is exact over the whole
domain (a (D, D) score per sample), done ``pair_chunk`` samples at a time to bound memory.

JSMA has no L-inf budget, so ``run`` (the L-inf contract of ``Attack``) raises ValueError; the
engine reports JSMA under its own L0 budget via ``run_l0`` (the minimum-norm family's template,
:meth:`attacks.min_norm.MinimumNormAttack.run_min_norm`; this module implements one batch).

Example: ``JSMA(max_fraction=0.1, seed=0).run_l0(model, x, y).distance``.
"""

from __future__ import annotations

import torch
from torch import nn

from attacks.base import AttackContext, derive_seed
from attacks.min_norm import MinimumNormAttack, MinNormBatch, MinNormOutput

_TARGETS = ("random", "next", "least-likely")
_PAIR_ELEMENTS = 1 << 24  # elements of one (chunk, D, D) score tensor: bounds memory (64 MiB in float32)


class JSMA(MinimumNormAttack):
    name = "jsma"
    norm = "l0"
    kind = "white-box"
    l0_message = "JSMA is an L0 attack: use run_l0"

    def __init__(self, *, seed: int = 0, theta: float = 1.0, max_fraction: float = 0.1, target: str = "random",
                 pair_chunk: int | None = None) -> None:
        super().__init__(seed=seed)
        if target not in _TARGETS:
            raise ValueError(f"unknown target {target!r}; use one of {', '.join(_TARGETS)}")
        if theta == 0 or not 0 < max_fraction <= 1:
            raise ValueError("theta must be non-zero and max_fraction in (0, 1]")
        self.theta, self.max_fraction, self.target = float(theta), float(max_fraction), target
        self.pair_chunk = pair_chunk

    def budget(self, n_features: int) -> int:
        """Most features one sample may change: floor(max_fraction * features), rounded down to pairs."""
        return (int(self.max_fraction * n_features + 1e-9) // 2) * 2

    def run_l0(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, sample_ids: torch.Tensor | None = None,
               batch_size: int | None = None, context: AttackContext | None = None) -> MinNormOutput:
        """The L0 result (``run_min_norm`` under the name the engine's L0 stages call)."""
        return self.run_min_norm(model, x, y, sample_ids=sample_ids, batch_size=batch_size, context=context)

    def min_norm_batch(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor,
                       context: AttackContext) -> MinNormBatch:
        x_adv, success, target = self._attack_batch(model, x, y, ids)
        return MinNormBatch(x_adv, success, {"target": target})

    def distance(self, x_adv: torch.Tensor, x: torch.Tensor, success: torch.Tensor) -> torch.Tensor:
        changed = (x_adv != x).flatten(1).sum(1).to(x.dtype)
        return torch.where(success, changed, torch.full_like(changed, float("inf")))

    def empty_extra(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor] | None:
        return {"target": torch.zeros(0, dtype=torch.long, device=y.device)}

    def _targets(self, logits: torch.Tensor, y: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        k = logits.shape[1]
        if self.target == "next":
            return (y + 1) % k
        if self.target == "least-likely":
            return logits.scatter(1, y[:, None], float("inf")).argmin(1)  # never the true class
        gen = torch.Generator()
        out = []
        for yi, sid in zip(y.tolist(), ids.tolist(), strict=True):
            gen.manual_seed(derive_seed(self.seed, self.name, "target", int(sid)))
            r = int(torch.randint(k - 1, (1,), generator=gen))
            out.append(r if r < yi else r + 1)
        return torch.tensor(out, dtype=torch.long, device=y.device)

    def _attack_batch(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        shape = x.shape[1:]
        xa = x.flatten(1).clone()
        d = xa.shape[1]
        up = self.theta > 0
        domain = xa < 1 if up else xa > 0
        with torch.no_grad():
            logits = model(x)
        target = self._targets(logits, y, ids)
        success = logits.argmax(1) == target
        active = (~success).nonzero().squeeze(1)
        for it in range(self.budget(d) // 2 + 1):
            if active.numel() == 0:
                break
            xi = xa[active].view(-1, *shape).requires_grad_(True)
            z = model(xi)
            hit = z.argmax(1) == target[active]
            success[active[hit]] = True
            if it == self.budget(d) // 2:  # the last pass only checks the final iterate
                break
            keep = ~hit
            if not bool(keep.any()):
                break
            zt = z.gather(1, target[active][:, None]).squeeze(1)
            alpha = torch.autograd.grad(zt[keep].sum(), xi, retain_graph=True)[0].flatten(1)[keep]
            beta = torch.autograd.grad(z[keep].sum(), xi)[0].flatten(1)[keep] - alpha
            active = active[keep]
            with torch.no_grad():
                p, q, found = self._best_pairs(alpha, beta, domain[active])
                rows = active[found]
                for f in (p[found], q[found]):
                    xa[rows, f] = (xa[rows, f] + self.theta).clamp(0.0, 1.0)
                    domain[rows, f] = xa[rows, f] < 1 if up else xa[rows, f] > 0
                active = rows  # samples without an admissible pair stop (failure)
        return xa.view_as(x), success, target

    def _best_pairs(self, alpha: torch.Tensor, beta: torch.Tensor, domain: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per sample the admissible pair (p, q), p != q, with the largest saliency; found=False if none."""
        n, d = alpha.shape
        sign = 1.0 if self.theta > 0 else -1.0
        # features outside the domain get an alpha that makes every pair with them inadmissible
        a = torch.where(domain, alpha * sign, torch.full_like(alpha, -1e30))
        b = beta * sign
        chunk = self.pair_chunk or max(1, _PAIR_ELEMENTS // (d * d))
        ps, qs, oks = [], [], []
        eye = torch.eye(d, dtype=torch.bool, device=alpha.device)
        for s in range(0, n, chunk):
            ac, bc = a[s:s + chunk], b[s:s + chunk]
            sa = ac[:, :, None] + ac[:, None, :]
            sb = bc[:, :, None] + bc[:, None, :]
            score = (-sa * sb).masked_fill_((sa <= 0) | (sb >= 0) | eye, float("-inf"))
            best, flat = score.flatten(1).max(1)
            ps.append(flat // d)
            qs.append(flat % d)
            oks.append(torch.isfinite(best))
        return torch.cat(ps), torch.cat(qs), torch.cat(oks)
