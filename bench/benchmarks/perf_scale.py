"""``python tasks.py perf-scale``: the scale-out figures, each a ratio measured side by side in one run.

1. **Ray's overhead**: the demo (default: its four entries, quick budget, ``mnist-linf-quick-v1``) on
   the local process pool against the same demo on a local Ray cluster, one torch thread per task
   both ways, each in a fresh workspace; the per-sample CSV exports must be identical.
2. **Stage writes**: the time to store a stage (one transaction: the stage record and its per-sample
   rows) on SQLite against PostgreSQL, the same stages on both.
3. **The cascade**: a v2 evaluation of an entry (default: quick PGD-AT under ``mnist-linf-quick-v2``)
   as Gauntlet runs it (each attack only on the samples no earlier stage broke) against running each
   of its attacks on every clean-correct sample at every eps, as a user of an attack library would.
   Both use the engine's seeded stages (the same attack, seed and verification per (stage, chunk)),
   timed by the stages' own clocks. The worst case is compared with the library user's in two ways:
   per eps alone (what the user would report) and nested (a sample broken at a smaller eps counts as
   broken at the larger ones, as the cascade counts it).

Arguments come from the environment (all optional): ``PERF_SCALE_DEMO_ARGS`` (extra ``bench demo``
arguments, e.g. ``--entries standard,trades``), ``PERF_SCALE_ENTRY``, ``PERF_SCALE_PROTOCOL``,
``PERF_SCALE_PG`` (a PostgreSQL URL; default: a throwaway server as the tests start one, when the
server binaries are installed), ``PERF_SCALE_ONLY`` (comma-separated: demo, store, cascade).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from bench.store.database import Result, Stage


def log(message: str) -> None:
    print(message, flush=True)


def demo_overhead(bench: str, extra: list[str]) -> None:
    """The demo on the local pool, then on local Ray: wall time of each command and the ratio."""
    wall: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        runs = {"pool": ["--jobs", "0"], "ray": ["--executor", "ray", "--task-threads", "1"]}
        for name, args in runs.items():
            t0 = time.perf_counter()
            subprocess.run([bench, "demo", "--home", f"{tmp}/{name}", *args, *extra], check=True,
                           stdout=subprocess.DEVNULL)
            wall[name] = time.perf_counter() - t0
            subprocess.run([bench, "export", "--format", "csv", "--home", f"{tmp}/{name}", "--out",
                            f"{tmp}/{name}-csv"], check=True, stdout=subprocess.DEVNULL)
            log(f"  demo on the {name}: {wall[name]:.0f} s")
        same = _csv_rows(Path(f"{tmp}/pool-csv")) == _csv_rows(Path(f"{tmp}/ray-csv"))
    log(f"demo {' '.join(extra) or '(4 entries)'}: local pool {wall['pool']:.0f} s, local Ray {wall['ray']:.0f} s: "
        f"Ray/pool {wall['ray'] / wall['pool']:.2f}x (target <= 1.10x); per-sample CSV exports "
        f"{'identical' if same else 'DIFFERENT'}")


def _csv_rows(folder: Path) -> dict[str, list[str]]:
    """Each entry's exported rows without the run id (the first column: runs are created in another order)."""
    out: dict[str, list[str]] = {}
    for path in folder.glob("*.csv"):
        entry = path.name.split("--")[0]
        out[entry] = sorted(line.split(",", 1)[1] for line in path.read_text().splitlines()[1:])
    return out


