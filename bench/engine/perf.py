"""Performance probe (``bench perf``): how close attacks run to the cost of their passes.

Prints, for PGD and for our AutoAttack stage on one model and batch:
  overhead = measured time / (per-sample forward+backward passes x time of one per-sample
             forward+backward pass + forward-only passes x time of one forward pass),
with the pass times measured in the same run on the same batch; and the ratio of our AutoAttack
stage to calling ``pyautoattack.AutoAttack.run_standard_evaluation`` directly on the same inputs.
Ratios near 1 mean no hidden cost beyond the model's own passes.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from attacks import PGD, AutoAttackStandard
from attacks.base import PassCounter, derive_seed, prepare_model
from attacks.library import quiet_library
from bench.models.checkpoints import build_model, checkpoint_path, load_checkpoint
from bench.protocol.data import load_split
from bench.store.workspace import Workspace
from registry.entry import Entry


def _time_passes(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, repeats: int = 5) -> tuple[float, float]:
    """Seconds per sample of one forward+input-backward pass, and of one forward pass."""
    for _ in range(2):
        xi = x.clone().requires_grad_(True)
        torch.autograd.grad(torch.nn.functional.cross_entropy(model(xi), y), xi)
    t0 = time.perf_counter()
    for _ in range(repeats):
        xi = x.clone().requires_grad_(True)
        torch.autograd.grad(torch.nn.functional.cross_entropy(model(xi), y), xi)
    fb = (time.perf_counter() - t0) / repeats / x.shape[0]
    with torch.no_grad():
        t0 = time.perf_counter()
        for _ in range(repeats):
            model(x)
        f = (time.perf_counter() - t0) / repeats / x.shape[0]
    return fb, f


def run_perf(entry: Entry, dataset: str, batch: int, eps: float, budget: str, ws: Workspace,
             data_dir: str | None, device: str, console: Console,
             aa_params: dict | None = None) -> dict[str, float]:
    aa_params = dict(aa_params or {})
    path = checkpoint_path(ws.checkpoints, entry, dataset, budget, 0) if entry.recipe else None
    if path is not None and Path(path).is_file():
        model, _ = load_checkpoint(entry, dataset, path)
        source = f"checkpoint {path.name}"
    elif entry.pretrained is not None:
        model = entry.pretrained[dataset]()
        source = "pretrained"
    else:
        torch.manual_seed(0)
        model = build_model(entry, dataset)
        source = "untrained weights (no checkpoint found)"
    dev = torch.device(device)
    model = prepare_model(model, dev)  # as the engine runs it
    x_all, y_all = load_split(dataset, "test", data_dir)
    x, y = x_all[:batch].to(dev), y_all[:batch].to(dev)
    fb, f = _time_passes(model, x, y)
    results: dict[str, float] = {}
    table = Table("probe", "seconds", "fwd+bwd passes", "fwd-only passes", "ideal seconds", "overhead ratio",
                  title=f"bench perf: {entry.id} ({source}), {batch} images, eps {eps:g}, device {device}")
    counter = PassCounter(model)

    def probe(name: str, fn) -> float:
        counter.reset()
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        nf, nb = counter.reset()
        ideal = nb * fb + (nf - nb) * f
        ratio = dt / ideal if ideal > 0 else float("nan")
        table.add_row(name, f"{dt:.2f}", str(nb), str(nf - nb), f"{ideal:.2f}", f"{ratio:.2f}")
        results[name] = ratio
        return dt

    pgd = PGD(loss="ce", steps=40, step_size=0.01, restarts=1, random_start=True, seed=1)
    probe("PGD-40 (CE)", lambda: pgd.run(counter, x, y, [eps], sample_ids=torch.arange(batch)))
    aa = AutoAttackStandard(seed=3, **aa_params)
    ours = probe("AutoAttack stage (ours)", lambda: aa.run(counter, x, y, [eps], sample_ids=torch.arange(batch)))
    seed = derive_seed(3, "autoattack", float(eps), 0) % (2**31)

    def direct() -> None:  # pyautoattack's own cascade, configured exactly as our stage
        with torch.random.fork_rng(devices=[]), quiet_library(aa.library_messages):
            aa.make(counter, eps, seed, dev).run_standard_evaluation(x, y, batch_size=batch)

    theirs = probe("pyautoattack direct", direct)
    results["aa_ours_over_direct"] = ours / theirs
    frozen, trainable, same = _fab_freeze_probe(aa, model, x, y, eps, seed, dev)
    results["fab_trainable_over_frozen"] = trainable / frozen
    console.print(table)
    console.print("AutoAttack stage seconds per sub-attack: "
                  + ", ".join(f"{k} {v:.1f}" for k, v in aa.seconds.items()), highlight=False)
    console.print(f"one forward+backward: {fb * 1e3:.3f} ms/sample; one forward: {f * 1e3:.3f} ms/sample; "
                  f"AutoAttack ours / pyautoattack direct = {ours / theirs:.2f}", highlight=False)
    console.print(f"FAB-T with trainable parameters {trainable:.2f} s, with frozen ones (as the engine runs it) "
                  f"{frozen:.2f} s: {trainable / frozen:.2f}x; identical adversarial inputs: {same}", highlight=False)
    return results


def _fab_freeze_probe(aa: AutoAttackStandard, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
                      seed: int, dev: torch.device) -> tuple[float, float, bool]:
    """pyautoattack's FAB-T (it calls ``.backward()``) with frozen, then trainable parameters:
    seconds of each and whether their adversarial inputs are identical. Parameters end frozen."""
    seconds, outputs = [], []
    for frozen in (True, False):
        for p in model.parameters():
            p.requires_grad_(not frozen)
        fab = aa.make(model, eps, seed, dev).fab
        fab.targeted, fab.n_restarts, fab.seed = True, 1, seed
        t0 = time.perf_counter()
        with torch.random.fork_rng(devices=[]), quiet_library(aa.library_messages):
            outputs.append(fab.perturb(x, y))
        seconds.append(time.perf_counter() - t0)
    for p in model.parameters():
        p.requires_grad_(False)
    return seconds[0], seconds[1], torch.equal(outputs[0], outputs[1])
