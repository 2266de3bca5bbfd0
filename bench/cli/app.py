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
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from bench import api
from bench.errors import AttackContractError, BenchError, user_errors
from bench.report.run_report import RunReport
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
ExecutorOpt = Annotated[str, typer.Option(
    "--executor", help="Where the plan's tasks run: local (this machine's process pool) or ray (pip install "
                       "-e '.[ray]').")]
RayAddressOpt = Annotated[str | None, typer.Option(
    "--ray-address", help="With --executor ray: the cluster's address (e.g. head-node:6379; default: start a "
                          "local cluster).")]
TaskThreadsOpt = Annotated[int, typer.Option(
    "--task-threads", help="With --executor ray: torch threads (= Ray CPUs) of each task.")]
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


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=err, transient=False,
                    disable=not err.is_terminal and not os.environ.get("GAUNTLET_PROGRESS"))


def _stage_progress(prog: Progress, task: TaskID, prefix: str) -> Callable[[str, float, int, int], None]:
    """The progress callback of an evaluation: the bar follows the samples done in the current stage."""

    def progress(label: str, eps: float, done: int, total: int) -> None:
        prog.update(task, completed=done, total=total, description=f"{prefix}: {label}@{eps:.4g}")

    return progress


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
    table = Table("id", "name", "kind", "datasets", "paper", "claims", title="Gauntlet entries")
    table.columns[0].no_wrap = True
    for e in api.entries(home=home).values():
        claims = "; ".join(c.short() for c in e.claims[:3])
        if len(e.claims) > 3:
            claims += f"; +{len(e.claims) - 3} more"
        table.add_row(escape(e.id), escape(e.name), e.kind, ", ".join(e.datasets), escape(e.paper.venue),
                      escape(claims) or "–")
    out.print(table)


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
    device = _check_device(device)
    with _progress() as prog:
        task = prog.add_task(f"train {entry} ({dataset}, {budget})", total=None)

        def on_step(step: int, total: int, loss: float) -> None:
            prog.update(task, completed=step, total=total, description=f"train {entry} loss {loss:.3f}")

        t0 = time.perf_counter()
        trained = api.train(entry, dataset, budget, seed, home=home, data_dir=data_dir, device=device, force=force,
                            on_step=on_step)
    if trained.entry_id != entry:
        out.print(f"{entry} wraps {trained.entry_id}: trained {trained.entry_id}", highlight=False)
    verb = "reused" if trained.reused else f"trained in {time.perf_counter() - t0:.0f} s"
    out.print(f"{trained.entry_id}: {verb}: {trained.path}", highlight=False, soft_wrap=True)


def _print_task(task: Any, message: str, seconds: float) -> None:
    out.print(f"{task.label()} ({seconds:.0f} s): {message}", highlight=False, markup=False, soft_wrap=True)


def _print_checks(run_id: int, message: str, seconds: float) -> None:
    out.print(f"checks of run {run_id} ({seconds:.0f} s): {message}", highlight=False, markup=False)


def _print_report(r: RunReport) -> None:
    worst = ", ".join(f"{e:.4g}: {w:.1f}" for e, w in sorted(r.worst_case.items()))
    n_evaluated = r.summary.n_evaluated
    out.print(f"{r.entry_id} on {r.protocol} (run {r.run_id}, {n_evaluated}/{r.n_samples} samples): "
              f"clean {r.clean_accuracy:.1f}%, worst case per eps {{{worst}}}", highlight=False)


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
    escalation: Annotated[bool, typer.Option(
        help="Escalate a run the checks flag unreliable (stronger attacks at every eps; see the README).")] = True,
    executor: ExecutorOpt = "local", ray_address: RayAddressOpt = None, task_threads: TaskThreadsOpt = 1,
    home: HomeOpt = None, db: DbOpt = None, data_dir: DataOpt = None, device: DeviceOpt = "cpu",
    download: DownloadOpt = False,
) -> None:
    """Evaluate an entry under a protocol; resumable (run it again after an interruption)."""
    _set_download(download)
    device = _check_device(device)
    if executor != "local":  # the entry's plan (train if needed, each chunk, checks) on Ray
        report = api.evaluate(entry, protocol, store=db, home=home, checks=checks, escalation=escalation,
                              budget=budget, seed=seed, checkpoint=checkpoint, start=start, stop=stop,
                              data_dir=data_dir, device=device, executor=executor, ray_address=ray_address,
                              task_threads=task_threads, on_task=_print_task)
        _print_report(report)
        return
    with _progress() as prog:
        task = prog.add_task(f"evaluate {entry} on {protocol}", total=None)

        progress = _stage_progress(prog, task, f"evaluate {entry}")

        def check_progress(label: str) -> None:
            prog.update(task, description=f"checks: {label}")

        report = api.evaluate(entry, protocol, store=db, home=home, checks=checks, escalation=escalation,
                              budget=budget, seed=seed,
                              checkpoint=checkpoint, start=start, stop=stop, data_dir=data_dir, device=device,
                              batch_size=batch_size, progress=progress, check_progress=check_progress,
                              on_train=lambda msg: prog.console.print(msg), on_checks=_print_checks)
    _print_report(report)


