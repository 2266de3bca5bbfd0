"""Find the logits a saturating output hides, so gradient attacks can follow them instead.

A model whose last operation saturates (a hard clamp of its scores, a sigmoid or a step over
them, an output rescaled into float32's flat region) gives every loss on its outputs a zero input
gradient, although the layer just before it still ranks the classes as the model does. The attacker's
move is to attack that layer: Carlini and Wagner 2017 ("Defensive Distillation is Not Robust to
Adversarial Examples") attack the logits under distillation's temperature, and Tramèr et al. 2020
("On Adaptive Attacks to Adversarial Example Defenses") attack the logits before an
error-correcting-output-code defense's saturated sigmoids. :func:`decision_module` finds that layer in
a submitted model without a declaration: the outermost submodule whose output has the model's
output shape and predictions on every probe image, differs from the model's output, and carries an
input gradient on more probe images than the model's own output does. The adapter
:class:`attacks.adapters.InnerOutputs` is the model as the attack then sees it; the engine still
judges every input on the model itself.
"""

from __future__ import annotations

import torch
from torch import nn


def _margin(scores: torch.Tensor) -> torch.Tensor:
    """Per sample, the top score minus the runner-up: a loss that has a gradient wherever the ranking does."""
    top2 = scores.float().topk(2, dim=1).values
    return top2[:, 0] - top2[:, 1]


def _has_gradient(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per sample, whether the margin of ``out`` has a finite, non-zero gradient with respect to ``x``."""
    if not out.requires_grad:
        return torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    try:
        g = torch.autograd.grad(_margin(out).sum(), x, retain_graph=True, allow_unused=True)[0]
    except RuntimeError:  # a graph the model freed itself: nothing to follow
        g = None
    if g is None:
        return torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    flat = g.flatten(1)
    return torch.isfinite(flat).all(1) & (flat.abs().sum(1) > 0)


def decision_module(model: nn.Module, x: torch.Tensor) -> tuple[str, nn.Module] | None:
    """(name, module) of the outermost submodule whose outputs stand in for the model's on ``x`` (None: none)."""
    seen: list[tuple[nn.Module, torch.Tensor]] = []

    def hook(module: nn.Module, inputs: tuple, output: object) -> None:
        if isinstance(output, torch.Tensor):
            seen.append((module, output))

    handles = [m.register_forward_hook(hook) for m in model.modules() if m is not model]
    try:
        with torch.enable_grad():
            xg = x.detach().clone().requires_grad_(True)
            out = model(xg)
            if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[1] < 2:
                return None
            own = int(_has_gradient(out, xg).sum())
            pred = out.argmax(1)
            last: dict[int, torch.Tensor] = {}
            for module, o in seen:  # a module called twice stands for its last call
                last[id(module)] = o
            for name, module in model.named_modules():  # pre-order: the outermost first
                inner = last.get(id(module))
                if module is model or inner is None or inner.shape != out.shape:
                    continue
                if not bool((inner.argmax(1) == pred).all()) or torch.equal(inner.detach(), out.detach()):
                    continue
                if int(_has_gradient(inner, xg).sum()) > own:
                    return name, module
    finally:
        for h in handles:
            h.remove()
    return None

