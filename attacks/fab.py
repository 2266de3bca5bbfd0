"""FAB as a minimum-norm attack (Croce & Hein, 2020, "Minimally distorted adversarial examples with a
fast adaptive boundary attack"), through ``pyautoattack.fab_pt.FABAttack_PT``.

Norm: ``norm`` = 'Linf' (default) or 'L2'. FAB is untargeted here: at each of ``n_iter`` steps it
linearises the classifier at the iterate, projects onto the closest linearised decision boundary
(both from the iterate and from the clean input), takes a biased step between the two, and after each
success moves back towards the clean input (backward step), keeping the smallest adversarial
perturbation found. Its ``eps`` here is the box diameter (1 for L-inf, sqrt(dim) for L2), so nothing
is rejected for size: the attack is unconstrained and returns per sample the minimal distance found.

Restarts: restart 0 starts at the clean input (deterministic, no randomness). Restarts 1..n-1 start
from a random point at half the best distance found so far (the box diameter if none), like FAB's
own restarts; they run ONE SAMPLE AT A TIME inside ``torch.random.fork_rng`` seeded from
(seed, 'fab-min-norm', restart, sample id), because pyautoattack draws its random start from torch's
global generator for the whole batch. So results never depend on batch size or batch composition and
the caller's RNG state is untouched, at the price of speed when ``n_restarts > 1``. Per sample the
smallest verified adversarial input over restarts is kept.

Outputs: ``run_min_norm`` -> ``MinNormOutput`` (distance in ``norm``; ``inf`` where FAB found
nothing; 0 with the clean input for samples already misclassified). ``run`` is the L-inf view
(:func:`attacks.min_norm.linf_views`): per eps, the min-norm input where its L-inf distance <= eps,
else ``x``. Restart 0 batches the samples still unbroken across the caller's batches, so FAB
implements the family's whole-set hook ``min_norm_all``. The class declares its default norm,
L-inf; ``norm='L2'`` makes an instance measure (and report) L2 distances. pyautoattack's diagnostics
are captured into ``library_messages`` (see :mod:`attacks.library`).

Example: ``FABMinNorm(n_iter=100).run_min_norm(model, x, y).distance``.
"""

from __future__ import annotations

import logging
import math
from collections import Counter

import torch
from torch import nn

from attacks.base import AttackContext, derive_seed
from attacks.library import quiet_library
from attacks.min_norm import MinimumNormAttack, MinNormOutput

NORMS = ("Linf", "L2")


def distance(delta: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-sample size of ``delta`` (N, ...) in 'Linf' or 'L2'."""
    flat = delta.flatten(1)
    if flat.shape[0] == 0:
        return flat.new_zeros(0)
    return flat.abs().amax(1) if norm == "Linf" else flat.norm(dim=1)


class FABMinNorm(MinimumNormAttack):
    name = "fab-min-norm"
    norm = "linf"  # the default; an instance built with norm='L2' measures L2 (see ``distance_norm``)
    kind = "white-box"

    def __init__(self, *, seed: int = 0, n_restarts: int = 1, n_iter: int = 100, norm: str = "Linf") -> None:
        super().__init__(seed=seed)
        if norm not in NORMS:
            raise ValueError(f"fab-min-norm: norm must be one of {NORMS}, got {norm!r}")
        if n_restarts < 1 or n_iter < 1:
            raise ValueError("n_restarts and n_iter must be >= 1")
        self.n_restarts, self.n_iter = int(n_restarts), int(n_iter)
        self.distance_norm = norm  # pyautoattack's spelling, also MinNormOutput.norm: 'Linf' | 'L2'
        self.library_messages: Counter[str] = Counter()

    def min_norm_all(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor, bs: int,
                     context: AttackContext) -> MinNormOutput:
        """Every sample: restart 0 in batches of ``bs`` over the samples not yet misclassified, later
        restarts one sample at a time (state across batches, hence the whole-set hook)."""
        n = x.shape[0]
        x = x.detach()
        best_x = x.clone()
        best_d = torch.full((n,), float("inf"), device=x.device, dtype=x.dtype)
        success = torch.zeros(n, dtype=torch.bool, device=x.device)
        devices = [x.device.index or 0] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # pyautoattack may touch the global generators
            with torch.no_grad():
                for s in range(0, n, bs):
                    wrong = model(x[s:s + bs]).argmax(1) != y[s:s + bs]
                    success[s:s + bs] = wrong
                    best_d[s:s + bs] = torch.where(wrong, 0.0, best_d[s:s + bs])
            for restart in range(self.n_restarts):
                todo = (best_d > 0).nonzero().squeeze(1)
                if restart == 0:
                    for s in range(0, todo.numel(), bs):
                        self._attack(model, x, y, todo[s:s + bs], restart, best_x, best_d, success)
                else:
                    for i in todo.tolist():
                        torch.manual_seed(derive_seed(self.seed, self.name, restart, int(ids[i])) % (2**63))
                        row = torch.tensor([i], device=x.device)
                        self._attack(model, x, y, row, restart, best_x, best_d, success)
        dist = torch.where(success, best_d, torch.full_like(best_d, float("inf")))
        return MinNormOutput(best_x.detach(), success, dist.detach(), self.distance_norm)

    def _attack(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, rows: torch.Tensor, restart: int,
                best_x: torch.Tensor, best_d: torch.Tensor, success: torch.Tensor) -> None:
        """One FAB run on ``rows``; verified improvements are written into best_* in place."""
        from pyautoattack.fab_pt import FABAttack_PT

        if rows.numel() == 0:
            return
        logging.getLogger("auto-attack").setLevel(logging.WARNING)
        xs, ys = x[rows], y[rows]
        diameter = 1.0 if self.distance_norm == "Linf" else math.sqrt(xs[0].numel())
        fab = FABAttack_PT(model, norm=self.distance_norm, n_restarts=1, n_iter=self.n_iter, eps=diameter,
                           verbose=False, seed=0, targeted=False, device=x.device)
        if restart > 0:
            known = best_d[rows]
            fab.eps = float(known.min()) if bool(torch.isfinite(known).all()) else diameter
        with quiet_library(self.library_messages):
            adv = fab.attack_single_run(xs.clone(), ys.clone(), use_rand_start=restart > 0, is_targeted=False)
        adv = adv.detach().to(x.dtype).clamp(0.0, 1.0)
        with torch.no_grad():
            fooled = model(adv).argmax(1) != ys
        d = distance(adv - xs, self.distance_norm)
        better = fooled & (d < best_d[rows])
        take = rows[better]
        best_x[take] = adv[better]
        best_d[take] = d[better]
        success[take] = True
