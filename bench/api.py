"""The Python API: the one way into Gauntlet. The CLI, the demo and the tests call these functions.

A model in, a report out::

    import torch
    from bench.api import evaluate

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    report = evaluate(model, "mnist-linf-tiny-v1")  # in-memory store, checks included
    print(report.clean_accuracy, report.worst_case, [f.name for f in report.flags])

``evaluate`` takes a bare ``nn.Module`` (images in [0, 1] to logits), a registered entry id or an
:class:`registry.Entry`. A bare model is evaluated as a copy (the one passed in is left as it is) and
stored in an in-memory database unless ``store`` is given; an entry in its workspace's database
(``home``: ``$GAUNTLET_HOME`` or ``./gauntlet-out``), as the CLI does. In a persistent store every
stage resumes exactly: evaluating again finishes what is missing and reuses the rest. A bare model's
run is keyed by its name, its weights and every submodule's class and plain attributes. Every error
meant for the user is a :class:`bench.errors.BenchError` with a one-line message (the registry's and
the defenses' own errors are converted).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import importlib.metadata
import json
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar, cast

import torch
from torch import nn

from bench.checks.suite import load_results
from bench.errors import BenchError, user_errors
from bench.orchestration import jobs
from bench.orchestration.pool import PoolContext, Task, default_jobs, plan, run_plan, usable_cpus
from bench.protocol.protocols import Protocol, get_protocol
from bench.report.record import build_record, import_record, read_record, record_files, write_record
from bench.report.run_report import RunReport
from bench.report.summary import join_checks, summarize
from bench.store.database import Store, normalize_url
from bench.store.summary import summarize_rows
from bench.store.workspace import Workspace
from registry.entry import Entry, Paper

IN_MEMORY = "sqlite://"
F = TypeVar("F", bound=Callable[..., Any])


def _one_error_type(fn: F) -> F:
    """Raise every user-facing error (the registry's EntryError, the defenses' DefenseError) as BenchError."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except BenchError:
            raise
        except user_errors() as exc:
            raise BenchError(str(exc)) from None

    return cast(F, wrapper)


ProgressFn = Callable[[str, float, int, int], None]
ChecksFn = Callable[[int, str, float], None]
TaskFn = Callable[[Task, str, float], None]
EXECUTORS = ("local", "ray")


@dataclass(frozen=True)
class Trained:
    """A trained (or reused) checkpoint of an entry."""

    entry_id: str  # the entry whose weights these are (a test-time entry trains the model it wraps)
    path: Path
    sha256: str
    reused: bool
    metadata: dict[str, str]


@dataclass(frozen=True)
class DemoResult:
    """What ``demo`` did: one report per entry and the built site's index."""

    reports: dict[str, RunReport]
    site: Path


def open_store(store: Store | str | os.PathLike[str] | None = None, *, home: str | os.PathLike[str] | None = None,
               default: str | None = None) -> Store:
    """A :class:`Store` from a Store, a SQLAlchemy URL or a SQLite path; else ``default``, else the workspace's."""
    if isinstance(store, Store):
        return store
    return Store(store or default or Workspace.resolve(home).db_url)


@_one_error_type
def report(run_id: int, *, store: Store | str | None = None, home: str | os.PathLike[str] | None = None
           ) -> RunReport:
    """The report of a stored run."""
    st = open_store(store, home=home)
    return RunReport.from_summary(summarize(st, st.run(run_id)))


@_one_error_type
def reports(entry_id: str | None = None, *, store: Store | str | None = None,
            home: str | os.PathLike[str] | None = None) -> list[RunReport]:
    """The reports of every stored run (of ``entry_id`` only, when given), in run order."""
    st = open_store(store, home=home)
    return [RunReport.from_summary(summarize(st, run)) for run in st.runs()
            if entry_id is None or run.entry_id == entry_id]


