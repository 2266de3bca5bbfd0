"""Stages outside the L-inf cascade: minimum-norm attacks, L0 attacks and sanity probes.

They never enter the worst case. Each runs per chunk after the cascade, on the samples its spec
picks (correct and accepted on the clean pass, or the cascade's survivors at the probe's eps),
within the spec's ``max_samples``. As for cascade stages, the engine verifies every result: the
returned inputs must be finite and in the [0, 1] box (and, for probes, in the eps ball; for L0
attacks, within the declared pixel budget), and success is re-checked on a fresh forward pass
(and the detector, for detector entries). The engine measures the distances itself (L2, L-inf,
and L0 as the number of input values changed) and stores them on the rows of successful samples.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import cast

import torch

from attacks.base import Attack, PassCounter
from attacks.context import AttackContext
from attacks.jsma import JSMA
from attacks.min_norm import MinimumNormAttack
from bench.engine.verify import DetectorRule, adversarial_verdict, check_bounds
from bench.errors import AttackContractError, BenchError
from bench.protocol.protocols import ExtraSpec, Protocol
from bench.store.database import Result, Stage, Store

CHANGED = 1e-7  # an input value counts as changed (L0) when it moved more than this


def distances(x_adv: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample (L2, L-inf, L0) of x_adv - x, on CPU."""
    d = (x_adv - x).flatten(1).detach().cpu().double()
    if d.shape[0] == 0:
        z = torch.zeros(0, dtype=torch.float64)
        return z, z, z
    return d.norm(dim=1), d.abs().amax(1), (d.abs() > CHANGED).sum(1).double()


def run_extra(store: Store, run_id: int, protocol: Protocol, model: PassCounter, spec: ExtraSpec,
              x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor, base: torch.Tensor, bs: int,
              make: Callable[[str, dict, int], Attack], detector: DetectorRule | None,
              context: AttackContext | None = None) -> None:
    """Run one extra on one chunk and store its stage and rows in one transaction (``context``: what the
    attack may use besides the model, e.g. the detector threshold)."""
    t0 = time.perf_counter()
    model.reset()
    in_range = ids < spec.max_samples if spec.max_samples is not None else torch.ones_like(ids, dtype=torch.bool)
    chosen = base & in_range
    idx = chosen.nonzero().squeeze(1)
    n = x.shape[0]
    success = torch.zeros(n, dtype=torch.bool)
    pred_all: list[int | None] = [None] * n
    dist: dict[str, list[float | None]] = {k: [None] * n for k in ("l2", "linf", "l0")}
    score_all: list[float | None] = [None] * n
    rejected_all: list[bool | None] = [None] * n
    n_fwd = n_bwd = 0
    if idx.numel():
        attack = make(spec.kind, dict(spec.params), spec.seed)
        xs, ys = x[idx.to(x.device)], y[idx.to(x.device)]
        if spec.mode == "probe":
            x_adv = attack.run(model, xs, ys, [float(spec.eps or 0.0)], sample_ids=ids[idx], batch_size=bs,
                               context=context).x_adv[0]
        elif getattr(attack, "family", None) != "minimum-norm" or (spec.mode == "l0") != (attack.norm == "l0"):
            raise BenchError(f"{protocol.name}: extra {spec.label} ({spec.mode}) needs a minimum-norm attack"
                             f"{' with an L0 budget' if spec.mode == 'l0' else ''}, not {spec.kind!r}")
        elif spec.mode == "min-norm":  # the family's declaration (attacks.min_norm) says it has these
            x_adv = cast(MinimumNormAttack, attack).run_min_norm(model, xs, ys, sample_ids=ids[idx], batch_size=bs,
                                                                 context=context).x_adv
        else:
            x_adv = cast(JSMA, attack).run_l0(model, xs, ys, sample_ids=ids[idx], batch_size=bs,
                                              context=context).x_adv
        n_fwd, n_bwd = model.reset()
        x_adv = x_adv.detach().to(x.device)
        check_bounds(x_adv, xs, spec.eps, spec.label)
        l2, linf, l0 = distances(x_adv, xs)
        if spec.mode == "l0" and "max_fraction" in spec.params:
            budget = math.floor(float(spec.params["max_fraction"]) * xs[0].numel())
            if l0.numel() and float(l0.max()) > budget:
                raise AttackContractError(f"{spec.label}: changed {int(l0.max())} input values, over its L0 budget "
                                          f"of {budget}")
        pred, broke, sc, rej = adversarial_verdict(model, x_adv, ys, bs, detector)  # rejected: not a success
        if sc is not None and rej is not None:
            for j, i in enumerate(idx.tolist()):
                score_all[i], rejected_all[i] = float(sc[j]), bool(rej[j])
        model.reset()
        success[idx] = broke
        for j, i in enumerate(idx.tolist()):
            pred_all[i] = int(pred[j])
            if bool(broke[j]) or spec.mode == "probe":
                dist["l2"][i], dist["linf"][i], dist["l0"][i] = float(l2[j]), float(linf[j]), float(l0[j])
    fp = protocol.fingerprint
    eps = spec.row_eps
    rows = [Result(run_id=run_id, fingerprint=fp, attack=spec.label, eps=eps, sample=int(ids[i]), label=int(y[i]),
                   attacked=bool(chosen[i]), success=bool(success[i]), robust_after=bool(chosen[i] & ~success[i]),
                   pred=pred_all[i], linf=dist["linf"][i], l2=dist["l2"][i], l0=dist["l0"][i], score=score_all[i],
                   rejected=rejected_all[i])
            for i in range(n) if bool(in_range[i])]
    stage = Stage(run_id=run_id, fingerprint=fp, attack=spec.label, eps=eps, chunk_start=int(ids[0]),
                  chunk_stop=int(ids[-1]) + 1, n_attacked=int(chosen.sum()), n_broken=int(success.sum()),
                  n_forward=n_fwd, n_backward=n_bwd, seconds=time.perf_counter() - t0, seed=spec.seed)
    store.write_stage(stage, rows, stage.seconds)
