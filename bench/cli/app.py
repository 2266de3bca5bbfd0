"""The ``bench`` command line (typer). Bad input gives one line on stderr and exit code 1."""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bench.errors import AttackContractError, BenchError, user_errors
from bench.orchestration.jobs import resolve_target
from bench.store.workspace import Workspace

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Gauntlet: train, evaluate and rank adversarial-robustness defenses.")
out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)

HomeOpt = Annotated[str | None, typer.Option(
    "--home", help="Workspace folder (default $GAUNTLET_HOME or ./gauntlet-out).")]
DbOpt = Annotated[str | None, typer.Option("--db", help="SQLAlchemy URL or SQLite file (default: the workspace's).")]
DataOpt = Annotated[str | None, typer.Option(
    "--data-dir", help="Dataset root (default $GAUNTLET_DATA_DIR or ../shared/data).")]
DeviceOpt = Annotated[str, typer.Option("--device", help="torch device, e.g. cpu or cuda.")]
DownloadOpt = Annotated[bool, typer.Option("--download", help="Download missing datasets with torchvision.")]
CkptBudgetOpt = Annotated[str, typer.Option("--budget", help="Which trained checkpoint: its budget.")]
CkptSeedOpt = Annotated[int, typer.Option("--seed", help="Which trained checkpoint: its training seed.")]


def _fail(message: str, code: int = 1) -> None:
    err.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn expected failures into one-line messages and a non-zero exit (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except AttackContractError as exc:
            _fail(f"attack contract violated (a bug, results not stored): {exc}", 3)
        except KeyboardInterrupt:
            _fail("interrupted; stored results are kept, run the same command again to resume", 130)
        except Exception as exc:
            if isinstance(exc, user_errors()):
                _fail(str(exc))
            if os.environ.get("GAUNTLET_DEBUG"):
                raise
            _fail(f"internal error: {type(exc).__name__}: {exc}".splitlines()[0]
                  + " (set GAUNTLET_DEBUG=1 for a traceback)", 2)

    return wrapper


def _set_download(flag: bool) -> None:
    from bench.protocol.data import allow_download

    allow_download(flag)


def _ws(home: str | None) -> Workspace:
    return Workspace.resolve(home)


def _store(ws: Workspace, db: str | None):
    from bench.store.database import Store

    return Store(db or ws.db_url)


def _entries(ws: Workspace):
    from registry import all_entries

    return all_entries(ws.submissions)


def _entry(ws: Workspace, entry_id: str):
    from bench.orchestration.jobs import lookup

    return lookup(ws, entry_id)


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=err, transient=False,
                    disable=not err.is_terminal and not os.environ.get("GAUNTLET_PROGRESS"))