@app.command()
@handle_errors
def check(
    entry: Annotated[str, typer.Argument(help="Entry id.")],
    protocol: Annotated[str, typer.Option(help="Protocol name of the stored run.")] = "mnist-linf-quick-v1",
    budget: CkptBudgetOpt = "quick",
    seed: CkptSeedOpt = 0,
    checkpoint: Annotated[str | None, typer.Option(help="The checkpoint file the run evaluated.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Probe mini-batch (memory only).")] = None,
    escalation: Annotated[bool, typer.Option(
        help="Escalate a run the checks flag unreliable (stronger attacks at every eps; see the README).")] = True,
    home: HomeOpt = None, db: DbOpt = None, data_dir: DataOpt = None, device: DeviceOpt = "cpu",
) -> None:
    """(Re-)run the sanity checks of a complete stored run and store them with their evidence."""
    device = _check_device(device)
    with _progress() as prog:
        task = prog.add_task(f"checks of {entry}", total=None)
        api.check(entry, protocol, store=db, home=home, budget=budget, seed=seed, checkpoint=checkpoint,
                  data_dir=data_dir, device=device, batch_size=batch_size, escalation=escalation,
                  progress=lambda label: prog.update(task, description=f"checks: {label}"), on_checks=_print_checks)


@app.command()
@handle_errors
def leaderboard(
    out_dir: Annotated[str | None, typer.Option("--out", help="Output folder (default: workspace/site).")] = None,
    from_records: Annotated[str | None, typer.Option(
        "--from", help="Build from the records in this folder (e.g. results/) instead of the database.")] = None,
    home: HomeOpt = None, db: DbOpt = None,
) -> None:
    """Build the static leaderboard site from the database (or from records) and print the path of index.html."""
    if from_records is not None and db is not None:
        _fail("--from and --db are exclusive: the site comes from the records or from a database")
    index = api.leaderboard(store=db, home=home, out=out_dir, from_records=from_records)
    out.print(f"leaderboard: {index}", highlight=False, soft_wrap=True)


@app.command()
@handle_errors
def record(
    entry: Annotated[str, typer.Argument(help="Entry id.")],
    protocol: Annotated[str, typer.Option(help="Protocol name, e.g. mnist-linf-quick-v1.")] = "mnist-linf-quick-v1",
    budget: CkptBudgetOpt = "quick",
    seed: CkptSeedOpt = 0,
    out_dir: Annotated[str, typer.Option("--out", help="Records folder.")] = "results",
    threads: Annotated[int, typer.Option(help="torch threads (records of record use 1: exactly reproducible).")] = 1,
    home: HomeOpt = None, db: DbOpt = None, data_dir: DataOpt = None,
) -> None:
    """Make or refresh an entry's record of results: train if needed, evaluate, check, escalate, write JSON."""
    import torch

    if threads < 1:
        _fail("--threads must be >= 1")
    torch.set_num_threads(threads)
    with _progress() as prog:
        task = prog.add_task(f"record {entry} on {protocol}", total=None)
        path = api.record(entry, protocol, budget=budget, seed=seed, out=out_dir, store=db, home=home,
                          data_dir=data_dir, progress=_stage_progress(prog, task, f"record {entry}"),
                          on_train=lambda msg: prog.console.print(msg))
    out.print(f"record: {path} ({path.stat().st_size / 1024:.0f} KiB)", highlight=False, soft_wrap=True)


