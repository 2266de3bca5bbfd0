"""``python tasks.py gpu-check``: the prepared check for a machine with a CUDA GPU (target: under 9 minutes).

1. pyautoattack's CIFAR-10 ResNet-18 (``examples/pyautoattack_resnet18.py``), submitted and evaluated under
   ``cifar10-linf-quick-v2`` (its transfer surrogates, ``standard`` and ``surrogate-pgd`` at their short
   ``quick`` CIFAR-10 budgets, are trained first);
2. madry-pgd-at trained on CIFAR-10 with a short schedule (its ``quick`` budget cut to ``--epochs``
   epochs: entry ``madry-pgd-at-short``) and evaluated under the same protocol.

It prints each step's seconds, clean accuracy and worst case per eps, and for each evaluation the share of
its attack time spent in the model's forward and backward passes: the stages' pass counts times the
seconds of one pass measured on the device in the same run (the rest is the attacks' own work, the
engine's verification and the database). Sanity checks run; escalation does not (on a flagged run it
could train more surrogates; its flags are printed).

``--smoke`` runs the same code on 4 samples, without the transfer attacks (no surrogate to train), the
extras and the checks, with a one-epoch training on 128 images and pass timings on 8 images: the CPU test
of this script (``tests/test_gpu_check.py``).
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench import REPO_ROOT

PROTOCOL = "cifar10-linf-quick-v2"


def log(message: str) -> None:
    print(message, flush=True)


def smoke_protocol(name: str, n: int) -> Any:
    """The protocol on its first ``n`` samples, without transfer attacks and extras (a plumbing test)."""
    from bench.protocol.protocols import get_protocol

    p = get_protocol(name)
    attacks = tuple(a for a in p.attacks if a.kind != "transfer")
    return dataclasses.replace(p, name=f"{name}-smoke", n_samples=n, chunk_size=n, attacks=attacks, extras=())


def short_madry(epochs: float, smoke: bool) -> Any:
    """madry-pgd-at with its CIFAR-10 quick budget cut to ``epochs`` (and, for the smoke test, 128 images)."""
    from defenses.training import Recipe
    from registry import get_entry

    entry = get_entry("madry-pgd-at")
    assert entry.recipe is not None
    quick = entry.recipe.budget("cifar10", "quick")
    assert quick is not None
    short = dataclasses.replace(quick, epochs=epochs, train_samples=128 if smoke else None,
                                source=f"gpu-check: the quick budget cut to {epochs:g} epochs")
    recipe = Recipe(entry.recipe.objective, dict(entry.recipe.params), {"cifar10": {"quick": short}})
    return dataclasses.replace(entry, id="madry-pgd-at-short", name=f"{entry.name}, {epochs:g} epochs",
                               recipe=recipe, claims=())


def pass_seconds(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device,
                 repeats: int = 5) -> tuple[float, float]:
    """Seconds per sample of one forward pass and of one forward+input-backward pass, on ``device``."""
    model = model.to(device).eval()
    x, y = x.to(device), y.to(device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def fb() -> None:
        xi = x.clone().requires_grad_(True)
        torch.autograd.grad(torch.nn.functional.cross_entropy(model(xi), y), xi)

    def fwd() -> None:
        with torch.no_grad():
            model(x)

    out = []
    for fn in (fwd, fb):
        fn()
        sync()
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        sync()
        out.append((time.perf_counter() - t0) / repeats / x.shape[0])
    return out[0], out[1]


def report(name: str, st: Any, rep: Any, model: torch.nn.Module, device: torch.device, seconds: float,
           batch: int = 64) -> None:
    """One evaluation's figures: accuracies, flags, and where its attack time went."""
    from bench.protocol.data import load_split

    worst = ", ".join(f"{e:.4g}: {w:.1f}" for e, w in sorted(rep.worst_case.items()))
    log(f"{name}: {seconds:.0f} s; clean {rep.clean_accuracy:.1f}%, worst case per eps {{{worst}}}; "
        f"flags: {', '.join(f.name for f in rep.flags) or 'none'}")
    stages = [s for s in st.stages(rep.run_id) if s.attack != "clean"]
    x, y = load_split("cifar10", "test")
    t_f, t_fb = pass_seconds(model, x[:batch], y[:batch], device)
    # a stage's model time: every forward pass (its n_forward, with or without gradient) at t_f, plus the
    # backward half of each forward+backward pass (n_backward) at t_fb - t_f
    by_attack: dict[str, list[float]] = {}
    for s in stages:
        cell = by_attack.setdefault(s.attack, [0.0, 0.0, 0.0])
        cell[0] += s.seconds
        cell[1] += s.n_forward * t_f
        cell[2] += s.n_backward * max(t_fb - t_f, 0.0)
    total, fwd, bwd = (sum(c[i] for c in by_attack.values()) for i in range(3))
    log(f"  attack stages {total:.1f} s: forward passes {100 * fwd / max(total, 1e-9):.0f}%, backward passes "
        f"{100 * bwd / max(total, 1e-9):.0f}% ({sum(s.n_forward for s in stages)} forward and "
        f"{sum(s.n_backward for s in stages)} backward per-sample passes; one forward {1e6 * t_f:.1f} us/sample, "
        f"forward+backward {1e6 * t_fb:.1f} us/sample, measured on the device)")
    for attack, (sec, f, b) in sorted(by_attack.items(), key=lambda kv: -kv[1][0]):
        log(f"    {attack:24s} {sec:7.1f} s: forward {100 * f / max(sec, 1e-9):.0f}%, backward "
            f"{100 * b / max(sec, 1e-9):.0f}%")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python tasks.py gpu-check", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--epochs", type=float, default=2.0, help="madry-pgd-at's short CIFAR-10 schedule")
    parser.add_argument("--home", default=None, help="workspace (default: a temporary folder)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--smoke", action="store_true", help="a few samples, tiny trainings (CPU test)")
    args = parser.parse_args(argv)
    from bench import api

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: no CUDA GPU here (this check is for a machine with one; --smoke runs on CPU)")
    t_all = time.perf_counter()
    log(f"gpu-check on {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}, torch "
        f"{torch.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        home = args.home or tmp
        st = api.open_store(str(Path(home) / "gpu-check.db"))
        protocol: Any = smoke_protocol(PROTOCOL, 4) if args.smoke else PROTOCOL
        api.submit(REPO_ROOT / "examples" / "pyautoattack_resnet18.py", home=home)
        if not args.smoke:  # the transfer surrogates, as `bench demo` trains them
            for surrogate in ("standard", "surrogate-pgd"):
                t1 = time.perf_counter()
                api.train(surrogate, "cifar10", "quick", home=home, data_dir=args.data_dir, device=args.device)
                log(f"surrogate {surrogate} (cifar10, quick): trained in {time.perf_counter() - t1:.0f} s")
        t0 = time.perf_counter()
        rep = api.evaluate("pyautoattack-resnet18", protocol, store=st, home=home, checks=not args.smoke,
                           escalation=False, data_dir=args.data_dir, device=args.device)
        loaders = api.entry("pyautoattack-resnet18", home=home).pretrained
        assert loaders is not None
        resnet = loaders["cifar10"]()
        batch = 8 if args.smoke else 64
        report(f"pyautoattack-resnet18 under {PROTOCOL}", st, rep, resnet, device, time.perf_counter() - t0, batch)

        from bench.models.checkpoints import train_entry
        from bench.store.workspace import Workspace

        entry = short_madry(1.0 if args.smoke else args.epochs, args.smoke)
        t0 = time.perf_counter()
        ckpt, _ = train_entry(entry, "cifar10", "quick", 0, Workspace.resolve(home).checkpoints, args.data_dir,
                              args.device)
        log(f"{entry.id} (cifar10, {args.epochs if not args.smoke else 1:g} epochs): trained in "
            f"{time.perf_counter() - t0:.0f} s")
        t0 = time.perf_counter()
        rep = api.evaluate(entry, protocol, store=st, home=home, checks=not args.smoke, escalation=False,
                           data_dir=args.data_dir, device=args.device)
        from bench.models.checkpoints import load_checkpoint

        model, _ = load_checkpoint(entry, "cifar10", ckpt.path)
        report(f"{entry.id} under {PROTOCOL}", st, rep, model, device, time.perf_counter() - t0, batch)
    total = time.perf_counter() - t_all
    log(f"gpu-check: {total:.0f} s in all ({'within' if total < 540 else 'OVER'} the 9-minute target)")


if __name__ == "__main__":
    main()
