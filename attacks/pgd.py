"""L-inf PGD (Madry et al., 2018) with cross-entropy or CW-margin loss.

Norm: L-inf. Arguments: ``loss`` ('ce' | 'cw'), ``steps``, ``step_size`` (absolute) or
``rel_step_size`` (fraction of eps; exactly one of the two), ``restarts``, ``random_start``
(uniform in the ball). Per sample the best iterate is kept: the first iterate that misclassifies
(the sample then stops being attacked) or else the iterate with the highest loss over all steps and
restarts. With ``early_stop=False`` every sample runs all steps and the highest-loss iterate is
kept (transfer attacks want that: inputs just past the surrogate's boundary transfer poorly).
Random starts are seeded per (seed, eps, restart, sample id), so results do not depend on the
batch size or on which other samples share the batch. The loop is the shared core,
:func:`attacks.signed_gradient.signed_gradient_ascent`.

Example: ``PGD(steps=40, step_size=0.01).run(model, x, y, [0.1, 0.3])``.
"""

from __future__ import annotations

import torch
from torch import nn

from attacks.base import Attack, AttackContext, BatchResult, attack_loss, per_sample_uniform
from attacks.signed_gradient import Scored, StepSize, signed_gradient_ascent


class PGD(Attack):
    name = "pgd"
    family = "fixed-budget"
    norm = "linf"
    kind = "white-box"
    wrappable_by = frozenset({"adaptive", "transfer"})

    def __init__(self, *, seed: int = 0, loss: str = "ce", steps: int = 40, step_size: float | None = None,
                 rel_step_size: float | None = None, restarts: int = 1, random_start: bool = True,
                 early_stop: bool = True) -> None:
        super().__init__(seed=seed)
        self.step = StepSize.resolve(step_size, rel_step_size)  # no default: the protocol names the step
        if steps < 1 or restarts < 1:
            raise ValueError("steps and restarts must be >= 1")
        self.loss, self.steps, self.restarts = loss, int(steps), int(restarts)
        self.random_start, self.early_stop = random_start, bool(early_stop)

    def alpha(self, eps: float) -> float:
        return self.step.alpha(eps)

    def attack_batch(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, ids: torch.Tensor,
                     context: AttackContext) -> BatchResult:
        n = x.shape[0]
        best_x = x.clone()
        best_loss = torch.full((n,), float("-inf"), device=x.device)
        done = torch.zeros(n, dtype=torch.bool, device=x.device)
        for restart in range(self.restarts):
            active = (~done).nonzero().squeeze(1)
            if active.numel() == 0:
                break
            x0, y0 = x[active], y[active]
            if self.random_start and eps > 0:
                noise = per_sample_uniform(tuple(x0.shape), ids[active.cpu()], self.seed, "pgd", eps, restart)
                start = (x0 + eps * noise.to(x.device)).clamp(0.0, 1.0)
            else:
                start = x0.clone()

            def objective(xa: torch.Tensor, logits: torch.Tensor, rows: torch.Tensor, y0=y0) -> Scored:
                fooled = logits.argmax(1) != y0[rows]
                if not self.early_stop:  # run every step; the best iterate is the highest-loss one
                    fooled = torch.zeros_like(fooled)
                return Scored(attack_loss(self.loss, logits, y0[rows]), fooled)

            def record(t: int, rows: torch.Tensor, xa: torch.Tensor, logits: torch.Tensor, s: Scored,
                       active=active) -> None:
                # first success wins; otherwise keep the highest-loss iterate
                at = active[rows]
                assert s.success is not None  # PGD's objective always says which rows it fooled
                improve = (s.objective > best_loss[at]) & ~done[at]
                take = s.success & ~done[at] | improve
                best_x[at[take]] = xa[take]
                best_loss[at[take]] = s.objective.detach()[take]
                done[at[s.success]] = True

            signed_gradient_ascent(model, x0, start, eps, self.alpha(eps), self.steps, objective, record=record)
        if not self.early_stop and n:
            with torch.no_grad():
                done = model(best_x).argmax(1) != y
        return BatchResult(best_x.detach(), done)
