"""Model-side measurements behind the sanity checks (:mod:`bench.checks`).

Stored rows answer most questions about an evaluation, but some need the model itself: its input
gradients, what its outputs look like, whether two identical forward passes agree, and extra
attacks run independently of the cascade (per epsilon, per step count, with restarts, unbounded).
Every attack here is verified as the engine verifies cascade stages: the returned input must lie
in the ball and the box, and success is re-checked on a fresh forward pass (and by the detector
rule for detector entries). Results are per sample, so the checks can cite sample ids.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from attacks.base import Attack, attack_loss, per_sample_uniform, project_linf
from bench.verify import DetectorRule, check_bounds, predict


@dataclass
class Outcome:
    """Which samples an attack broke (engine-verified), by sample id."""

    ids: list[int]
    broken: list[bool]

    @property
    def n(self) -> int:
        return len(self.ids)

    @property
    def accuracy(self) -> float:
        return 100.0 * (self.n - sum(self.broken)) / self.n if self.n else float("nan")

    def broken_ids(self) -> set[int]:
        return {i for i, b in zip(self.ids, self.broken, strict=True) if b}


@dataclass
class Trace:
    """A PGD run recorded step by step: per step, the mean loss of the samples no step broke."""

    outcome: Outcome
    survivor_loss: list[float] = field(default_factory=list)  # index t: after t steps


@dataclass(frozen=True)
class PGDSetting:
    """The protocol's PGD (its ``pgd-ce`` stage): steps and step size."""

    steps: int
    step_size: float | None = None
    rel_step_size: float | None = None

    def alpha(self, eps: float) -> float:
        return float(self.step_size) if self.step_size is not None else float(self.rel_step_size or 0.1) * eps


class Prober:
    """Runs verified probes on one model: ``x``/``y`` on the model's device, ``ids`` the sample ids."""

    def __init__(self, model: nn.Module, bs: int, detector: DetectorRule | None,
                 make: Callable[[str, dict, int], Attack]) -> None:
        self.model, self.bs, self.detector, self.make = model, bs, detector, make

    def verify(self, x_adv: torch.Tensor, x: torch.Tensor, y: torch.Tensor, eps: float, label: str,
               ids: torch.Tensor) -> Outcome:
        check_bounds(x_adv, x, eps, label)
        broke = predict(self.model, x_adv, self.bs).cpu() != y.cpu()
        if self.detector is not None and x_adv.shape[0]:
            broke &= ~self.detector.judge(x_adv, self.bs)[1]
        return Outcome(ids=[int(i) for i in ids], broken=[bool(b) for b in broke])

    def attack(self, kind: str, params: dict, seed: int, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor,
               eps: float, label: str) -> Outcome:
        """One attack from the attack registry at one eps, verified."""
        if x.shape[0] == 0:
            return Outcome([], [])
        out = self.make(kind, dict(params), seed).run(self.model, x, y, [eps], sample_ids=ids, batch_size=self.bs)
        return self.verify(out.x_adv[0].detach().to(x.device), x, y, eps, label, ids)

    def traced_pgd(self, setting: PGDSetting, steps: int, restarts: int, seed: int, x: torch.Tensor,
                   y: torch.Tensor, ids: torch.Tensor, eps: float, label: str) -> Trace:
        """PGD with CE loss and random start that records the loss of every sample at every step.

        A sample stops being attacked once misclassified (its first fooling iterate is kept).
        ``survivor_loss[t]`` is the mean loss after t steps of the first restart over the samples
        that no step of it broke: if it still climbs at the end, the attack has not converged.
        """
        n = x.shape[0]
        if n == 0:
            return Trace(Outcome([], []), [])
        alpha = setting.alpha(eps)
        best = x.clone()
        done = torch.zeros(n, dtype=torch.bool, device=x.device)
        losses = torch.full((steps + 1, n), float("nan"))
        for r in range(restarts):
            active = (~done).nonzero().squeeze(1)
            if active.numel() == 0:
                break
            for b0 in range(0, active.numel(), self.bs):
                idx = active[b0:b0 + self.bs]
                x0, y0 = x[idx], y[idx]
                noise = per_sample_uniform(tuple(x0.shape), ids[idx.cpu()], seed, "check-pgd", eps, r)
                xa = (x0 + eps * noise.to(x.device)).clamp(0.0, 1.0)
                alive = torch.arange(idx.numel(), device=x.device)
                for t in range(steps + 1):
                    xa.requires_grad_(True)
                    logits = self.model(xa)
                    loss = attack_loss("ce", logits, y0[alive])
                    if r == 0:
                        losses[t, idx[alive].cpu()] = loss.detach().float().cpu()
                    fooled = (logits.argmax(1) != y0[alive]).detach()
                    with torch.no_grad():
                        best[idx[alive]] = xa.detach()
                        done[idx[alive[fooled]]] = True
                    keep = ~fooled
                    if t == steps or not bool(keep.any()):
                        break
                    grad = torch.autograd.grad(loss[keep].sum(), xa)[0][keep]
                    with torch.no_grad():
                        alive = alive[keep]
                        xa = project_linf(xa.detach()[keep] + alpha * grad.sign(), x0[alive], eps)
        outcome = self.verify(best.detach(), x, y, eps, label, ids)
        never = ~torch.tensor(outcome.broken) & ~torch.isnan(losses).any(0)
        curve = [float(losses[t, never].mean()) if bool(never.any()) else float("nan") for t in range(steps + 1)]
        return Trace(outcome, curve)


