"""Surrogate models for transfer attacks, trained by the benchmark itself and cached per workspace.

A transfer attack names a registry entry and budget as its surrogate. On first use the surrogate
is trained (or its checkpoint reused, see :func:`bench.models.checkpoints.train_entry`) and loaded once
per evaluation; the adversarial inputs crafted on it are cached under ``cache_dir`` so every
target entry is attacked with bit-identical inputs and the surrogate work is done once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from registry.entry import Entry


@dataclass
class WorkspaceSurrogates:
    checkpoints: Path
    cache_dir: Path | None
    dataset: str
    lookup: Callable[[str], Entry]
    data_dir: str | None = None
    device: str = "cpu"
    on_train: Callable[[str], None] | None = None
    _loaded: dict[tuple[str, str, int], tuple[nn.Module, str]] = field(default_factory=dict)

    def surrogate(self, entry_id: str, budget: str, seed: int) -> tuple[nn.Module, str]:
        """(model in eval mode on the device, weights sha256) of the surrogate, training it if needed."""
        from bench.models.checkpoints import resolve_model, train_entry

        key = (entry_id, budget, seed)
        if key not in self._loaded:
            entry = self.lookup(entry_id)
            if entry.recipe is not None:
                ckpt, reused = train_entry(entry, self.dataset, budget, seed, self.checkpoints, self.data_dir,
                                           self.device)
                if not reused and self.on_train is not None:
                    self.on_train(f"trained transfer surrogate {entry_id} ({budget}): {ckpt.path.name}")
            model, sha, _ = resolve_model(entry, self.dataset, budget, seed, self.checkpoints, lookup=self.lookup)
            self._loaded[key] = (model.to(self.device).eval(), sha)
        return self._loaded[key]