def store_writes(pg_url: str | None, n_stages: int = 60, rows_per_stage: int = 200) -> None:
    """The same stages written to SQLite and to PostgreSQL, one transaction each."""
    from bench.store.database import Store

    with tempfile.TemporaryDirectory() as tmp:
        server = None
        if pg_url is None:
            server = _throwaway_server()
            if server is None:
                log("stage writes: no PostgreSQL server (set PERF_SCALE_PG or install postgresql): skipped")
                return
            pg_url = server.new_database()
        try:
            stores = {"sqlite": Store(f"{tmp}/w.db"), "postgresql": Store(pg_url)}
            seconds = {name: 0.0 for name in stores}
            for name, st in stores.items():
                run = st.get_or_create_run(entry_id="perf", entry_name="perf", entry_version="1", protocol="p",
                                           fingerprint="f", protocol_json="{}", checkpoint_sha256="0" * 64,
                                           budget="b", train_seed=0, code_version="c", packages="{}",
                                           device="cpu", n_samples=rows_per_stage)
                seconds[name] = 0.0
                for i in range(n_stages):
                    stage, rows = _stage(run.id, i, rows_per_stage)
                    t0 = time.perf_counter()
                    assert st.write_stage(stage, rows, 0.0)
                    seconds[name] += time.perf_counter() - t0
                st.engine.dispose()
        finally:
            if server is not None:
                server.stop()
    ms = {k: 1000 * v / n_stages for k, v in seconds.items()}
    log(f"stage writes ({n_stages} stages of {rows_per_stage} rows): SQLite {ms['sqlite']:.1f} ms, PostgreSQL "
        f"{ms['postgresql']:.1f} ms per stage: PostgreSQL/SQLite {ms['postgresql'] / ms['sqlite']:.2f}x")