@_one_error_type
def entries(*, home: str | os.PathLike[str] | None = None) -> dict[str, Entry]:
    """Every registered entry: the built-in ones and those submitted to the workspace."""
    from registry import all_entries

    return all_entries(Workspace.resolve(home).submissions)


@_one_error_type
def entry(entry_id: str, *, home: str | os.PathLike[str] | None = None) -> Entry:
    """One registered entry (a one-line error naming the known ones when there is none)."""
    return jobs.lookup(Workspace.resolve(home), entry_id)


@_one_error_type
def entries_for(protocol: str | Protocol, *, home: str | os.PathLike[str] | None = None) -> list[str]:
    """Every entry with a model for the protocol's dataset (the benchmark's own surrogate excluded)."""
    dataset = _protocol(protocol).dataset
    return [e.id for e in entries(home=home).values() if dataset in e.architectures and e.id != "surrogate-pgd"]


@_one_error_type
def submit(file: str | os.PathLike[str], *, home: str | os.PathLike[str] | None = None) -> list[Entry]:
    """Register the entries a submission file declares (copied into the workspace's submissions)."""
    from registry import submit_file

    return submit_file(Path(file), Workspace.resolve(home).submissions)


def model_entry(model: nn.Module, dataset: str, *, name: str | None = None, randomized: bool = False,
                adaptive: Sequence[str] = ()) -> Entry:
    """A bare model as an entry of kind "pretrained": evaluated as it is, never trained."""
    entry_id = name or "model"
    try:
        return Entry(id=entry_id, name=name or type(model).__name__,
                     description="A model evaluated through the Python API.",
                     paper=Paper("(no paper)", "", ""), kind="pretrained",
                     architectures={dataset: lambda: model}, pretrained={dataset: lambda: model},
                     randomized=randomized, adaptive_attacks=tuple(adaptive), source="python-api")
    except ValueError as exc:
        raise BenchError(str(exc)) from None


def _protocol(protocol: str | Protocol) -> Protocol:
    return protocol if isinstance(protocol, Protocol) else get_protocol(protocol)


def _entry(ws: Workspace, model_or_entry: nn.Module | str | Entry, proto: Protocol, name: str | None,
           randomized: bool, adaptive: Sequence[str]) -> tuple[Entry, bool]:
    """(entry, is a bare model). A bare model is copied, so that the engine's preparation (eval mode,
    frozen parameters, device, memory layout) leaves the caller's model untouched."""
    if isinstance(model_or_entry, nn.Module):
        known = {a.name for a in proto.adaptive}
        unknown = sorted(set(adaptive) - known)
        if unknown:
            raise BenchError(f"protocol {proto.name} has no adaptive attack {', '.join(unknown)}; "
                             f"known: {', '.join(sorted(known)) or 'none'}")
        try:
            model = copy.deepcopy(model_or_entry)
        except Exception as exc:
            raise BenchError(f"the model cannot be copied for evaluation (copy.deepcopy: {type(exc).__name__}: "
                             f"{exc})".splitlines()[0]) from None
        return model_entry(model, proto.dataset, name=name, randomized=randomized, adaptive=adaptive), True
    if randomized or adaptive:
        raise BenchError("randomized and adaptive describe a bare model; an entry declares them itself")
    if isinstance(model_or_entry, Entry):
        return model_or_entry, False
    if isinstance(model_or_entry, str):
        return jobs.lookup(ws, model_or_entry), False
    raise BenchError(f"evaluate takes an nn.Module, an entry id or an Entry, not {type(model_or_entry).__name__}")