def _check_device(device: str) -> str:
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError:
        raise BenchError(f"unknown device {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BenchError("device cuda requested but no CUDA GPU is available")
    return device


@app.command()
@handle_errors
def entries(home: HomeOpt = None) -> None:
    """List registered entries (built-in and submitted) with their papers and claims."""
    ws = _ws(home)
    table = Table("id", "name", "kind", "datasets", "paper", "claims", title="Gauntlet entries")
    table.columns[0].no_wrap = True
    for e in _entries(ws).values():
        claims = "; ".join(c.short() for c in e.claims[:3])
        if len(e.claims) > 3:
            claims += f"; +{len(e.claims) - 3} more"
        table.add_row(escape(e.id), escape(e.name), e.kind, ", ".join(e.datasets), escape(e.paper.venue),
                      escape(claims) or "–")
    out.print(table)


def _do_train(ws: Workspace, entry_id: str, dataset: str, budget: str, seed: int, data_dir: str | None,
              device: str, force: bool) -> Any:
    from bench.models.checkpoints import train_entry
    from bench.orchestration.jobs import trained_entry_id

    model_id = trained_entry_id(ws, entry_id)
    if model_id != entry_id:  # a test-time or alternative-metric entry: train the model it wraps
        out.print(f"{entry_id} wraps {model_id}: training {model_id}")
        entry_id = model_id
    entry = _entry(ws, entry_id)
    with _progress() as prog:
        task = prog.add_task(f"train {entry_id} ({dataset}, {budget})", total=None)

        def on_step(step: int, total: int, loss: float) -> None:
            prog.update(task, completed=step, total=total, description=f"train {entry_id} loss {loss:.3f}")

        t0 = time.perf_counter()
        ckpt, reused = train_entry(entry, dataset, budget, seed, ws.checkpoints, data_dir, device, force, on_step)
    verb = "reused" if reused else f"trained in {time.perf_counter() - t0:.0f} s"
    out.print(f"{entry_id}: {verb}: {ckpt.path}", highlight=False, soft_wrap=True)
    return ckpt


@app.command()
@handle_errors
def train(
    entry: Annotated[str, typer.Argument(help="Entry id (see `bench entries`).")],
    dataset: Annotated[str, typer.Option(help="mnist or cifar10.")] = "mnist",
    budget: Annotated[str, typer.Option(help="paper, quick or tiny.")] = "quick",
    seed: Annotated[int, typer.Option(help="Training seed.")] = 0,
    force: Annotated[bool, typer.Option(help="Retrain even if a checkpoint exists.")] = False,
    home: HomeOpt = None, data_dir: DataOpt = None, device: DeviceOpt = "cpu",
    download: DownloadOpt = False,
) -> None:
    """Train an entry with its recipe and write a safetensors checkpoint (reused when it exists)."""
    _set_download(download)
    from bench.protocol.data import dataset_info

    dataset_info(dataset)
    _do_train(_ws(home), entry, dataset, budget, seed, data_dir, _check_device(device), force)


def _do_evaluate(ws: Workspace, db: str | None, entry_id: str, protocol_name: str, budget: str, seed: int,
                 checkpoint: str | None, data_dir: str | None, device: str, start: int, stop: int | None,
                 batch_size: int | None, checks: bool = True) -> int:
    from bench.engine.evaluate import evaluate
    from bench.models.surrogates import WorkspaceSurrogates

    if batch_size is not None and batch_size < 1:
        raise BenchError("--batch-size must be >= 1")
    protocol, target = resolve_target(ws, entry_id, protocol_name, budget, seed, checkpoint)
    store = _store(ws, db)
    with _progress() as prog:
        task = prog.add_task(f"evaluate {entry_id} on {protocol_name}", total=None)

        def progress(label: str, eps: float, done: int, total: int) -> None:
            prog.update(task, completed=done, total=total, description=f"evaluate {entry_id}: {label}@{eps:.4g}")

        surrogates = WorkspaceSurrogates(ws.checkpoints, ws.cache, protocol.dataset, lambda i: _entry(ws, i),
                                         data_dir, device, on_train=lambda msg: prog.console.print(msg))
        run_id = evaluate(store, target, protocol, data_dir=data_dir, start=start, stop=stop, device=device,
                          batch_size=batch_size, progress=progress, surrogates=surrogates)
    if checks and start == 0 and stop is None:
        _do_checks(store, run_id, target.model, data_dir, device, batch_size, force=False)
    return run_id


def _do_checks(store: Any, run_id: int, model: Any, data_dir: str | None, device: str,
               batch_size: int | None, force: bool = True) -> None:
    """Run (or, unless ``force``, reuse when stored under the current suite) a run's sanity checks."""
    from bench.orchestration.jobs import check_run

    t0 = time.perf_counter()
    with _progress() as prog:
        task = prog.add_task(f"checks of run {run_id}", total=None)
        report = check_run(store, run_id, model, data_dir=data_dir, device=device, batch_size=batch_size,
                           force=force, progress=lambda label: prog.update(task, description=f"checks: {label}"))
    out.print(f"checks of run {run_id} ({time.perf_counter() - t0:.0f} s): {report}", highlight=False, markup=False)


def _print_summary(ws: Workspace, db: str | None, run_id: int) -> None:
    from bench.report.summary import summarize

    store = _store(ws, db)
    run = next(r for r in store.runs() if r.id == run_id)
    s = summarize(store, run)
    worst = ", ".join(f"{e:.4g}: {s.worst[e]:.1f}" for e in s.epsilons if e in s.worst)
    out.print(f"{run.entry_id} on {run.protocol} (run {run.id}, {s.n_evaluated}/{run.n_samples} samples): "
              f"clean {s.clean_acc:.1f}%, worst case per eps {{{worst}}}", highlight=False)


@app.command()
@handle_errors
def evaluate(
    entry: Annotated[str, typer.Argument(help="Entry id.")],
    protocol: Annotated[str, typer.Option(help="Protocol name, e.g. mnist-linf-quick-v1.")] = "mnist-linf-quick-v1",
    budget: CkptBudgetOpt = "quick",
    seed: CkptSeedOpt = 0,
    checkpoint: Annotated[str | None, typer.Option(help="Evaluate this checkpoint file instead.")] = None,
    start: Annotated[int, typer.Option(help="First sample of the slice (chunk-aligned).")] = 0,
    stop: Annotated[int | None, typer.Option(help="End of the slice (default: all samples).")] = None,
    batch_size: Annotated[int | None, typer.Option(
        help="Attack mini-batch (memory only; results do not change).")] = None,
    checks: Annotated[bool, typer.Option(help="Run the sanity checks once the run is complete.")] = True,
    home: HomeOpt = None, db: DbOpt = None, data_dir: DataOpt = None, device: DeviceOpt = "cpu",
    download: DownloadOpt = False,
) -> None:
    """Evaluate an entry under a protocol; resumable (run it again after an interruption)."""
    _set_download(download)
    ws = _ws(home)
    run_id = _do_evaluate(ws, db, entry, protocol, budget, seed, checkpoint, data_dir, _check_device(device),
                          start, stop, batch_size, checks)
    _print_summary(ws, db, run_id)


@app.command()
@handle_errors
def check(
    entry: Annotated[str, typer.Argument(help="Entry id.")],
    protocol: Annotated[str, typer.Option(help="Protocol name of the stored run.")] = "mnist-linf-quick-v1",
    budget: CkptBudgetOpt = "quick",
    seed: CkptSeedOpt = 0,
    checkpoint: Annotated[str | None, typer.Option(help="The checkpoint file the run evaluated.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Probe mini-batch (memory only).")] = None,
    home: HomeOpt = None, db: DbOpt = None, data_dir: DataOpt = None, device: DeviceOpt = "cpu",
) -> None:
    """(Re-)run the sanity checks of a complete stored run and store them with their evidence."""
    ws = _ws(home)
    proto, target = resolve_target(ws, entry, protocol, budget, seed, checkpoint)
    store = _store(ws, db)
    run = next((r for r in store.runs() if r.entry_id == entry and r.fingerprint == proto.fingerprint
                and r.checkpoint_sha256 == target.weights_sha256), None)
    if run is None:
        raise BenchError(f"no stored run of {entry} on {protocol} with these weights; run `bench evaluate` first")
    _do_checks(store, run.id, target.model, data_dir, _check_device(device), batch_size)


@app.command()
@handle_errors
def leaderboard(
    out_dir: Annotated[str | None, typer.Option("--out", help="Output folder (default: workspace/site).")] = None,
    home: HomeOpt = None, db: DbOpt = None,
) -> None:
    """Build the static leaderboard site from the database and print the path of index.html."""
    from leaderboard import build_site

    ws = _ws(home)
    index = build_site(_store(ws, db), Path(out_dir).resolve() if out_dir else ws.site, _entries(ws))
    out.print(f"leaderboard: {index}", highlight=False, soft_wrap=True)


@app.command("export")
@handle_errors
def export_cmd(
    fmt: Annotated[str, typer.Option("--format", help="json (RobustBench-style model info, one file per run) "
                                                      "or csv (every per-sample row, one file per run).")] = "json",
    out_dir: Annotated[str | None, typer.Option("--out", help="Output folder (default: workspace/export).")] = None,
    home: HomeOpt = None, db: DbOpt = None,
) -> None:
    """Export every stored run as RobustBench-style JSON or per-sample CSV files."""
    from bench.report.export import export

    ws = _ws(home)
    folder = Path(out_dir).resolve() if out_dir else ws.root / "export"
    paths = export(_store(ws, db), _entries(ws) if fmt == "json" else {}, folder, fmt)
    out.print(f"exported {len(paths)} {fmt} file(s) to {folder}", highlight=False, soft_wrap=True)


@app.command()
@handle_errors
def show(entry: Annotated[str, typer.Argument(help="Entry id.")], home: HomeOpt = None, db: DbOpt = None) -> None:
    """Show an entry's declaration and its stored evaluations (per attack and epsilon)."""
    from bench.report.summary import summarize

    ws = _ws(home)
    e = _entry(ws, entry)
    out.print(f"[bold]{escape(e.name)}[/bold] ({e.id}, {e.kind}) — {escape(e.paper.title)}, {escape(e.paper.venue)}")
    out.print(e.description, highlight=False, markup=False)
    out.print(f"datasets: {', '.join(f'{d} ({e.architecture_name(d)})' for d in e.datasets)}; "
              f"source: {e.source}", highlight=False)
    for c in e.claims:
        out.print(f"  claim: {c.short()}", highlight=False, markup=False)
    store = _store(ws, db)
    runs = [r for r in store.runs() if r.entry_id == e.id]
    if not runs:
        out.print("no stored evaluations")
    for run in runs:
        s = summarize(store, run)
        table = Table("attack", *[f"eps {x:.4g}" for x in s.epsilons],
                      title=f"{run.protocol} run {run.id} (budget {run.budget}, {s.n_evaluated}/{run.n_samples} "
                            f"samples, clean {s.clean_acc:.1f}%)")
        for a in s.attack_labels:
            table.add_row(a, *[f"{s.accuracy(a, x):.1f}" if s.accuracy(a, x) is not None else "–" for x in s.epsilons])
        table.add_row("worst case", *[f"{s.worst[x]:.1f}" if x in s.worst else "–" for x in s.epsilons])
        if s.detector is not None:
            for a in s.attack_labels:
                table.add_row(f"AUC {a}", *[f"{s.detection_auc[(a, x)][0]:.1f}" if (a, x) in s.detection_auc else "–"
                                            for x in s.epsilons])
        out.print(table)
        if s.detector is not None:
            out.print(f"detector: threshold {s.detector['threshold']:.6g} ({s.detector['metric']}) at "
                      f"{100 * s.detector['fpr']:.1f}% FPR on {s.detector['calibration']}; clean rejection rate "
                      f"{s.clean_rejection_rate:.1f}% (counted as errors)", highlight=False, markup=False)


@app.command()
@handle_errors
def submit(file: Annotated[str, typer.Argument(help="Python file defining ENTRY or ENTRIES.")],
           home: HomeOpt = None) -> None:
    """Register a defense declared in a Python file (then train/evaluate/show it like a built-in)."""
    from registry import submit_file

    ws = _ws(home)
    existing = set(_entries(ws))
    for e in submit_file(Path(file), ws.submissions):
        verb = "updated" if e.id in existing else "submitted"
        out.print(f"{verb} {e.id} ({e.name}) -> {e.source}", highlight=False, markup=False)


def _run_tasks(ws: Workspace, db: str | None, tasks: dict, protocol: str, data_dir: str | None, device: str,
               jobs: int, download: bool) -> dict[str, int]:
    """Run a :func:`bench.orchestration.pool.plan` on ``jobs`` processes; returns each checked entry's run id."""
    from bench.orchestration.pool import PoolContext, run_pool, usable_cpus

    _store(ws, db)  # create or upgrade the schema here, once: workers opening a new database together would race
    threads = max(1, usable_cpus() // jobs)
    ctx = PoolContext(str(ws.root), db, protocol, data_dir, device, threads, download)
    out.print(f"{len(tasks)} tasks on {jobs} worker processes, {threads} torch thread(s) each", highlight=False)
    with _progress() as prog:
        bar = prog.add_task("demo", total=len(tasks))

        def on_done(task: Any, message: str, seconds: float) -> None:
            console = prog.console if prog.live.is_started else out
            console.print(f"{task.label()} ({seconds:.0f} s): {message}", highlight=False, markup=False,
                          soft_wrap=True)
            prog.advance(bar)

        done = run_pool(tasks, ctx, jobs, on_done=on_done)
    return {t.entry_id: run_id for t, run_id in done.items() if t.kind == "check" and run_id is not None}


@app.command()
@handle_errors
def demo(
    budget: Annotated[str, typer.Option(help="Training budget for the demo entries.")] = "quick",
    protocol: Annotated[str, typer.Option(help="Evaluation protocol.")] = "mnist-linf-quick-v1",
    entries_: Annotated[str | None, typer.Option(
        "--entries", help="Comma-separated entry ids, or 'all' (every registered entry with a model for the "
                          "protocol's dataset).")] = None,
    seed: Annotated[int, typer.Option(help="Training seed.")] = 0,
    jobs: Annotated[int, typer.Option(
        "--jobs", "-j", help="Worker processes: 0 = one per CPU for at least two entries each (at most 8) on a "
                             "CPU device, one on a GPU. With more than one, training, evaluation chunks and "
                             "checks run side by side, one torch thread per process.")] = 0,
    home: HomeOpt = None, db: DbOpt = None, data_dir: DataOpt = None, device: DeviceOpt = "cpu",
    download: DownloadOpt = False,
) -> None:
    """The main job: train the demo entries on MNIST, evaluate them, run their checks, build the leaderboard."""
    _set_download(download)
    from bench.protocol.protocols import get_protocol
    from leaderboard import build_site
    from registry import DEMO_ENTRIES

    ws = _ws(home)
    device = _check_device(device)
    proto = get_protocol(protocol)
    if entries_ == "all":
        ids = [e.id for e in _entries(ws).values() if proto.dataset in e.architectures and e.id != "surrogate-pgd"]
    else:
        ids = [x.strip() for x in entries_.split(",")] if entries_ else list(DEMO_ENTRIES)
    for entry_id in ids:
        _entry(ws, entry_id)
    if jobs < 0:
        raise BenchError("--jobs must be >= 0")
    from bench.orchestration.pool import default_jobs, plan

    tasks = plan(ws, ids, protocol, budget, seed)
    jobs = jobs or default_jobs(device, len(ids))
    from bench.store.database import normalize_url

    if jobs > 1 and normalize_url(db or ws.db_url) in ("sqlite://", "sqlite:///:memory:"):
        jobs = 1  # an in-memory database lives in one process
    t0 = time.perf_counter()
    if jobs == 1:
        for entry_id in ids:
            _do_train(ws, entry_id, proto.dataset, budget, seed, data_dir, device, False)
        for entry_id in ids:
            run_id = _do_evaluate(ws, db, entry_id, protocol, budget, seed, None, data_dir, device, 0, None, None)
            _print_summary(ws, db, run_id)
    else:
        run_ids = _run_tasks(ws, db, tasks, protocol, data_dir, device, jobs, download)
        for entry_id in ids:
            _print_summary(ws, db, run_ids[entry_id])
    index = build_site(_store(ws, db), ws.site, _entries(ws))
    out.print(f"demo finished in {time.perf_counter() - t0:.0f} s", highlight=False)
    out.print(f"leaderboard: {index}", highlight=False, soft_wrap=True)


@app.command()
@handle_errors
def perf(
    entry: Annotated[str, typer.Option(help="Entry whose model is timed (its checkpoint if trained, "
                                            "else an untrained model of its architecture).")] = "madry-pgd-at",
    dataset: Annotated[str, typer.Option()] = "mnist",
    batch: Annotated[int, typer.Option(help="Number of test images.")] = 100,
    eps: Annotated[float, typer.Option()] = 0.3,
    budget: Annotated[str, typer.Option()] = "quick",
    full_aa: Annotated[bool, typer.Option(help="Time AutoAttack's full standard budgets, not the quick ones.")] = False,
    home: HomeOpt = None, data_dir: DataOpt = None, device: DeviceOpt = "cpu",
    download: DownloadOpt = False,
) -> None:
    """Performance probe: attack time over (passes x one forward+backward), and ours vs pyautoattack."""
    _set_download(download)
    from bench.engine.perf import run_perf

    ws = _ws(home)
    from bench.protocol.protocols import FULL_AA, QUICK_AA

    params = {k: v for k, v in (FULL_AA if full_aa else QUICK_AA).items() if k != "version"}
    run_perf(_entry(ws, entry), dataset, batch, eps, budget, ws, data_dir, _check_device(device), out, params)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:  # pragma: no cover
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
