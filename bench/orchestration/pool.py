"""Run the plan's train / evaluate / check tasks: in this process (one job) or in worker processes,
each with its own torch threads. Both run every task through the same ``_run_task``.

Why a pool: torch's intra-op threads do not scale linearly on MNIST-sized work (on a 2-core machine the
demo's training and attacks run about 1.6x faster on two threads than on one), while separate
one-thread processes do. So ``bench demo`` splits its work into a small dependency graph and runs
it on a process pool:

- ``train(e)`` for every model the entries use (a wrapped entry trains the model it wraps) and
  for the protocol's transfer surrogates;
- ``evaluate(e, slice)`` for each of the protocol's chunks, once ``e``'s model (and every
  surrogate) is trained;
- ``check(e)`` once all of ``e``'s slices are stored.

Every (stage, chunk) of the engine is seeded and committed per chunk, so slices evaluated in any
order or process merge into the rows of one run (``tests/test_engine.py``); the database takes
concurrent writers (run creation, stage inserts and detector calibration are first-writer-wins).
A worker's failure stops the pool at once and is re-raised in the parent; what was stored stays.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import get_context
from typing import Any

from bench.errors import BenchError
from bench.store.workspace import Workspace


@dataclass(frozen=True)
class Task:
    """One unit of work: train a model, evaluate a chunk-aligned slice of a run, or check a run."""

    kind: str  # "train" | "evaluate" | "check"
    entry_id: str
    budget: str
    seed: int
    start: int = 0
    stop: int | None = None

    def label(self) -> str:
        if self.kind == "evaluate":
            return f"evaluate {self.entry_id} [{self.start}:{self.stop}]"
        return f"{self.kind} {self.entry_id}"


@dataclass(frozen=True)
class PoolContext:
    """What every worker needs to rebuild the parent's view: workspace, database, data, protocol."""

    home: str
    db: str | None
    protocol: str
    data_dir: str | None
    device: str
    threads: int
    download: bool = False
    escalation: bool = True


