"""Run the plan's tasks on a Ray cluster (``--executor ray``): the same tasks as the local process pool
(:mod:`bench.orchestration.pool`), run by the same ``_run_task``, so both give the same per-sample rows.

- **Resources.** Each task asks Ray for ``threads`` CPUs (its torch thread count) and, on a CUDA device,
  one GPU; Ray runs as many side by side as the cluster's resources allow.
- **Dependencies** are Ray object references: a task receives the references of the tasks it waits for
  as arguments, and Ray hands it their results. The driver submits a task once those are done and a
  slot is free (the cluster's CPUs over the task's threads, or its GPUs), the ready ones in the plan's
  order: the local pool's list schedule (longest first), which Ray's own order would not keep.
- **Retries.** A task whose worker dies (killed, out of memory, node lost) is run again by Ray (up to
  ``MAX_RETRIES`` times). That is safe because every (stage, chunk) is seeded and stored in one
  transaction: a retried evaluation resumes from the stages already stored, and a stage stored twice is
  refused by the database's unique keys (:meth:`bench.store.database.Store.write_stage`), so the run
  ends with exactly the rows of an uninterrupted one. An exception raised by the task's own code is
  not retried (it would fail again): it stops the run with its one-line message.
- **Artifacts across machines.** A worker on another host may not see the driver's workspace. So
  checkpoints travel through Ray's object store by content: a train task returns its checkpoint's
  bytes and sha256 (a checkpoint the driver already has is shipped to that train task, which then
  reuses it instead of training again), every task that needs it receives it as a dependency result,
  and the worker installs it into its own workspace, verifying the sha256 (a file already there must
  have the same sha256, else the task fails). The driver's submitted entries travel the same way.
  The database is shared (on several hosts: PostgreSQL), the dataset root must exist on every host
  (``--data-dir`` / ``$GAUNTLET_DATA_DIR``, or ``--download``), and a worker uses the workspace path
  ``$GAUNTLET_WORKER_HOME`` of its host, else the driver's ``--home`` path (a shared file system).
  Every worker must run the driver's code version (checked: the rows record it).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bench.errors import BenchError
from bench.models.checkpoints import file_sha256
from bench.orchestration.pool import PoolContext, Task
from bench.store.workspace import Workspace

MAX_RETRIES = 3
WORKER_HOME = "GAUNTLET_WORKER_HOME"
KILL_ONCE = "GAUNTLET_TEST_KILL_ONCE"  # tests: "<task label prefix>|<marker file>": die once, mid-task


@dataclass(frozen=True)
class Artifact:
    """A workspace file shipped to workers: its path under the workspace root, sha256 and bytes."""

    relpath: str
    sha256: str
    data: bytes

    @classmethod
    def of(cls, root: Path, path: Path) -> Artifact:
        data = path.read_bytes()
        return cls(path.relative_to(root).as_posix(), hashlib.sha256(data).hexdigest(), data)


@dataclass(frozen=True)
class TaskResult:
    """What a task hands to the driver and to the tasks waiting for it."""

    message: str
    run_id: int | None
    seconds: float
    artifacts: tuple[Artifact, ...] = ()


def install(root: Path, artifacts: list[Artifact]) -> None:
    """Put shipped files into the workspace at ``root``, verifying every sha256.

    A file already there (a shared workspace, or an earlier task on this host) must have the shipped
    sha256; a missing one is written atomically once its bytes are verified.
    """
    for a in artifacts:
        target = root / a.relpath
        if hashlib.sha256(a.data).hexdigest() != a.sha256:
            raise BenchError(f"shipped file {a.relpath} arrived damaged (sha256 mismatch); run the command again")
        if target.is_file():
            have = file_sha256(target)
            if have != a.sha256:
                raise BenchError(f"{target}: sha256 {have[:12]} differs from the {a.sha256[:12]} the driver "
                                 "shipped (a stale or damaged file on this worker: remove it)")
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
        partial.write_bytes(a.data)
        os.replace(partial, target)


def ray_module() -> Any:
    """The ``ray`` package, or a one-line error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise BenchError("--executor ray needs Ray: pip install -e '.[ray]'") from None
    return ray