@_one_error_type
def evaluate(model_or_entry: nn.Module | str | Entry, protocol: str | Protocol = "mnist-linf-quick-v1", *,
             store: Store | str | None = None, home: str | os.PathLike[str] | None = None,
             name: str | None = None, randomized: bool = False, adaptive: Sequence[str] = (),
             checks: bool = True, force_checks: bool = False, escalation: bool = True, budget: str = "quick",
             seed: int = 0,
             checkpoint: str | None = None, start: int = 0, stop: int | None = None,
             data_dir: str | None = None, device: str = "cpu", batch_size: int | None = None,
             progress: ProgressFn | None = None, check_progress: Callable[[str], None] | None = None,
             on_train: Callable[[str], None] | None = None, on_checks: ChecksFn | None = None,
             executor: str = "local", ray_address: str | None = None, task_threads: int = 1,
             on_task: TaskFn | None = None) -> RunReport:
    """Evaluate a model or an entry under a protocol and return its report.

    ``name``, ``randomized`` (judged with EOT) and ``adaptive`` (adaptive attack names, as an entry
    declares them) describe a bare model. An entry is evaluated with the checkpoint of ``budget`` and
    ``seed`` (or ``checkpoint``), which must exist: see :func:`train`. ``start``/``stop`` evaluate a
    chunk-aligned slice. Once the run is complete its sanity checks run (``checks``), unless the
    current suite's are stored (``force_checks`` runs them again); ``on_checks(run id, verdict, seconds)``
    hears how they went. A run they flag unreliable is escalated (:mod:`bench.escalation`) unless
    ``escalation`` is off: the report's worst case is then the escalated one.

    ``executor="ray"`` runs a registered entry's plan on Ray instead (:func:`run_on_ray`: its training
    if needed, each chunk of the slice, the checks), ``task_threads`` torch threads per task;
    ``on_task(task, message, seconds)`` hears each finished task.
    """
    if executor != "local":
        _executor(executor)
        if not isinstance(model_or_entry, str) or checkpoint is not None:
            raise BenchError("--executor ray evaluates a registered entry's own checkpoint (no model object, "
                             "no --checkpoint)")
        run_id = run_on_ray([model_or_entry], _protocol(protocol).name, budget=budget, seed=seed, home=home,
                            db=store.url if isinstance(store, Store) else store, data_dir=data_dir, device=device,
                            escalation=escalation, checks=checks, start=start, stop=stop, address=ray_address,
                            threads=task_threads, on_done=on_task)[model_or_entry]
        st = open_store(store, home=home)
        return RunReport.from_summary(join_checks(summarize_rows(st, st.run(run_id)), load_results(st, run_id)))
    ws, st, proto, target = _target(model_or_entry, protocol, store, home, name, randomized, adaptive, budget, seed,
                                    checkpoint, data_dir, in_memory=True)
    run_id = jobs.evaluate_target(ws, st, proto, target, data_dir=data_dir, device=device, start=start, stop=stop,
                                  batch_size=batch_size, progress=progress, on_train=on_train)
    rows = summarize_rows(st, st.run(run_id))  # read once: the checks add rows of their own table only
    if checks and rows.complete:
        _check(st, run_id, target.model, data_dir=data_dir, device=device, batch_size=batch_size, force=force_checks,
               progress=check_progress, on_checks=on_checks, ws=ws, escalation=escalation, stage_progress=progress,
               on_train=on_train)
        rows = summarize_rows(st, st.run(run_id))  # the escalation, if any, added rows
    return RunReport.from_summary(join_checks(rows, load_results(st, run_id)))


def _target(model_or_entry: nn.Module | str | Entry, protocol: str | Protocol, store: Store | str | None,
            home: str | os.PathLike[str] | None, name: str | None, randomized: bool, adaptive: Sequence[str],
            budget: str, seed: int, checkpoint: str | None, data_dir: str | None, *, in_memory: bool
            ) -> tuple[Workspace, Store, Protocol, Any]:
    """(workspace, store, protocol, evaluated target) of what ``evaluate`` and ``check`` were given.

    A bare model's store defaults to an in-memory one when ``in_memory``; otherwise it must be given.
    """
    ws = Workspace.resolve(home)
    proto = _protocol(protocol)
    entry, bare = _entry(ws, model_or_entry, proto, name, randomized, adaptive)
    if bare and store is None and not in_memory:
        raise BenchError("check a bare model in the store it was evaluated in (store=...)")
    st = open_store(store, home=home, default=IN_MEMORY if bare else None)
    proto, target = jobs.target_for(ws, entry, proto, budget, seed, checkpoint)
    if bare:
        target = _bare_target(target, proto, data_dir)
    return ws, st, proto, target


