"""Attack interface, pass counting and deterministic per-sample seeding.

Contract (GUIDE section 2): images are float tensors in [0, 1]; the model maps them to logits.
An attack call takes several epsilons and returns, per epsilon and per sample, the adversarial
input and whether the attack believes it succeeded. The engine re-checks success on a fresh
forward pass and checks the ball and the box, so an attack's own verdict is advisory only.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from attacks.signed_gradient import project_linf

__all__ = ["Attack", "AttackOutput", "PassCounter", "attack_loss", "derive_seed", "find_detector", "margin_loss",
           "per_sample_uniform", "prepare_model", "project_linf", "run_in_batches"]


@dataclass
class AttackOutput:
    """Result of one attack call on N samples at K epsilons.

    ``x_adv`` is (K, N, C, H, W); ``success`` is (K, N) bool as judged by the attack; ``detail``
    optionally names, per epsilon and sample, what broke it (e.g. the AutoAttack sub-attack).
    """

    x_adv: torch.Tensor
    success: torch.Tensor
    detail: list[list[str | None]] | None = None


def derive_seed(*parts: int | float | str) -> int:
    """A 63-bit seed from any tuple of values, stable across processes and platforms."""
    digest = hashlib.sha256("|".join(repr(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def per_sample_uniform(
    shape: tuple[int, ...], sample_ids: torch.Tensor, *parts: int | float | str
) -> torch.Tensor:
    """Uniform [-1, 1) noise of ``shape`` (one row per sample) seeded by (parts, sample id).

    Seeding per sample makes random starts independent of batch composition and batch size.
    """
    out = torch.empty(shape)
    gen = torch.Generator()
    for row, sid in enumerate(sample_ids.tolist()):
        gen.manual_seed(derive_seed(*parts, int(sid)))
        out[row] = torch.rand(shape[1:], generator=gen) * 2 - 1
    return out


def prepare_model(model: nn.Module, device: torch.device | str) -> nn.Module:
    """The model as every attack sees it: on ``device``, in eval mode, with channels_last weights
    (20-30% faster CPU convolutions; a no-op without 4-D weights) and frozen parameters.

    Attacks need input gradients only. Freezing changes no result (the input gradient is computed
    the same way) but stops a library attack that calls ``.backward()`` (pyautoattack's FAB) from
    also computing every weight gradient: FAB-T runs about 25% faster on the MNIST CNN.
    """
    model = model.to(device).to(memory_format=torch.channels_last).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class _CountBackward(torch.autograd.Function):
    """Identity whose backward adds the batch size to a counter (counts input-gradient passes)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, counter: PassCounter) -> torch.Tensor:  # type: ignore[override]
        ctx.counter = counter
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        ctx.counter.n_backward += grad.shape[0]
        return grad, None


class PassCounter(nn.Module):
    """Wraps a model and counts per-sample forward passes and input-gradient (backward) passes."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.n_forward = 0
        self.n_backward = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.n_forward += x.shape[0]
        if x.requires_grad:
            x = _CountBackward.apply(x, self)
        return self.model(x)

    def reset(self) -> tuple[int, int]:
        counts = (self.n_forward, self.n_backward)
        self.n_forward = self.n_backward = 0
        return counts


def margin_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """CW margin per sample: max_{j != y} z_j - z_y (positive means misclassified)."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.clone()
    other.scatter_(1, y[:, None], float("-inf"))
    return other.amax(dim=1) - true


def attack_loss(name: str, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample loss that an untargeted attack maximises: 'ce' or 'cw' (margin)."""
    if name == "ce":
        return nn.functional.cross_entropy(logits, y, reduction="none")
    if name == "cw":
        return margin_loss(logits, y)
    raise ValueError(f"unknown attack loss {name!r}; use 'ce' or 'cw'")


def find_detector(model: nn.Module) -> nn.Module | None:
    """The first of model, model.model, ... (PassCounter and other wrappers) with a callable ``detector_score``."""
    seen: set[int] = set()
    m: object = model
    while m is not None and id(m) not in seen:
        if callable(getattr(m, "detector_score", None)):
            return m  # type: ignore[return-value]
        seen.add(id(m))
        m = getattr(m, "model", None)
    return None


def run_in_batches(x: torch.Tensor, y: torch.Tensor, epsilons: Sequence[float], ids: torch.Tensor, bs: int,
                   attack_batch) -> AttackOutput:
    """Stack ``attack_batch(x_b, y_b, eps, ids_b) -> (x_adv_b, success_b)`` over epsilons and batches of ``bs``."""
    advs, succs = [], []
    for eps in epsilons:
        parts = [attack_batch(x[s:s + bs], y[s:s + bs], float(eps), ids[s:s + bs]) for s in range(0, x.shape[0], bs)]
        advs.append(torch.cat([p[0] for p in parts]) if parts else x.clone())
        succs.append(torch.cat([p[1] for p in parts]) if parts else torch.zeros(0, dtype=torch.bool, device=x.device))
    return AttackOutput(x_adv=torch.stack(advs), success=torch.stack(succs))


class Attack(ABC):
    """Base class: hyperparameters and a seed at construction, the model at each call."""

    name: str = "attack"

    def __init__(self, *, seed: int = 0) -> None:
        self.seed = int(seed)

    @abstractmethod
    def run(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        epsilons: Sequence[float],
        sample_ids: torch.Tensor | None = None,
        batch_size: int | None = None,
    ) -> AttackOutput:
        """Attack ``x`` (N, C, H, W) with labels ``y`` at each epsilon.

        ``sample_ids`` are the protocol's sample indices (for per-sample seeding; defaults to
        0..N-1); ``batch_size`` bounds memory and never changes the results.
        """

    @staticmethod
    def _ids(x: torch.Tensor, sample_ids: torch.Tensor | None) -> torch.Tensor:
        return torch.arange(x.shape[0]) if sample_ids is None else sample_ids.cpu()
