"""Carlini & Wagner L2 attack (C&W 2017), its high-confidence (C&W-hc) and detector-aware (C&W-wb) variants.

Norm: L2, minimum-norm. Per sample it solves, in tanh space x' = (tanh(w) + 1) / 2 (so x' is always
in the [0, 1] box),

    min_w  ||x' - x||_2^2 + c * ( f(x') + detector_weight * max(s(x') - eta, 0) )
    f(x') = max(Z_y(x') - max_{j != y} Z_j(x'), -kappa)          (Z: logits, untargeted)

with Adam (``lr``) for ``max_iter`` iterations per value of c, and a per-sample binary search over c
(``search_steps`` rounds, starting at ``initial_const``; upper bound found: bisect, none yet: c *= 10).
The RCE paper (Pang et al. 2018, ../shared/papers/003_a03d9cf4d1799148.txt) writes f with the sign of the margin
flipped (a typo); the form above is C&W's. A sample counts as adversarial when its margin
max_{j != y} Z_j - Z_y > kappa (C&W's own test, strict); the best (smallest-L2) adversarial iterate
over all iterations and search rounds is kept. Defaults are C&W's reference implementation:
``search_steps=9``, ``initial_const=1e-3``, ``lr=1e-2``, ``abort_early=True``; ``max_iter`` is 1,000
here (C&W and the RCE paper: 10,000). ``abort_early`` is applied per sample (a sample stops when its
loss has not fallen by 0.01% over the last ``max_iter // 10`` iterations) rather than on the batch
sum as in C&W's code, so results do not depend on the batch. The attack has no randomness
(``seed`` is accepted for the common interface only).

Variants: ``kappa=10`` is C&W-hc of the RCE paper (class ``CarliniWagnerHC``, name 'cw-hc').
``detector_weight > 0`` is C&W-wb (Carlini & Wagner 2017b, as used in the RCE paper): the model (or
a model it wraps via ``.model``, e.g. a PassCounter) must expose ``detector_score(x)`` (differentiable,
per sample, higher = more suspicious, e.g. -log K-density) and ``detector_eta`` (the median score on
training data). The detector term max(s - eta, 0) is the paper's f2; it sits inside the bracket that
c multiplies, as in C&W 2017b's combined loss, so the binary search on c trades the distortion against
both terms. Success then also needs s(x') <= eta (f2 = 0). The detector is called directly on the
unwrapped model, so a PassCounter does not count those passes. Whenever the model has a detector,
``extra`` holds per sample ``detector_score`` and ``detector_term`` (= max(s - eta, 0)) at ``x_adv``.

``run_min_norm`` returns a ``MinNormOutput`` (distance = L2 norm of the best perturbation, inf where
none found). ``run`` (L-inf contract of ``Attack``) returns, per eps, that result where its L-inf
distance is <= eps, else ``x`` itself with success False (the family's template,
:class:`attacks.min_norm.MinimumNormAttack`; this module implements one batch).

Example: ``CarliniWagnerL2(max_iter=200).run_min_norm(model, x, y).distance``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from attacks.base import AttackContext, find_detector, margin_loss
from attacks.min_norm import MinimumNormAttack, MinNormBatch

_BETA1, _BETA2, _ADAM_EPS = 0.9, 0.999, 1e-8
_NO_UPPER = 1e10  # C&W's "no upper bound on c yet"


class CarliniWagnerL2(MinimumNormAttack):
    name = "cw-l2"
    norm = "l2"
    kind = "white-box"

    def __init__(self, *, seed: int = 0, search_steps: int = 9, max_iter: int = 1000, initial_const: float = 1e-3,
                 lr: float = 1e-2, kappa: float = 0.0, abort_early: bool = True,
                 detector_weight: float = 0.0) -> None:
        super().__init__(seed=seed)
        if search_steps < 1 or max_iter < 1:
            raise ValueError("search_steps and max_iter must be >= 1")
        if initial_const <= 0 or lr <= 0 or kappa < 0 or detector_weight < 0:
            raise ValueError("initial_const and lr must be > 0; kappa and detector_weight >= 0")
        self.search_steps, self.max_iter = int(search_steps), int(max_iter)
        self.initial_const, self.lr, self.kappa = float(initial_const), float(lr), float(kappa)
        self.abort_early, self.detector_weight = bool(abort_early), float(detector_weight)

    # -- template hooks -----------------------------------------------------------------------------
    def validate(self, model: nn.Module, context: AttackContext) -> None:
        if self.detector_weight > 0 and find_detector(model) is None:
            raise ValueError(
                f"{self.name} with detector_weight > 0 (C&W-wb) needs a model exposing detector_score(x) and "
                f"detector_eta; {type(model).__name__} (and the models it wraps via .model) has none")

    def min_norm_batch(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ids: torch.Tensor,
                       context: AttackContext) -> MinNormBatch:
        score, eta = self._detector(model)
        x_adv, success, s_final = self._attack_batch(model, x, y, score, eta)
        extra = None if score is None else {"detector_score": s_final, "detector_term": (s_final - eta).clamp(min=0.0)}
        return MinNormBatch(x_adv, success, extra)

    def distance(self, x_adv: torch.Tensor, x: torch.Tensor, success: torch.Tensor) -> torch.Tensor:
        return torch.where(success, (x_adv - x).flatten(1).norm(dim=1),
                           torch.full_like(success, float("inf"), dtype=x.dtype))

    def empty_extra(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor] | None:
        if self._detector(model)[0] is None:
            return None
        return {"detector_score": x.new_zeros(0), "detector_term": x.new_zeros(0)}

    @staticmethod
    def _detector(model: nn.Module) -> tuple[Callable[[torch.Tensor], torch.Tensor] | None, float]:
        """The model's detector score function and eta (the median training score), if it has a detector."""
        detector = find_detector(model)
        if detector is None:
            return None, 0.0
        return detector.detector_score, float(detector.detector_eta)  # type: ignore[return-value, arg-type]

    # -- one batch ----------------------------------------------------------------------------------
    def _objective(self, model: nn.Module, w: torch.Tensor, x: torch.Tensor, y: torch.Tensor, const: torch.Tensor,
                   score: Callable[[torch.Tensor], torch.Tensor] | None, eta: float
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-sample loss, iterate x', its squared L2 distance, success flag and detector term."""
        xa = (torch.tanh(w) + 1) / 2
        margin = margin_loss(model(xa), y)  # max_{j != y} Z_j - Z_y
        f = (-margin).clamp(min=-self.kappa)
        l2sq = (xa - x).flatten(1).pow(2).sum(1)
        ok = margin > self.kappa
        term = torch.zeros_like(l2sq)
        if self.detector_weight > 0 and score is not None:
            term = (score(xa) - eta).clamp(min=0.0)
            f = f + self.detector_weight * term
            ok = ok & (term <= 0)
        return l2sq + const * f, xa, l2sq, ok, term

    def _attack_batch(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                      score: Callable[[torch.Tensor], torch.Tensor] | None, eta: float
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n, dev = x.shape[0], x.device
        w0 = torch.atanh((2 * x - 1) * (1 - 1e-6))  # C&W's scaling keeps atanh finite at 0 and 1
        lower = torch.zeros(n, device=dev)
        upper = torch.full((n,), _NO_UPPER, device=dev)
        const = torch.full((n,), self.initial_const, device=dev)
        best_l2sq = torch.full((n,), float("inf"), device=dev)
        best_x = x.clone()
        for _ in range(self.search_steps):
            found = self._one_const(model, x, y, w0, const, score, eta, best_l2sq, best_x)
            # C&W's binary search on c, per sample
            lower = torch.where(found, lower, torch.maximum(lower, const))
            upper = torch.where(found, torch.minimum(upper, const), upper)
            const = torch.where(upper < _NO_UPPER / 10, (lower + upper) / 2, const * 10)
        success = torch.isfinite(best_l2sq)
        best_x = best_x.clamp(0.0, 1.0)
        s_final = torch.zeros(n, device=dev)
        if score is not None and n:
            with torch.no_grad():
                s_final = score(best_x).detach().reshape(n).to(dev)
        return best_x, success, s_final

    def _one_const(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, w0: torch.Tensor, const: torch.Tensor,
                   score: Callable[[torch.Tensor], torch.Tensor] | None, eta: float, best_l2sq: torch.Tensor,
                   best_x: torch.Tensor) -> torch.Tensor:
        """Adam from x for ``max_iter`` steps at fixed c; updates best_* in place; returns 'found' per sample.

        The running state is kept compact (only samples not stopped early) and written back to the
        full-size tensors when samples stop, so each iteration costs elementwise operations only.
        """
        n, dev = x.shape[0], x.device
        found = torch.zeros(n, dtype=torch.bool, device=dev)
        rows = torch.arange(n, device=dev)
        w, xs, ys, cs = w0.clone(), x, y, const
        m, v = torch.zeros_like(w), torch.zeros_like(w)
        prev = torch.full((n,), float("inf"), device=dev)
        bl2, bx, fd = best_l2sq[rows], best_x[rows], found[rows]
        check_every = max(1, self.max_iter // 10)

        def flush(sel: torch.Tensor) -> None:
            best_l2sq[rows[sel]], best_x[rows[sel]], found[rows[sel]] = bl2[sel], bx[sel], fd[sel]

        for it in range(self.max_iter):
            wa = w.requires_grad_(True)
            loss, xa, l2sq, ok, _ = self._objective(model, wa, xs, ys, cs, score, eta)
            grad = torch.autograd.grad(loss.sum(), wa)[0]
            with torch.no_grad():
                w = w.detach()
                fd |= ok
                better = ok & (l2sq < bl2)
                bl2 = torch.where(better, l2sq.detach(), bl2)
                bx = torch.where(better.view(-1, *([1] * (x.dim() - 1))), xa.detach(), bx)
                # Adam (bias-corrected, per element)
                t = it + 1
                m.mul_(_BETA1).add_(grad, alpha=1 - _BETA1)
                v.mul_(_BETA2).addcmul_(grad, grad, value=1 - _BETA2)
                w -= self.lr * (m / (1 - _BETA1 ** t)) / ((v / (1 - _BETA2 ** t)).sqrt_() + _ADAM_EPS)
                if self.abort_early and it % check_every == 0:
                    keep = ~(loss.detach() > prev * 0.9999)
                    prev = loss.detach()
                    if not bool(keep.all()):
                        flush(~keep)
                        rows, w, m, v, prev = rows[keep], w[keep], m[keep], v[keep], prev[keep]
                        xs, ys, cs, bl2, bx, fd = xs[keep], ys[keep], cs[keep], bl2[keep], bx[keep], fd[keep]
                        if rows.numel() == 0:
                            return found
        flush(torch.ones_like(fd))
        return found


class CarliniWagnerHC(CarliniWagnerL2):
    """C&W-hc of the RCE paper: the C&W L2 attack with confidence kappa = 10 by default."""

    name = "cw-hc"

    def __init__(self, *, kappa: float = 10.0, **kwargs: float | int | bool) -> None:
        super().__init__(kappa=kappa, **kwargs)  # type: ignore[arg-type]


class CarliniWagnerWB(CarliniWagnerL2):
    """C&W-wb of the RCE paper: the C&W L2 attack plus the detector term (detector_weight = 1 by default)."""

    name = "cw-wb"

    def __init__(self, *, detector_weight: float = 1.0, **kwargs: float | int | bool) -> None:
        super().__init__(detector_weight=detector_weight, **kwargs)  # type: ignore[arg-type]
