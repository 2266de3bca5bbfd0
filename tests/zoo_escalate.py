"""Measure escalation on the zoo: per mechanism, clean accuracy, the worst case at each eps before and
after escalation, the reference attack's accuracy and the seconds escalation took (a script, not a
test; `tests/test_checks_zoo.py` asserts the same bound on fewer models in the default suite).

    PYTHONPATH=. python -m tests.zoo_escalate --protocol mnist-linf-quick-v1 --home /tmp/zoo/ws --json out.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from bench import api
from bench.protocol.data import load_split
from bench.protocol.protocols import get_protocol
from bench.store.database import Store
from tests.zoo import ZOO, reference_accuracy, train_honest


def measure(name: str, protocol: str, home: Path) -> dict:
    proto = get_protocol(protocol)
    base = train_honest()
    model = (base if name == "honest" else ZOO[name](base)).eval()
    x, y = load_split("mnist", "test")
    x, y = x[:proto.n_samples], y[:proto.n_samples]
    torch.manual_seed(0)
    t0 = time.perf_counter()
    report = api.evaluate(model, proto, store=Store(home / f"{name}-{protocol}.db"), name=name.lower(), home=home)
    wall = time.perf_counter() - t0
    esc = report.escalation
    ref = {e: reference_accuracy(name, model, x, y, e) for e in proto.epsilons}
    return {"name": name, "protocol": protocol, "clean": report.clean_accuracy,
            "flags": [c.name for c in report.flags if c.severity == "unreliable"],
            "before": report.worst_case_before_escalation, "after": report.worst_case, "reference": ref,
            "ranked": report.ranked_accuracy, "wall_seconds": wall,
            "escalation_seconds": esc.seconds if esc else 0.0, "distill_seconds": esc.distill_seconds if esc else 0.0,
            "remedies": list(esc.remedies) if esc else [], "broken_by_remedy": esc.broken_by_remedy() if esc else {},
            "within_3": all(report.worst_case[e] <= ref[e] + 3.0 for e in proto.epsilons)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--protocol", default="mnist-linf-quick-v1")
    p.add_argument("--names", nargs="*", default=["honest", *ZOO])
    p.add_argument("--home", type=Path, default=Path("/tmp/zoo/ws"))
    p.add_argument("--json", type=Path)
    a = p.parse_args()
    torch.set_num_threads(1)
    out = []
    for name in a.names:
        r = measure(name, a.protocol, a.home)
        out.append(r)
        print(json.dumps(r), flush=True)
        if a.json:
            a.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