@dataclass
class ModelFacts:
    """What one pass over the evaluated samples shows about the model itself."""

    n: int
    zero_grad_ids: list[int]
    nonfinite_grad_ids: list[int]
    median_grad_l1: float
    probability_like: bool  # every output row lies in [0, 1] and sums to 1
    output_min: float
    output_max: float
    max_row_sum_error: float
    disagree_ids: list[int]  # two identical forward passes gave different outputs
    flipped_ids: list[int]  # ... and different predictions
    max_output_diff: float


def model_facts(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor, bs: int) -> ModelFacts:
    """Input gradients of the CE loss, output range and determinism, sample by sample."""
    zero, nonfinite, norms = [], [], []
    lo, hi, sum_err = float("inf"), float("-inf"), 0.0
    disagree, flipped, max_diff = [], [], 0.0
    for b0 in range(0, x.shape[0], bs):
        xb, yb, ib = x[b0:b0 + bs].clone().requires_grad_(True), y[b0:b0 + bs], ids[b0:b0 + bs].tolist()
        out = model(xb)
        g = torch.autograd.grad(nn.functional.cross_entropy(out, yb, reduction="sum"), xb, allow_unused=True)[0]
        grad = (torch.zeros_like(xb) if g is None else g).flatten(1)  # None: the output ignores the input graph
        finite = torch.isfinite(grad).all(1)
        g_abs = grad.abs().sum(1)
        for j, sid in enumerate(ib):
            if not bool(finite[j]):
                nonfinite.append(sid)
            elif float(g_abs[j]) == 0.0:
                zero.append(sid)
        norms += [float(v) for v in g_abs[finite]]
        with torch.no_grad():
            o1, o2 = out.detach(), model(xb.detach())
            finite_out = o1[torch.isfinite(o1)]
            if finite_out.numel():
                lo, hi = min(lo, float(finite_out.min())), max(hi, float(finite_out.max()))
            sum_err = max(sum_err, float((o1.sum(1) - 1).abs().max()))
            diff = (o1 - o2).abs().flatten(1).amax(1)
            scale = 1e-5 * (1.0 + o1.abs().flatten(1).amax(1))
            max_diff = max(max_diff, float(diff.max()))
            for j, sid in enumerate(ib):
                if float(diff[j]) > float(scale[j]):
                    disagree.append(sid)
                    if int(o1[j].argmax()) != int(o2[j].argmax()):
                        flipped.append(sid)
    norms.sort()
    return ModelFacts(
        n=int(x.shape[0]), zero_grad_ids=zero, nonfinite_grad_ids=nonfinite,
        median_grad_l1=norms[len(norms) // 2] if norms else float("nan"),
        probability_like=bool(lo >= 0.0 and hi <= 1.0 and sum_err < 1e-3), output_min=lo, output_max=hi,
        max_row_sum_error=sum_err, disagree_ids=disagree, flipped_ids=flipped, max_output_diff=max_diff)
