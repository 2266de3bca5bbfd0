"""Adaptive attacks of Athalye et al. (2018): BPDA for non-differentiable parts, EOT for randomness.

Norm: whatever the inner attack uses (here L-inf). Both wrap an inner gradient attack given as a
spec (``inner_kind`` one of :func:`inner_kinds`, the attacks declaring "adaptive" in their
``wrappable_by``, or a nested "bpda" / "eot"; ``inner_params`` its keyword arguments; the inner
attack gets this attack's seed and the call's context) and return its results unchanged, ``detail``
included. Both need the whole eps list or the whole sample set of a call (BPDA patches the model
once around the inner attack's own run) or seed per batch (EOT), see each class.

* ``BPDA`` ("bpda"): every submodule with an attribute ``bpda_approx`` (a callable g, or the string
  "identity") is, for the duration of the attack, given the straight-through forward
  ``f(x).detach() + (g(x) - g(x).detach())``: the value is exactly f(x) (bit for bit: the added
  term is 0), the input gradient is that of g. This is the usual ``g(x) + (f(x) - g(x)).detach()``
  written so that no rounding changes the forward value. The patch is an instance attribute
  ``forward`` set inside a context manager that always restores the modules, also on exceptions.
  A ``PassCounter`` wrapper is kept as is (its ``.model`` is searched), so passes are still counted.
  A model without such a module raises ValueError unless ``allow_plain=True`` (then the inner attack
  simply runs on the model's own gradient). The Adversarial pNML paper's adaptive attack is
  ``BPDA(inner_kind="pgd", ...)`` on a refinement module declaring ``bpda_approx = "identity"``.
* ``EOT`` ("eot"): the inner attack runs against ``EOTModel(model, samples)`` whose logits are
  ``log mean_k softmax(model(x))`` over ``samples`` stochastic forward passes (the expectation over
  the defense's randomness; one pass costs ``samples`` forward and backward passes per sample). The
  defense draws from torch's global RNG, so each batch and epsilon runs inside
  ``torch.random.fork_rng`` seeded by (seed, "eot", eps, first sample id of the batch): results are
  reproducible and the caller's RNG state is untouched, but (unlike the deterministic attacks) they
  depend on how the samples are split into batches, because the defense draws its noise for the
  whole batch at once.

Example: ``BPDA(inner_params={"steps": 40, "rel_step_size": 0.1}).run(model, x, y, [0.3])``;
``EOT(samples=20, inner_kind="pgd", inner_params={"steps": 40, "rel_step_size": 0.1})``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, cast

import torch
from torch import nn

from attacks.base import (
    Attack,
    AttackContext,
    AttackOutput,
    BatchResult,
    declared_wrappable_by,
    derive_seed,
    seed_generators,
)

DEFAULT_PGD = {"loss": "ce", "steps": 40, "rel_step_size": 0.1}  # used for "pgd" when no step is given


def inner_kinds() -> dict[str, type[Attack]]:
    """The attacks BPDA and EOT may wrap: those declaring "adaptive" in ``wrappable_by``."""
    return declared_wrappable_by("adaptive")


def make_inner(kind: str, params: dict[str, Any] | None, seed: int) -> Attack:
    """Build the inner attack (adaptive attacks may also nest: "bpda" and "eot" are accepted)."""
    kinds: dict[str, type[Attack]] = {**inner_kinds(), "bpda": BPDA, "eot": EOT}
    if kind not in kinds:
        raise ValueError(f"unknown inner attack kind {kind!r}; known: {', '.join(kinds)}")
    params = dict(params or {})
    if kind == "pgd" and "step_size" not in params and "rel_step_size" not in params:
        params = {**DEFAULT_PGD, **params}
    return kinds[kind](seed=seed, **params)


def _straight_through(forward: Callable[..., torch.Tensor], approx: Callable[[torch.Tensor], torch.Tensor] | str
                      ) -> Callable[..., torch.Tensor]:
    def patched(x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        value = forward(x, *args, **kwargs)
        g = x if approx == "identity" else approx(x)  # type: ignore[operator]
        return value.detach() + (g - g.detach())

    return patched


def bpda_modules(model: nn.Module) -> list[nn.Module]:
    """The submodules (the model included) that declare ``bpda_approx``; checks the declarations."""
    found = []
    for module in model.modules():
        approx = getattr(module, "bpda_approx", None)
        if approx is None:
            continue
        if approx != "identity" and not callable(approx):
            raise ValueError(f"bpda: {type(module).__name__}.bpda_approx must be 'identity' or a callable")
        found.append(module)
    return found


@contextlib.contextmanager
def bpda_patched(model: nn.Module) -> Iterator[list[nn.Module]]:
    """Within the block, modules declaring ``bpda_approx`` back-propagate through their approximation."""
    saved: list[tuple[nn.Module, bool, Any]] = []
    try:
        for module in bpda_modules(model):
            had = "forward" in module.__dict__
            saved.append((module, had, module.__dict__.get("forward")))
            module.forward = _straight_through(module.forward, cast(Any, module).bpda_approx)  # type: ignore[method-assign]
        yield [m for m, _, _ in saved]
    finally:
        for module, had, original in reversed(saved):
            if had:
                module.forward = original  # type: ignore[method-assign]
            else:
                del module.__dict__["forward"]


class BPDA(Attack):
    """Backward-pass differentiable approximation around an inner gradient attack."""

    name = "bpda"
    family = "fixed-budget"
    norm = "linf"
    kind = "adaptive"

    def __init__(self, *, seed: int = 0, inner_kind: str = "pgd", inner_params: dict[str, Any] | None = None,
                 allow_plain: bool = False) -> None:
        super().__init__(seed=seed)
        self.inner_kind, self.inner_params = inner_kind, dict(inner_params or {})
        self.allow_plain = bool(allow_plain)
        self.inner = make_inner(inner_kind, self.inner_params, self.seed)

    def validate(self, model: nn.Module, context: AttackContext) -> None:
        if not bpda_modules(model) and not self.allow_plain:
            raise ValueError("bpda: model declares no non-differentiable module (bpda_approx)")

    def attack_epsilons(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, epsilons: list[float],
                        ids: torch.Tensor, bs: int, context: AttackContext) -> list[BatchResult]:
        """The inner attack's own run on the patched model (patched once for the whole call)."""
        with bpda_patched(model):
            return per_eps(self.inner.run(model, x, y, epsilons, sample_ids=ids, batch_size=bs, context=context))


