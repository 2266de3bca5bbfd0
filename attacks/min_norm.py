"""Output type shared by minimum-norm and L0 attacks (C&W L2, JSMA).

These attacks are not L-inf-ball attacks: instead of answering "is there an adversarial input within
eps?", they return per sample the smallest perturbation they found and its size in their own norm
(``'L2'`` for C&W, ``'L0'`` for JSMA); the engine stores the per-sample distances.

``to_linf_output`` turns a minimum-norm result into the L-inf-ball contract of ``Attack.run``: per
eps, the sample keeps its adversarial input where that input lies in the eps ball (L-inf distance
<= eps), and otherwise gets ``x`` itself with success False.

Example::

    out = CarliniWagnerL2(max_iter=100).run_min_norm(model, x, y)
    out.distance  # (N,) L2 norms, inf where no adversarial input was found
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from attacks.base import AttackOutput


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


def to_linf_output(out: MinNormOutput, x: torch.Tensor, epsilons: Sequence[float]) -> AttackOutput:
    """Per eps: the adversarial input where it lies in the L-inf eps ball (else ``x``, success False)."""
    linf = (out.x_adv - x).flatten(1).abs().amax(1) if x.shape[0] else torch.zeros(0, device=x.device)
    advs, succs = [], []
    for eps in epsilons:
        inside = out.success & (linf <= float(eps))
        advs.append(torch.where(inside.view(-1, *([1] * (x.dim() - 1))), out.x_adv, x))
        succs.append(inside)
    if not advs:
        return AttackOutput(x_adv=x.new_zeros((0, *x.shape)), success=torch.zeros(0, x.shape[0], dtype=torch.bool))
    return AttackOutput(x_adv=torch.stack(advs).detach(), success=torch.stack(succs))
