"""The attack template, pass counting and deterministic per-sample seeding.

Contract (GUIDE section 2): images are float tensors in [0, 1]; the model maps them to logits.
An attack call takes several epsilons and returns, per epsilon and per sample, the adversarial
input and whether the attack believes it succeeded. The engine re-checks success on a fresh
forward pass and checks the ball and the box, so an attack's own verdict is advisory only.

Template: :meth:`Attack.run` is written once, here. It resolves the sample ids (for per-sample
seeding), the batch size and the :class:`~attacks.context.AttackContext`, lets the attack check the
model and context (:meth:`Attack.validate`), runs the epsilon x batch loop and shapes the output
(K, N, ...) with the per-sample ``detail``. An attack implements one batch at one epsilon
(:meth:`Attack.attack_batch`). An attack that needs the whole epsilon list or state across batches
(a library attack seeded once per call, a sweep that re-batches the samples still unbroken, a
transfer cache, a path shared by every epsilon) implements :meth:`Attack.attack_epsilons` instead,
which receives every epsilon and every sample. No attack overrides ``run``.

Declarations (class attributes, read by the registry and the checks): ``name`` (the protocol's
``kind`` string, e.g. "pgd"), ``family`` ("fixed-budget": succeed within an eps ball, or
"minimum-norm": the smallest perturbation found, see :mod:`attacks.min_norm`), ``norm`` ("linf",
"l2" or "l0"), ``kind`` ("white-box", "black-box", "transfer" or "adaptive") and ``wrappable_by``
(the wrapper kinds, "adaptive" and "transfer", that may run the attack inside them).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, final

import torch
from torch import nn

from attacks.context import AttackContext
from attacks.signed_gradient import project_linf

Family = Literal["fixed-budget", "minimum-norm"]
Norm = Literal["linf", "l2", "l0"]
Kind = Literal["white-box", "black-box", "transfer", "adaptive"]
FAMILIES: tuple[Family, ...] = ("fixed-budget", "minimum-norm")
NORMS: tuple[Norm, ...] = ("linf", "l2", "l0")
KINDS: tuple[Kind, ...] = ("white-box", "black-box", "transfer", "adaptive")

__all__ = ["FAMILIES", "KINDS", "NORMS", "Attack", "AttackContext", "AttackOutput", "BatchResult", "PassCounter",
           "attack_loss", "derive_seed", "find_detector", "margin_loss", "per_sample_uniform", "prepare_model",
           "project_linf", "stack_output"]


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


def seed_generators(seed: int, devices: Sequence[torch.device | int]) -> None:
    """Seed torch's CPU generator and those of ``devices`` only: the ones a ``fork_rng(devices=...)``
    around the call restores (``torch.manual_seed`` would reseed every CUDA device)."""
    torch.random.default_generator.manual_seed(seed)
    for d in devices:
        index = d if isinstance(d, int) else d.index if d.index is not None else torch.cuda.current_device()
        torch.cuda.default_generators[index].manual_seed(seed)


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
    """Wraps a model and counts per-sample forward passes and input-gradient (backward) passes.

    It also gives every attack a graph to differentiate: a model whose output has no autograd path
    from its input (a forward run under ``torch.no_grad`` or on a detached copy) has, in effect, a
    zero input gradient, yet ``torch.autograd.grad`` would raise on it. Its output gets ``0 * x``
    added (the same values exactly), so attacks see the zero gradient and the checks flag it.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.n_forward = 0
        self.n_backward = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.n_forward += x.shape[0]
        if x.requires_grad:
            x = _CountBackward.apply(x, self)
        out = self.model(x)
        if x.requires_grad and isinstance(out, torch.Tensor) and not out.requires_grad:
            out = out + 0.0 * x.reshape(x.shape[0], -1)[:, :1]
        return out

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


@dataclass
class BatchResult:
    """Result of one attack at ONE epsilon on n samples: ``x_adv`` (n, C, H, W), ``success`` (n,) bool,
    ``detail`` (n entries, or None when the attack reports none)."""

    x_adv: torch.Tensor
    success: torch.Tensor
    detail: list[str | None] | None = None


def join_batches(x: torch.Tensor, parts: list[BatchResult], with_detail: bool) -> BatchResult:
    """The batches of one epsilon, concatenated (``x`` itself and no success when there are none)."""
    x_adv = torch.cat([p.x_adv for p in parts]) if parts else x.clone()
    success = torch.cat([p.success for p in parts]) if parts else torch.zeros(0, dtype=torch.bool, device=x.device)
    detail = ([d for p in parts for d in (p.detail if p.detail is not None else [None] * p.x_adv.shape[0])]
              if with_detail else None)
    return BatchResult(x_adv, success, detail)


