"""Engine-side checks shared by every stage: predictions, the ball-and-box contract, the detector rule.

The engine never trusts an attack's own verdict: it checks the returned inputs (shape, finite,
[0, 1] box, L-inf ball) and re-runs the model (and the detector, for detector entries).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

from attacks.base import derive_seed, seed_generators
from bench.errors import AttackContractError

BALL_TOLERANCE = 1e-5  # float32 rounding of x + delta; anything larger is an attack bug


def predict(model: nn.Module, x: torch.Tensor, bs: int) -> torch.Tensor:
    with torch.no_grad():
        if x.shape[0] == 0:
            return torch.zeros(0, dtype=torch.long, device=x.device)
        return torch.cat([model(x[i:i + bs]).argmax(1) for i in range(0, x.shape[0], bs)])


@dataclass(frozen=True)
class DetectorRule:
    """A detector model and the run's threshold: rejected iff score > threshold."""

    model: nn.Module
    threshold: float

    def judge(self, x: torch.Tensor, bs: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores, rejected) for inputs x: the rule every stage applies."""
        sc = self.scores(x, bs)
        return sc, sc > self.threshold

    def scores(self, x: torch.Tensor, bs: int) -> torch.Tensor:
        """Detector scores on CPU; NaN (undefined density) counts as maximally suspicious."""
        if x.shape[0] == 0:
            return torch.zeros(0)
        with torch.no_grad():
            score = cast(Any, self.model).detector_score  # has_detector(model) holds for a rule's model
            s = torch.cat([score(x[i:i + bs]).detach().float().cpu()
                           for i in range(0, x.shape[0], bs)])
        return torch.nan_to_num(s, nan=float("inf")).clamp(max=3.0e38)


def adversarial_verdict(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor, bs: int,
                        detector: DetectorRule | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None,
                                                                 torch.Tensor | None]:
    """The engine's own success decision on a fresh forward pass, on CPU: (predictions, broke, detector
    scores, rejected). An input breaks its sample when misclassified and, for detector entries, not rejected."""
    pred = predict(model, x_adv, bs).cpu()
    broke = pred != y.cpu()
    if detector is None:
        return pred, broke, None, None
    sc, rej = detector.judge(x_adv, bs)
    return pred, broke & ~rej, sc, rej


@dataclass(frozen=True)
class DrawsRule:
    """How a randomized model is judged (the protocol's ``RANDOMIZED_RULE``): on each input it is run
    ``draws`` times, and the sample counts as correct only if at least ``min_correct`` draws are right.

    One draw of a randomized model says little: a sample an attack "broke" on one unlucky draw may be
    right nine times in ten, and a sample it "missed" may be wrong half the time. Judging over draws
    applies to the clean pass and to every final adversarial input alike. The draws of each call run
    inside ``torch.random.fork_rng`` seeded from (``seed``, ``parts``), so verdicts are reproducible and
    the caller's random state is untouched. The stored prediction is the most frequent one.
    """

    draws: int
    min_correct: int
    seed: int = 0

    def verdict(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, bs: int,
                *parts: int | float | str) -> tuple[torch.Tensor, torch.Tensor]:
        """(most frequent prediction, correct in at least ``min_correct`` of ``draws``), on CPU."""
        if x.shape[0] == 0:
            empty = torch.zeros(0, dtype=torch.long)
            return empty, empty.bool()
        devices = [x.device] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            seed_generators(derive_seed(self.seed, "draws", *parts), devices)
            preds = torch.stack([predict(model, x, bs).cpu() for _ in range(self.draws)])  # (draws, N)
        right = (preds == y.cpu()[None]).sum(0)
        return torch.mode(preds, dim=0).values, right >= self.min_correct


def judged_verdict(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor, bs: int, detector: DetectorRule | None,
                   draws: DrawsRule | None, *parts: int | float | str
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """:func:`adversarial_verdict`, or for a randomized model the same decision over draws."""
    if draws is None:
        return adversarial_verdict(model, x_adv, y, bs, detector)
    pred, right = draws.verdict(model, x_adv, y, bs, *parts)
    if detector is None:
        return pred, ~right, None, None
    sc, rej = detector.judge(x_adv, bs)
    return pred, ~right & ~rej, sc, rej


def has_detector(model: nn.Module) -> bool:
    return callable(getattr(model, "detector_score", None))


def check_bounds(x_adv: torch.Tensor, x: torch.Tensor, eps: float | None, label: str) -> None:
    if x_adv.shape != x.shape:
        raise AttackContractError(f"{label}: returned shape {tuple(x_adv.shape)} for inputs {tuple(x.shape)}")
    if not torch.isfinite(x_adv).all():
        raise AttackContractError(f"{label}: returned non-finite inputs")
    if float(x_adv.min()) < 0.0 or float(x_adv.max()) > 1.0:
        raise AttackContractError(f"{label}: returned inputs outside the [0, 1] box")
    if eps is None:  # min-norm and L0 attacks: the box only
        return
    dist = float((x_adv - x).abs().max()) if x.numel() else 0.0
    if dist > eps + BALL_TOLERANCE:
        raise AttackContractError(f"{label}: returned an input at L-inf distance {dist:.6g} > eps {eps:.6g}")
