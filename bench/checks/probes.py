"""Model-side measurements behind the sanity checks (:mod:`bench.checks.suite`).

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

from attacks.base import Attack, attack_loss, per_sample_uniform
from attacks.context import AttackContext
from attacks.signed_gradient import Scored, StepSize, signed_gradient_ascent
from bench.engine.verify import DetectorRule, adversarial_verdict, check_bounds


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
    """The protocol's PGD (its ``pgd-ce`` stage): steps and step size (eps / 10 when none is given)."""

    steps: int
    step_size: float | None = None
    rel_step_size: float | None = None

    def alpha(self, eps: float) -> float:
        return StepSize.resolve(self.step_size, self.rel_step_size, 0.1).alpha(eps)


@dataclass(frozen=True)
class PGDJob:
    """One probe PGD run: samples (on the model's device), eps, steps, restarts and seed."""

    setting: PGDSetting
    x: torch.Tensor
    y: torch.Tensor
    ids: torch.Tensor
    eps: float
    steps: int
    seed: int
    restarts: int = 1


class Prober:
    """Runs verified probes on one model: ``x``/``y`` on the model's device, ``ids`` the sample ids.

    ``context`` is what registry attacks receive on each call (e.g. the run's detector threshold).
    """

    def __init__(self, model: nn.Module, bs: int, detector: DetectorRule | None,
                 make: Callable[[str, dict, int], Attack], context: AttackContext | None = None) -> None:
        self.model, self.bs, self.detector, self.make = model, bs, detector, make
        self.context = context if context is not None else AttackContext()

    def verify(self, x_adv: torch.Tensor, x: torch.Tensor, y: torch.Tensor, eps: float, label: str,
               ids: torch.Tensor) -> Outcome:
        check_bounds(x_adv, x, eps, label)
        broke = adversarial_verdict(self.model, x_adv, y, self.bs, self.detector)[1]
        return Outcome(ids=[int(i) for i in ids], broken=[bool(b) for b in broke])

    def attack(self, kind: str, params: dict, seed: int, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor,
               eps: float, label: str) -> Outcome:
        """One attack from the attack registry at one eps, verified."""
        if x.shape[0] == 0:
            return Outcome([], [])
        out = self.make(kind, dict(params), seed).run(self.model, x, y, [eps], sample_ids=ids, batch_size=self.bs,
                                                      context=self.context)
        return self.verify(out.x_adv[0].detach().to(x.device), x, y, eps, label, ids)

    def pgd(self, jobs: list[PGDJob], label: str) -> list[Trace]:
        """Run several PGD jobs (CE loss, random start) as one batch and record every step.

        Jobs differ in eps, step count, seed and restarts; their rows (one per sample and restart) are
        attacked together, ``bs`` rows per forward pass, which costs far fewer passes on small probes
        than running the jobs one by one. A sample stops being attacked (every restart of it) once one
        of its rows is misclassified; that iterate is kept, else the last iterate of restart 0.
        ``survivor_loss[t]`` is the mean loss after t steps of restart 0 over the job's samples that no
        step broke: if it still climbs at the end, the attack has not converged. The loop is the shared
        core (:func:`attacks.signed_gradient.signed_gradient_ascent`) with per-row eps and step, a
        per-row step budget and a stop rule per sample (group of rows).
        """
        xs: list[torch.Tensor] = []
        ys: list[torch.Tensor] = []
        group: list[int] = []
        eps: list[float] = []
        alpha: list[float] = []
        budget: list[int] = []
        restart0: list[bool] = []
        job_of: list[int] = []
        offsets, n_groups = [], 0
        for j, job in enumerate(jobs):
            n = job.x.shape[0]
            offsets.append(n_groups)
            for r in range(job.restarts):
                noise = per_sample_uniform(tuple(job.x.shape), job.ids, job.seed, "check-pgd", job.eps, r)
                xs.append((job.x + job.eps * noise.to(job.x.device)).clamp(0.0, 1.0))
                ys.append(job.y)
                group += range(n_groups, n_groups + n)
                restart0 += [r == 0] * n
            eps += [job.eps] * n * job.restarts
            alpha += [job.setting.alpha(job.eps)] * n * job.restarts
            budget += [job.steps] * n * job.restarts
            job_of += [j] * n * job.restarts
            n_groups += n
        if not group:  # no rows (every job empty: e.g. no clean-correct sample to probe)
            return [Trace(Outcome([], []), []) for _ in jobs]
        xa, y = torch.cat(xs), torch.cat(ys)
        dev = xa.device
        x0 = torch.cat([job.x for job in jobs for _ in range(job.restarts)])
        grp = torch.tensor(group, device=dev)
        eps_t = torch.tensor(eps, device=dev).view(-1, *([1] * (xa.dim() - 1)))
        alpha_t = torch.tensor(alpha, device=dev).view_as(eps_t)
        budget_t = torch.tensor(budget, device=dev)
        best = xa.clone()
        first = torch.tensor(restart0, device=dev)
        fooled_group = torch.zeros(n_groups, dtype=torch.bool, device=dev)
        fool_row = torch.full((n_groups,), -1, dtype=torch.long, device=dev)  # the row whose iterate fooled it
        max_steps = max(job.steps for job in jobs)
        losses = torch.full((max_steps + 1, xa.shape[0]), float("nan"))

        def objective(xb: torch.Tensor, logits: torch.Tensor, rows: torch.Tensor) -> Scored:
            return Scored(attack_loss("ce", logits, y[rows]), logits.argmax(1) != y[rows])

        def record(t: int, rows: torch.Tensor, xb: torch.Tensor, logits: torch.Tensor, s: Scored) -> None:
            losses[t, rows.cpu()] = s.objective.detach().float().cpu()
            fooled = s.success
            assert fooled is not None  # the objective above always says which rows it fooled
            keep = (fooled | first[rows]).view_as(eps_t[rows])  # fooling iterates; restart 0's latest
            best[rows] = torch.where(keep, xb, best[rows])
            fooled_group[grp[rows[fooled]]] = True
            fool_row[grp[rows[fooled]]] = rows[fooled]

        def live(t: int, rows: torch.Tensor) -> torch.Tensor:  # every restart of a fooled sample stops
            return ~fooled_group[grp[rows]] & (budget_t[rows] >= t)

        signed_gradient_ascent(self.model, x0, xa, eps_t, alpha_t, max_steps, objective, record=record, live=live,
                               chunk=self.bs)
        traces = []
        for j, job in enumerate(jobs):
            n = job.x.shape[0]
            rows = [i for i in range(len(job_of)) if job_of[i] == j]
            r0 = torch.tensor([i for i in rows if restart0[i]], dtype=torch.long)
            g = torch.arange(offsets[j], offsets[j] + n, device=dev)
            # the fooling iterate of any restart, else restart 0's last iterate
            pick = torch.where(fooled_group[g], fool_row[g], r0.to(dev))
            out_x = best[pick]
            outcome = self.verify(out_x.detach(), job.x, job.y, job.eps, label, job.ids)
            trace_l = losses[: job.steps + 1, r0]
            never = ~torch.tensor(outcome.broken, dtype=torch.bool) & ~torch.isnan(trace_l).any(0)
            curve = [float(trace_l[t, never].mean()) if bool(never.any()) else float("nan")
                     for t in range(job.steps + 1)]
            traces.append(Trace(outcome, curve))
        return traces


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