def usable_cpus() -> int:
    """CPUs this process may run on (the affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


def default_jobs(device: str, n_entries: int) -> int:
    """One process per CPU for at least two entries each (at most 8: each holds a copy of the data);
    one for a GPU device.

    With fewer entries a one-thread process is left alone with a long training on the critical
    path: on 2 cores the pool ran the 2-entry demo 0.85x as fast as one two-thread process
    (``PERF_DEMO_ARGS="--entries standard,trades" python tasks.py perf-demo``).
    """
    if not device.startswith("cpu"):
        return 1
    return max(1, min(usable_cpus(), 8, n_entries // 2))


def plan(ws: Workspace, entry_ids: list[str], protocol_name: str, budget: str, seed: int) -> dict[Task, set[Task]]:
    """The demo's tasks, each with the tasks it waits for, in the order they should start.

    Longest first, as a list scheduler should: trainings, then evaluation slices, then checks,
    each by the entry's training cost (see :func:`training_cost`).
    """
    from bench.orchestration.jobs import needs_training, surrogate_keys, trained_entry_id
    from bench.protocol.protocols import get_protocol

    protocol = get_protocol(protocol_name)
    model_of = {e: trained_entry_id(ws, e) for e in entry_ids}
    cost = {m: training_cost(ws, m, protocol.dataset, budget) for m in model_of.values()}
    # Longest first (a model slow to train is usually slow to attack: robust models keep more survivors
    # for the expensive attacks), so that no long task is left alone at the end.
    entry_ids = sorted(entry_ids, key=lambda e: -cost[model_of[e]])
    surrogates = [Task("train", e, b, s) for e, b, s in surrogate_keys(protocol)]  # every evaluation waits for them
    deps: dict[Task, set[Task]] = {t: set() for t in surrogates}
    trains: dict[str, Task] = {}
    for entry_id in entry_ids:
        model_id = model_of[entry_id]
        if needs_training(ws, model_id):  # a pretrained model is evaluated as it is
            trains.setdefault(model_id, Task("train", model_id, budget, seed))
            deps.setdefault(trains[model_id], set())
    slices = {e: [Task("evaluate", e, budget, seed, c0, min(c0 + protocol.chunk_size, protocol.n_samples))
                  for c0 in range(0, protocol.n_samples, protocol.chunk_size)] for e in entry_ids}
    for entry_id in entry_ids:
        trained = {trains[model_of[entry_id]]} if model_of[entry_id] in trains else set()
        for task in slices[entry_id]:
            deps[task] = {*trained, *surrogates}
    for entry_id in entry_ids:  # after every evaluation: the short checks fill the pool's last gaps
        deps[Task("check", entry_id, budget, seed)] = set(slices[entry_id])
    return deps


def training_cost(ws: Workspace, entry_id: str, dataset: str, budget: str) -> float:
    """A rough relative cost of training an entry: epochs x samples x (1 + training-attack steps)."""
    from bench.orchestration.jobs import lookup

    recipe = lookup(ws, entry_id).recipe
    b = recipe.budget(dataset, budget) if recipe is not None else None
    if b is None:
        return 0.0
    return b.epochs * (b.train_samples or 60_000) * (1 + b.attack_steps)


def run_plan(deps: dict[Task, set[Task]], ctx: PoolContext, jobs: int,
             on_done: Callable[[Task, str, float], None] | None = None, store: Any = None) -> dict[Task, int | None]:
    """Run the plan's tasks: in this process when ``jobs`` is 1, else on a process pool.

    Both run every task through :func:`_run_task`, so one worker in-process is the pool's code path.
    ``store`` serves the in-process tasks (needed for an in-memory database). Returns each task's run
    id (None for training).
    """
    if jobs == 1:
        return run_in_process(deps, ctx, on_done, store)
    return run_pool(deps, ctx, jobs, on_done)


def run_in_process(deps: dict[Task, set[Task]], ctx: PoolContext,
                   on_done: Callable[[Task, str, float], None] | None = None, store: Any = None
                   ) -> dict[Task, int | None]:
    """Run the tasks one by one in ``deps`` order (a plan lists dependencies first) in this process.

    One store serves every task (``store``, else the context's database), so an in-memory database works.
    """
    from bench.protocol.data import allow_download
    from bench.store.database import Store

    allow_download(ctx.download)  # as a pool worker's initializer does (threads: this process's, as set)
    store = store if store is not None else Store(ctx.db or Workspace.resolve(ctx.home).db_url)
    done: dict[Task, int | None] = {}
    for task, needs in deps.items():
        if not needs <= done.keys():
            raise BenchError(f"internal error: {task.label()} is listed before what it waits for")
        t0 = time.perf_counter()
        message, run_id = _run_task(task, ctx, store)
        done[task] = run_id
        if on_done is not None:
            on_done(task, message, time.perf_counter() - t0)
    return done


def run_pool(deps: dict[Task, set[Task]], ctx: PoolContext, jobs: int,
             on_done: Callable[[Task, str, float], None] | None = None) -> dict[Task, int | None]:
    """Run the tasks on ``jobs`` spawned processes, a task as soon as its dependencies are done.

    Returns each task's run id (None for training). Ready tasks start in ``deps`` order.
    """
    pending = dict(deps)
    done: dict[Task, int | None] = {}
    running: dict[Future, tuple[Task, float]] = {}
    pool = ProcessPoolExecutor(jobs, mp_context=get_context("spawn"), initializer=_init_worker,
                               initargs=(ctx.threads, ctx.download))
    try:
        while pending or running:
            ready = [t for t, needs in pending.items() if needs <= done.keys()]
            for task in ready[: jobs - len(running)]:
                del pending[task]
                running[pool.submit(_run_task, task, ctx)] = (task, time.perf_counter())
            if not running:
                raise BenchError("internal error: tasks wait for each other: "
                                 + ", ".join(t.label() for t in pending))
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                task, t0 = running.pop(future)
                try:
                    message, run_id = future.result()  # a worker's exception is raised here
                except BrokenProcessPool:
                    raise BenchError(f"a worker process died during '{task.label()}' (out of memory? try fewer "
                                     "--jobs); stored results are kept, run the same command again to resume") \
                        from None
                done[task] = run_id
                if on_done is not None:
                    on_done(task, message, time.perf_counter() - t0)
    except BaseException:
        _stop_now(pool)
        raise
    pool.shutdown(wait=True)
    return done


def _stop_now(pool: ProcessPoolExecutor) -> None:
    """Cancel queued tasks and end running workers now (their finished stages are already stored)."""
    pool.shutdown(wait=False, cancel_futures=True)
    # ProcessPoolExecutor has no public way to end busy workers before Python 3.14's terminate_workers().
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        process.terminate()


def _init_worker(threads: int, download: bool) -> None:
    import torch

    from bench.protocol.data import allow_download

    torch.set_num_threads(threads)
    allow_download(download)


def _run_task(task: Task, ctx: PoolContext, store: Any = None,
              progress: Callable[[str, float, int, int], None] | None = None) -> tuple[str, int | None]:
    """Do one task (in a worker, in-process or on Ray); returns a one-line report and the run id (None for
    training). ``progress`` hears an evaluation's stages as they are stored."""
    from bench.orchestration import jobs
    from bench.protocol.protocols import get_protocol

    ws = Workspace.resolve(ctx.home)
    if task.kind == "train":
        ckpt, reused = jobs.train(ws, task.entry_id, get_protocol(ctx.protocol).dataset, task.budget, task.seed,
                                  data_dir=ctx.data_dir, device=ctx.device)
        return f"{'reused' if reused else 'trained'}: {ckpt.path.name}", None

    from bench.store.database import Store

    store = store if store is not None else Store(ctx.db or ws.db_url)
    protocol, target = jobs.resolve_target(ws, task.entry_id, ctx.protocol, task.budget, task.seed)
    if task.kind == "evaluate":
        run_id = jobs.evaluate_target(ws, store, protocol, target, data_dir=ctx.data_dir, device=ctx.device,
                                      start=task.start, stop=task.stop, progress=progress)
        return f"run {run_id}: samples {task.start}:{task.stop} stored", run_id
    if task.kind == "check":
        run = jobs.run_of(store, protocol, target)
        report = jobs.check_run(store, run.id, target.model, data_dir=ctx.data_dir, device=ctx.device, force=False,
                                ws=ws, escalation=ctx.escalation)
        return f"checks of run {run.id}: {report}", run.id
    raise BenchError(f"unknown task kind {task.kind!r}")
