"""FGSM (Goodfellow et al., 2015): one signed-gradient step of size eps on the cross-entropy.

Norm: L-inf. Arguments: ``loss`` ('ce' or 'cw'). Shapes: x (N, C, H, W) in [0, 1], y (N,).
The gradient does not depend on eps, so it is computed once per batch and reused for every eps
(``attack_epsilons``): K epsilons cost one backward pass per sample, then one forward pass per
sample and eps to report success.
Example: ``FGSM().run(model, x, y, [0.1, 0.3])`` returns x_adv of shape (2, N, C, H, W).
"""

from __future__ import annotations

import torch
from torch import nn

from attacks.base import Attack, AttackContext, BatchResult, attack_loss


class FGSM(Attack):
    name = "fgsm"
    family = "fixed-budget"
    norm = "linf"
    kind = "white-box"
    wrappable_by = frozenset({"adaptive", "transfer"})

    def __init__(self, *, seed: int = 0, loss: str = "ce") -> None:
        super().__init__(seed=seed)
        self.loss = loss

    def attack_epsilons(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, epsilons: list[float],
                        ids: torch.Tensor, bs: int, context: AttackContext) -> list[BatchResult]:
        """One gradient per sample shared by every eps (hence the whole eps list)."""
        n = x.shape[0]
        grads = []
        for start in range(0, n, bs):
            xb = x[start:start + bs].clone().requires_grad_(True)
            loss = attack_loss(self.loss, model(xb), y[start:start + bs]).sum()
            grads.append(torch.autograd.grad(loss, xb)[0])
        sign = torch.cat(grads).sign() if grads else torch.zeros_like(x)
        x_adv = [(x + eps * sign).clamp(0.0, 1.0) for eps in epsilons]
        with torch.no_grad():
            return [BatchResult(xa.detach(), torch.cat([model(xa[s:s + bs]).argmax(1) != y[s:s + bs]
                                                       for s in range(0, n, bs)])
                                if n else torch.zeros(0, dtype=torch.bool, device=x.device))
                    for xa in x_adv]
