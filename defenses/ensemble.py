"""Ensembles whose prediction is the mean of the members' probabilities (ADP, Pang et al. 2019).

The ensemble returns log of the averaged probabilities, which are valid logits
(softmax(log p) = p), so every attack and the engine treat it like any classifier. One
prediction costs one forward pass of each member: entries declare ``forward_passes`` = members.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from defenses.architectures import build_architecture


class MeanProbEnsemble(nn.Module):
    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)

    def member_logits(self, x: torch.Tensor) -> torch.Tensor:
        """(K, B, L) logits of every member (the ADP training loss needs them separately)."""
        return torch.stack([m(x) for m in self.members])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean_p = F.softmax(self.member_logits(x), dim=2).mean(dim=0)
        return torch.log(mean_p.clamp_min(1e-30))


def ensemble_factory(architecture: str, members: int) -> Callable[[], nn.Module]:
    """A named factory (the name enters the recipe hash) for ``members`` copies of an architecture."""

    def build() -> nn.Module:
        return MeanProbEnsemble([build_architecture(architecture) for _ in range(members)])

    build.__name__ = f"ensemble{members}-{architecture}"
    return build