def _check(st: Store, run_id: int, model: nn.Module, *, data_dir: str | None, device: str, batch_size: int | None,
           force: bool, progress: Callable[[str], None] | None, on_checks: ChecksFn | None, ws: Workspace,
           escalation: bool = True, stage_progress: ProgressFn | None = None,
           on_train: Callable[[str], None] | None = None) -> None:
    t0 = time.perf_counter()
    verdict = jobs.check_run(st, run_id, model, data_dir=data_dir, device=device, batch_size=batch_size, force=force,
                             ws=ws, escalation=escalation, stage_progress=stage_progress, on_train=on_train,
                             progress=progress)
    if on_checks is not None:
        on_checks(run_id, verdict, time.perf_counter() - t0)


def _structure(model: nn.Module) -> str:
    """Every submodule's name, class and plain attributes (not its weights), as text."""
    parts = []
    for path, m in model.named_modules():
        attrs = {k: repr(v) for k, v in sorted(vars(m).items()) if not k.startswith("_") and k != "training"}
        parts.append(f"{path}:{type(m).__module__}.{type(m).__qualname__}:{attrs}")
    return "\n".join(parts)


def _bare_target(target: Any, proto: Protocol, data_dir: str | None) -> Any:
    """A bare model's target, checked on two test images and keyed by more than its weights.

    The engine keys a run by (entry id, protocol fingerprint, weights sha256). Two bare models with the
    same name and weights but other classes or settings (two parameter-free models, say) would share a
    run, so every submodule's class and plain attributes join the key.
    """
    from bench.protocol.data import load_split

    model = target.model
    x = load_split(proto.dataset, proto.split, data_dir)[0][:2]
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):  # a randomized model's draws stay as they were
            out = model.eval()(x)
    except Exception as exc:
        raise BenchError(f"the model fails on two {proto.dataset} test images {tuple(x.shape)}: "
                         f"{type(exc).__name__}: {exc}".splitlines()[0]) from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != 2 or out.shape[1] < 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise BenchError(f"the model must map images {tuple(x.shape)} to logits of shape (2, classes), not {shape}")
    ident = hashlib.sha256(f"{target.weights_sha256}|{_structure(model)}".encode()).hexdigest()
    return replace(target, weights_sha256=ident)


@_one_error_type
def check(model_or_entry: nn.Module | str | Entry, protocol: str | Protocol = "mnist-linf-quick-v1", *,
          store: Store | str | None = None, home: str | os.PathLike[str] | None = None, name: str | None = None,
          budget: str = "quick", seed: int = 0, checkpoint: str | None = None, data_dir: str | None = None,
          device: str = "cpu", batch_size: int | None = None, force: bool = True,
          progress: Callable[[str], None] | None = None, on_checks: ChecksFn | None = None,
          escalation: bool = True) -> RunReport:
    """(Re-)run the sanity checks of a complete stored run and return its report (escalating it when
    they flag it unreliable, unless ``escalation`` is off)."""
    ws, st, proto, target = _target(model_or_entry, protocol, store, home, name, False, (), budget, seed, checkpoint,
                                    data_dir, in_memory=False)
    run = jobs.run_of(st, proto, target)
    _check(st, run.id, target.model, data_dir=data_dir, device=device, batch_size=batch_size, force=force,
           progress=progress, on_checks=on_checks, ws=ws, escalation=escalation)
    return report(run.id, store=st)


