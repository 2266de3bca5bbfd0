"""FGSM (Goodfellow et al., 2015): one signed-gradient step of size eps on the cross-entropy.

Norm: L-inf. Arguments: ``loss`` ('ce' or 'cw'). Shapes: x (N, C, H, W) in [0, 1], y (N,).
Example: ``FGSM().run(model, x, y, [0.1, 0.3])`` returns x_adv of shape (2, N, C, H, W).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from attacks.base import Attack, AttackOutput, attack_loss


class FGSM(Attack):
    name = "fgsm"

    def __init__(self, *, seed: int = 0, loss: str = "ce") -> None:
        super().__init__(seed=seed)
        self.loss = loss

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, epsilons: Sequence[float],
            sample_ids: torch.Tensor | None = None, batch_size: int | None = None) -> AttackOutput:
        bs = batch_size or max(x.shape[0], 1)
        grads = []
        for start in range(0, x.shape[0], bs):
            xb = x[start:start + bs].clone().requires_grad_(True)
            loss = attack_loss(self.loss, model(xb), y[start:start + bs]).sum()
            grads.append(torch.autograd.grad(loss, xb)[0].sign())
        sign = torch.cat(grads) if grads else torch.zeros_like(x)
        x_adv = torch.stack([(x + eps * sign).clamp(0.0, 1.0) for eps in epsilons])
        with torch.no_grad():
            success = torch.stack([
                torch.cat([model(xa[s:s + bs]).argmax(1) != y[s:s + bs] for s in range(0, x.shape[0], bs)])
                if x.shape[0] else torch.zeros(0, dtype=torch.bool, device=x.device)
                for xa in x_adv
            ])
        return AttackOutput(x_adv=x_adv.detach(), success=success)