def per_eps(out: AttackOutput) -> list[BatchResult]:
    """An attack output split back into its per-eps results (for wrappers of a whole inner run)."""
    return [BatchResult(out.x_adv[k], out.success[k], None if out.detail is None else out.detail[k])
            for k in range(out.x_adv.shape[0])]


class EOTModel(nn.Module):
    """Logits ``log mean_k softmax(model(x))`` over ``samples`` stochastic forward passes."""

    def __init__(self, model: nn.Module, samples: int) -> None:
        super().__init__()
        self.model, self.samples = model, int(samples)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logp = torch.stack([self.model(x).log_softmax(1) for _ in range(self.samples)])
        return torch.logsumexp(logp, 0) - torch.log(torch.tensor(float(self.samples), device=logp.device))


class EOT(Attack):
    """Expectation over transformation: the inner attack sees the mean prediction of the random model."""

    name = "eot"
    family = "fixed-budget"
    norm = "linf"
    kind = "adaptive"
    reports_detail = True

    def __init__(self, *, seed: int = 0, samples: int = 20, inner_kind: str = "pgd",
                 inner_params: dict[str, Any] | None = None) -> None:
        super().__init__(seed=seed)
        if samples < 1:
            raise ValueError("samples must be >= 1")
        self.samples = int(samples)
        self.inner_kind, self.inner_params = inner_kind, dict(inner_params or {})
        self.inner = make_inner(inner_kind, self.inner_params, self.seed)

    def attack_batch(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, ids: torch.Tensor,
                     context: AttackContext) -> BatchResult:
        """The inner attack on this batch, inside torch's global RNG seeded by (seed, eps, first sample id)."""
        # seed (and restore) only generators already in use: seeding an uninitialised CUDA would be queued
        devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
        seed = derive_seed(self.seed, self.name, eps, int(ids[0])) % 2**63
        with torch.random.fork_rng(devices=devices):
            seed_generators(seed, devices)
            out = self.inner.run(EOTModel(model, self.samples), x, y, [eps], sample_ids=ids, context=context)
        return BatchResult(out.x_adv[0], out.success[0],
                           out.detail[0] if out.detail is not None else [None] * out.x_adv.shape[1])
