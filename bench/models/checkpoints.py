"""Training entries and their safetensors checkpoints.

A checkpoint's name carries the recipe hash: sha256 of the canonical JSON of (entry id and
version, architecture, objective, weights, budget schedule, dataset, seed). An existing checkpoint
with the same hash is reused instead of retraining. Metadata (strings, as safetensors requires)
hold the recipe JSON, data, seed, metrics and code version.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from bench import code_version
from bench.errors import BenchError
from bench.protocol.data import load_split
from defenses.architectures import build_architecture
from defenses.training import train_model
from registry.entry import Entry


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    sha256: str
    metadata: dict[str, str]


def build_model(entry: Entry, dataset: str) -> nn.Module:
    """An untrained model of the entry's architecture for ``dataset``."""
    if dataset not in entry.architectures:
        raise BenchError(f"entry {entry.id!r} has no model for dataset {dataset!r} "
                         f"(it declares: {', '.join(entry.datasets)})")
    arch = entry.architectures[dataset]
    return build_architecture(arch) if isinstance(arch, str) else arch()


def recipe_spec(entry: Entry, dataset: str, budget: str, seed: int) -> dict[str, Any]:
    if entry.recipe is None:
        raise BenchError(f"entry {entry.id!r} is pretrained: it has no training recipe")
    if entry.recipe.budget(dataset, budget) is None:
        known = ", ".join(entry.recipe.budgets.get(dataset, {})) or "none"
        raise BenchError(f"entry {entry.id!r} has no {budget!r} budget for {dataset} (known: {known})")
    return {"entry": entry.id, "entry_version": entry.version, "architecture": entry.architecture_name(dataset),
            "recipe": entry.recipe.canonical(dataset, budget), "seed": seed}


def recipe_hash(entry: Entry, dataset: str, budget: str, seed: int) -> str:
    spec = json.dumps(recipe_spec(entry, dataset, budget, seed), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(spec.encode()).hexdigest()[:16]


def checkpoint_path(root: Path, entry: Entry, dataset: str, budget: str, seed: int) -> Path:
    return root / f"{entry.id}--{dataset}--{budget}--s{seed}--{recipe_hash(entry, dataset, budget, seed)}.safetensors"


def state_sha256(state: Mapping[str, torch.Tensor]) -> str:
    """The sha256 of a state dict's names and tensor bytes, in name order (weights held in memory)."""
    h = hashlib.sha256()
    for k, v in sorted(state.items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_checkpoint(entry: Entry, dataset: str, path: Path) -> tuple[nn.Module, Checkpoint]:
    """Load weights into a fresh model; a damaged file gives a one-line error naming it."""
    model = build_model(entry, dataset)
    try:
        state = load_file(str(path))
        model.load_state_dict(state, strict=True)
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
    except (SafetensorError, RuntimeError, OSError, ValueError) as exc:
        raise BenchError(f"checkpoint {path} is corrupt or does not match {entry.id}: "
                         f"{str(exc).splitlines()[0]}; delete it to retrain") from None
    model.eval()
    return model, Checkpoint(path, file_sha256(path), meta)


def train_entry(entry: Entry, dataset: str, budget: str, seed: int, ckpt_dir: Path,
                data_dir: str | None = None, device: str = "cpu", force: bool = False,
                on_step=None) -> tuple[Checkpoint, bool]:
    """Train (or reuse) the entry's checkpoint. Returns (checkpoint, reused)."""
    spec = recipe_spec(entry, dataset, budget, seed)
    path = checkpoint_path(ckpt_dir, entry, dataset, budget, seed)
    if path.is_file() and not force:
        _, ckpt = load_checkpoint(entry, dataset, path)
        return ckpt, True
    assert entry.recipe is not None
    b = entry.recipe.budget(dataset, budget)
    assert b is not None
    x_train, y_train = load_split(dataset, "train", data_dir)
    x_test, y_test = load_split(dataset, "test", data_dir)
    dev = torch.device(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(entry, dataset)
    metrics = train_model(model, entry.recipe, b, x_train, y_train, seed, dev, on_step=on_step, dataset=dataset)
    if hasattr(model, "fit_reference"):  # detectors: reference features of training points, saved as buffers
        cast(Any, model).fit_reference(x_train, y_train)
    with torch.no_grad():
        n_eval = min(2000, x_test.shape[0])
        pred = torch.cat([model(x_test[i:i + 500].to(dev)).argmax(1).cpu() for i in range(0, n_eval, 500)])
        metrics["test_clean_acc_first2000"] = float((pred == y_test[:n_eval]).float().mean())
    meta = {
        "entry": entry.id, "dataset": dataset, "budget": budget, "seed": str(seed),
        "recipe_hash": recipe_hash(entry, dataset, budget, seed), "recipe": json.dumps(spec, sort_keys=True),
        "metrics": json.dumps(metrics, sort_keys=True), "code_version": code_version(),
        "data": f"{dataset} train ({x_train.shape[0]} images)", "torch": torch.__version__, "device": device,
        "torch_threads": str(torch.get_num_threads()),  # CPU float results depend on the thread count
    }
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp), metadata=meta)
    tmp.replace(path)  # atomic: a killed run never leaves a half-written checkpoint under the real name
    return Checkpoint(path, file_sha256(path), meta), False


def resolve_model(entry: Entry, dataset: str, budget: str, seed: int, ckpt_dir: Path,
                  checkpoint: Path | None = None,
                  lookup: Callable[[str], Entry] | None = None) -> tuple[nn.Module, str, dict[str, str]]:
    """The model to evaluate: (model in eval mode, weights sha256, metadata).

    For a test-time defense the model is its wrapper around the wrapped entry's model, and the
    identity hashes the base weights together with the wrapper's declaration.
    """
    if entry.wraps is not None and entry.wrapper is not None:
        if lookup is None:
            raise BenchError(f"entry {entry.id!r} wraps {entry.wraps!r}: no registry lookup given")
        base_entry = lookup(entry.wraps)
        base, base_sha, meta = resolve_model(base_entry, dataset, budget, seed, ckpt_dir, checkpoint, lookup)
        model = entry.wrapper(base, dataset).eval()
        ident = json.dumps({"base": base_sha, "entry": entry.id, "version": entry.version,
                            "extra": dict(entry.extra)}, sort_keys=True, default=str)
        return model, hashlib.sha256(ident.encode()).hexdigest(), {**meta, "wraps": base_entry.id}
    if entry.pretrained is not None:
        if dataset not in entry.pretrained:
            raise BenchError(f"entry {entry.id!r} has no pretrained model for {dataset}")
        try:
            model = entry.pretrained[dataset]()
        except BenchError:
            raise
        except Exception as exc:
            raise BenchError(f"entry {entry.id!r} failed to load its pretrained model: "
                             f"{type(exc).__name__}: {exc}".splitlines()[0]) from None
        model.eval()
        return model, state_sha256(model.state_dict()), {"budget": "pretrained", "seed": ""}
    path = checkpoint or checkpoint_path(ckpt_dir, entry, dataset, budget, seed)
    if not Path(path).is_file():
        raise BenchError(f"no checkpoint for {entry.id} ({dataset}, budget {budget}, seed {seed}) at {path}; "
                         f"run `bench train {entry.id} --dataset {dataset} --budget {budget}` first")
    model, ckpt = load_checkpoint(entry, dataset, Path(path))
    return model, ckpt.sha256, ckpt.metadata
