"""Adaptive attacks of Athalye et al. (2018): BPDA for non-differentiable parts, EOT for randomness.

Norm: whatever the inner attack uses (here L-inf). Both wrap an inner gradient attack given as a
spec (``inner_kind`` in INNER_KINDS, ``inner_params`` its keyword arguments; the inner attack gets
this attack's seed) and return its ``AttackOutput`` unchanged, ``detail`` included.

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
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import nn

from attacks.base import Attack, AttackOutput, derive_seed
from attacks.fgsm import FGSM
from attacks.iterative import BIM, ILCM, LabelSmoothedPGD
from attacks.pgd import PGD

INNER_KINDS: dict[str, type[Attack]] = {"pgd": PGD, "fgsm": FGSM, "bim": BIM, "ilcm": ILCM,
                                        "pgd-ls-sweep": LabelSmoothedPGD}
DEFAULT_PGD = {"loss": "ce", "steps": 40, "rel_step_size": 0.1}  # used for "pgd" when no step is given


def make_inner(kind: str, params: dict[str, Any] | None, seed: int) -> Attack:
    """Build the inner attack (adaptive attacks may also nest: "bpda" and "eot" are accepted)."""
    kinds: dict[str, type[Attack]] = {**INNER_KINDS, "bpda": BPDA, "eot": EOT}
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
            module.forward = _straight_through(module.forward, module.bpda_approx)  # type: ignore[method-assign]
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

    def __init__(self, *, seed: int = 0, inner_kind: str = "pgd", inner_params: dict[str, Any] | None = None,
                 allow_plain: bool = False) -> None:
        super().__init__(seed=seed)
        self.inner_kind, self.inner_params = inner_kind, dict(inner_params or {})
        self.allow_plain = bool(allow_plain)
        self.inner = make_inner(inner_kind, self.inner_params, self.seed)

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, epsilons: Sequence[float],
            sample_ids: torch.Tensor | None = None, batch_size: int | None = None) -> AttackOutput:
        if not bpda_modules(model) and not self.allow_plain:
            raise ValueError("bpda: model declares no non-differentiable module (bpda_approx)")
        with bpda_patched(model):
            return self.inner.run(model, x, y, epsilons, sample_ids=sample_ids, batch_size=batch_size)


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

    def __init__(self, *, seed: int = 0, samples: int = 20, inner_kind: str = "pgd",
                 inner_params: dict[str, Any] | None = None) -> None:
        super().__init__(seed=seed)
        if samples < 1:
            raise ValueError("samples must be >= 1")
        self.samples = int(samples)
        self.inner_kind, self.inner_params = inner_kind, dict(inner_params or {})
        self.inner = make_inner(inner_kind, self.inner_params, self.seed)

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, epsilons: Sequence[float],
            sample_ids: torch.Tensor | None = None, batch_size: int | None = None) -> AttackOutput:
        ids = self._ids(x, sample_ids)
        n = x.shape[0]
        bs = batch_size or max(n, 1)
        wrapped = EOTModel(model, self.samples)
        # seed (and restore) only generators already in use: seeding an uninitialised CUDA would be queued
        devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
        advs, succs, details = [], [], []
        for eps in epsilons:
            parts = []
            for s in range(0, n, bs):
                seed = derive_seed(self.seed, self.name, float(eps), int(ids[s])) % 2**63
                with torch.random.fork_rng(devices=devices):
                    torch.random.default_generator.manual_seed(seed)
                    for d in devices:
                        torch.cuda.default_generators[d].manual_seed(seed)
                    parts.append(self.inner.run(wrapped, x[s:s + bs], y[s:s + bs], [float(eps)],
                                                sample_ids=ids[s:s + bs]))
            advs.append(torch.cat([p.x_adv[0] for p in parts]) if parts else x.clone())
            succs.append(torch.cat([p.success[0] for p in parts]) if parts
                         else torch.zeros(0, dtype=torch.bool, device=x.device))
            details.append([d for p in parts
                            for d in (p.detail[0] if p.detail is not None else [None] * p.x_adv.shape[1])])
        return AttackOutput(x_adv=torch.stack(advs), success=torch.stack(succs), detail=details)