@_one_error_type
def train(entry: str, dataset: str = "mnist", budget: str = "quick", seed: int = 0, *,
          home: str | os.PathLike[str] | None = None, data_dir: str | None = None, device: str = "cpu",
          force: bool = False, on_step: Callable[[int, int, float], None] | None = None) -> Trained:
    """Train an entry with its recipe (a test-time entry: the model it wraps) into a safetensors
    checkpoint of the workspace, or reuse the stored one."""
    from bench.protocol.data import dataset_info

    dataset_info(dataset)
    ws = Workspace.resolve(home)
    ckpt, reused = jobs.train(ws, entry, dataset, budget, seed, data_dir=data_dir, device=device, force=force,
                              on_step=on_step)
    return Trained(jobs.trained_entry_id(ws, entry), ckpt.path, ckpt.sha256, reused, dict(ckpt.metadata))


@_one_error_type
def leaderboard(*, store: Store | str | None = None, home: str | os.PathLike[str] | None = None,
                out: str | os.PathLike[str] | None = None,
                from_records: str | os.PathLike[str] | None = None) -> Path:
    """Build the static site from the stored runs, or from the records under ``from_records`` alone
    (restored into an in-memory store: nothing is trained or evaluated); returns its index.html."""
    from leaderboard import build_site

    ws = Workspace.resolve(home)
    source = None
    if from_records is not None:
        st = Store(IN_MEMORY)
        paths = record_files(Path(from_records))
        if not paths:  # a mistyped folder would otherwise publish an empty board
            raise BenchError(f"no records (*.json) under {from_records}")
        for path in paths:
            import_record(st, read_record(path), source=str(path))
        source = f"the records in {Path(from_records).name or from_records}/"
    else:
        st = open_store(store, home=home)
    return build_site(st, Path(out).resolve() if out else ws.site, entries(home=home), source)


@_one_error_type
def record(entry_id: str, protocol: str | Protocol = "mnist-linf-quick-v1", *, budget: str = "quick", seed: int = 0,
           out: str | os.PathLike[str] = "results", store: Store | str | None = None,
           home: str | os.PathLike[str] | None = None, data_dir: str | None = None,
           on_train: Callable[[str], None] | None = None, progress: ProgressFn | None = None) -> Path:
    """Make or refresh the record of an entry (:mod:`bench.report.record`): train it if its checkpoint
    is missing, evaluate, check and escalate it (resuming a stored run), and write
    ``<out>/<protocol>/<entry>.<budget>.seed<seed>.json``; returns the path.

    The record states torch's thread count: records made with one thread (``torch.set_num_threads(1)``)
    are the ones the regression suite reproduces exactly.
    """
    from bench.models.checkpoints import resolve_model, state_sha256
    from bench.report.export import model_info

    proto = _protocol(protocol)
    ws = Workspace.resolve(home)
    if jobs.needs_training(ws, entry_id):
        train(entry_id, proto.dataset, budget, seed, home=home, data_dir=data_dir)
    model, sha, meta = resolve_model(jobs.lookup(ws, entry_id), proto.dataset, budget, seed, ws.checkpoints, None,
                                     lambda i: jobs.lookup(ws, i))
    _same_training(entry_id, meta, torch.get_num_threads(), torch.__version__)  # before hours of evaluation
    st = open_store(store, home=home)
    stored = st.find_run(entry_id, proto.fingerprint, sha)  # one a resume would add to: checked first too
    if stored is not None:
        _same_evaluation(entry_id, stored, torch.get_num_threads())
    rep = evaluate(entry_id, proto, store=st, home=home, budget=budget, seed=seed, data_dir=data_dir,
                   on_train=on_train, progress=progress)
    if not rep.summary.complete:
        raise BenchError(f"run {rep.run_id} of {entry_id} is incomplete: no record")
    summary = summarize(st, st.run(rep.run_id))
    info = model_info(summary, entries(home=home).get(entry_id))
    info.get("gauntlet", {}).pop("run_id", None)  # the local database's id: not part of the result
    run = st.run(rep.run_id)
    built = build_record(st, rep.run_id, info, torch.get_num_threads(), state_sha256(model.state_dict()))
    return write_record(built, Path(out), run)


