"""Measure the zoo: clean accuracy, reference robust accuracy per eps and the benchmark's worst case.

Not a test (minutes on a CPU). For every zoo model (and the honest base model): clean accuracy and
:func:`tests.zoo.reference_accuracy` at the zoo protocol's eps grid on MNIST test images [0:60] and
at the mnist-linf-quick grid (0.1 to 0.4) on images [0:200], with the seconds each reference took;
then the worst case per eps of ``bench.api.evaluate`` under ``ZOO_PROTOCOL`` (its cascade only,
before any escalation), to show the gap the benchmark has to close. Clean accuracy is a majority of
10 draws for ``Noisy``, as in the reference.

    PYTHONPATH=. python -m tests.zoo_measure [--names Quantise Noisy ...] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from tests import zoo

QUICK_EPS = (0.1, 0.2, 0.3, 0.4)
GRIDS = {"zoo": (60, zoo.EPS), "quick": (200, QUICK_EPS)}


def measure(name: str, base: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, tmp: Path) -> dict:
    from bench import api
    from bench.store.database import Store

    model = base if name == "honest" else zoo.ZOO[name](base).eval()
    row: dict = {"name": name}
    for grid, (n, eps_list) in GRIDS.items():
        row[grid] = {"clean": zoo.reference_accuracy(name, model, x[:n], y[:n], 0.0)}
        for eps in eps_list:
            t = time.perf_counter()
            acc = zoo.reference_accuracy(name, model, x[:n], y[:n], eps)
            row[grid][str(eps)] = {"reference": acc, "seconds": round(time.perf_counter() - t, 2)}
            print(f"{name:15s} {grid:5s} eps {eps:<4g} reference {acc:5.1f}%  {row[grid][str(eps)]['seconds']:.1f} s",
                  flush=True)
    t = time.perf_counter()
    torch.manual_seed(0)  # the engine does not seed the RNG that Noisy's own draws use: its cascade depends on it
    report = api.evaluate(model, zoo.ZOO_PROTOCOL, store=Store(tmp / f"{name}.db"), name=name.lower())
    row["evaluate"] = {"clean": report.clean_accuracy, "worst": {str(e): w for e, w in report.worst_case.items()},
                       "unreliable": report.unreliable, "seconds": round(time.perf_counter() - t, 2),
                       "failed": [c.name for c in report.checks if c.status == "fail"]}
    print(f"{name:15s} evaluate worst {row['evaluate']['worst']} failed {row['evaluate']['failed']}", flush=True)
    return row


def table(rows: list[dict]) -> str:
    """Markdown: clean, reference per eps (both grids), the benchmark's worst case on the zoo grid, seconds."""
    head = ("| model | clean60 | " + " | ".join(f"ref {e:g}" for e in zoo.EPS) + " | "
            + " | ".join(f"worst {e:g}" for e in zoo.EPS) + " | clean200 | "
            + " | ".join(f"ref {e:g}" for e in QUICK_EPS) + " | ref s (60 / 200) | flags |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        z, q, ev = r["zoo"], r["quick"], r["evaluate"]
        secs = (f"{sum(z[str(e)]['seconds'] for e in zoo.EPS):.0f} / "
                f"{sum(q[str(e)]['seconds'] for e in QUICK_EPS):.0f}")
        lines.append(f"| {r['name']} | {z['clean']:.1f} | "
                     + " | ".join(f"{z[str(e)]['reference']:.1f}" for e in zoo.EPS) + " | "
                     + " | ".join(f"{ev['worst'][str(e)]:.1f}" for e in zoo.EPS) + f" | {q['clean']:.1f} | "
                     + " | ".join(f"{q[str(e)]['reference']:.1f}" for e in QUICK_EPS)
                     + f" | {secs} | {', '.join(ev['failed']) or '-'} |")
    return "\n".join(lines)


def main() -> None:
    from bench.protocol.data import load_split

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--names", nargs="*", default=["honest", *zoo.ZOO])
    ap.add_argument("--json", type=Path)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    x, y = load_split("mnist", "test")
    base = zoo.train_honest()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure(name, base, x, y, Path(tmp)) for name in args.names]
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    print(table(rows))


if __name__ == "__main__":
    main()
