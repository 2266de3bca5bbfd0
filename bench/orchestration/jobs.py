"""The units of work the CLI and the demo's worker pool share: find an entry's trained model,
and decide whether a run's stored sanity checks are still current.

Kept free of any user interface so that worker processes (:mod:`bench.orchestration.pool`) run exactly
the code that ``bench evaluate`` and ``bench check`` run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.errors import BenchError
from bench.store.workspace import Workspace


def lookup(ws: Workspace, entry_id: str) -> Any:
    """The registry entry ``entry_id``, built-in or submitted to this workspace."""
    from registry import get_entry

    return get_entry(entry_id, ws.submissions)


def trained_entry_id(ws: Workspace, entry_id: str) -> str:
    """The entry whose checkpoint ``entry_id`` uses: itself, or the model a test-time or
    alternative-metric entry wraps (followed to the end of the chain)."""
    seen = [entry_id]
    entry = lookup(ws, entry_id)
    while entry.wraps is not None:
        if entry.wraps in seen:
            raise BenchError(f"entry {entry_id!r}: 'wraps' forms a cycle ({' -> '.join(seen + [entry.wraps])})")
        seen.append(entry.wraps)
        entry = lookup(ws, entry.wraps)
    return entry.id


def resolve_target(ws: Workspace, entry_id: str, protocol_name: str, budget: str, seed: int,
                   checkpoint: str | None = None) -> tuple[Any, Any]:
    """The protocol and the evaluated model (an EvalTarget) of an entry's checkpoint."""
    from bench.engine.evaluate import EvalTarget
    from bench.models.checkpoints import resolve_model
    from bench.protocol.protocols import get_protocol

    protocol = get_protocol(protocol_name)
    entry = lookup(ws, entry_id)
    if protocol.dataset not in entry.architectures:
        raise BenchError(f"entry {entry_id!r} declares no model for {protocol.dataset}")
    model, sha, meta = resolve_model(entry, protocol.dataset, budget, seed, ws.checkpoints,
                                     Path(checkpoint) if checkpoint else None, lambda i: lookup(ws, i))
    target = EvalTarget(entry, model, sha, meta.get("budget", budget),
                        int(meta["seed"]) if meta.get("seed", "").isdigit() else None)
    return protocol, target


def current_checks(store: Any, run_id: int) -> list[Any] | None:
    """The run's stored check rows if they were made by the current check suite, else None."""
    from bench.checks.suite import suite_for

    run = next((r for r in store.runs() if r.id == run_id), None)
    if run is None:
        raise BenchError(f"run {run_id} not found")
    stored = store.checks(run_id)
    if stored and stored[0].suite == suite_for(json.loads(run.protocol_json))[1]:
        return stored
    return None


def surrogate_keys(protocol: Any) -> list[tuple[str, str, int]]:
    """(entry id, budget, seed) of every surrogate model the protocol's transfer attacks use."""
    keys = []
    for spec in protocol.attacks:
        if spec.kind == "transfer":
            key = (str(spec.params["surrogate"]), str(spec.params.get("surrogate_budget", "quick")),
                   int(spec.params.get("surrogate_seed", 0)))
            if key not in keys:
                keys.append(key)
    return keys


def checks_report(results: list[Any]) -> str:
    """The verdict of a check suite's results and one line per failed check."""
    failed = [r for r in results if r.failed]
    verdict = ("evaluation possibly unreliable" if any(r.severity == "unreliable" for r in failed)
               else "no unreliable flag")
    return verdict + "".join(f"\n  [{r.severity}] {r.name}: {r.summary}" for r in failed)


def check_run(store: Any, run_id: int, model: Any, *, data_dir: str | None, device: str,
              batch_size: int | None = None, force: bool = True, progress: Any = None) -> str:
    """Run a run's sanity checks (unless ``force`` is off and the current suite's rows are stored,
    which are reused) and return the report: the verdict, then a line per failed check."""
    from bench.checks.suite import run_checks

    stored = None if force else current_checks(store, run_id)
    if stored is not None:
        return f"reused ({sum(c.status == 'fail' for c in stored)} failed)"
    results = run_checks(store, run_id, model, data_dir=data_dir, device=device, batch_size=batch_size,
                         progress=progress)
    return checks_report(results)
