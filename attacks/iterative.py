"""Iterative signed-gradient L-inf attacks: BIM, ILCM (Kurakin et al., 2016) and the label-smoothed PGD sweep.

Norm: L-inf (ball of radius eps around x, intersected with the [0, 1] box; projected every step).

* ``BIM`` ("bim"), the basic iterative method as written in the RCE paper (Pang et al., 2018,
  ../shared/papers/003_a03d9cf4d1799148.txt, Sec. 2.3): no random start,
  ``x_i = clip_{x,eps}(x_{i-1} + alpha * sign(grad CE(f(x_{i-1}), y)))`` for ``steps`` steps.
  The step is ``step_size`` (absolute) or ``rel_step_size * eps``; by default ``alpha = eps / steps``
  (the paper's ``eps / r``), so the iterates can just reach the ball's boundary.
* ``ILCM`` ("ilcm"), the iterative least-likely-class method: the target is the argmin of the clean
  logits and each step *descends* the cross-entropy to that target. Success is judged as the engine
  judges it (prediction != true label); ``detail`` says "target-hit" where the prediction became the
  least-likely class and "off-target" where the sample is misclassified as some other class. A sample
  stops being attacked once its target is hit; until then the first misclassifying iterate is kept.
* ``LabelSmoothedPGD`` ("pgd-ls-sweep"), the adaptive attack of "Rethinking Uncertainty in Deep
  Learning" (../shared/papers/000_2dab57ef017d8076.txt, Sec. 5, adaptive attacks on EntM/LS models): PGD
  maximising the cross-entropy against the smoothed target ``(1 - gamma) * onehot(y) + gamma / K``, run
  for each gamma of ``gammas`` (default 0.0, 0.1, ..., 1.0, in that order) on the samples that no
  earlier gamma broke; ``detail`` names the gamma that broke a sample ("gamma=0.3"). Random starts
  (uniform in the ball) are seeded per (seed, "pgd-ls-sweep", gamma, eps, sample id). The default step
  is the paper's ``2 * eps / steps``. Because gamma = 0 is plain CE and runs first on every sample, the
  sweep breaks every sample that plain-CE PGD with the same seed breaks. For unbroken samples the
  iterate with the highest CW margin (max_{j != y} z_j - z_y) over the gammas is returned.

All three run :func:`level_search` (the shared core :func:`attacks.signed_gradient.signed_gradient_ascent`
with a best-iterate rule by levels: sign step, projection, best iterate kept per sample, early stop
per sample) and are independent of batch size and batch composition. The step size follows
:class:`attacks.signed_gradient.StepSize`, each class declaring its default ``default_rel_steps * eps / steps``.

Example: ``BIM(steps=10).run(model, x, y, [0.1, 0.3])``;
``LabelSmoothedPGD(steps=40).run(model, x, y, [8 / 255]).detail``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import ClassVar

import torch
from torch import nn

from attacks.base import Attack, AttackContext, BatchResult, margin_loss, per_sample_uniform
from attacks.signed_gradient import Scored, StepSize, signed_gradient_ascent

Objective = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
HitTest = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def level_search(model: nn.Module, x: torch.Tensor, y: torch.Tensor, aux: torch.Tensor, x_start: torch.Tensor,
                 eps: float, alpha: float, steps: int, objective: Objective, target_hit: HitTest | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Projected sign-gradient ascent of ``objective(logits, y, aux)`` (per sample) from ``x_start``.

    Each iterate gets a level: 0 correctly classified, 1 misclassified, 2 misclassified as the
    target (only when ``target_hit(logits, aux)`` is given). Per sample the kept iterate is the first
    one reaching the highest level seen, or at level 0 the one with the highest objective. A sample
    stops being attacked when it reaches the top level (1, or 2 with a target). ``aux`` (first dim N)
    carries per-sample extras such as targets. Returns (best x, best level, CW margin of best x).
    """
    n = x.shape[0]
    top = 2 if target_hit is not None else 1
    best_x = x.clone()
    best_obj = torch.full((n,), float("-inf"), device=x.device)
    best_level = torch.full((n,), -1, dtype=torch.long, device=x.device)
    best_margin = torch.full((n,), float("-inf"), device=x.device)

    def scored(xa: torch.Tensor, logits: torch.Tensor, rows: torch.Tensor) -> Scored:
        y0, a0 = y[rows], aux[rows]
        level = (logits.argmax(1) != y0).long()
        if target_hit is not None:
            level = torch.where(target_hit(logits, a0) & (level == 1), 2, level)
        return Scored(objective(logits, y0, a0), level >= top, level)

    def record(t: int, rows: torch.Tensor, xa: torch.Tensor, logits: torch.Tensor, s: Scored) -> None:
        level, obj = s.extra, s.objective
        prev = best_level[rows]
        take = (level > prev) | ((level == prev) & (level == 0) & (obj > best_obj[rows]))
        idx = rows[take]
        best_x[idx] = xa[take]
        best_obj[idx] = obj.detach()[take]
        best_level[idx] = level[take]
        best_margin[idx] = margin_loss(logits[take], y[rows][take])

    signed_gradient_ascent(model, x, x_start, eps, alpha, steps, scored, record=record)
    return best_x.detach(), best_level.clamp(min=0), best_margin


