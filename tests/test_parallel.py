"""The demo's task graph (bench.orchestration.pool): what waits for what, and how a worker's failure ends it."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from bench.cli.app import app
from bench.orchestration.pool import Task, plan, training_cost
from bench.store.workspace import Workspace


def test_plan_trains_each_model_once_and_orders_the_work(tmp_path: Path) -> None:
    ws = Workspace.resolve(tmp_path)
    deps = plan(ws, ["pnml", "madry-pgd-at", "rce-nonme", "rce-kd"], "mnist-linf-quick-v2", "quick", 0)
    trains = [t for t in deps if t.kind == "train"]
    # the two transfer surrogates first (every evaluation waits for them), then one training per model:
    # pnml wraps madry-pgd-at and rce-nonme wraps rce-kd
    assert [t.entry_id for t in trains[:2]] == ["standard", "surrogate-pgd"]
    assert sorted(t.entry_id for t in trains[2:]) == ["madry-pgd-at", "rce-kd"]
    assert all(not deps[t] for t in trains)
    surrogates = {Task("train", "standard", "quick", 0), Task("train", "surrogate-pgd", "quick", 0)}
    for entry_id, model_id in [("pnml", "madry-pgd-at"), ("madry-pgd-at", "madry-pgd-at"),
                               ("rce-nonme", "rce-kd"), ("rce-kd", "rce-kd")]:
        slices = [t for t in deps if t.kind == "evaluate" and t.entry_id == entry_id]
        assert [(t.start, t.stop) for t in slices] == [(0, 100), (100, 200)]  # the protocol's chunks
        for t in slices:
            assert deps[t] == {Task("train", model_id, "quick", 0)} | surrogates
        assert deps[Task("check", entry_id, "quick", 0)] == set(slices)
    # every task starts after the tasks it waits for, in the plan's order
    order = list(deps)
    assert all(order.index(d) < order.index(t) for t, needs in deps.items() for d in needs)


def test_plan_starts_the_costliest_training_first(tmp_path: Path) -> None:
    ws = Workspace.resolve(tmp_path)
    deps = plan(ws, ["standard", "mart", "madry-pgd-at"], "mnist-linf-quick-v1", "quick", 0)
    costs = [training_cost(ws, t.entry_id, "mnist", "quick") for t in deps if t.kind == "train"]
    assert costs == sorted(costs, reverse=True) and costs[-1] < costs[0]
    assert [t.entry_id for t in deps if t.kind == "train"][-1] == "standard"  # no attack steps: cheapest


def test_plan_without_transfer_attacks_has_no_surrogates(tmp_path: Path) -> None:
    deps = plan(Workspace.resolve(tmp_path), ["standard"], "mnist-linf-tiny-v1", "tiny", 3)
    assert [t.label() for t in deps] == ["train standard", "evaluate standard [0:20]", "evaluate standard [20:40]",
                                         "check standard"]
    assert all(t.seed == 3 and t.budget == "tiny" for t in deps)


def test_a_failing_worker_ends_the_demo_with_one_error_line(tmp_path: Path) -> None:
    missing = tmp_path / "no-data"
    result = CliRunner().invoke(app, ["demo", "--entries", "standard,trades", "--budget", "tiny",
                                      "--protocol", "mnist-linf-tiny-v1", "--home", str(tmp_path / "ws"),
                                      "--data-dir", str(missing), "--jobs", "2"])
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert lines[-1].startswith("error:") and str(missing) in lines[-1], result.output
    assert "Traceback" not in result.output


CRASHING = '''
import os

from registry import Entry, Paper
from defenses.training import Budget, Recipe


def crash(*_args):
    os._exit(3)  # a defense that takes its process down: no exception to pickle back


ENTRY = Entry(
    id="crashes", name="crashes", description="Its model factory ends the process.",
    paper=Paper("none", "nobody", "arXiv 2026"), kind="standard", architectures={"mnist": crash},
    recipe=Recipe("ce", {}, {"mnist": {"tiny": Budget(epochs=1, batch_size=64, lr=2e-3, optimizer="adam",
                                                      train_samples=64)}}),
)
'''


def test_a_dead_worker_is_reported_in_one_line(tmp_path: Path) -> None:
    home = str(tmp_path / "ws")
    (tmp_path / "crash.py").write_text(CRASHING)
    assert CliRunner().invoke(app, ["submit", str(tmp_path / "crash.py"), "--home", home]).exit_code == 0
    result = CliRunner().invoke(app, ["demo", "--entries", "crashes", "--budget", "tiny",
                                      "--protocol", "mnist-linf-tiny-v1", "--home", home, "--jobs", "2"])
    assert result.exit_code == 1, result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("error: a worker process died during 'train crashes'"), result.output


def test_default_jobs_gives_each_process_two_entries(monkeypatch) -> None:
    import bench.orchestration.pool as parallel

    monkeypatch.setattr(parallel, "usable_cpus", lambda: 2)
    assert [parallel.default_jobs("cpu", n) for n in (1, 2, 3, 4, 23)] == [1, 1, 1, 2, 2]
    assert parallel.default_jobs("cuda", 23) == 1
    monkeypatch.setattr(parallel, "usable_cpus", lambda: 16)
    assert parallel.default_jobs("cpu", 23) == 8 and parallel.default_jobs("cpu", 9) == 4
