"""AutoAttack, standard version (Croce & Hein, 2020), through the ``pyautoattack`` package.

Norm: L-inf (or L2). The sub-attacks APGD-CE, APGD-T (9 target classes), FAB-T (9 targets) and
Square (5,000 queries) are configured by ``pyautoattack.AutoAttack(version='standard')`` itself,
then run one after the other here on the samples that are still robust, so that each sample's
``detail`` names the sub-attack that broke it. pyautoattack reseeds torch's global generator; every
call runs inside ``torch.random.fork_rng`` with a seed derived from (seed, eps, first sample id),
so the caller's random state is untouched and the same inputs give the same result. Each call
attacks the whole sample set at once (``attack_epsilons``: the library seeds and batches per call).
pyautoattack's diagnostics (its logger's "there are N points with zero gradient!" and the like)
are captured into ``library_messages`` (see :mod:`attacks.library`) instead of reaching the CLI.
"""

from __future__ import annotations

import logging
import time
from collections import Counter

import torch
from torch import nn

from attacks.base import Attack, AttackContext, BatchResult, derive_seed
from attacks.library import quiet_library

SUB_ATTACKS = ("apgd-ce", "apgd-t", "fab-t", "square")


class AutoAttackStandard(Attack):
    name = "autoattack"
    family = "fixed-budget"
    norm = "linf"
    kind = "white-box"

    def __init__(self, *, seed: int = 0, version: str = "standard", norm: str = "Linf",
                 n_target_classes: int = 9, square_queries: int = 5000) -> None:
        super().__init__(seed=seed)
        if version != "standard":
            raise ValueError("only AutoAttack version 'standard' is supported")
        self.version = version
        self.library_norm = norm  # pyautoattack's spelling ('Linf' | 'L2'); the engine checks the L-inf ball
        # Defaults are the standard version's; CPU '-quick' protocols may shrink them (declared in
        # the protocol spec, hence in its fingerprint, and shown on the leaderboard).
        self.n_target_classes, self.square_queries = int(n_target_classes), int(square_queries)
        self.seconds: dict[str, float] = {}  # wall time per sub-attack, summed over calls (for bench perf)
        self.library_messages: Counter[str] = Counter()  # pyautoattack's log records and warnings, captured

    def make(self, model: nn.Module, eps: float, seed: int, device: torch.device):
        """The configured pyautoattack object (also used by ``bench perf`` for the direct call)."""
        from pyautoattack import AutoAttack

        logging.getLogger("auto-attack").setLevel(logging.WARNING)
        aa = AutoAttack(model, eps=eps, norm=self.library_norm, version=self.version, seed=seed, device=device)
        aa.verbose = False
        aa.apgd_targeted.n_target_classes = self.n_target_classes
        aa.fab.n_target_classes = self.n_target_classes
        aa.square.n_queries = self.square_queries
        return aa

    def attack_epsilons(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, epsilons: list[float],
                        ids: torch.Tensor, bs: int, context: AttackContext) -> list[BatchResult]:
        """One seeded library run per eps on every sample (pyautoattack batches internally)."""
        out = []
        for eps in epsilons:
            first = int(ids[0]) if len(ids) else 0
            seed = derive_seed(self.seed, "autoattack", eps, first) % (2**31)
            devices = [x.device.index or 0] if x.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):
                out.append(BatchResult(*self._run_one(model, x, y, eps, seed)))
        return out

    def _run_one(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
                 seed: int) -> tuple[torch.Tensor, torch.Tensor, list[str | None]]:
        n = x.shape[0]
        x_adv = x.clone()
        detail: list[str | None] = [None] * n
        with torch.no_grad():
            robust = model(x).argmax(1) == y if n else torch.zeros(0, dtype=torch.bool, device=x.device)
        if n == 0 or eps == 0:
            return x_adv, ~robust, detail
        aa = self.make(model, eps, seed, x.device)
        for sub in SUB_ATTACKS:
            idx = robust.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            xs, ys = x[idx].clone(), y[idx].clone()
            t0 = time.perf_counter()
            with quiet_library(self.library_messages):
                adv = self._sub_attack(aa, sub, xs, ys, seed)
            with torch.no_grad():
                fooled = model(adv).argmax(1) != ys
            self.seconds[sub] = self.seconds.get(sub, 0.0) + time.perf_counter() - t0
            hit = idx[fooled]
            x_adv[hit] = adv[fooled].detach()
            robust[hit] = False
            for i in hit.tolist():
                detail[i] = sub
        return x_adv, ~robust & (torch.tensor([d is not None for d in detail], device=x.device)), detail

    @staticmethod
    def _sub_attack(aa, sub: str, xs: torch.Tensor, ys: torch.Tensor, seed: int) -> torch.Tensor:
        """One configured sub-attack of ``aa`` on (xs, ys)."""
        if sub == "apgd-ce":
            aa.apgd.loss, aa.apgd.seed = "ce", seed
            return aa.apgd.perturb(xs, ys)
        if sub == "apgd-t":
            aa.apgd_targeted.seed = seed
            return aa.apgd_targeted.perturb(xs, ys)
        if sub == "fab-t":
            aa.fab.targeted, aa.fab.n_restarts, aa.fab.seed = True, 1, seed
            return aa.fab.perturb(xs, ys)
        aa.square.seed = seed
        return aa.square.perturb(xs, ys)