def _ce(logits: torch.Tensor, y: torch.Tensor, aux: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(logits, y, reduction="none")


class _Iterative(Attack):
    """Shared declarations and constructor (steps, step size) of the signed-gradient paper attacks."""

    family = "fixed-budget"
    norm = "linf"
    kind = "white-box"
    wrappable_by = frozenset({"adaptive"})
    reports_detail = True
    default_rel_steps: ClassVar[float] = 1.0  # default alpha = default_rel_steps * eps / steps

    def __init__(self, *, seed: int = 0, steps: int = 10, step_size: float | None = None,
                 rel_step_size: float | None = None) -> None:
        super().__init__(seed=seed)
        if steps < 1:
            raise ValueError("steps must be >= 1")
        self.steps = int(steps)
        self.step = StepSize.resolve(step_size, rel_step_size, self.default_rel_steps / self.steps)

    def alpha(self, eps: float) -> float:
        return self.step.alpha(eps)


class BIM(_Iterative):
    """Basic iterative method: FGSM steps of size alpha from x itself (no random start), CE loss."""

    name = "bim"
    wrappable_by = frozenset({"adaptive", "transfer"})

    def attack_batch(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, ids: torch.Tensor,
                     context: AttackContext) -> BatchResult:
        best, level, _ = level_search(model, x, y, y, x, eps, self.alpha(eps), self.steps, _ce)
        return BatchResult(best, level >= 1, [None] * x.shape[0])


def _toward_target(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return -nn.functional.cross_entropy(logits, target, reduction="none")


def _target_hit(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return logits.argmax(1) == target


class ILCM(_Iterative):
    """Iterative least-likely-class method: descend CE to argmin of the clean logits."""

    name = "ilcm"

    def attack_batch(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, ids: torch.Tensor,
                     context: AttackContext) -> BatchResult:
        with torch.no_grad():
            target = model(x).argmin(1)
        best, level, _ = level_search(model, x, y, target, x, eps, self.alpha(eps), self.steps, _toward_target,
                                      _target_hit)
        names = {0: None, 1: "off-target", 2: "target-hit"}
        return BatchResult(best, level >= 1, [names[int(v)] for v in level.tolist()])


def smoothed_ce(logits: torch.Tensor, y: torch.Tensor, gamma: float) -> torch.Tensor:
    """Per-sample CE against ``(1 - gamma) * onehot(y) + gamma / K`` (the LS training loss)."""
    logp = logits.log_softmax(1)
    k = logits.shape[1]
    return -(1 - gamma) * logp.gather(1, y[:, None]).squeeze(1) - gamma / k * logp.sum(1)


def _smoothed_objective(logits: torch.Tensor, y: torch.Tensor, _aux: torch.Tensor, *, gamma: float) -> torch.Tensor:
    """:func:`smoothed_ce` as a level-search objective (which also passes the per-sample extras)."""
    return smoothed_ce(logits, y, gamma)


class LabelSmoothedPGD(_Iterative):
    """PGD on the label-smoothed CE, sweeping gamma; the first gamma that breaks a sample wins."""

    name = "pgd-ls-sweep"
    default_rel_steps = 2.0  # the paper's step size 2 * eps / k for k steps

    def __init__(self, *, seed: int = 0, steps: int = 40, step_size: float | None = None,
                 rel_step_size: float | None = None, gammas: Sequence[float] | None = None,
                 random_start: bool = True) -> None:
        super().__init__(seed=seed, steps=steps, step_size=step_size, rel_step_size=rel_step_size)
        self.gammas = tuple(float(g) for g in (gammas if gammas is not None else
                                               [round(0.1 * i, 1) for i in range(11)]))
        if not self.gammas or any(not 0.0 <= g <= 1.0 for g in self.gammas):
            raise ValueError("gammas must be a non-empty list of values in [0, 1]")
        self.random_start = bool(random_start)

    def attack_epsilons(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, epsilons: list[float],
                        ids: torch.Tensor, bs: int, context: AttackContext) -> list[BatchResult]:
        """Per eps, each gamma runs on the samples no earlier gamma broke, re-batched by ``bs``: state across
        batches, hence this hook rather than ``attack_batch``."""
        return [self._sweep(model, x, y, eps, ids, bs) for eps in epsilons]

    def _sweep(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, ids: torch.Tensor,
               bs: int) -> BatchResult:
        n = x.shape[0]
        best_x = x.clone()
        done = torch.zeros(n, dtype=torch.bool, device=x.device)
        best_margin = torch.full((n,), float("-inf"), device=x.device)
        detail: list[str | None] = [None] * n
        for gamma in self.gammas:
            todo = (~done).nonzero().squeeze(1)
            for s in range(0, todo.numel(), bs):
                idx = todo[s:s + bs]
                xb, yb = x[idx], y[idx]
                if self.random_start and eps > 0:
                    noise = per_sample_uniform(tuple(xb.shape), ids[idx.cpu()], self.seed, self.name, gamma, eps)
                    start = (xb + eps * noise.to(x.device)).clamp(0.0, 1.0)
                else:
                    start = xb
                adv, level, margin = level_search(
                    model, xb, yb, yb, start, eps, self.alpha(eps), self.steps,
                    functools.partial(_smoothed_objective, gamma=gamma))
                broke = level >= 1
                better = broke | (margin > best_margin[idx])
                best_x[idx[better]] = adv[better]
                best_margin[idx[better]] = margin[better]
                done[idx[broke]] = True
                for i in idx[broke].tolist():
                    detail[i] = f"gamma={gamma:g}"
        return BatchResult(best_x, done, detail)