def stack_output(x: torch.Tensor, per_eps: Sequence[BatchResult]) -> AttackOutput:
    """The (K, N, ...) output of K per-epsilon results; ``detail`` is None unless some epsilon has one."""
    if not per_eps:
        return AttackOutput(x_adv=x.new_zeros((0, *x.shape)), success=torch.zeros(0, x.shape[0], dtype=torch.bool))
    details: list[list[str | None]] | None = None
    if any(r.detail is not None for r in per_eps):
        details = [r.detail if r.detail is not None else [None for _ in range(r.x_adv.shape[0])] for r in per_eps]
    return AttackOutput(x_adv=torch.stack([r.x_adv for r in per_eps]).detach(),
                        success=torch.stack([r.success for r in per_eps]), detail=details)


_DECLARED: dict[str, type[Attack]] = {}  # every concrete attack class, by name, as its module defines it


def declared_wrappable_by(wrapper: str) -> dict[str, type[Attack]]:
    """The attack classes that declare ``wrapper`` ("adaptive" or "transfer") in ``wrappable_by``, by name.

    Read from the classes themselves as they are defined, so that a wrapper (BPDA, EOT, Transfer) finds
    what it may run without importing :mod:`attacks.registry`, which imports the wrappers (no import
    cycle). Importing any ``attacks`` module first runs ``attacks/__init__``, which defines them all.
    """
    return {name: cls for name, cls in _DECLARED.items() if wrapper in cls.wrappable_by}


class Attack:
    """Base class: hyperparameters and a seed at construction, the model and the context at each call.

    Subclasses declare ``name``, ``family``, ``norm`` and ``kind`` and implement ``attack_batch``
    (or ``attack_epsilons``); ``reports_detail`` says whether their output carries per-sample detail.
    """

    name: ClassVar[str]
    family: ClassVar[Family]
    norm: ClassVar[Norm]
    kind: ClassVar[Kind]
    wrappable_by: ClassVar[frozenset[str]] = frozenset()
    reports_detail: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:  # a concrete attack (intermediate bases declare no name)
            _DECLARED[cls.name] = cls

    def __init__(self, *, seed: int = 0) -> None:
        self.seed = int(seed)

    @final
    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, epsilons: Sequence[float],
            sample_ids: torch.Tensor | None = None, batch_size: int | None = None,
            context: AttackContext | None = None) -> AttackOutput:
        """Attack ``x`` (N, C, H, W) with labels ``y`` at each epsilon; the template every attack shares.

        ``sample_ids`` are the protocol's sample indices (for per-sample seeding; defaults to
        0..N-1); ``batch_size`` bounds memory and never changes the results of a deterministic
        attack; ``context`` carries optional capabilities (surrogates, a detector threshold).
        """
        ids = self._ids(x, sample_ids)
        bs = batch_size or max(x.shape[0], 1)
        ctx = context if context is not None else AttackContext()
        self.validate(model, ctx)
        return stack_output(x, self.attack_epsilons(model, x, y, [float(e) for e in epsilons], ids, bs, ctx))

    def validate(self, model: nn.Module, context: AttackContext) -> None:
        """Hook: raise ValueError, before any work, when the model or the context lacks what the attack needs."""

    def attack_epsilons(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, epsilons: list[float],
                        ids: torch.Tensor, bs: int, context: AttackContext) -> list[BatchResult]:
        """Every epsilon on every sample, one ``BatchResult`` per epsilon.

        The default is the epsilon x batch loop over :meth:`attack_batch` (batches of ``bs``). Override
        it only when the attack needs the whole epsilon list or state across batches (say why).
        """
        n = x.shape[0]
        return [join_batches(x, [self.attack_batch(model, x[s:s + bs], y[s:s + bs], eps, ids[s:s + bs], context)
                                 for s in range(0, n, bs)], self.reports_detail)
                for eps in epsilons]

    def attack_batch(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, ids: torch.Tensor,
                     context: AttackContext) -> BatchResult:
        """One batch at one epsilon (``ids``: the batch's sample ids, for per-sample seeding)."""
        raise NotImplementedError(f"{type(self).__name__} implements neither attack_batch nor attack_epsilons")

    @staticmethod
    def _ids(x: torch.Tensor, sample_ids: torch.Tensor | None) -> torch.Tensor:
        return torch.arange(x.shape[0]) if sample_ids is None else sample_ids.cpu()