@app.command("export")
@handle_errors
def export_cmd(
    fmt: Annotated[str, typer.Option("--format", help="json (RobustBench-style model info, one file per run) "
                                                      "or csv (every per-sample row, one file per run).")] = "json",
    out_dir: Annotated[str | None, typer.Option("--out", help="Output folder (default: workspace/export).")] = None,
    home: HomeOpt = None, db: DbOpt = None,
) -> None:
    """Export every stored run as RobustBench-style JSON or per-sample CSV files."""
    paths = api.export(fmt, store=db, home=home, out=out_dir)
    folder = paths[0].parent if paths else (Path(out_dir).resolve() if out_dir else Workspace.resolve(home).root
                                            / "export")
    out.print(f"exported {len(paths)} {fmt} file(s) to {folder}", highlight=False, soft_wrap=True)


@app.command()
@handle_errors
def show(entry: Annotated[str, typer.Argument(help="Entry id.")], home: HomeOpt = None, db: DbOpt = None) -> None:
    """Show an entry's declaration and its stored evaluations (per attack and epsilon)."""
    e = api.entry(entry, home=home)
    out.print(f"[bold]{escape(e.name)}[/bold] ({e.id}, {e.kind}) — {escape(e.paper.title)}, {escape(e.paper.venue)}")
    out.print(e.description, highlight=False, markup=False)
    out.print(f"datasets: {', '.join(f'{d} ({e.architecture_name(d)})' for d in e.datasets)}; "
              f"source: {e.source}", highlight=False)
    for c in e.claims:
        out.print(f"  claim: {c.short()}", highlight=False, markup=False)
    reports = api.reports(e.id, store=db, home=home)
    if not reports:
        out.print("no stored evaluations")
    for r in reports:
        s, run = r.summary, r.summary.run
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
    existing = set(api.entries(home=home))
    for e in api.submit(file, home=home):
        verb = "updated" if e.id in existing else "submitted"
        out.print(f"{verb} {e.id} ({e.name}) -> {e.source}", highlight=False, markup=False)


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
    escalation: Annotated[bool, typer.Option(
        help="Escalate a run the checks flag unreliable (stronger attacks at every eps; see the README).")] = True,
    executor: ExecutorOpt = "local", ray_address: RayAddressOpt = None, task_threads: TaskThreadsOpt = 1,
    home: HomeOpt = None, db: DbOpt = None, data_dir: DataOpt = None, device: DeviceOpt = "cpu",
    download: DownloadOpt = False,
) -> None:
    """The main job: train the demo entries, evaluate them, run their checks, build the leaderboard."""
    _set_download(download)
    device = _check_device(device)
    ids = None
    if entries_ == "all":
        ids = api.entries_for(protocol, home=home)
    elif entries_:
        ids = [x.strip() for x in entries_.split(",")]
    t0 = time.perf_counter()
    with _progress() as prog:
        bar = prog.add_task("demo", total=None)

        def on_start(n_tasks: int, where: str, threads: int) -> None:
            out.print(f"{n_tasks} tasks {where}, {threads} torch thread(s) each", highlight=False)
            prog.update(bar, total=n_tasks)

        def on_done(task: Any, message: str, seconds: float) -> None:
            console = prog.console if prog.live.is_started else out
            console.print(f"{task.label()} ({seconds:.0f} s): {message}", highlight=False, markup=False,
                          soft_wrap=True)
            prog.advance(bar)

        result = api.demo(ids, protocol=protocol, budget=budget, seed=seed, jobs_=jobs, home=home, db=db,
                          data_dir=data_dir, device=device, download=download, escalation=escalation,
                          executor=executor, ray_address=ray_address, task_threads=task_threads,
                          on_start=on_start, on_done=on_done)
    for r in result.reports.values():
        _print_report(r)
    out.print(f"demo finished in {time.perf_counter() - t0:.0f} s", highlight=False)
    out.print(f"leaderboard: {result.site}", highlight=False, soft_wrap=True)


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
    from bench.protocol.protocols import FULL_AA, QUICK_AA

    params = {k: v for k, v in (FULL_AA if full_aa else QUICK_AA).items() if k != "version"}
    run_perf(api.entry(entry, home=home), dataset, batch, eps, budget, Workspace.resolve(home), data_dir,
             _check_device(device), out, params)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:  # pragma: no cover
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