def _same_training(entry_id: str, meta: dict[str, str], threads: int, torch_version: str) -> None:
    """A record states the torch version and thread count its numbers came from (the regression suite
    retrains under them): a reused checkpoint trained under others is a one-line error, not a record
    that cannot be reproduced (``torch_version`` as checkpoints state it: ``torch.__version__``)."""
    trained = meta.get("torch_threads")
    if trained is not None and trained != str(threads):
        raise BenchError(f"{entry_id}'s checkpoint was trained with {trained} torch thread(s), this record would "
                         f"state {threads}: record with --threads {trained}, or retrain in a fresh workspace (--home)")
    if meta.get("torch") not in (None, torch_version):
        raise BenchError(f"{entry_id}'s checkpoint was trained under torch {meta['torch']}, this is {torch_version}: "
                         "retrain in a fresh workspace (--home)")


def _same_evaluation(entry_id: str, run: Any, threads: int) -> None:
    """As :func:`_same_training`, for a stored run the record reuses (its device and packages columns)."""
    used = re.search(r"(\d+) threads", run.device or "")
    if (run.device or "").startswith("cpu") and used and int(used.group(1)) != threads:
        raise BenchError(f"run {run.id} of {entry_id} was evaluated with {used.group(1)} torch thread(s), this "
                         f"record would state {threads}: record with --threads {used.group(1)}, or into a fresh "
                         "database (--db) to evaluate again")
    evaluated = json.loads(run.packages or "{}").get("torch")  # the distribution's version, as runs state it
    installed = importlib.metadata.version("torch")
    if evaluated not in (None, installed):
        raise BenchError(f"run {run.id} of {entry_id} was evaluated under torch {evaluated}, this is {installed}: "
                         "record into a fresh database (--db) to evaluate again")


@_one_error_type
def export(fmt: str = "json", *, store: Store | str | None = None, home: str | os.PathLike[str] | None = None,
           out: str | os.PathLike[str] | None = None) -> list[Path]:
    """Write one RobustBench-style JSON file (``fmt="json"``) or per-sample CSV file (``"csv"``) per run."""
    from bench.report.export import export as export_runs

    folder = Path(out).resolve() if out else Workspace.resolve(home).root / "export"
    return export_runs(open_store(store, home=home), entries(home=home) if fmt == "json" else {}, folder, fmt)


@_one_error_type
def demo_plan(entry_ids: Sequence[str], protocol: str, budget: str = "quick", seed: int = 0, *,
              home: str | os.PathLike[str] | None = None) -> dict[Task, set[Task]]:
    """The demo's tasks (train, evaluate each chunk, check), each with the tasks it waits for."""
    ws = Workspace.resolve(home)
    for entry_id in entry_ids:
        jobs.lookup(ws, entry_id)
    return plan(ws, list(entry_ids), protocol, budget, seed)


def _executor(name: str) -> None:
    """A known executor whose package is installed, else a one-line error."""
    if name not in EXECUTORS:
        raise BenchError(f"unknown executor {name!r}: local (this machine's process pool) or ray")
    if name == "ray":
        from bench.orchestration.ray_executor import ray_module

        ray_module()


