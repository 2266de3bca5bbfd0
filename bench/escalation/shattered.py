"""Find the submodules that shatter gradients, so BPDA can run on a model that declares none.

Athalye et al. 2018 ("Obfuscated Gradients Give a False Sense of Security", section 4.1) attack a
non-differentiable layer f whose output approximates its input (quantisation, denoising, rounded
activations) by back-propagating through the identity in its place. A submitted model rarely
declares such layers, but they can be found: a submodule whose output has the shape of its input and
whose input gradient is exactly zero (or missing) on every probe image is one. For the duration of
an escalation's BPDA stage such modules are given ``bpda_approx = "identity"``
(:func:`declared_identity`), the very declaration :class:`attacks.adaptive.BPDA` reads; the attribute
is removed afterwards, so the model is left as it was. Non-differentiable code inline in a forward
(not a submodule) is not found: the transfer and gradient-free remedies answer it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


def shattered_modules(model: nn.Module, x: torch.Tensor) -> list[tuple[str, nn.Module]]:
    """(name, module) of every shape-preserving submodule whose input gradient vanishes on ``x``."""
    seen: list[tuple[str, nn.Module, torch.Tensor, torch.Tensor]] = []
    names = {id(m): n for n, m in model.named_modules()}

    def hook(module: nn.Module, inputs: tuple, output: object) -> None:
        if (isinstance(output, torch.Tensor) and inputs and isinstance(inputs[0], torch.Tensor)
                and inputs[0].shape == output.shape and inputs[0].requires_grad):
            seen.append((names.get(id(module), "?"), module, inputs[0], output))

    handles = [m.register_forward_hook(hook) for m in model.modules() if m is not model]
    try:
        with torch.enable_grad():
            model(x.detach().clone().requires_grad_(True))
            found: list[tuple[str, nn.Module]] = []
            for name, module, inp, out in seen:
                if getattr(module, "bpda_approx", None) is not None or any(module is m for _, m in found):
                    continue
                if not out.requires_grad:
                    found.append((name, module))
                    continue
                try:
                    g = torch.autograd.grad(out.float().sum(), inp, retain_graph=True, allow_unused=True)[0]
                except RuntimeError:  # a graph the model freed itself (a test-time optimisation inside its
                    continue  # forward): not on the path from its input to its output, so not one to replace
                if g is None or not bool(g.abs().sum() > 0):
                    found.append((name, module))
    finally:
        for h in handles:
            h.remove()
    # the innermost ones only: a block that holds a shattered layer is not itself the identity
    return [(name, m) for name, m in found
            if not any(other is not m and any(other is d for d in m.modules()) for _, other in found)]


@contextlib.contextmanager
def declared_identity(modules: list[nn.Module]) -> Iterator[None]:
    """Within the block, ``modules`` declare ``bpda_approx = "identity"`` (removed afterwards)."""
    added = [m for m in modules if "bpda_approx" not in m.__dict__]
    try:
        for m in added:
            setattr(m, "bpda_approx", "identity")  # noqa: B010 (an attribute nn.Module does not declare)
        yield
    finally:
        for m in added:
            del m.__dict__["bpda_approx"]
