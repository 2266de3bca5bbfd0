"""Projected signed-gradient ascent: the one PGD loop behind every L-inf gradient attack of the benchmark.

Each step moves every attacked row by ``alpha * sign(grad objective)`` and projects it back onto the
L-inf ball of radius ``eps`` around its clean input intersected with the [0, 1] box (Madry et al.,
2018; the BIM / ILCM of Kurakin et al., 2016 as used in the RCE paper,
../shared/papers/003_a03d9cf4d1799148.txt, Sec. 2.3). Callers differ only in what they maximise,
when a row stops and which iterate they keep, so the core takes exactly those as arguments:

* ``objective(x, logits, rows) -> Scored``: the per-row objective (differentiable) and the success
  rule (rows whose ``success`` is True stop being attacked: early stop); ``rows`` index the caller's
  rows, so the objective can pick their labels, targets or clean logits.
* ``record(t, rows, x, logits, scored)``: called under ``no_grad`` at every evaluated iterate
  (t = 0 is the start, t = k after k steps), where each caller applies its own best-iterate rule.
* ``live(t, rows)``: which rows are still attacked at step t, for stop rules wider than one row
  (the checks' probe stops every restart of a sample once one of them succeeds, and gives each row
  its own step budget).
* ``moves(rows, x, grad)``: which rows take the step (the others stay where they are but are still
  evaluated); the loop ends when none moves (Dynamic AT's FOSC criterion; for unchunked calls).

Per-row ``eps`` / ``alpha`` may be tensors shaped (N, 1, ..., 1) (the probe batches several jobs);
``chunk`` bounds the rows per forward pass. ``final=False`` (training attacks) takes ``steps`` steps
without evaluating the last iterate. Stopped rows leave the batch: the next forward pass sees only
the rows still attacked, in their original order, and the gradient is taken of the sum of their
objectives only. The arithmetic of a step is fixed here (``x + alpha * sign(g)``, then
``min(max(., x0 - eps), x0 + eps)`` and the box), so every caller moves its iterates bit for bit alike.

Step size: :class:`StepSize` is the single rule turning ``step_size`` (absolute) or
``rel_step_size`` (fraction of eps) or an attack's declared default into the step ``alpha``.

Example (PGD on the CE loss; a row stops once misclassified, and the result holds each row's last
iterate: a caller that wants the first success or the best loss keeps it in ``record``)::

    def ce(xi, logits, rows):
        return Scored(F.cross_entropy(logits, y[rows], reduction="none"), logits.argmax(1) != y[rows])

    last = signed_gradient_ascent(model, x, start, eps, StepSize.resolve(None, 0.1).alpha(eps), 40, ce)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

Bound = float | torch.Tensor  # eps or alpha: one number, or one value per row shaped (N, 1, ..., 1)


@dataclass(frozen=True)
class StepSize:
    """The step of a signed-gradient attack: ``step_size`` (absolute) or ``rel_step_size * eps``."""

    step_size: float | None = None
    rel_step_size: float | None = None

    @classmethod
    def resolve(cls, step_size: float | None, rel_step_size: float | None,
                default_rel: float | None = None) -> StepSize:
        """The rule every attack uses: at most one of the two may be given; with neither, the attack's
        declared default fraction of eps ``default_rel`` applies (None: the attack has no default, so
        exactly one must be given)."""
        if default_rel is None and (step_size is None) == (rel_step_size is None):
            raise ValueError("give exactly one of step_size and rel_step_size")
        if step_size is not None and rel_step_size is not None:
            raise ValueError("give at most one of step_size and rel_step_size")
        if step_size is not None:
            return cls(step_size=float(step_size))
        return cls(rel_step_size=float(rel_step_size if rel_step_size is not None else default_rel))  # type: ignore[arg-type]

    def alpha(self, eps: float) -> float:
        """The step at radius ``eps``."""
        return self.step_size if self.step_size is not None else self.rel_step_size * eps  # type: ignore[operator]


@dataclass
class Scored:
    """One evaluated iterate of some rows: the objective to ascend and which rows succeeded (and stop).

    ``objective`` is per row, or a 0-d total when ``success`` is None (nothing stops); ``extra`` carries
    whatever the caller's record hook needs (e.g. a margin and a penalty).
    """

    objective: torch.Tensor
    success: torch.Tensor | None = None
    extra: Any = None


Objective = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], Scored]
Record = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor, Scored], None]
Live = Callable[[int, torch.Tensor], torch.Tensor]
Moves = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def project_linf(x_adv: torch.Tensor, x: torch.Tensor, eps: Bound) -> torch.Tensor:
    """Project onto the L-inf ball of radius eps around x intersected with the [0, 1] box."""
    return torch.minimum(torch.maximum(x_adv, x - eps), x + eps).clamp_(0.0, 1.0)


def _rows(bound: Bound, rows: torch.Tensor) -> Bound:
    return bound[rows] if isinstance(bound, torch.Tensor) else bound


def signed_gradient_ascent(model: nn.Module, x0: torch.Tensor, start: torch.Tensor, eps: Bound, alpha: Bound,
                           steps: int, objective: Objective, *, record: Record | None = None,
                           live: Live | None = None, moves: Moves | None = None, chunk: int | None = None,
                           final: bool = True, finite_grad: bool = False) -> torch.Tensor:
    """Ascend ``objective`` from ``start`` by projected signed-gradient steps; returns the last iterates.

    ``x0`` (N, ...) are the clean inputs (ball centres), ``start`` the first iterates. At most
    ``steps`` steps; with ``final`` the iterate after the last step is evaluated and recorded too.
    ``finite_grad`` replaces NaN / infinite gradient entries by 0 before the sign (detector scores
    can have them). See the module docstring for the hooks.
    """
    xa = start.detach().clone()
    rows = torch.arange(x0.shape[0], device=x0.device)
    if live is not None:
        rows = rows[live(0, rows)]
    for t in range(steps + 1 if final else steps):
        if rows.numel() == 0:
            break
        going: list[torch.Tensor] = []
        for part in (rows.split(chunk) if chunk else (rows,)):
            with torch.no_grad():
                xb = xa[part]
            xb.requires_grad_(True)
            logits = model(xb)
            scored = objective(xb, logits, part)
            if record is not None:
                with torch.no_grad():
                    record(t, part, xb.detach(), logits.detach(), scored)
            if t == steps:
                continue
            keep = None if scored.success is None else ~scored.success
            if keep is not None and not bool(keep.any()):
                continue
            total = scored.objective.sum() if keep is None else scored.objective[keep].sum()
            grad = torch.autograd.grad(total, xb)[0]
            with torch.no_grad():
                sel, xs = (part, xb.detach()) if keep is None else (part[keep], xb.detach()[keep])
                if keep is not None:
                    grad = grad[keep]
                if finite_grad:
                    grad = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
                stepped = project_linf(xs + _rows(alpha, sel) * grad.sign(), x0[sel], _rows(eps, sel))
                if moves is not None:
                    moving = moves(sel, xs, grad)
                    if not bool(moving.any()):
                        return xa
                    stepped = torch.where(moving.view(-1, *[1] * (xs.dim() - 1)), stepped, xs)
                xa[sel] = stepped
            going.append(sel)
        rows = torch.cat(going) if going else rows[:0]
        if live is not None:
            rows = rows[live(t + 1, rows)]
    return xa