@_one_error_type
def run_on_ray(entry_ids: Sequence[str], protocol: str, *, budget: str = "quick", seed: int = 0,
               home: str | os.PathLike[str] | None = None, db: str | None = None, data_dir: str | None = None,
               device: str = "cpu", download: bool = False, escalation: bool = True, checks: bool = True,
               start: int = 0, stop: int | None = None, address: str | None = None, threads: int = 1,
               on_done: TaskFn | None = None) -> dict[str, int]:
    """Run the plan of ``entry_ids`` on Ray (:mod:`bench.orchestration.ray_executor`): the cluster at
    ``address``, else a local one. ``start``/``stop`` keep the chunks of a slice (the checks run only on
    a whole run, and only with ``checks``). Returns each entry's run id."""
    _executor("ray")
    from bench.orchestration.ray_executor import run_ray

    if threads < 1:
        raise BenchError("--task-threads must be >= 1")
    from bench.engine.evaluate import check_slice

    proto = get_protocol(protocol)
    start, stop = check_slice(proto, start, stop)
    whole = start == 0 and stop == proto.n_samples
    tasks = {t: needs for t, needs in demo_plan(entry_ids, protocol, budget, seed, home=home).items()
             if (t.kind != "evaluate" or start <= t.start < stop) and (t.kind != "check" or (checks and whole))}
    tasks = {t: {n for n in needs if n in tasks} for t, needs in tasks.items()}
    ws = Workspace.resolve(home)
    open_store(db, home=home)  # creates or upgrades the schema once, before the workers open it
    ctx = PoolContext(str(ws.root), db, protocol, data_dir, device, threads, download, escalation)
    done = run_ray(tasks, ctx, address, on_done)
    return {t.entry_id: run_id for t, run_id in done.items() if t.kind == "evaluate" and run_id is not None}


@_one_error_type
def demo(entry_ids: Sequence[str] | None = None, *, protocol: str = "mnist-linf-quick-v1", budget: str = "quick",
         seed: int = 0, jobs_: int = 0, home: str | os.PathLike[str] | None = None, db: str | None = None,
         data_dir: str | None = None, device: str = "cpu", download: bool = False, escalation: bool = True,
         executor: str = "local", ray_address: str | None = None, task_threads: int = 1,
         on_start: Callable[[int, str, int], None] | None = None,
         on_done: TaskFn | None = None) -> DemoResult:
    """Train, evaluate and check entries (default: the demo's four), then build the site.

    The plan runs on ``jobs_`` worker processes (0: the default rule of
    :func:`bench.orchestration.pool.default_jobs`), or in this process when that is 1: the same
    task code either way. With ``executor="ray"`` it runs on Ray instead (:func:`run_on_ray`), each task
    with ``task_threads`` torch threads. ``on_start(tasks, where, threads)`` is called once before the
    work. An entry its checks flag unreliable is escalated by its check task, unless ``escalation`` is off.
    """
    from registry import DEMO_ENTRIES

    _executor(executor)
    if jobs_ < 0:
        raise BenchError("--jobs must be >= 0")
    ids = list(entry_ids) if entry_ids else list(DEMO_ENTRIES)
    tasks = demo_plan(ids, protocol, budget, seed, home=home)
    ws = Workspace.resolve(home)
    st = open_store(db, home=home)  # creates or upgrades the schema once: workers opening a new database would race
    if executor == "ray":
        if on_start is not None:
            on_start(len(tasks), f"on Ray ({ray_address or 'a local cluster'})", task_threads)
        run_ids = run_on_ray(ids, protocol, budget=budget, seed=seed, home=home, db=db or st.url,
                             data_dir=data_dir, device=device, download=download, escalation=escalation,
                             address=ray_address, threads=task_threads, on_done=on_done)
    else:
        n = jobs_ or default_jobs(device, len(ids))
        if n > 1 and normalize_url(db or ws.db_url) in ("sqlite://", "sqlite:///:memory:"):
            n = 1  # an in-memory database lives in one process
        threads = max(1, usable_cpus() // n) if n > 1 else torch.get_num_threads()  # in-process: as it is set
        ctx = PoolContext(str(ws.root), db, protocol, data_dir, device, threads, download, escalation)
        if on_start is not None:
            on_start(len(tasks), "in this process" if n == 1 else f"on {n} worker processes", threads)
        done = run_plan(tasks, ctx, n, on_done=on_done, store=st)
        run_ids = {t.entry_id: run_id for t, run_id in done.items() if t.kind == "check" and run_id is not None}
    reports = {e: report(run_ids[e], store=st) for e in ids}
    return DemoResult(reports, leaderboard(store=st, home=home))
