"""L-inf PGD (Madry et al., 2018) with cross-entropy or CW-margin loss.

Norm: L-inf. Arguments: ``loss`` ('ce' | 'cw'), ``steps``, ``step_size`` (absolute) or
``rel_step_size`` (fraction of eps), ``restarts``, ``random_start`` (uniform in the ball).
Per sample the best iterate is kept: the first iterate that misclassifies (the sample then stops
being attacked) or else the iterate with the highest loss over all steps and restarts. With
``early_stop=False`` every sample runs all steps and the highest-loss iterate is kept (transfer
attacks want that: inputs just past the surrogate's boundary transfer poorly).
Random starts are seeded per (seed, eps, restart, sample id), so results do not depend on the
batch size or on which other samples share the batch.

Example: ``PGD(steps=40, step_size=0.01).run(model, x, y, [0.1, 0.3])``.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from torch import nn

from attacks.base import Attack, AttackOutput, attack_loss, per_sample_uniform, project_linf, run_in_batches


class PGD(Attack):
    name = "pgd"

    def __init__(self, *, seed: int = 0, loss: str = "ce", steps: int = 40, step_size: float | None = None,
                 rel_step_size: float | None = None, restarts: int = 1, random_start: bool = True,
                 early_stop: bool = True) -> None:
        super().__init__(seed=seed)
        if (step_size is None) == (rel_step_size is None):
            raise ValueError("give exactly one of step_size and rel_step_size")
        if steps < 1 or restarts < 1:
            raise ValueError("steps and restarts must be >= 1")
        self.loss, self.steps, self.restarts = loss, int(steps), int(restarts)
        self.step_size, self.rel_step_size, self.random_start = step_size, rel_step_size, random_start
        self.early_stop = bool(early_stop)

    def alpha(self, eps: float) -> float:
        return float(self.step_size) if self.step_size is not None else float(self.rel_step_size) * eps

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, epsilons: Sequence[float],
            sample_ids: torch.Tensor | None = None, batch_size: int | None = None) -> AttackOutput:
        ids = self._ids(x, sample_ids)
        bs = batch_size or max(x.shape[0], 1)
        return run_in_batches(x, y, epsilons, ids, bs, partial(self._attack_batch, model))

    def _attack_batch(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
                      ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = x.shape[0]
        best_x = x.clone()
        best_loss = torch.full((n,), float("-inf"), device=x.device)
        done = torch.zeros(n, dtype=torch.bool, device=x.device)
        alpha = self.alpha(eps)
        for restart in range(self.restarts):
            active = (~done).nonzero().squeeze(1)
            if active.numel() == 0:
                break
            x0, y0 = x[active], y[active]
            if self.random_start and eps > 0:
                noise = per_sample_uniform(tuple(x0.shape), ids[active.cpu()], self.seed, "pgd", eps, restart)
                xa = (x0 + eps * noise.to(x.device)).clamp(0.0, 1.0)
            else:
                xa = x0.clone()
            for step in range(self.steps + 1):
                xa.requires_grad_(True)
                logits = model(xa)
                loss = attack_loss(self.loss, logits, y0)
                fooled = logits.argmax(1) != y0
                if not self.early_stop:  # run every step; the best iterate is the highest-loss one
                    fooled = torch.zeros_like(fooled)
                with torch.no_grad():
                    # record: first success wins; otherwise keep the highest-loss iterate
                    improve = (loss > best_loss[active]) & ~done[active]
                    take = fooled & ~done[active] | improve
                    best_x[active[take]] = xa.detach()[take]
                    best_loss[active[take]] = loss.detach()[take]
                    done[active[fooled]] = True
                if step == self.steps:
                    break
                keep = ~fooled
                if not bool(keep.any()):
                    break
                grad = torch.autograd.grad(loss[keep].sum(), xa)[0][keep]
                with torch.no_grad():
                    active, x0, y0 = active[keep], x0[keep], y0[keep]
                    xa = project_linf(xa.detach()[keep] + alpha * grad.sign(), x0, eps)
        if not self.early_stop and n:
            with torch.no_grad():
                done = model(best_x).argmax(1) != y
        return best_x.detach(), done
