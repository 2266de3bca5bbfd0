"""Model adapters: what an attack sees in place of the model when the model's outputs hide the signal.

``LogOutputs`` returns the log of the model's outputs. A model that outputs probabilities (a softmax
as its last layer) turns a cross-entropy attack into the cross-entropy of a *second* softmax, whose
gradient nearly vanishes once one probability is close to 1 (Carlini and Wagner 2017, section on
loss functions; Carlini et al. 2019, "On Evaluating Adversarial Robustness"). On the log of the
outputs, CE and margin losses see the logits again (up to a per-sample constant). Outputs are
clamped below at the smallest positive float32: the log of an exact zero would be -inf.

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


ADAPTERS: dict[str, type[nn.Module]] = {"log": LogOutputs}


def adapt(model: nn.Module, adapter: str | None) -> nn.Module:
    """The model as an attack with ``adapter`` sees it (the model itself for None)."""
    if adapter is None:
        return model
    try:
        return ADAPTERS[adapter](model)
    except KeyError:
        raise ValueError(f"unknown model adapter {adapter!r}; known: {', '.join(ADAPTERS)}") from None
