"""A surrogate distilled from the evaluated model's own predictions: the attacker's answer to a model
whose gradients are useless.

Papernot et al. 2017 ("Practical Black-Box Attacks against Machine Learning") attack a model they
cannot differentiate through by training a substitute on its labels and transferring adversarial
inputs from it; Athalye et al. 2018 and Tramèr et al. 2020 use the same move against defenses that
mask gradients. Here the substitute has the benchmark's standard architecture for the dataset and
is trained on the model's output probabilities (soft labels, as in Hinton et al. 2015's knowledge
distillation: they carry the model's margins, not only its decisions; one forward pass per image,
no gradient of the model is ever needed) for the first ``train_images`` training images, with the
policy's seed inside ``torch.random.fork_rng``: the same model gives the same surrogate. The weights are cached in the
workspace under the model's weights sha256 and the settings' hash, and checked on load.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from attacks.base import seed_generators
from attacks.context import SurrogateProvider
from bench.models.checkpoints import state_sha256

DISTILLED = "distilled"  # the surrogate id the escalation's transfer stage names


def distill(model: nn.Module, arch: Callable[[], nn.Module], x: torch.Tensor, settings: dict[str, Any],
            device: str = "cpu", batch_size: int = 500) -> nn.Module:
    """Train ``arch()`` on ``model``'s output probabilities for ``x`` (seeded by ``settings["seed"]``)."""
    dev = torch.device(device)
    devices = [dev] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        seed_generators(int(settings["seed"]), devices)
        with torch.no_grad():
            targets = torch.cat([soft_targets(model(x[i:i + batch_size].to(dev))).cpu()
                                 for i in range(0, x.shape[0], batch_size)])
        student = arch().to(dev)
        opt = torch.optim.Adam(student.parameters(), lr=float(settings["lr"]))
        bs = int(settings["batch_size"])
        student.train()
        for _ in range(int(settings["epochs"])):
            order = torch.randperm(x.shape[0])
            for i in range(0, x.shape[0], bs):
                idx = order[i:i + bs]
                loss = nn.functional.cross_entropy(student(x[idx].to(dev)), targets[idx].to(dev))
                opt.zero_grad()
                loss.backward()
                opt.step()
    return student.eval()


def soft_targets(out: torch.Tensor) -> torch.Tensor:
    """The model's output as class probabilities: itself when it already is probability rows, else
    its softmax. Non-finite outputs fall back to the one-hot of the prediction."""
    out = out.detach().float()
    if not torch.isfinite(out).all():
        return nn.functional.one_hot(torch.nan_to_num(out).argmax(1), out.shape[1]).float()
    rows_are_probs = bool((out >= 0).all() and (out <= 1).all() and ((out.sum(1) - 1).abs() < 1e-3).all())
    return out / out.sum(1, keepdim=True) if rows_are_probs else out.softmax(1)


@dataclass
class DistilledSurrogates:
    """A surrogate provider: the distilled surrogate for ``"distilled"``, the base provider otherwise.

    The distillation runs on first use only (a run whose escalation needs no transfer never pays
    for it); ``seconds`` is how long it took (0 when read from the cache).
    """

    base: SurrogateProvider | None
    build: Callable[[], nn.Module]  # trains the surrogate
    cache_file: Path | None
    cache_dir: Path | None = None
    seconds: float = 0.0
    _model: tuple[nn.Module, str] | None = field(default=None, repr=False)
    make_arch: Callable[[], nn.Module] | None = None  # the architecture, to load a cached surrogate

    def surrogate(self, entry_id: str, budget: str, seed: int) -> tuple[nn.Module, str]:
        if entry_id != DISTILLED:
            if self.base is None:
                raise ValueError(f"no surrogate provider for {entry_id!r}")
            return self.base.surrogate(entry_id, budget, seed)
        if self._model is None:
            self._model = self._load() or self._train()
        return self._model

    def _load(self) -> tuple[nn.Module, str] | None:
        if self.cache_file is None or not self.cache_file.is_file() or self.make_arch is None:
            return None
        try:
            blob = torch.load(io.BytesIO(self.cache_file.read_bytes()), weights_only=True)
            state, sha = blob["state"], str(blob["sha256"])
            if state_sha256(state) != sha:
                return None
            model = self.make_arch()
            model.load_state_dict(state)
        except Exception:  # unreadable or foreign: train again
            return None
        return model.eval(), sha

    def _train(self) -> tuple[nn.Module, str]:
        import time

        t0 = time.perf_counter()
        model = self.build()
        self.seconds = time.perf_counter() - t0
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        sha = state_sha256(state)
        if self.cache_file is not None:
            self.cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.cache_file.with_suffix(".tmp")
            torch.save({"state": state, "sha256": sha}, tmp)
            tmp.replace(self.cache_file)
        return model, sha


def cache_name(weights_sha256: str, settings: dict[str, Any], dataset: str) -> str:
    digest = hashlib.sha256(json.dumps({"settings": settings, "dataset": dataset}, sort_keys=True).encode())
    return f"distilled-{weights_sha256[:16]}-{digest.hexdigest()[:12]}.pt"