def _stage(run_id: int, i: int, n: int) -> tuple[Stage, list[Result]]:
    from bench.store.database import Result, Stage

    rows = [Result(run_id=run_id, fingerprint="f", attack=f"a{i}", eps=0.1, sample=s, label=s % 10, attacked=True,
                   success=s % 3 == 0, robust_after=s % 3 != 0, pred=(s + 1) % 10, linf=0.1, detail=None)
            for s in range(n)]
    stage = Stage(run_id=run_id, fingerprint="f", attack=f"a{i}", eps=0.1, chunk_start=0, chunk_stop=n,
                  n_attacked=n, n_broken=n // 3, n_forward=0, n_backward=0, seconds=0.0, seed=i)
    return stage, rows


def _throwaway_server() -> Any:
    """A temporary PostgreSQL server (:mod:`bench.store.throwaway_pg`), or None without the server binaries."""
    from bench.store.throwaway_pg import PostgresServer, find_binaries

    return PostgresServer() if find_binaries() is not None else None


def cascade_against_every_attack(entry_id: str, protocol_name: str, home: str) -> None:
    """The protocol's cascade on ``entry_id``, then each attack on every clean-correct sample."""
    from attacks import make_attack
    from attacks.base import PassCounter, prepare_model
    from attacks.context import AttackContext
    from bench import api
    from bench.engine.evaluate import run_stage
    from bench.orchestration import jobs
    from bench.protocol.data import load_split
    from bench.store.database import Store
    from bench.store.summary import summarize_rows
    from bench.store.workspace import Workspace

    ws = Workspace.resolve(home)
    protocol = api._protocol(protocol_name)
    if jobs.needs_training(ws, entry_id):
        api.train(entry_id, protocol.dataset, home=home)
    st = Store(f"{home}/cascade.db")
    t0 = time.perf_counter()
    report = api.evaluate(entry_id, protocol, store=st, home=home, checks=False)
    cascade_wall = time.perf_counter() - t0
    entry = jobs.lookup(ws, entry_id)
    if entry.randomized:
        raise SystemExit(f"{entry_id} is randomized: pick a deterministic entry (PERF_SCALE_ENTRY)")
    protocol = protocol.for_entry(tuple(entry.adaptive_attacks))  # the attacks the cascade ran on it
    applied_stages = set(protocol.stages())
    cascade_s = sum(s.seconds for s in st.stages(report.run_id) if (s.attack, s.eps) in applied_stages)

    _, target = jobs.target_for(ws, entry, protocol, "quick", 0)
    surrogates = jobs.workspace_surrogates(ws, protocol.dataset, None, "cpu")
    context = AttackContext(surrogates=surrogates)
    model = PassCounter(prepare_model(target.model, torch.device("cpu")))
    x_all, y_all = load_split(protocol.dataset, protocol.split)
    scratch = Store("sqlite://")
    run = scratch.get_or_create_run(entry_id=entry_id, entry_name=entry_id, entry_version="1", protocol=protocol.name,
                                    fingerprint=protocol.fingerprint, protocol_json="{}",
                                    checkpoint_sha256=target.weights_sha256, budget="quick", train_seed=0,
                                    code_version="", packages="{}", device="cpu", n_samples=protocol.n_samples)
    summary = summarize_rows(st, st.run(report.run_id))
    clean = {r.sample: r.robust_after for r in st.results(report.run_id) if r.attack == "clean"}
    broken: dict[tuple[str, float], set[int]] = {}
    every_s = 0.0
    for c0 in range(0, protocol.n_samples, protocol.chunk_size):
        c1 = min(c0 + protocol.chunk_size, protocol.n_samples)
        ids = torch.arange(c0, c1)
        correct = torch.tensor([clean[int(i)] for i in ids])
        for label, eps in protocol.stages():
            t1 = time.perf_counter()
            after = run_stage(scratch, run.id, protocol.fingerprint, model, label, eps, protocol.spec(label),
                              x_all[c0:c1], y_all[c0:c1], ids, correct, protocol.chunk_size, make_attack,
                              context=context)
            every_s += time.perf_counter() - t1
            broken.setdefault((label, eps), set()).update(int(i) for i, a, ok in zip(ids, after, correct, strict=True)
                                                          if ok and not a)
    n = protocol.n_samples
    alone, nested, so_far = {}, {}, set()
    for eps in protocol.epsilons:
        at_eps = set().union(*[b for (label, e), b in broken.items() if e == eps])
        so_far |= at_eps
        alone[eps] = 100.0 * sum(ok and s not in at_eps for s, ok in clean.items()) / n
        nested[eps] = 100.0 * sum(ok and s not in so_far for s, ok in clean.items()) / n

    def fmt(d: dict[float, float]) -> str:
        return ", ".join(f"{e:g}: {v:.1f}" for e, v in sorted(d.items()))

    log(f"  cascade worst case per eps: {fmt(summary.worst_before)}")
    log(f"  every attack on every sample, per eps alone: {fmt(alone)}; nested: {fmt(nested)}")
    same = all(abs(nested[e] - summary.worst_before[e]) < 1e-9 for e in summary.worst_before)
    # where they differ: an attack whose verdict on a sample depends on the other samples of its batch
    # (the cascade hands it only the survivors), compared on the samples both runs gave it
    cascade_rows = [r for r in st.results(report.run_id) if (r.attack, r.eps) in applied_stages and r.attacked]
    differs: dict[tuple[str, float], int] = {}
    for r in cascade_rows:
        if r.success != (r.sample in broken.get((r.attack, r.eps), set())):
            differs[(r.attack, r.eps)] = differs.get((r.attack, r.eps), 0) + 1
    log("  verdicts that depend on the batch (cascade vs every sample, same samples): "
        + (", ".join(f"{a}@{e:g}: {n}" for (a, e), n in sorted(differs.items())) or "none"))
    log(f"cascade on {entry_id} under {protocol.name}: {cascade_s:.0f} s of attack stages ({cascade_wall:.0f} s "
        f"wall with the extras), every attack on every sample {every_s:.0f} s: cascade speed-up "
        f"{every_s / cascade_s:.2f}x; worst case {'identical' if same else 'DIFFERENT'} to the nested library "
        f"figure")


def main() -> None:
    only = set((os.environ.get("PERF_SCALE_ONLY") or "demo,store,cascade").split(","))
    torch.set_num_threads(1)
    bench = str(Path(sys.executable).with_name("bench"))
    if "store" in only:
        store_writes(os.environ.get("PERF_SCALE_PG"))
    if "cascade" in only:
        with tempfile.TemporaryDirectory() as home:
            cascade_against_every_attack(os.environ.get("PERF_SCALE_ENTRY", "madry-pgd-at"),
                                         os.environ.get("PERF_SCALE_PROTOCOL", "mnist-linf-quick-v2"), home)
    if "demo" in only:
        demo_overhead(bench, shlex.split(os.environ.get("PERF_SCALE_DEMO_ARGS", "")))


if __name__ == "__main__":
    main()
