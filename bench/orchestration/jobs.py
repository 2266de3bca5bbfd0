"""The units of work every way in shares: train an entry's model, evaluate a (slice of a) run,
check a run. The Python API (:mod:`bench.api`), the CLI through it, and the plan's workers
(:mod:`bench.orchestration.pool`, in-process or on a process pool) all call these functions, so
every path runs the same code.

They hold no user interface: progress goes to optional callbacks.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.errors import BenchError
from bench.store.workspace import Workspace

ProgressFn = Callable[[str, float, int, int], None]


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


def needs_training(ws: Workspace, entry_id: str) -> bool:
    """Whether evaluating ``entry_id`` needs a trained checkpoint (a pretrained model needs none)."""
    return lookup(ws, trained_entry_id(ws, entry_id)).recipe is not None


def train(ws: Workspace, entry_id: str, dataset: str, budget: str, seed: int, *, data_dir: str | None = None,
          device: str = "cpu", force: bool = False, on_step: Callable[[int, int, float], None] | None = None
          ) -> tuple[Any, bool]:
    """Train (or reuse) the checkpoint ``entry_id`` is evaluated with: (checkpoint, reused).

    A test-time entry trains the model it wraps; a pretrained entry has nothing to train.
    """
    from bench.models.checkpoints import train_entry

    model_id = trained_entry_id(ws, entry_id)
    entry = lookup(ws, model_id)
    if entry.recipe is None:
        raise BenchError(f"entry {model_id!r} is pretrained: it has no training recipe (evaluate it directly)")
    return train_entry(entry, dataset, budget, seed, ws.checkpoints, data_dir, device, force, on_step)


def resolve_target(ws: Workspace, entry_id: str, protocol_name: str, budget: str, seed: int,
                   checkpoint: str | None = None) -> tuple[Any, Any]:
    """The protocol and the evaluated model (an EvalTarget) of an entry's checkpoint."""
    from bench.protocol.protocols import get_protocol

    return target_for(ws, lookup(ws, entry_id), get_protocol(protocol_name), budget, seed, checkpoint)


def target_for(ws: Workspace, entry: Any, protocol: Any, budget: str, seed: int,
               checkpoint: str | None = None) -> tuple[Any, Any]:
    """As :func:`resolve_target`, for an entry object (registered or built by the API)."""
    from bench.engine.evaluate import EvalTarget
    from bench.models.checkpoints import resolve_model

    if protocol.dataset not in entry.architectures:
        raise BenchError(f"entry {entry.id!r} declares no model for {protocol.dataset}")
    model, sha, meta = resolve_model(entry, protocol.dataset, budget, seed, ws.checkpoints,
                                     Path(checkpoint) if checkpoint else None, lambda i: lookup(ws, i))
    target = EvalTarget(entry, model, sha, meta.get("budget", budget),
                        int(meta["seed"]) if meta.get("seed", "").isdigit() else None)
    return protocol, target


def evaluate_target(ws: Workspace, store: Any, protocol: Any, target: Any, *, data_dir: str | None = None,
                    device: str = "cpu", start: int = 0, stop: int | None = None, batch_size: int | None = None,
                    progress: ProgressFn | None = None, on_train: Callable[[str], None] | None = None) -> int:
    """Evaluate ``target`` under ``protocol`` on samples [start, stop), resuming what is stored; the run id.

    Transfer attacks take their surrogates from the workspace (trained there on first use).
    """
    from bench.engine.evaluate import evaluate

    if batch_size is not None and batch_size < 1:
        raise BenchError("--batch-size must be >= 1")
    surrogates = workspace_surrogates(ws, protocol.dataset, data_dir, device, on_train)
    return evaluate(store, target, protocol, data_dir=data_dir, start=start, stop=stop, device=device,
                    batch_size=batch_size, progress=progress, surrogates=surrogates)


def workspace_surrogates(ws: Workspace, dataset: str, data_dir: str | None, device: str,
                         on_train: Callable[[str], None] | None = None) -> Any:
    """The workspace's transfer surrogates for ``dataset`` (trained there on first use)."""
    from bench.models.surrogates import WorkspaceSurrogates

    return WorkspaceSurrogates(ws.checkpoints, ws.cache, dataset, lambda i: lookup(ws, i), data_dir, device,
                               on_train=on_train)


def run_of(store: Any, protocol: Any, target: Any) -> Any:
    """The stored run of ``target`` under ``protocol``, or a one-line error."""
    run = store.find_run(target.entry.id, protocol.fingerprint, target.weights_sha256)
    if run is None:
        raise BenchError(f"no stored run of {target.entry.id} on {protocol.name} with these weights; "
                         "run `bench evaluate` first")
    return run


def current_checks(store: Any, run_id: int) -> list[Any] | None:
    """The run's stored check rows if they were made by the current check suite, else None."""
    from bench.checks.suite import suite_for

    run = store.run(run_id)
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
              batch_size: int | None = None, force: bool = True, progress: Any = None, ws: Workspace | None = None,
              escalation: bool = True, stage_progress: ProgressFn | None = None,
              on_train: Callable[[str], None] | None = None) -> str:
    """Run a run's sanity checks (unless ``force`` is off and the current suite's rows are stored,
    which are reused), escalate it when they flag it unreliable (:mod:`bench.escalation`; resumed or
    reused when stored), and return the report: the verdict, a line per failed check, and what the
    escalation did. Transfer surrogates come from ``ws`` (without one, only the distilled surrogate)."""
    from bench.checks.suite import load_results, run_checks

    stored = None if force else current_checks(store, run_id)
    if stored is not None:
        report = f"reused ({sum(c.status == 'fail' for c in stored)} failed)"
        results = load_results(store, run_id)
    else:
        results = run_checks(store, run_id, model, data_dir=data_dir, device=device, batch_size=batch_size,
                             progress=progress)
        report = checks_report(results)
    if not escalation or not any(r.failed and r.severity == "unreliable" for r in results):
        return report
    return report + "\n" + escalate_run(store, run_id, model, ws=ws, data_dir=data_dir, device=device,
                                        batch_size=batch_size, progress=stage_progress, check_progress=progress,
                                        on_train=on_train)


def escalate_run(store: Any, run_id: int, model: Any, *, ws: Workspace | None, data_dir: str | None, device: str,
                 batch_size: int | None = None, progress: ProgressFn | None = None, check_progress: Any = None,
                 on_train: Callable[[str], None] | None = None) -> str:
    """Escalate a flagged run (see :func:`bench.escalation.run.escalate`) and say what it changed."""
    from bench.escalation.run import escalate
    from bench.store.summary import summarize_rows

    dataset = json.loads(store.run(run_id).protocol_json)["dataset"]
    surrogates = None if ws is None else workspace_surrogates(ws, dataset, data_dir, device, on_train)
    record = escalate(store, run_id, model, surrogates=surrogates, cache_dir=None if ws is None else ws.cache,
                      data_dir=data_dir, device=device, batch_size=batch_size, progress=progress,
                      check_progress=check_progress)
    if record is None:
        return "no escalation"
    s = summarize_rows(store, store.run(run_id))
    grid = ", ".join(f"{e:g}: {s.worst_before.get(e, float('nan')):.1f} -> {s.worst.get(e, float('nan')):.1f}"
                     for e in s.epsilons)
    remedies = [r for rnd in record["rounds"] for r in rnd["remedies"]]
    return (f"escalated ({', '.join(remedies) or 'nothing applicable'}; {record.get('seconds', 0.0):.0f} s): "
            f"worst case by eps {grid}")