def run_ray(deps: dict[Task, set[Task]], ctx: PoolContext, address: str | None = None,
            on_done: Callable[[Task, str, float], None] | None = None) -> dict[Task, int | None]:
    """Run the plan on Ray: the cluster at ``address``, else a local one started (and stopped) here.

    Returns each task's run id (None for training), as :func:`bench.orchestration.pool.run_plan` does.
    """
    ray = ray_module()
    from bench import code_version
    from bench.store.database import normalize_url

    started = not ray.is_initialized()
    if started:
        _init(ray, address)
    try:
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        url = normalize_url(ctx.db or Workspace.resolve(ctx.home).db_url)
        if url.startswith("sqlite") and len(nodes) > 1:
            raise BenchError(f"a cluster of {len(nodes)} nodes needs a database every node reaches: "
                             "--db postgresql+psycopg://...")
        if url in ("sqlite://", "sqlite:///:memory:"):
            raise BenchError("an in-memory database lives in one process: give --db for --executor ray")
        return _run(ray, deps, ctx, code_version(), on_done)
    finally:
        if started:
            ray.shutdown()


def _init(ray: Any, address: str | None) -> None:
    from bench.orchestration.pool import usable_cpus

    env = {k: v for k, v in os.environ.items() if k.startswith("GAUNTLET_")}
    try:
        if address:
            ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=False,
                     logging_level="ERROR")
        else:
            ray.init(num_cpus=usable_cpus(), include_dashboard=False, runtime_env={"env_vars": env},
                     log_to_driver=False, logging_level="ERROR")
    except ConnectionError as exc:
        raise BenchError(f"cannot reach the Ray cluster at {address}: {exc}".splitlines()[0]) from None


