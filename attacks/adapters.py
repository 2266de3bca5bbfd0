"""Model adapters: what an attack sees in place of the model when the model's outputs hide the signal.

``LogOutputs`` returns the log of the model's outputs. A model that outputs probabilities (a softmax
as its last layer) turns a cross-entropy attack into the cross-entropy of a *second* softmax, whose
gradient nearly vanishes once one probability is close to 1 (Carlini and Wagner 2017, section on
loss functions; Carlini et al. 2019, "On Evaluating Adversarial Robustness"). On the log of the
outputs, CE and margin losses see the logits again (up to a per-sample constant). Outputs are
clamped below at the smallest positive float32: the log of an exact zero would be -inf.

``InnerOutputs`` returns the outputs of one of the model's submodules on the model's own forward pass:
the logits a saturating last operation hides (see :mod:`bench.escalation.inner`, which finds them).

Adapters change only what the attack optimises: the engine always judges the returned inputs on
the model itself.
"""

from __future__ import annotations

import torch
from torch import nn

TINY = 1e-38


class LogOutputs(nn.Module):
    """``log(model(x))``, the outputs clamped below at ``TINY``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(self.model(x).clamp_min(TINY))


class InnerOutputs(nn.Module):
    """The outputs of ``module``, a submodule of ``model``, on the model's forward pass (its last call)."""

    def __init__(self, model: nn.Module, module: nn.Module) -> None:
        super().__init__()
        self.model, self.module = model, module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        captured: list[torch.Tensor] = []
        handle = self.module.register_forward_hook(lambda m, i, o: captured.append(o))
        try:
            self.model(x)
        finally:
            handle.remove()
        if not captured:
            raise RuntimeError("the submodule did not run on the model's forward pass")
        return captured[-1]


ADAPTERS: dict[str, type[nn.Module]] = {"log": LogOutputs}


def adapt(model: nn.Module, adapter: str | None, inner: nn.Module | None = None) -> nn.Module:
    """The model as an attack with ``adapter`` sees it (the model itself for None). The "inner" adapter
    needs the submodule whose outputs it returns."""
    if adapter is None:
        return model
    if adapter == "inner":
        if inner is None:
            raise ValueError("the inner adapter needs the submodule whose outputs it returns")
        return InnerOutputs(model, inner)
    try:
        return ADAPTERS[adapter](model)
    except KeyError:
        raise ValueError(f"unknown model adapter {adapter!r}; known: {', '.join([*ADAPTERS, 'inner'])}") from None
