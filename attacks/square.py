"""Square Attack (Andriushchenko et al., 2020) on its own, through the ``pyautoattack`` package.

Norm: L-inf. A score-based black-box attack: random square-shaped updates of +-2 eps (clipped to the
ball and the box) are kept when they lower the CW margin; the square size follows the package's
schedule from ``p_init``. Only forward passes; gradients are never used, so it is immune to gradient
masking. This is the same implementation AutoAttack runs as its last sub-attack (see
attacks/autoattack.py), here with its own budget: ``n_queries`` (5000, per restart), ``p_init`` (0.8),
``n_restarts`` (1).

Seeding: pyautoattack reseeds torch's global generator, so every call runs inside
``torch.random.fork_rng`` with a seed derived from (seed, 'square', eps, first sample id), exactly as
attacks/autoattack.py does: the caller's random state is untouched and the same inputs give the same
output. As in AutoAttack, the square positions are drawn once per batch, so results depend on which
samples share the call; ``batch_size`` is not used (the whole call is one pyautoattack batch).

Example: ``SquareAttack(n_queries=5000).run(model, x, y, [8 / 255])``.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch import nn

from attacks.base import Attack, AttackContext, BatchResult, derive_seed
from attacks.library import quiet_library


class SquareAttack(Attack):
    name = "square"
    family = "fixed-budget"
    norm = "linf"
    kind = "black-box"

    def __init__(self, *, seed: int = 0, n_queries: int = 5000, p_init: float = 0.8, n_restarts: int = 1) -> None:
        super().__init__(seed=seed)
        if n_queries < 1 or n_restarts < 1 or not 0 < p_init <= 1:
            raise ValueError("n_queries and n_restarts must be >= 1 and p_init in (0, 1]")
        self.n_queries, self.p_init, self.n_restarts = int(n_queries), float(p_init), int(n_restarts)
        self.library_messages: Counter[str] = Counter()  # pyautoattack's prints and warnings, captured

    def attack_epsilons(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, epsilons: list[float],
                        ids: torch.Tensor, bs: int, context: AttackContext) -> list[BatchResult]:
        """One pyautoattack call per eps on every sample, seeded from the first sample id (the library draws
        its squares for the whole call), hence the whole sample set rather than batches."""
        out = []
        for eps in epsilons:
            first = int(ids[0]) if len(ids) else 0
            seed = derive_seed(self.seed, self.name, eps, first) % (2**31)
            devices = [x.device.index or 0] if x.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices), torch.no_grad():
                x_adv = self._run_one(model, x, y, eps, seed)
                success = (model(x_adv).argmax(1) != y if x.shape[0]
                           else torch.zeros(0, dtype=torch.bool, device=x.device))
            out.append(BatchResult(x_adv, success))
        return out

    def _run_one(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, seed: int) -> torch.Tensor:
        if x.shape[0] == 0 or eps <= 0:
            return x.clone()
        from pyautoattack.square import SquareAttack as _Square

        attack = _Square(model, norm="Linf", n_queries=self.n_queries, eps=eps, p_init=self.p_init,
                         n_restarts=self.n_restarts, seed=seed, verbose=False, loss="margin", device=x.device)
        with quiet_library(self.library_messages):
            return attack.perturb(x, y).detach()