def _run(ray: Any, deps: dict[Task, set[Task]], ctx: PoolContext, version: str,
         on_done: Callable[[Task, str, float], None] | None) -> dict[Task, int | None]:
    ws = Workspace.resolve(ctx.home)
    submissions = ray.put([Artifact.of(ws.root, p) for p in sorted(ws.submissions.glob("*"))
                           if p.is_file()] if ws.submissions.is_dir() else [])
    remote = ray.remote(max_retries=MAX_RETRIES, retry_exceptions=False)(_remote_task)
    options = {"num_cpus": ctx.threads, "num_gpus": 1 if ctx.device.startswith("cuda") else 0}
    listed: set[Task] = set()
    for task, needs in deps.items():
        if not needs <= listed:
            raise BenchError(f"internal error: {task.label()} is listed before what it waits for")
        listed.add(task)

    def submit(task: Task) -> Any:
        shipped: list[Artifact] = []
        if task.kind == "train":  # a checkpoint the driver has is reused there, not trained again
            path = _checkpoint_of(ws, task, ctx.protocol)
            if path.is_file():
                shipped.append(Artifact.of(ws.root, path))
        upstream = sorted(_trainings(task, deps), key=Task.label)  # their checkpoints, as results
        return remote.options(**options).remote(
            task, ctx, version, submissions, shipped, *[refs[t] for t in upstream],
            *[refs[t] for t in sorted(deps[task] - set(upstream), key=Task.label)])

    # List scheduling as the local pool does it: a task is submitted once what it waits for is done and a
    # slot is free, the ready ones in the plan's order (longest first), so Ray runs the pool's schedule.
    # The slots are counted again before each submission: a node that joins the cluster mid-run gets work.
    def slots() -> int:
        return max(1, int(ray.cluster_resources().get("GPU" if options["num_gpus"] else "CPU", 1)
                          // max(options["num_gpus"] or ctx.threads, 1)))

    refs: dict[Task, Any] = {}
    waiting = dict(deps)
    running: dict[Any, Task] = {}
    done: dict[Task, int | None] = {}
    try:
        while waiting or running:
            for task in [t for t, needs in waiting.items() if needs <= done.keys()][: max(0, slots() - len(running))]:
                del waiting[task]
                refs[task] = submit(task)
                running[refs[task]] = task
            if not running:
                raise BenchError("internal error: tasks wait for each other: "
                                 + ", ".join(t.label() for t in waiting))
            ready, _ = ray.wait(list(running), num_returns=1)
            for ref in ready:
                task = running.pop(ref)
                result = _result(ray, ref, task)
                done[task] = result.run_id
                if on_done is not None:
                    on_done(task, result.message, result.seconds)
    except BaseException:
        for ref in running:
            ray.cancel(ref, force=True)
        raise
    return done


def _checkpoint_of(ws: Workspace, task: Task, protocol: str) -> Path:
    """The checkpoint file a train task writes or reuses in ``ws`` (the driver's or a worker's)."""
    from bench.models.checkpoints import checkpoint_path
    from bench.orchestration.jobs import lookup, trained_entry_id
    from bench.protocol.protocols import get_protocol

    entry = lookup(ws, trained_entry_id(ws, task.entry_id))
    return checkpoint_path(ws.checkpoints, entry, get_protocol(protocol).dataset, task.budget, task.seed)


def _trainings(task: Task, deps: dict[Task, set[Task]]) -> set[Task]:
    """The train tasks ``task`` waits for, directly or through others (their checkpoints it needs)."""
    found: set[Task] = set()
    for t in deps[task]:
        found |= {t} if t.kind == "train" else _trainings(t, deps)
    return found


def _result(ray: Any, ref: Any, task: Task) -> TaskResult:
    """A finished task's result, or its failure as a one-line BenchError."""
    from ray.exceptions import RayTaskError, TaskCancelledError, WorkerCrashedError

    try:
        return ray.get(ref)
    except RayTaskError as exc:
        cause = exc.cause if isinstance(exc.cause, BaseException) else exc
        message = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
        if isinstance(cause, BenchError):
            raise BenchError(message) from None
        raise BenchError(f"'{task.label()}' failed on the cluster: {type(cause).__name__}: {message}") from None
    except (WorkerCrashedError, TaskCancelledError) as exc:
        raise BenchError(f"a Ray worker died during '{task.label()}' ({MAX_RETRIES} retries spent: "
                         f"{type(exc).__name__}); stored results are kept, run the same command again to resume"
                         ) from None


def _remote_task(task: Task, ctx: PoolContext, version: str, submissions: list[Artifact],
                 shipped: list[Artifact], *upstream: TaskResult) -> TaskResult:
    """One task on a Ray worker: install what it needs, run it as the pool would, return its result."""
    import torch

    from bench import code_version
    from bench.orchestration.pool import _run_task
    from bench.protocol.data import allow_download

    t0 = time.perf_counter()
    if code_version() != version:
        raise BenchError(f"worker {os.uname().nodename} runs Gauntlet {code_version()}, the driver {version}: "
                         "install the same code on every node")
    ctx = replace(ctx, home=os.environ.get(WORKER_HOME) or ctx.home)
    ws = Workspace.resolve(ctx.home)
    install(ws.root, [*submissions, *shipped, *(a for r in upstream for a in r.artifacts)])
    torch.set_num_threads(ctx.threads)
    allow_download(ctx.download)
    message, run_id = _run_task(task, ctx, progress=_kill_once_hook(task))
    artifacts: tuple[Artifact, ...] = ()
    if task.kind == "train":  # its checkpoint, for the tasks on other hosts that need it
        artifacts = (Artifact.of(ws.root, _checkpoint_of(ws, task, ctx.protocol)),)
    return TaskResult(message, run_id, time.perf_counter() - t0, artifacts)


def _kill_once_hook(task: Task) -> Callable[[str, float, int, int], None] | None:
    """Tests only (``$GAUNTLET_TEST_KILL_ONCE``): end this worker process abruptly after the task's third
    stage, the first time a task with the given label prefix runs (a marker file remembers)."""
    spec = os.environ.get(KILL_ONCE)
    if not spec:
        return None
    prefix, marker = spec.split("|", 1)
    if not task.label().startswith(prefix) or Path(marker).exists():
        return None

    def die(label: str, eps: float, finished: int, total: int) -> None:
        if finished >= 3:
            Path(marker).write_text(f"killed {task.label()} after {label}@{eps}\n")
            os._exit(1)

    return die
