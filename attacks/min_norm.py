"""The minimum-norm family (C&W L2, FAB, JSMA): the smallest perturbation found, not an eps-ball verdict.

These attacks do not answer "is there an adversarial input within eps?": they return per sample the
smallest perturbation they found and its size in their norm (``'L2'`` for C&W, ``'Linf'`` or
``'L2'`` for FAB, ``'L0'`` for JSMA); the engine stores the per-sample distances.

Template (:class:`MinimumNormAttack`): :meth:`~MinimumNormAttack.run_min_norm` is written once, here
(sample ids, batch size, context, validation), and joins per-batch results of
:meth:`~MinimumNormAttack.min_norm_batch`, measuring distances on the joined result with the class's
:meth:`~MinimumNormAttack.distance`. An attack with state across batches (FAB's restarts, batched
over the samples still unbroken) implements :meth:`~MinimumNormAttack.min_norm_all` instead. The
L-inf view ``run`` (the :class:`attacks.base.Attack` contract) derives, per eps, the sample's
minimum-norm input where its L-inf distance <= eps and ``x`` itself with success False elsewhere
(:func:`linf_views`); an L0 attack has no such view and ``run`` raises.

Example::

    out = CarliniWagnerL2(max_iter=100).run_min_norm(model, x, y)
    out.distance  # (N,) L2 norms, inf where no adversarial input was found
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, final

import torch
from torch import nn

from attacks.base import Attack, AttackContext, BatchResult

NORM_LABELS = {"linf": "Linf", "l2": "L2", "l0": "L0"}  # MinNormOutput.norm spelling per declared norm


@dataclass
class MinNormOutput:
    """Per-sample result of a minimum-norm (or L0-budget) attack on N samples.

    ``x_adv`` (N, C, H, W) in [0, 1]: the best adversarial input found, or ``x`` where none was;
    ``success`` (N,) bool as judged by the attack; ``distance`` (N,) float: size of ``x_adv - x`` in
    ``norm`` (``inf`` where no adversarial input was found); ``extra``: optional per-sample tensors
    an attack wants to report (e.g. C&W-wb's detector term, JSMA's target class).
    """

    x_adv: torch.Tensor
    success: torch.Tensor
    distance: torch.Tensor
    norm: str
    extra: dict[str, torch.Tensor] | None = None


@dataclass
class MinNormBatch:
    """One batch's part of a :class:`MinNormOutput` (distances are measured on the joined result)."""

    x_adv: torch.Tensor
    success: torch.Tensor
    extra: dict[str, torch.Tensor] | None = None


def linf_views(out: MinNormOutput, x: torch.Tensor, epsilons: Sequence[float]) -> list[BatchResult]:
    """Per eps: the adversarial input where it lies in the L-inf eps ball (else ``x``, success False)."""
    linf = (out.x_adv - x).flatten(1).abs().amax(1) if x.shape[0] else torch.zeros(0, device=x.device)
    views = []
    for eps in epsilons:
        inside = out.success & (linf <= float(eps))
        views.append(BatchResult(torch.where(inside.view(-1, *([1] * (x.dim() - 1))), out.x_adv, x), inside))
    return views


class MinimumNormAttack(Attack):
    """Base of the minimum-norm family: implement ``min_norm_batch`` and ``distance`` (or ``min_norm_all``)."""

    family = "minimum-norm"
    l0_message: ClassVar[str] = "an L0 attack has no L-inf view: use run_l0"

    @property
    def norm_label(self) -> str:
        """The norm as ``MinNormOutput.norm`` spells it ('Linf', 'L2' or 'L0')."""
        return NORM_LABELS[self.norm]

    @final
    def run_min_norm(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, sample_ids: torch.Tensor | None = None,
                     batch_size: int | None = None, context: AttackContext | None = None) -> MinNormOutput:
        """Per sample the smallest adversarial input found and its distance (see the module docstring)."""
        ids = self._ids(x, sample_ids)
        ctx = context if context is not None else AttackContext()
        self.validate(model, ctx)
        return self.min_norm_all(model, x, y, ids, batch_size or max(x.shape[0], 1), ctx)

    def attack_epsilons(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, epsilons: list[float],
                        ids: torch.Tensor, bs: int, context: AttackContext) -> list[BatchResult]:
        """The L-inf view: one minimum-norm search serves every eps (hence the whole eps list)."""
        if self.norm == "l0":
            raise ValueError(self.l0_message)
        return linf_views(self.min_norm_all(model, x, y, ids, bs, context), x, epsilons)

    def min_norm_all(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor, bs: int,
                     context: AttackContext) -> MinNormOutput:
        """Every sample: :meth:`min_norm_batch` per batch of ``bs``, joined, then :meth:`distance`."""
        n = x.shape[0]
        parts = [self.min_norm_batch(model, x[s:s + bs].detach(), y[s:s + bs], ids[s:s + bs], context)
                 for s in range(0, n, bs)]
        if not parts:
            return MinNormOutput(x.clone(), torch.zeros(0, dtype=torch.bool, device=x.device), x.new_zeros(0),
                                 self.norm_label, self.empty_extra(model, x, y))
        x_adv = torch.cat([p.x_adv for p in parts])
        success = torch.cat([p.success for p in parts])
        extra = None if parts[0].extra is None else {k: torch.cat([p.extra[k] for p in parts])  # type: ignore[index]
                                                     for k in parts[0].extra}
        return MinNormOutput(x_adv.detach(), success, self.distance(x_adv, x, success).detach(), self.norm_label,
                             extra)

    def min_norm_batch(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor,
                       context: AttackContext) -> MinNormBatch:
        """One batch: the best adversarial input per sample and whether one was found."""
        raise NotImplementedError(f"{type(self).__name__} implements neither min_norm_batch nor min_norm_all")

    def distance(self, x_adv: torch.Tensor, x: torch.Tensor, success: torch.Tensor) -> torch.Tensor:
        """Per-sample size of ``x_adv - x`` in the attack's norm, ``inf`` where ``success`` is False."""
        raise NotImplementedError

    def empty_extra(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor] | None:
        """``extra`` of a call without samples (the keys a non-empty call would report, with no rows)."""
        return None
